import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { useBackend } from "../lib/backend.ts";
import {
  completionTokenLogProbs,
  errorBreakdown,
  logProbChanges,
  nextTokens,
  perTokenChange,
  perTokenKl,
  rolloutRows,
  scoreRows,
  solutionSteps,
  statusTransitions,
  table,
  tokenValues,
  verdictReason,
} from "../lib/inspect.ts";
import { loadLora } from "../lib/lora.ts";
import { jupyterDisplay } from "../lib/plot.ts";
import { completionLogProbs } from "../lib/grpo.ts";
import { loadModel } from "../lib/model_loader.ts";
import { disposeBatch, toTrainingBatch } from "../lib/rollout.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { assertAllClose } from "./_assert.ts";

const DIR = new URL("./fixtures/qwen2-tiny", import.meta.url).pathname;

Deno.test("nextTokens() ranks the last position's softmax and matches completionTokenLogProbs()", async () => {
  await useBackend("cpu");
  const model = await loadModel(DIR);
  const tokenizer = await loadTokenizer(DIR);
  const before = tf.memory().numTensors;
  const text = "Question: 2+2?\nAnswer:";
  const { shape, top } = await nextTokens(model, tokenizer, { text, k: 3 });
  const prompt = tokenizer.encode(text);
  assert.deepEqual(shape, [1, prompt.length, model.config.vocab_size]);
  assert.deepEqual(top.map((t) => t.rank), [1, 2, 3]);
  assert.ok(top[0].prob >= top[1].prob && top[1].prob >= top[2].prob);
  assert.ok(top[0].prob > 0 && top[0].prob <= 1);
  assert.equal(top[0].token, tokenizer.decode([top[0].id]));
  // Appending the top tokens as completions: their log-prob at temperature 1 is log(prob).
  const logps = await completionTokenLogProbs(model, {
    promptIds: [prompt, prompt],
    completionIds: [[top[0].id], [top[1].id, top[0].id]],
    finishReasons: ["length", "length"],
  }, { padTokenId: tokenizer.padTokenId, temperature: 1, adapter: null });
  assert.deepEqual(logps.map((r) => r.length), [1, 2]);
  assertAllClose([logps[0][0], logps[1][0]], [Math.log(top[0].prob), Math.log(top[1].prob)], 1e-5);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  model.dispose();
});

Deno.test("completionTokenLogProbs() equals completionLogProbs() cut to each completion", async () => {
  await useBackend("cpu");
  const model = await loadModel(DIR);
  const lora = await loadLora(model, `${DIR}/adapter`);
  const rows = {
    promptIds: [[256, 72, 105], [256, 50]],
    completionIds: [[33, 34, 257], [40]],
    finishReasons: ["eos", "length"] as ("eos" | "length")[],
  };
  const before = tf.memory().numTensors;
  const got = await completionTokenLogProbs(model, rows, {
    padTokenId: 0,
    temperature: 0.7,
    adapter: lora,
  });
  const batch = toTrainingBatch(rows, 0);
  const want = completionLogProbs(model, {
    inputIds: batch.inputIds,
    attentionMask: batch.attentionMask,
    completionLength: batch.completionLength,
    temperature: 0.7,
  }, { adapter: lora });
  const w = await want.array();
  disposeBatch(batch);
  want.dispose();
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  assert.deepEqual(got.map((r) => r.length), [3, 1]);
  assertAllClose(got[0], w[0], 1e-6);
  assertAllClose(got[1], [w[1][0]], 1e-6);
  // The adapter changes them (the fixture adapter is not zero).
  const base = await completionTokenLogProbs(model, rows, {
    padTokenId: 0,
    temperature: 0.7,
    adapter: null,
  });
  assert.ok(Math.abs(base[0][0] - got[0][0]) > 1e-4);
  // A bad temperature is a RangeError that leaves no batch tensors behind.
  await assert.rejects(
    () => completionTokenLogProbs(model, rows, { padTokenId: 0, temperature: 0, adapter: null }),
    { name: "RangeError", message: /temperature/ },
  );
  assert.equal(tf.memory().numTensors, before, "leaked tensors after a rejected call");
  lora.dispose();
  model.dispose();
});

Deno.test("perTokenKl() is the k3 estimator: 0 where equal, exp(d) - d - 1 elsewhere", () => {
  assertAllClose(perTokenKl([-1, -2, -0.5], [-1, -1, -2]), [
    0,
    Math.exp(1) - 2,
    Math.exp(-1.5) + 0.5,
  ], 1e-12);
  assert.ok(perTokenKl([-3, -0.1], [-0.2, -4]).every((x) => x > 0));
  assert.throws(() => perTokenKl([-1], []), { name: "RangeError", message: /found 0 and 1/ });
});

