import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { defaultConfig } from "../lib/config.ts";
import {
  evalOptions,
  evaluate,
  evaluateGreedyAndSampled,
  formatEval,
  majorityAnswer,
  passAtK,
  summarize,
} from "../lib/evaluate.ts";
import type { ProblemResult } from "../lib/evaluate.ts";
import { loadModel } from "../lib/model_loader.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { useTestBackend } from "./_backend.ts";

Deno.test("passAtK() is the unbiased estimator 1 - C(n-c, k) / C(n, k)", () => {
  assert.equal(passAtK(4, 0, 2), 0);
  assert.equal(passAtK(4, 3, 2), 1); // n - c = 1 < k
  assert.ok(Math.abs(passAtK(4, 1, 2) - 0.5) < 1e-12); // 1 - C(3,2)/C(4,2) = 1 - 3/6
  assert.ok(Math.abs(passAtK(10, 2, 1) - 0.2) < 1e-12);
});

Deno.test("majorityAnswer() groups equivalent answers and ignores missing ones", () => {
  assert.equal(majorityAnswer(["1/2", "0.5", "3", null, null, null]), "1/2");
  assert.equal(majorityAnswer([null, null]), null);
});

Deno.test("summarize() separates accuracy among boxed answers from accuracy", () => {
  const r = (status: ProblemResult["status"], reward: number): ProblemResult => ({
    id: "x",
    question: "q",
    answer: "1",
    completion: "",
    predicted: status === "no_answer" ? null : "1",
    status,
    reward,
    finish_reason: "eos",
  });
  const s = summarize([r("correct", 1), r("wrong", -1), r("no_answer", -1), r("no_answer", -1)]);
  assert.equal(s.n, 4);
  assert.equal(s.accuracy, 0.25);
  assert.equal(s.no_answer_rate, 0.5);
  assert.equal(s.accuracy_boxed, 0.5);
  assert.equal(s.mean_reward, -0.5);
});

Deno.test("evaluate() is deterministic, k samples give pass@k and maj@k, and no tensors leak", async () => {
  await useTestBackend("wasm+blas");
  const dir = new URL("./fixtures/qwen2-tiny", import.meta.url).pathname;
  const model = await loadModel(dir);
  const tokenizer = await loadTokenizer(dir);
  const examples = [0, 1, 2].map((i) => ({
    id: `e${i}`,
    question: `${i}+1?`,
    answer: "1",
    source: "t",
  }));
  const options = {
    generation: {
      max_new_tokens: 6,
      temperature: 1,
      top_p: 1,
      top_k: 0,
      stop: [],
      prompt_format: "plain" as const,
      system_prompt: "",
    },
    reward: { reward_correct: 1, reward_wrong: -1, reward_no_answer: -0.5 },
    batchSize: 2,
  };
  const before = tf.memory().numTensors;
  const a = await evaluate(model, tokenizer, examples, options);
  const b = await evaluate(model, tokenizer, examples, options);
  assert.deepEqual(a.results, b.results);
  assert.equal(a.summary.n, 3);
  assert.equal(a.summary.k, 1);
  const sampled = await evaluate(model, tokenizer, examples, { ...options, samples: 3, seed: 5 });
  assert.equal(sampled.summary.k, 3);
  assert.equal(typeof sampled.summary.pass_at_k, "number");
  assert.equal(typeof sampled.summary.maj_at_k, "number");
  for (const r of sampled.results) assert.ok(r.num_correct! >= 0 && r.num_correct! <= 3);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  await assert.rejects(() => evaluate(model, tokenizer, [], options), RangeError);
  // Greedy and sampled: the greedy summary and results, with the sampled pass@k / maj@k.
  const both = await evaluateGreedyAndSampled(model, tokenizer, examples, {
    ...options,
    samples: 3,
    seed: 5,
  });
  const { pass_at_k, maj_at_k, pass_at_1 } = sampled.summary;
  assert.deepEqual(both.summary, { ...a.summary, k: 3, pass_at_k, maj_at_k, pass_at_1 });
  assert.deepEqual(
    both.results,
    a.results.map((r, i) => ({
      ...r,
      num_correct: sampled.results[i].num_correct,
      majority_correct: sampled.results[i].majority_correct,
    })),
  );
  const progress: [number, number][] = [];
  const greedyOnly = await evaluateGreedyAndSampled(model, tokenizer, examples, {
    ...options,
    onProgress: (done, total) => progress.push([done, total]),
  });
  assert.deepEqual(greedyOnly, a);
  assert.deepEqual(progress.at(-1), [3, 3]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  model.dispose();
});

Deno.test("summarize() with k samples gives pass@k, maj@k and the unbiased pass@1", () => {
  const r = (numCorrect: number, majority: boolean): ProblemResult => ({
    id: "x",
    question: "q",
    answer: "1",
    completion: "",
    predicted: "1",
    status: "correct",
    reward: 1,
    finish_reason: "eos",
    num_correct: numCorrect,
    majority_correct: majority,
  });
  const s = summarize([r(2, true), r(0, false), r(1, false)], 2);
  assert.equal(s.pass_at_k, 2 / 3); // pass@2 of 2 samples: any correct
  assert.equal(s.maj_at_k, 1 / 3);
  assert.equal(s.pass_at_1, 0.5); // (2/2 + 0/2 + 1/2) / 3
});

Deno.test("evalOptions() takes eval.max_new_tokens over generation's, and the config's rewards", () => {
  const config = defaultConfig();
  const plain = evalOptions(config);
  assert.equal(plain.generation.max_new_tokens, config.generation.max_new_tokens);
  assert.equal(plain.batchSize, config.eval.eval_batch_size);
  assert.equal(plain.reward.reward_no_answer, config.reward.reward_no_answer);
  config.eval.max_new_tokens = 7;
  assert.equal(evalOptions(config).generation.max_new_tokens, 7);
  assert.equal(evalOptions(config).generation.temperature, config.generation.temperature);
  config.eval.temperature = 1.3;
  assert.equal(evalOptions(config).generation.temperature, 1.3);
});

Deno.test("formatEval() is one line with the four numbers", () => {
  const line = formatEval({
    n: 4,
    accuracy: 0.25,
    no_answer_rate: 0.5,
    mean_reward: -0.625,
    accuracy_boxed: 0.5,
    mean_length: 3,
    k: 1,
  });
  assert.equal(
    line,
    "accuracy 25.0% | no answer 50.0% | accuracy among boxed 50.0% | mean reward -0.625 | n 4",
  );
  const sampled = formatEval({
    n: 4,
    accuracy: 0.25,
    no_answer_rate: 0,
    mean_reward: -0.5,
    accuracy_boxed: 0.25,
    mean_length: 3,
    k: 8,
    pass_at_k: 0.5,
    maj_at_k: 0.25,
    pass_at_1: 0.2,
  });
  assert.match(sampled, /mean reward -0.500 \| pass@8 50.0% \| maj@8 25.0% \| n 4$/);
});
