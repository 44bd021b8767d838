import assert from "node:assert/strict";
import {
  generateProblems,
  generateSplits,
  SYNTHETIC_CHARS,
  SYNTHETIC_TEMPLATES,
  type SyntheticProblem,
} from "../lib/synthetic.ts";
import { loadDataset } from "../lib/data.ts";

const STEP = /^(\d+) ([-+*/]) (\d+) = (\d+)\.$/;

/**
 * Re-derives a solution independently of the generator: splits it into `a op b = c.` steps,
 * recomputes each c, checks each operand is a number of the question or an earlier result, and
 * returns the final number. Throws on any mismatch.
 */
function checkSolution(problem: SyntheticProblem): number {
  const match = /^(.*) The answer is (\\boxed\{(\d+)\}|(\d+))\.$/.exec(problem.solution);
  assert.ok(match, `bad ending: ${problem.solution}`);
  const [, work, , boxedAnswer, plainAnswer] = match;
  assert.equal(boxedAnswer !== undefined, problem.boxed, problem.solution);
  const known = new Set((problem.question.match(/\d+/g) ?? []).map(Number));
  const sentences = work.split(/(?<=\.) /);
  assert.ok(sentences.length >= 1 && sentences.length <= 3, `${sentences.length} steps`);
  let last = NaN;
  for (const sentence of sentences) {
    const step = STEP.exec(sentence);
    assert.ok(step, `bad step "${sentence}" in ${problem.solution}`);
    const [a, op, b, c] = [Number(step[1]), step[2], Number(step[3]), Number(step[4])];
    const want = op === "+" ? a + b : op === "-" ? a - b : op === "*" ? a * b : a / b;
    assert.equal(c, want, `${sentence} in ${problem.solution}`);
    assert.ok(known.has(a) && known.has(b), `${sentence}: operand not in "${problem.question}"`);
    known.add(c);
    last = c;
  }
  assert.equal(Number(boxedAnswer ?? plainAnswer), last, problem.solution);
  return last;
}

Deno.test("generateProblems() is deterministic per seed", () => {
  const a = generateProblems(300, { seed: 5 });
  assert.deepEqual(a, generateProblems(300, { seed: 5 }));
  assert.notDeepEqual(a, generateProblems(300, { seed: 6 }));
  assert.deepEqual(generateProblems(100, { seed: 5 }), a.slice(0, 100), "a prefix of the stream");
  assert.deepEqual(generateProblems(0, { seed: 5 }), []);
});

Deno.test("generateProblems() solutions recompute to the stated, boxed answer", () => {
  const problems = generateProblems(5000, { seed: 11 });
  const stepCounts = new Set<number>();
  for (const problem of problems) {
    assert.equal(checkSolution(problem), problem.answer);
    assert.ok(Number.isInteger(problem.answer) && problem.answer >= 0);
    assert.ok(problem.boxed);
    assert.ok(problem.solution.endsWith(`The answer is \\boxed{${problem.answer}}.`));
    stepCounts.add(problem.solution.split(" = ").length - 1);
  }
  assert.deepEqual([...stepCounts].sort(), [1, 2, 3]);
});

Deno.test("generateProblems() covers every template and keeps text short", () => {
  const problems = generateProblems(5000, { seed: 12 });
  assert.ok(SYNTHETIC_TEMPLATES.length >= 6);
  const counts = new Map<string, number>();
  for (const p of problems) counts.set(p.template, (counts.get(p.template) ?? 0) + 1);
  for (const template of SYNTHETIC_TEMPLATES) {
    const share = (counts.get(template) ?? 0) / problems.length;
    assert.ok(share > 0.1 && share < 0.19, `${template}: ${share}`);
  }
  assert.ok(Math.max(...problems.map((p) => p.question.length)) <= 160);
  assert.ok(Math.max(...problems.map((p) => p.solution.length)) <= 80);
});

Deno.test("generateProblems() uses exactly SYNTHETIC_CHARS", () => {
  const used = new Set<string>();
  for (const p of generateProblems(5000, { seed: 13, dropBoxFraction: 0.5 })) {
    for (const ch of p.question + p.solution) used.add(ch);
  }
  assert.equal([...used].sort().join(""), SYNTHETIC_CHARS);
  assert.equal([...SYNTHETIC_CHARS].sort().join(""), SYNTHETIC_CHARS, "sorted, no repeats");
  assert.ok([...SYNTHETIC_CHARS].every((ch) => ch >= " " && ch <= "~"), "printable ASCII");
});

