import assert from "node:assert/strict";
import { defaultConfig } from "../lib/config.ts";
import {
  deriveSeed,
  loadDataset,
  mulberry32,
  nextPrompts,
  parseDataset,
  promptsForStep,
  promptsPerStep,
  recordOutcomes,
  shuffle,
  totalSteps,
} from "../lib/data.ts";
import type { Example } from "../lib/data.ts";
import { DataError } from "../lib/errors.ts";

const FIXTURES = "tests/fixtures/data";

Deno.test("loadDataset() reads the seed JSON array with the line each record starts on", async () => {
  const file = `${FIXTURES}/seed.json`;
  const { examples, skipped, format } = await loadDataset(file);
  assert.equal(format, "seed");
  assert.equal(skipped, 0);
  assert.deepEqual(examples, [
    {
      id: "seed.json#0",
      question: "Tom has 3 apples and buys 4 more. How many apples does Tom have?",
      answer: "7",
      source: `${file}:2`,
    },
    {
      id: "seed-2",
      question: "A pen costs $2. How much do 5 pens cost?",
      answer: "10", // a number in the file
      solution: "2 * 5 = 10. The answer is \\boxed{10}.",
      source: `${file}:8`,
    },
    { id: "seed.json#2", question: "What is 1,000 + 80?", answer: "1080", source: `${file}:16` },
    { id: "seed.json#3", question: "Half of 9?", answer: "\\frac{9}{2}", source: `${file}:17` },
  ]);
});

Deno.test("loadDataset() reads GSM8K: answer after ####, thousands commas removed", async () => {
  const file = `${FIXTURES}/gsm8k.jsonl`;
  const { examples, format } = await loadDataset(file);
  assert.equal(format, "gsm8k");
  assert.deepEqual(examples.map((e) => e.answer), ["72", "1080", "1200450", "-7"]);
  // The blank line 3 is not a row, so the third row is on line 4.
  assert.deepEqual(examples.map((e) => e.source), [1, 2, 4, 5].map((n) => `${file}:${n}`));
  assert.equal(
    examples[0].solution,
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n" +
      "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.",
  );
  assert.equal(examples[3].id, "gsm8k.jsonl#3");
});

Deno.test("loadDataset() reads MATH rows and keeps subject and level", async () => {
  const file = `${FIXTURES}/math.jsonl`;
  const { examples, format } = await loadDataset(file);
  assert.equal(format, "math");
  assert.deepEqual(examples[1], {
    id: "test/algebra/2.json",
    question: "Simplify $\\frac{2}{4}$.",
    answer: "\\frac{1}{2}",
    solution: "$\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.",
    source: `${file}:2`,
    subject: "Algebra",
    level: 3,
  });
  assert.equal(examples[0].level, 1);
  assert.equal("level" in examples[2], false, "level: null is dropped");
});

Deno.test("loadDataset() honours an explicit format that does not fit the rows", async () => {
  await assert.rejects(() => loadDataset(`${FIXTURES}/gsm8k.jsonl`, { format: "math" }), {
    name: "DataError",
    message: `Cannot load ${FIXTURES}/gsm8k.jsonl:1: missing field "problem"`,
  });
});

Deno.test("loadDataset() stops at a bad JSON line and names it", async () => {
  const file = `${FIXTURES}/bad_json.jsonl`;
  await assert.rejects(() => loadDataset(file), (error: unknown) => {
    assert.ok(error instanceof DataError);
    assert.match(error.message, new RegExp(`^Cannot load ${file}:3: not valid JSON \\(`));
    assert.equal(error.file, file);
    assert.equal(error.line, 3);
    return true;
  });
});

Deno.test("loadDataset() names the line of a row with a missing field", async () => {
  const file = `${FIXTURES}/missing_field.jsonl`;
  await assert.rejects(() => loadDataset(file), {
    name: "DataError",
    message: `Cannot load ${file}:4: missing field "answer"`,
    line: 4,
  });
});