Deno.test("perTokenChange() subtracts token by token", () => {
  assert.deepEqual(perTokenChange([-1, -2, -3], [-0.5, -2, -4]), [0.5, 0, -1]);
  assert.throws(() => perTokenChange([-1], [-1, -2]), { message: /found 2 and 1/ });
});

Deno.test("rolloutRows() numbers prompts and samples and clips long texts", () => {
  const rows = rolloutRows({
    completionIds: [[1], [1, 2], [1, 2, 3], [4]],
    texts: ["a", "bb", "x".repeat(20), "d"],
    finishReasons: ["eos", "eos", "length", "stop"],
  }, { num_return_sequences: 2, maxChars: 10 });
  assert.deepEqual(rows.map((r) => [r.prompt, r.sample, r.tokens]), [
    [0, 0, 1],
    [0, 1, 2],
    [1, 0, 3],
    [1, 1, 1],
  ]);
  assert.equal(rows[2].completion, "xxxxxxxxx…");
  assert.equal(rows[2].completion.length, 10);
  assert.equal(rows[3].finish, "stop");
  assert.throws(
    () =>
      rolloutRows({ completionIds: [[1]], texts: ["a"], finishReasons: ["eos"] }, {
        num_return_sequences: 2,
      }),
    { name: "RangeError", message: /num_return_sequences=2/ },
  );
  assert.throws(
    () =>
      rolloutRows({ completionIds: [[1]], texts: ["a", "b"], finishReasons: ["eos", "eos"] }, {
        num_return_sequences: 2,
      }),
    { name: "RangeError", message: /Expected 2 completionIds and finishReasons.*found 1 and 2/ },
  );
});

Deno.test("scoreRows() and verdictReason() explain each verdict", () => {
  assert.equal(verdictReason("correct", "0.5", "1/2"), "boxed 0.5 = 1/2");
  assert.equal(verdictReason("wrong", "3", "4"), "boxed 3 ≠ 4");
  assert.equal(verdictReason("no_answer", null, "4"), "no boxed answer");
  const rows = scoreRows({
    rewards: [1, -1, -1, -1],
    status: ["correct", "wrong", "no_answer", "wrong"],
    predicted: ["4", "5", null, "7"],
  }, {
    answers: ["4", "4", "6", "6"],
    advantages: [0.70710678, -0.70710678, 0, 0],
    num_return_sequences: 2,
  });
  assert.deepEqual(rows[0], {
    prompt: 0,
    sample: 0,
    truth: "4",
    predicted: "4",
    status: "correct",
    reward: 1,
    advantage: 0.7071,
    why: "boxed 4 = 4",
  });
  assert.deepEqual(rows.map((r) => r.why), [
    "boxed 4 = 4",
    "boxed 5 ≠ 4",
    "no boxed answer",
    "boxed 7 ≠ 6",
  ]);
  assert.deepEqual(rows.map((r) => r.prompt), [0, 0, 1, 1]);
  assert.throws(
    () =>
      scoreRows({ rewards: [1, 1], status: ["correct", "correct"], predicted: ["1", "1"] }, {
        answers: ["1"],
        advantages: [0, 0],
        num_return_sequences: 2,
      }),
    { name: "RangeError", message: /Expected 2 answers/ },
  );
  // A short status list is an error, not a row that reads "boxed undefined".
  assert.throws(
    () =>
      scoreRows({ rewards: [1, 1], status: ["correct"], predicted: ["1", "1"] }, {
        answers: ["1", "1"],
        advantages: [0, 0],
        num_return_sequences: 2,
      }),
    { name: "RangeError", message: /Expected 2 statuses and predictions.*found 1 and 2/ },
  );
});

Deno.test("tokenValues() decodes each id on its own", () => {
  const tokenizer = { decode: (ids: number[]) => ids.map((i) => `<${i}>`).join("") };
  assert.deepEqual(tokenValues(tokenizer, [1, 2], [0.5, -1]), [
    { token: "<1>", value: 0.5 },
    { token: "<2>", value: -1 },
  ]);
  assert.throws(() => tokenValues(tokenizer, [1], []), { name: "RangeError" });
});

Deno.test("logProbChanges() sums per completion and averages by advantage sign", () => {
  const { rows, bySign } = logProbChanges(
    [[-1, -2], [-1], [-3, -1, -1], [-2]],
    [[-0.5, -1.5], [-1], [-4, -1, -1], [-2.5]],
    [1.2, 0, -0.4, -0.8],
  );
  assert.deepEqual(rows[0], {
    row: 0,
    advantage: 1.2,
    tokens: 2,
    before: -3,
    after: -2,
    change: 1,
    perToken: 0.5,
  });
  assert.deepEqual(rows.map((r) => r.change), [1, 0, -1, -0.5]);
  assert.deepEqual(bySign, [
    { advantage: "A > 0", completions: 1, meanChange: 1 },
    { advantage: "A = 0", completions: 1, meanChange: 0 },
    { advantage: "A < 0", completions: 2, meanChange: -0.75 },
  ]);
  assert.throws(() => logProbChanges([[-1]], [[-1, -2]], [0]), {
    message: /1 tokens before, 2 after/,
  });
  assert.throws(() => logProbChanges([[-1]], [], [0]), { name: "RangeError" });
});