Deno.test("generateProblems() keeps operands in the configured ranges", () => {
  const ranges = { add: [5, 6] as [number, number], mul: [2, 3] as [number, number] };
  const problems = generateProblems(2000, { seed: 14, ranges });
  // Largest possible question number: combo's money m = a * p + q + r = 3 * 3 + 6 + 6.
  const numbers = problems.flatMap((p) => (p.question.match(/\d+/g) ?? []).map(Number));
  assert.ok(Math.min(...numbers) >= 1 && Math.max(...numbers) <= 21, `${Math.max(...numbers)}`);
  for (const p of problems) checkSolution(p);
  const wide = generateProblems(2000, { seed: 14 }).flatMap((p) =>
    (p.question.match(/\d+/g) ?? []).map(Number)
  );
  assert.ok(Math.max(...wide) > 50, "default ranges are wider");
});

Deno.test("generateProblems() dropBoxFraction removes the box from that fraction only", () => {
  const boxed = generateProblems(4000, { seed: 15 });
  const mixed = generateProblems(4000, { seed: 15, dropBoxFraction: 0.3 });
  const unboxed = mixed.filter((p) => !p.boxed);
  assert.ok(Math.abs(unboxed.length / mixed.length - 0.3) < 0.03, `${unboxed.length}`);
  for (let i = 0; i < mixed.length; i++) {
    assert.equal(mixed[i].question, boxed[i].question, "questions do not depend on it");
    assert.equal(mixed[i].answer, boxed[i].answer);
    checkSolution(mixed[i]);
    if (!mixed[i].boxed) {
      assert.ok(!mixed[i].solution.includes("\\boxed"));
      assert.ok(mixed[i].solution.endsWith(`The answer is ${mixed[i].answer}.`));
    }
  }
  assert.equal(generateProblems(500, { seed: 15, dropBoxFraction: 1 }).some((p) => p.boxed), false);
});

Deno.test("generateProblems() rejects bad options", () => {
  assert.throws(() => generateProblems(-1, { seed: 1 }), { name: "RangeError" });
  assert.throws(() => generateProblems(1, { seed: 0.5 }), { name: "RangeError" });
  assert.throws(() => generateProblems(1, { seed: 1, ranges: { mul: [0, 3] } }), {
    name: "RangeError",
    message: /ranges\.mul .* \[0, 3\]/,
  });
  assert.throws(() => generateProblems(1, { seed: 1, ranges: { add: [9, 2] } }), {
    name: "RangeError",
  });
  assert.throws(() => generateProblems(1, { seed: 1, dropBoxFraction: 1.5 }), {
    name: "RangeError",
  });
});

Deno.test("generateSplits() gives disjoint, duplicate-free splits with a stable test set", () => {
  const { train, test } = generateSplits({ train: 3000, test: 200 }, { seed: 16 });
  assert.equal(train.length, 3000);
  assert.equal(test.length, 200);
  const all = [...test, ...train].map((p) => p.question);
  assert.equal(new Set(all).size, all.length);
  const smaller = generateSplits({ train: 10, test: 200 }, { seed: 16 });
  assert.deepEqual(smaller.test, test);
  assert.deepEqual(smaller.train, train.slice(0, 10));
  // Ranges of one number each allow about 14,000 distinct questions (names and items vary).
  assert.throws(
    () =>
      generateSplits({ train: 20000, test: 0 }, { seed: 1, ranges: { add: [2, 2], mul: [2, 2] } }),
    {
      name: "RangeError",
      message: /Cannot generate 20000 distinct problems: only 1\d{4} in 401000 draws/,
    },
  );
});

Deno.test("data/demo train and test are the generator's output, disjoint and consistent", async () => {
  const train = await loadDataset("data/demo/train.json");
  const test = await loadDataset("data/demo/test.json");
  assert.equal(train.format, "seed");
  assert.equal(train.examples.length, 20000);
  assert.equal(test.examples.length, 500);
  const testQuestions = new Set(test.examples.map((e) => e.question));
  assert.equal(testQuestions.size, 500);
  assert.ok(train.examples.every((e) => !testQuestions.has(e.question)), "disjoint");
  assert.equal(train.examples[0].source, "data/demo/train.json:2", "one record per line");
  // `deno task make_data` defaults: seed 42, 20000 train, 500 test.
  const made = generateSplits({ train: 20000, test: 500 }, { seed: 42 });
  for (const split of ["train", "test"] as const) {
    const loaded = split === "train" ? train.examples : test.examples;
    loaded.forEach((e, i) => {
      const p = made[split][i];
      assert.deepEqual([e.question, e.answer, e.solution], [
        p.question,
        String(p.answer),
        p.solution,
      ]);
    });
  }
});