Deno.test("loadDataset() names the line where a wrongly typed array record starts", async () => {
  const file = `${FIXTURES}/wrong_type.json`;
  await assert.rejects(() => loadDataset(file), {
    name: "DataError",
    message:
      `Cannot load ${file}:7: field "ground_truth" must be a string or a number, got boolean`,
    line: 7,
  });
});

Deno.test("loadDataset() names the line of a syntax error in a JSON array", async () => {
  const file = `${FIXTURES}/bad_array.json`;
  await assert.rejects(() => loadDataset(file), {
    name: "DataError",
    message: new RegExp(`^Cannot load ${file}:4: not valid JSON`),
    line: 4,
  });
});

Deno.test("loadDataset() skip mode skips and counts bad rows", async () => {
  const missing = await loadDataset(`${FIXTURES}/missing_field.jsonl`, { on_bad_row: "skip" });
  assert.equal(missing.skipped, 1);
  assert.deepEqual(missing.skippedRows, [{ line: 4, reason: 'missing field "answer"' }]);
  assert.deepEqual(missing.examples.map((e) => e.answer), ["2", "4", "8"]);

  const badJson = await loadDataset(`${FIXTURES}/bad_json.jsonl`, { on_bad_row: "skip" });
  assert.equal(badJson.skipped, 1);
  assert.equal(badJson.skippedRows[0].line, 3);
  assert.deepEqual(badJson.examples.map((e) => e.source.split(":").pop()), ["1", "2", "4"]);

  const wrongType = await loadDataset(`${FIXTURES}/wrong_type.json`, { on_bad_row: "skip" });
  assert.equal(wrongType.skipped, 1);
  assert.deepEqual(wrongType.examples.map((e) => e.answer), ["2", "4", "8"]);
});

Deno.test("loadDataset() rejects an empty file, an empty array and a missing file", async () => {
  await assert.rejects(() => loadDataset(`${FIXTURES}/empty.jsonl`), {
    name: "DataError",
    message: `Cannot load ${FIXTURES}/empty.jsonl: file is empty`,
  });
  await assert.rejects(() => loadDataset(`${FIXTURES}/empty_array.json`), {
    name: "DataError",
    message: /dataset is empty: no rows/,
  });
  await assert.rejects(() => loadDataset(`${FIXTURES}/no_such_file.jsonl`), {
    name: "DataError",
    message: `Cannot load ${FIXTURES}/no_such_file.jsonl: file not found`,
    file: `${FIXTURES}/no_such_file.jsonl`,
  });
});

Deno.test("parseDataset() in skip mode still fails when every row is bad", () => {
  const text = '{"question": "a", "answer": "no hashes"}\n{"question": "b", "answer": 3}\n';
  assert.throws(() => parseDataset(text, "x.jsonl", { format: "gsm8k", on_bad_row: "skip" }), {
    name: "DataError",
    message:
      'Cannot load x.jsonl: dataset is empty: all 2 rows are bad (first, line 1: field "answer" has no "#### <final answer>" line)',
  });
});

Deno.test("parseDataset() rejects non-objects, empty fields and undetectable formats", () => {
  assert.throws(() => parseDataset('{"question": "a", "ground_truth": "1"}\n[1]\n', "x.jsonl"), {
    message: "Cannot load x.jsonl:2: row must be a JSON object, got array",
  });
  assert.throws(() => parseDataset('[{"question": "  ", "ground_truth": "1"}]', "x.json"), {
    message: 'Cannot load x.json:1: field "question" is empty',
  });
  assert.throws(() => parseDataset('{"q": 1}\n', "x.jsonl"), {
    name: "DataError",
    message: /cannot detect the format/,
  });
  assert.throws(() => parseDataset('{"problem": "p", "answer": "1", "level": "3"}\n', "m.jsonl"), {
    message: 'Cannot load m.jsonl:1: field "level" must be an integer, got string',
  });
  assert.throws(() => parseDataset('{"a": 1}', "x.json", { max_samples: 0 }), {
    name: "RangeError",
  });
});