Deno.test("errorBreakdown() counts verdicts per category with an 'all' row", () => {
  const results = [
    { id: "a", status: "correct" as const, steps: 2 },
    { id: "b", status: "wrong" as const, steps: 1 },
    { id: "c", status: "no_answer" as const, steps: 2 },
    { id: "d", status: "correct" as const, steps: 1 },
    { id: "e", status: "correct" as const, steps: 2 },
  ];
  const rows = errorBreakdown(results, (r) => `${r.steps} steps`);
  assert.deepEqual(rows, [
    { category: "1 steps", n: 2, correct: 1, wrong: 1, no_answer: 0, accuracy: 0.5 },
    { category: "2 steps", n: 3, correct: 2, wrong: 0, no_answer: 1, accuracy: 2 / 3 },
    { category: "all", n: 5, correct: 3, wrong: 1, no_answer: 1, accuracy: 0.6 },
  ]);
  assert.deepEqual(errorBreakdown([], () => "x"), [
    { category: "all", n: 0, correct: 0, wrong: 0, no_answer: 0, accuracy: 0 },
  ]);
});

Deno.test("solutionSteps() counts the = signs of a worked solution", () => {
  assert.equal(solutionSteps("35 / 5 = 7. The answer is \\boxed{7}."), 1);
  assert.equal(
    solutionSteps("4 * 3 = 12. 12 + 9 = 21. 21 - 1 = 20. The answer is \\boxed{20}."),
    3,
  );
  assert.equal(solutionSteps("no steps"), 0);
});

Deno.test("statusTransitions() matches problems by id", () => {
  const before = [
    { id: "a", status: "wrong" as const },
    { id: "b", status: "no_answer" as const },
    { id: "c", status: "no_answer" as const },
    { id: "d", status: "correct" as const },
  ];
  const after = [
    { id: "d", status: "wrong" as const },
    { id: "c", status: "correct" as const },
    { id: "b", status: "wrong" as const },
    { id: "a", status: "correct" as const },
  ];
  assert.deepEqual(statusTransitions(before, after), [
    { before: "correct", correct: 0, wrong: 1, no_answer: 0 },
    { before: "wrong", correct: 1, wrong: 0, no_answer: 0 },
    { before: "no_answer", correct: 1, wrong: 1, no_answer: 0 },
  ]);
  assert.throws(() => statusTransitions(before, after.slice(1)), {
    message: /Problem d is missing/,
  });
});

Deno.test("table() formats numbers and shows as Markdown with code spans", () => {
  const t = table([
    { step: 1, reward: -0.123456, kl: 0, text: "$3 * 4 | 5\nok", status: null },
    { step: 2, reward: 0.5, kl: 2.5e-6, text: " a`b", status: "correct" },
  ], { digits: 2 });
  assert.deepEqual(t.columns, ["step", "reward", "kl", "text", "status"]);
  assert.deepEqual(t.cells, [
    ["1", "-0.12", "0", "$3 * 4 | 5⏎ok", "null"],
    ["2", "0.50", "2.50e-6", " a`b", "correct"],
  ]);
  assert.equal(
    t.markdown(),
    [
      "| step | reward | kl | text | status |",
      "| --- | --- | --- | --- | --- |",
      "| 1 | -0.12 | 0 | `$3 * 4 \\| 5⏎ok` | null |",
      "| 2 | 0.50 | 2.50e-6 | ``  a`b `` | `correct` |",
    ].join("\n"),
  );
  assert.equal(
    t.toString(),
    [
      "step  reward  kl       text           status",
      "1     -0.12   0        $3 * 4 | 5⏎ok  null",
      "2     0.50    2.50e-6   a`b           correct",
    ].join("\n"),
  );
  const bundle = t[jupyterDisplay]();
  assert.deepEqual(Object.keys(bundle), ["text/markdown", "text/plain"]);
  // Columns can be picked and ordered; a missing value is an empty cell.
  assert.deepEqual(table([{ a: 1, b: 2 }, { b: 3 }], { columns: ["b", "a"] }).cells, [
    ["2", "1"],
    ["3", ""],
  ]);
  // Interfaces without an index signature work.
  const { bySign } = logProbChanges([[-1]], [[-0.123456]], [1]);
  assert.deepEqual(table(bySign, { digits: 3 }).cells[0], ["A > 0", "1", "0.877"]);
  assert.deepEqual(table([]).columns, []);
  // Blank strings are quoted so that a space or newline token stays visible.
  assert.deepEqual(table([{ token: " " }, { token: "\n" }, { token: "" }]).cells, [
    ['" "'],
    ['"\\n"'],
    ['""'],
  ]);
});
