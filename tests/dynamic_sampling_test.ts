/**
 * Dynamic sampling (DAPO §3.2, verl filter_groups) on the fixture model, with a stub verifier
 * that makes the groups of some prompts all wrong (no signal) and of the others mixed.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import type { Example } from "../lib/data.ts";
import type { DynamicSamplingConfig } from "../lib/dynamic_sampling.ts";
import { dynamicSamplingPhase, groupsWithSignal, selectGroups } from "../lib/dynamic_sampling.ts";
import { loadModel } from "../lib/model_loader.ts";
import type { RewardResult } from "../lib/reward.ts";
import { scorePhase } from "../lib/reward.ts";
import { generatePhase } from "../lib/rollout.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { useTestBackend } from "./_backend.ts";

const DIR = new URL("./fixtures/qwen2-tiny", import.meta.url).pathname;
const G = 2;

/** Prompt i: answer "flat" (every completion wrong) or "mixed" (alternately right and wrong). */
function prompts(kinds: string): Example[] {
  return [...kinds].map((k, i) => ({
    id: `${k}${i}`,
    question: `${i} + 1 = ?`,
    answer: k === "f" ? "flat" : "mixed",
    source: `test:${i}`,
  }));
}

function stubConfig(filter: boolean, maxBatches: number): DynamicSamplingConfig {
  let calls = 0;
  const verify = (_text: string, answer: string): RewardResult => {
    const correct = answer === "mixed" && calls++ % 2 === 0;
    return {
      reward: correct ? 1 : -1,
      predicted: "x",
      correct,
      status: correct ? "correct" : "wrong",
    };
  };
  return {
    generation: {
      max_new_tokens: 4,
      temperature: 1,
      top_p: 1,
      top_k: 0,
      stop: [],
      prompt_format: "plain",
      system_prompt: "",
    },
    grpo: { num_return_sequences: G, filter_groups: filter, max_num_gen_batches: maxBatches },
    reward: {
      reward_functions: ["accuracy"],
      reward_weights: null,
      reward_correct: 1,
      reward_wrong: -1,
      reward_no_answer: -1,
      verify,
    },
  };
}

async function policy(config: DynamicSamplingConfig) {
  const model = await loadModel(DIR);
  const tokenizer = await loadTokenizer(DIR);
  return { model, tokenizer, adapter: null, config };
}

Deno.test("groupsWithSignal() flags the groups whose rewards differ", () => {
  assert.deepEqual(groupsWithSignal([1, 1, -1, 1, -1, -1, 0.5, 0.5], 2), [
    false,
    true,
    false,
    false,
  ]);
  assert.throws(() => groupsWithSignal([1, 1, 1], 2), { name: "RangeError" });
});

Deno.test("dynamicSamplingPhase() with filter_groups off is one rollout and score", async () => {
  await useTestBackend("wasm+blas");
  const config = stubConfig(false, 4);
  const p = await policy(config);
  const examples = prompts("fmfm");
  const before = tf.memory().numTensors;
  const out = await dynamicSamplingPhase(p, examples, { seed: 3 });
  const group = await generatePhase(p, examples, { seed: 3 });
  assert.deepEqual(out.group, group);
  assert.deepEqual(out.scores, scorePhase(group, stubConfig(false, 4).reward));
  assert.deepEqual(
    [out.numGenBatches, out.promptsDrawn, out.groupsDropped, out.groupsFilled],
    [1, 4, 0, 0],
  );
  assert.deepEqual(out.outcomes.map((o) => o.correct), [0, 1, 0, 1]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  p.model.dispose();
});

Deno.test("dynamicSamplingPhase() keeps groups with signal in draw order until the step is full", async () => {
  await useTestBackend("wasm+blas");
  const p = await policy(stubConfig(true, 10));
  const batches = [prompts("fmff"), prompts("ffmm"), prompts("mmmm")];
  let next = 0;
  const draws: number[] = [];
  const out = await dynamicSamplingPhase(p, batches[0], {
    seed: 3,
    perStep: 3,
    next: () => {
      draws.push(++next);
      return batches[next];
    },
  });
  // Batch 0 gives m1, batch 1 gives m2 and m3 (the step is full); batch 2 is never drawn.
  assert.deepEqual(draws, [1]);
  assert.deepEqual(out.group.examples.map((e) => e.id), ["m1", "m2", "m3"]);
  assert.equal(out.group.texts.length, 3 * G);
  assert.deepEqual(groupsWithSignal(out.scores.rewards, G), [true, true, true]);
  assert.deepEqual(
    [out.numGenBatches, out.promptsDrawn, out.groupsDropped, out.groupsFilled],
    [2, 8, 5, 0],
  );
  assert.equal(out.outcomes.length, 8);
  // Batch 1 is sampled with its own seed, so its completions differ from batch 0's.
  const b1 = await generatePhase(p, batches[1], { seed: 3 });
  assert.notDeepEqual(out.group.texts.slice(2, 4), b1.texts.slice(4, 6));
  p.model.dispose();
});

Deno.test("dynamicSamplingPhase() at max_num_gen_batches fills the step with the last zero-std groups", async () => {
  await useTestBackend("wasm+blas");
  const p = await policy(stubConfig(true, 2));
  const batches = [prompts("fmff"), prompts("ffff"), prompts("mmmm")];
  let next = 0;
  const out = await dynamicSamplingPhase(p, batches[0], {
    seed: 5,
    perStep: 4,
    next: () => batches[++next],
  });
  // One group with signal (m1) and three zero-std groups from batch 1's end.
  assert.deepEqual(out.group.examples.map((e) => e.id), ["m1", "f1", "f2", "f3"]);
  assert.deepEqual(
    [out.numGenBatches, out.promptsDrawn, out.groupsDropped, out.groupsFilled],
    [2, 8, 4, 3],
  );
  const again = await dynamicSamplingPhase(p, batches[0], {
    seed: 5,
    perStep: 4,
    next: (() => {
      let n = 0;
      return () => batches[++n];
    })(),
  });
  assert.deepEqual(again.group.texts, out.group.texts, "seeded: the same draw twice");
  p.model.dispose();
});

Deno.test("selectGroups() picks whole groups and their scores", () => {
  const group = {
    promptIds: [[1], [1], [2], [2]],
    completionIds: [[5], [6, 7], [8], [9]],
    texts: ["a", "b", "c", "d"],
    finishReasons: ["eos", "eos", "length", "eos"] as ("eos" | "length" | "stop")[],
    samplingLogProbs: [[-1], [-1, -2], [-3], [-4]],
    numTokens: 5,
    examples: prompts("fm"),
    answers: ["flat", "flat", "mixed", "mixed"],
  };
  const scores = {
    rewards: [-1, -1, 1, -1],
    perFunction: { accuracy: [-1, -1, 1, -1] },
    status: ["wrong", "wrong", "correct", "wrong"] as RewardResult["status"][],
    predicted: ["1", "2", "3", "4"],
  };
  const out = selectGroups(group, scores, [1]);
  assert.deepEqual(out.group.texts, ["c", "d"]);
  assert.equal(out.group.numTokens, 2);
  assert.deepEqual(out.group.examples.map((e) => e.id), ["m1"]);
  assert.deepEqual(out.scores.perFunction.accuracy, [1, -1]);
  assert.deepEqual(out.scores.predicted, ["3", "4"]);
});