Deno.test("parseDataset() takes the first max_samples good rows in file order", () => {
  const lines = Array.from(
    { length: 10 },
    (_, i) => i === 1 ? "oops" : JSON.stringify({ question: `q${i}`, ground_truth: `${i}` }),
  );
  const text = lines.join("\n") + "\n";
  const { examples, skipped } = parseDataset(text, "s.jsonl", {
    max_samples: 3,
    on_bad_row: "skip",
  });
  assert.deepEqual(examples.map((e) => e.answer), ["0", "2", "3"]);
  assert.equal(skipped, 1);
  // A bad row after the cut is never read.
  const late = parseDataset(lines.slice(2).concat("oops").join("\n"), "s.jsonl", {
    max_samples: 8,
  });
  assert.equal(late.examples.length, 8);
});

Deno.test("parseDataset() shuffles after the max_samples cut, seeded", () => {
  const text = Array.from(
    { length: 50 },
    (_, i) => JSON.stringify({ question: `q${i}`, ground_truth: `${i}` }),
  ).join("\n");
  const a = parseDataset(text, "s.jsonl", { max_samples: 20, shuffle: true, seed: 7 });
  const b = parseDataset(text, "s.jsonl", { max_samples: 20, shuffle: true, seed: 7 });
  const c = parseDataset(text, "s.jsonl", { max_samples: 20, shuffle: true, seed: 8 });
  const answers = a.examples.map((e) => Number(e.answer));
  assert.deepEqual(answers, b.examples.map((e) => Number(e.answer)));
  assert.notDeepEqual(answers, c.examples.map((e) => Number(e.answer)));
  assert.notDeepEqual(answers, [...Array(20).keys()], "shuffled");
  assert.deepEqual([...answers].sort((x, y) => x - y), [...Array(20).keys()], "first 20, permuted");
});

Deno.test("shuffle() is a seeded permutation that does not mutate its input", () => {
  const items = [...Array(100).keys()];
  const once = shuffle(items, 123);
  assert.deepEqual(items, [...Array(100).keys()]);
  assert.deepEqual(once, shuffle(items, 123));
  assert.deepEqual([...once].sort((x, y) => x - y), items);
  assert.notDeepEqual(once, shuffle(items, 124));
  assert.deepEqual(shuffle([], 1), []);
});

Deno.test("mulberry32() is deterministic and roughly uniform", () => {
  const a = mulberry32(42), b = mulberry32(42);
  const counts = new Array(10).fill(0);
  for (let i = 0; i < 10000; i++) {
    const x = a();
    assert.equal(x, b());
    assert.ok(x >= 0 && x < 1);
    counts[Math.floor(x * 10)]++;
  }
  for (const count of counts) assert.ok(count > 900 && count < 1100, `bucket count ${count}`);
  // Expected values from an independent Python port of bryc's mulberry32 (PRNGs.md).
  const zero = mulberry32(0);
  assert.deepEqual([zero(), zero()], [0.26642920868471265, 0.0003297457005828619]);
  assert.equal(mulberry32(42)(), 0.6011037519201636);
  assert.throws(() => mulberry32(1.5), { name: "RangeError" });
});

Deno.test("loadDataset() reads the real GSM8K test set: 1319 rows, commas stripped", async () => {
  const file = "data/gsm8k/test.jsonl";
  const { examples } = await loadDataset(file);
  assert.equal(examples.length, 1319);
  assert.equal(examples[0].answer, "18"); // Janet's ducks
  assert.equal(examples[146].source, `${file}:147`);
  assert.match(examples[146].question, /^Johnny is picking up the toys/);
  assert.equal(examples[146].answer, "2125"); // "#### 2,125" in the file
  assert.ok(examples.every((e) => /^-?\d+$/.test(e.answer)), "every answer is an integer");
});

Deno.test("loadDataset() reads the real MATH-500 set: 500 rows with subject and level", async () => {
  const { examples } = await loadDataset("data/math500/test.jsonl");
  assert.equal(examples.length, 500);
  assert.equal(examples[0].id, "test/precalculus/807.json");
  assert.equal(examples[0].answer, "\\left( 3, \\frac{\\pi}{2} \\right)");
  assert.equal(examples[0].subject, "Precalculus");
  assert.equal(examples[0].level, 2);
  assert.equal(examples.filter((e) => e.subject === "Algebra").length, 124);
  assert.equal(examples.filter((e) => e.level === 5).length, 134);
});

Deno.test("deriveSeed() depends on every part, in order", () => {
  assert.equal(deriveSeed(42, 3, 1), deriveSeed(42, 3, 1));
  const seeds = new Set([
    deriveSeed(42, 3, 1),
    deriveSeed(42, 1, 3),
    deriveSeed(43, 3, 1),
    deriveSeed(42, 3),
  ]);
  assert.equal(seeds.size, 4);
  assert.ok(Number.isInteger(deriveSeed(42)) && deriveSeed(42) >= 0 && deriveSeed(42) < 2 ** 32);
});

Deno.test("promptsForStep() walks a fresh seeded shuffle each epoch and tops up the last step", () => {
  const rows = Array.from({ length: 5 }, (_, i) => ({
    id: `r${i}`,
    question: `q${i}`,
    answer: "1",
    source: `t:${i}`,
  }));
  const options = { perStep: 2, seed: 7, shuffle: true };
  const epoch0 = [0, 1, 2].map((step) => promptsForStep(rows, step, options));
  assert.deepEqual(epoch0.map((b) => b.examples.length), [2, 2, 2]);
  assert.deepEqual(epoch0.map((b) => b.epoch), [1 / 3, 2 / 3, 1]);
  const seen = epoch0.flatMap((b) => b.examples.map((e) => e.id));
  assert.deepEqual([...new Set(seen)].sort(), rows.map((r) => r.id)); // every row, one repeat
  assert.deepEqual(promptsForStep(rows, 1, options), epoch0[1]); // any step recomputes
  const order = (step: number) => promptsForStep(rows, step, options).examples.map((e) => e.id);
  assert.notDeepEqual([...order(3), ...order(4)], [...order(0), ...order(1)]); // reshuffled
});

/** promptsForStep as it was before nextPrompts (commit 4c2d856), the reference for parity. */
function promptsForStepBefore(
  examples: Example[],
  step: number,
  options: { perStep: number; seed: number; shuffle: boolean },
): Example[] {
  const per = options.perStep;
  const stepsPerEpoch = Math.ceil(examples.length / per);
  const epoch = Math.floor(step / stepsPerEpoch);
  const order = options.shuffle ? shuffle(examples, deriveSeed(options.seed, epoch)) : examples;
  const start = (step % stepsPerEpoch) * per;
  const out = order.slice(start, start + per);
  for (let i = 0; out.length < per; i++) out.push(order[i % order.length]);
  return out;
}

const orderRows = (n: number) =>
  Array.from(
    { length: n },
    (_, i) => ({ id: `r${i}`, question: `q${i}`, answer: "1", source: `t:${i}` }),
  );

Deno.test("promptsForStep() draws what it drew before nextPrompts existed", () => {
  for (const [n, perStep] of [[5, 2], [7, 7], [3, 5], [20, 8], [1, 3]]) {
    const rows = orderRows(n);
    for (const shuffle of [true, false]) {
      for (let step = 0; step < 12; step++) {
        const options = { perStep, seed: 11, shuffle };
        assert.deepEqual(
          promptsForStep(rows, step, options).examples,
          promptsForStepBefore(rows, step, options),
          `n=${n} perStep=${perStep} shuffle=${shuffle} step=${step}`,
        );
      }
    }
  }
});

Deno.test("nextPrompts() from one state equals promptsForStep() step after step", () => {
  const rows = orderRows(7);
  let state = { position: 0, outcomes: {} };
  for (let step = 0; step < 9; step++) {
    const drawn = nextPrompts(rows, state, { batchSize: 3, seed: 4, shuffle: true });
    const expected = promptsForStep(rows, step, { perStep: 3, seed: 4, shuffle: true });
    assert.deepEqual(drawn.examples, expected.examples);
    assert.equal(drawn.epoch, expected.epoch);
    assert.equal(drawn.skipped, 0);
    state = drawn.state;
  }
  assert.equal(state.position, 27);
});

Deno.test("nextPrompts() skips easy and hard prompts at about their probability, seeded", () => {
  const rows = orderRows(400);
  const outcomes: Record<string, "easy" | "hard"> = {};
  rows.forEach((r, i) => {
    if (i % 4 === 0) outcomes[r.id] = "easy";
    if (i % 4 === 1) outcomes[r.id] = "hard";
  });
  const options = { batchSize: 100, seed: 3, shuffle: true, skipEasy: 0.75, skipHard: 0.5 };
  const seen = { easy: 0, hard: 0, other: 0 };
  let state = { position: 0, outcomes };
  let skipped = 0;
  for (let i = 0; i < 40; i++) { // ~10 epochs
    const drawn = nextPrompts(rows, state, options);
    for (const e of drawn.examples) seen[outcomes[e.id] ?? "other"]++;
    skipped += drawn.skipped;
    assert.equal(drawn.state.position - state.position, drawn.examples.length + drawn.skipped);
    state = drawn.state;
  }
  // Per epoch: 100 easy, 100 hard, 200 others; easy kept 25%, hard kept 50%.
  const epochs = state.position / 400;
  assert.ok(Math.abs(seen.easy / epochs - 25) < 4, `easy ${seen.easy / epochs} per epoch`);
  assert.ok(Math.abs(seen.hard / epochs - 50) < 5, `hard ${seen.hard / epochs} per epoch`);
  assert.ok(Math.abs(seen.other / epochs - 200) < 3, `other ${seen.other / epochs} per epoch`);
  assert.equal(skipped, state.position - 4000);
  // The same state draws the same prompts: a resumed run repeats the uninterrupted one.
  const again = nextPrompts(rows, { position: 1234, outcomes }, options);
  assert.deepEqual(nextPrompts(rows, { position: 1234, outcomes }, options), again);
  assert.throws(() => nextPrompts(rows, state, { ...options, skipHard: 1 }), {
    name: "RangeError",
    message: /hard skip probability in \[0, 1\) but found 1/,
  });
});

Deno.test("recordOutcomes() marks all-correct groups easy, all-wrong hard, forgets the rest", () => {
  const before = {
    position: 9,
    outcomes: { a: "easy", c: "hard" } as Record<string, "easy" | "hard">,
  };
  const after = recordOutcomes(before, [
    { id: "a", correct: 2, total: 4 },
    { id: "b", correct: 0, total: 4 },
    { id: "c", correct: 4, total: 4 },
  ]);
  assert.deepEqual(after, { position: 9, outcomes: { b: "hard", c: "easy" } });
  assert.deepEqual(before.outcomes, { a: "easy", c: "hard" }, "input not mutated");
});

Deno.test("promptsPerStep() and totalSteps() count completions as TRL does", () => {
  const config = defaultConfig();
  config.training.per_device_train_batch_size = 16;
  config.training.gradient_accumulation_steps = 4;
  config.grpo.num_return_sequences = 8;
  assert.equal(promptsPerStep(config), 8);
  config.training.max_steps = -1;
  config.training.num_epochs = 2;
  assert.equal(totalSteps(20, config), 6); // ceil(20 / 8) × 2
  config.training.max_steps = 5;
  assert.equal(totalSteps(20, config), 5);
  config.grpo.num_return_sequences = 6;
  assert.throws(() => promptsPerStep(config), { name: "RangeError", message: /multiple of/ });
});
