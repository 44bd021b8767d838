import assert from "node:assert/strict";
import fc from "fast-check";
import {
  accuracyReward,
  computeReward,
  DEFAULT_REWARDS,
  extractAnswer,
  formatReward,
  isEquivalent,
  REWARD_SELF_TEST_CASES,
  scorePhase,
} from "../lib/reward.ts";

type Status = "correct" | "wrong" | "no_answer";
const C = "correct", W = "wrong";
const REWARD: Record<Status, number> = { correct: 1, wrong: -1, no_answer: -0.5 };

function box(answer: string): string {
  return `Let me think step by step.\nSo the final answer is $\\boxed{${answer}}$.`;
}

function assertScore(generated: string, truth: string, status: Status): void {
  const got = computeReward(generated, truth);
  assert.equal(got.status, status, `${JSON.stringify(generated)} vs ${JSON.stringify(truth)}`);
  assert.equal(got.reward, REWARD[status]);
  assert.equal(got.correct, status === "correct");
}

Deno.test("computeReward() passes the self-test cases", () => {
  assert.ok(REWARD_SELF_TEST_CASES.length >= 6);
  for (const c of REWARD_SELF_TEST_CASES) {
    assert.equal(computeReward(c.generated, c.truth).reward, c.expected, c.generated);
  }
});

// [predicted (boxed by the test), truth, expected status]; grouped by the categories.
const CASES: Record<string, [string, string, Status][]> = {
  "GSM8K integers and thousands separators": [
    ["1,000", "1000", C],
    ["1000", "1,000", C],
    ["1,234,567", "1234567", C],
    ["1234567", "1,234,567", C],
    ["1{,}000", "1000", C],
    ["10,\\!080", "10080", C],
    ["10\\,080", "10080", C],
    ["1\\,000\\,000", "1000000", C],
    ["11111111100", "11,\\! 111,\\! 111,\\! 100", C],
    ["11111111101", "11,\\! 111,\\! 111,\\! 100", W],
    ["12,34", "1234", W],
    ["2,125", "2125", C],
    ["2,126", "2,125", W],
    ["42", "42", C],
    ["43", "42", W],
  ],
  "dollars": [
    ["\\$18", "18", C],
    ["$18$", "18", C],
    ["18 dollars", "18", C],
    ["\\$18.90", "18.9", C],
    ["18.9", "\\$18.90", C],
    ["\\$18.91", "\\$18.90", W],
    ["18\\text{ dollars}", "18", C],
    ["\\$32,\\!348", "32348", C],
    ["\\$32,348", "\\$32,\\!348", C],
    ["\\$36", "36", C],
    ["\\$37", "\\$36", W],
  ],
  "trailing .0 and decimals": [
    ["18.0", "18", C],
    ["18.00", "18", C],
    ["18.", "18", C],
    ["18.01", "18", W],
    ["17.99", "18", W],
    ["4.9999999", "5", W],
    ["326.50", "326.5", C],
    ["326.4", "326.5", W],
  ],
  "units and text words": [
    ["5 \\text{ cm}", "5", C],
    ["15\\text{ cm}^2", "15", C],
    ["15", "15\\mbox{ cm}^2", C],
    ["864", "864 \\mbox{ inches}^2", C],
    ["864 \\text{in}^2", "864 \\mbox{ inches}^2", C],
    ["5.4", "5.4 \\text{ cents}", C],
    ["5.5", "5.4 \\text{ cents}", W],
    ["20 \\text{ minutes}", "20", C],
    ["20 minutes", "20", C],
    ["21 minutes", "20", W],
    ["\\text{18 dollars}", "18", C],
    ["\\text{19 dollars}", "18", W],
    ["5\\,\\mathrm{cm}", "5", C],
    ["5 \\mathrm{~cm}^{2}", "5", C],
  ],
  "percent": [
    ["25\\%", "25", C],
    ["25%", "25", C],
    ["25", "25\\%", C],
    ["0.25", "25\\%", C],
    ["25\\%", "0.25", C],
    ["0.25", "25", W],
    ["26\\%", "25", W],
  ],
  "degrees": [
    ["30^\\circ", "30", C],
    ["30", "30^\\circ", C],
    ["30^{\\circ}", "30^\\circ", C],
    ["30°", "30", C],
    ["30 \\text{ degrees}", "30", C],
    ["31", "30^\\circ", W],
    ["\\frac{270}{7}", "\\frac{270}7\\text{ degrees}", C],
    ["\\frac{271}{7}", "\\frac{270}7\\text{ degrees}", W],
  ],
  "negative numbers": [
    ["-5", "-5", C],
    ["-5", "5", W],
    ["5", "-5", W],
    ["\u22125", "-5", C],
    ["- 5", "-5", C],
    ["-0", "0", C],
    ["-128", "-128", C],
  ],
  "decimals vs fractions": [
    ["0.5", "\\frac12", C],
    ["1/2", "0.5", C],
    ["\\frac{1}{2}", "0.5", C],
    ["\\dfrac{1}{2}", "\\frac12", C],
    ["\\tfrac12", "1/2", C],
    [".5", "1/2", C],
    ["0.50", "\\frac{1}{2}", C],
    ["0.51", "\\frac{1}{2}", W],
    ["\\frac{2}{4}", "\\frac12", C],
    ["0.333", "\\frac{1}{3}", W],
    ["0.3333333", "\\frac13", C],
    ["\\frac{-1}{2}", "-\\frac12", C],
    ["-0.5", "\\frac{1}{-2}", C],
    ["\\frac{3}{2}", "\\frac{2}{3}", W],
    ["0.34", "\\dfrac{17}{50}", C],
    ["\\frac{57}{160}", ".35625", C],
    ["\\frac{9}{256}", "\\frac{9}{265}", W],
  ],
  "mixed numbers": [
    ["137.5", "137 \\frac{1}{2}", C],
    ["\\frac{275}{2}", "137 \\frac{1}{2}", C],
    ["1.8", "1\\frac{4}{5}", C],
    ["\\frac95", "1\\frac{4}{5}", C],
    ["\\frac45", "1\\frac{4}{5}", W],
    ["-1\\frac12", "-1.5", C],
    ["137", "137 \\frac{1}{2}", W],
  ],
  "square roots": [
    ["\\sqrt{8}", "2\\sqrt2", C],
    ["2\\sqrt{2}", "\\sqrt{8}", C],
    ["\\sqrt{242}", "11\\sqrt2", C],
    ["11\\sqrt3", "11\\sqrt2", W],
    ["\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", C],
    ["\\frac{1}{\\sqrt3}", "\\frac{\\sqrt{3}}{3}", C],
    ["\\sqrt{4}", "2", C],
    ["\\sqrt{5}", "2.236", W],
    ["\\sqrt[3]{27}", "3", C],
    ["\\sqrt[3]{-8}", "-2", C],
    ["\\sqrt{117}", "3\\sqrt{13}", C],
    ["\\sqrt{452}", "2\\sqrt{113}", C],
    ["1.41421356", "\\sqrt2", C],
    ["1.4142", "\\sqrt2", W],
    ["(\\sqrt2)^2", "2", C],
    ["(\\sqrt2)^2", "3", W],
    ["70\\sqrt2", "70 \\sqrt{2}", C],
    ["11+11\\sqrt5", "11 \\sqrt{5} + 11", C],
  ],
  "pi": [
    ["12 \\pi", "12\\pi", C],
    ["3.14159265", "\\pi", C],
    ["3.14", "\\pi", W],
    ["2\\pi", "\\pi", W],
    ["20000/\\pi", "\\frac{20000}{\\pi}", C],
    ["2\\pi+18", "18+2\\pi", C],
    ["-\\pi/6", "-\\frac{\\pi}{6}", C],
    ["\\frac{\\pi}{6}", "-\\frac{\\pi}{6}", W],
    ["8\\pi", "8 \\pi", C],
  ],
  "scientific notation and powers": [
    ["6.72\\times10^{-5}", ".0000672", C],
    ["6.72e-5", ".0000672", C],
    ["6.72 \\cdot 10^{-5}", ".0000672", C],
    ["6.73\\times10^{-5}", ".0000672", W],
    ["1.2e3", "1200", C],
    ["10^{3}", "1000", C],
    ["2^{10}", "1024", C],
    ["2^{10}", "1023", W],
    ["2^23", "12", C], // TeX: 2^23 is 2^2 * 3
  ],
  "x = 5 vs 5": [
    ["x=5", "5", C],
    ["5", "x=5", C],
    ["x = 5", "x=5", C],
    ["x=6", "x=5", W],
    ["k = 2", "2", C],
    ["x=1, x=-2", "1,-2", C],
  ],
  "tuples and intervals": [
    ["(2,4)", "(2,4)", C],
    ["(2, 4)", "(2,4)", C],
    ["(4,2)", "(2,4)", W],
    ["[2,4]", "(2,4)", W],
    ["(2,4]", "(2,4)", W],
    ["\\left(3,\\frac{\\pi}{2}\\right)", "\\left( 3, \\frac{\\pi}{2} \\right)", C],
    ["(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", C],
    ["(3, 1.5708)", "\\left( 3, \\frac{\\pi}{2} \\right)", W],
    ["(\\frac{\\pi}{2}, 3)", "\\left( 3, \\frac{\\pi}{2} \\right)", W],
    ["(-\\infty,0]", "(-\\infty, 0]", C],
    ["(-\\infty,0)", "(-\\infty, 0]", W],
    ["[-2,7]", "x \\in [-2,7]", C],
    ["x\\in[-2,7]", "[-2,7]", C],
    ["[-2,8]", "x \\in [-2,7]", W],
    ["(3,\\infty)\\cup(-\\infty,2)", "(-\\infty, 2) \\cup (3, \\infty)", C],
    ["(-\\infty,2]\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)", W],
    ["(1,-16,-4,43)", "(1,-16,-4,43)", C],
    ["(1,-16,-4,44)", "(1,-16,-4,43)", W],
    ["(0.6, 8/3]", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", C],
    ["(\\frac35,\\frac83)", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", W],
    ["(-\\sqrt3,\\sqrt3)", "(-\\sqrt{3}, \\sqrt{3})", C],
    ["(-13,\\frac32)", "\\left( \\frac{3}{2}, -13 \\right)", W],
    ["(1.5,-13)", "\\left( \\frac{3}{2}, -13 \\right)", C],
  ],
  "unordered lists and sets": [
    ["2, -3", "-3, 2", C],
    ["-3,2", "2,-3", C],
    ["1,-2", "1,-3", W],
    ["1,-2", "-2,1", C],
    ["1", "1,-2", W],
    ["1,-2,3", "1,-2", W],
    ["7,5,3", "3, 5, 7", C],
    ["\\{3,5,7\\}", "3, 5, 7", C],
    ["3, 5, 8", "3, 5, 7", W],
    ["1+\\sqrt{19}, 1-\\sqrt{19}", "1 \\pm \\sqrt{19}", C],
    ["1\\pm\\sqrt{19}", "1-\\sqrt{19},1+\\sqrt{19}", C],
    ["1+\\sqrt{19}", "1 \\pm \\sqrt{19}", W],
    ["\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}", "\\{1\\pm\\sqrt{5},-2\\}", C],
    ["\\{-2, 1+\\sqrt5\\}", "\\{1\\pm\\sqrt{5},-2\\}", W],
    ["1 \\text{ and } -2", "1,-2", C],
    ["3+2\\sqrt2, 3-\\sqrt8", "3 \\pm 2 \\sqrt{2}", C],
    ["3+2\\sqrt2, 3-\\sqrt7", "3 \\pm 2 \\sqrt{2}", W],
  ],
  "matrices": [
    [
      "\\begin{bmatrix} -1 & 0 \\\\ 0 & -1 \\end{bmatrix}",
      "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
      C,
    ],
    [
      "\\begin{pmatrix} -1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
      "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
      W,
    ],
    [
      "\\begin{pmatrix} 0 & -1 \\\\ -1 & 0 \\end{pmatrix}",
      "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
      W,
    ],
    [
      "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}",
      "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
      C,
    ],
    ["(-7,16,5)", "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", C],
    ["(16,-7,5)", "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", W],
    [
      "\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}",
      "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}",
      C,
    ],
    ["\\begin{pmatrix} -1 & 0 \\end{pmatrix}", "\\begin{pmatrix} -1 \\\\ 0 \\end{pmatrix}", W],
  ],
  "plain text": [
    ["\\text{Evelyn}", "\\text{Evelyn}", C],
    ["Evelyn", "\\text{Evelyn}", C],
    ["evelyn", "\\text{Evelyn}", C],
    ["\\text{Navin}", "\\text{Evelyn}", W],
    ["\\text{East}", "\\text{east}", C],
    ["west", "\\text{east}", W],
    ["\\text{parabola}", "\\text{ellipse}", W],
    ["\\textbf{even}", "\\text{even}", C],
    ["odd", "\\text{even}", W],
  ],
  "multiple-choice letters": [
    ["C", "\\text{(C)}", C],
    ["(C)", "\\text{(C)}", C],
    ["\\text{C}", "\\text{(C)}", C],
    ["\\textbf{(C)}", "\\text{(C)}", C],
    ["B", "\\text{(C)}", W],
    ["\\text{(B)}", "\\text{(C)}", W],
    ["(E)", "\\text{(E)}", C],
  ],
  "MATH shorthand": [
    ["\\frac43", "\\frac{4}{3}", C],
    ["\\frac{4}{3}", "\\frac43", C],
    ["\\frac{5}{9}", "\\frac 59", C],
    ["\\frac59", "\\frac 59", C],
    ["\\frac{9}{5}", "\\frac 59", W],
    ["\\frac{9}{19}", "\\frac9{19}", C],
    ["0.75", "\\frac 34", C],
    ["\\frac{6}{5}", "\\frac65", C],
    ["\\sqrt{2}", "\\sqrt2", C],
    ["11\\sqrt{2}", "11\\sqrt2", C],
    ["\\frac{\\sqrt{21}}5", "\\frac{\\sqrt{21}}{5}", C],
  ],
  "\\left \\right and spacing": [
    ["\\left(1,2\\right)", "(1,2)", C],
    ["[\\pi^2/8, 5\\pi^2/4]", "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", C],
    ["(\\pi^2/8, 5\\pi^2/4]", "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", W],
    ["\\!5", "5", C],
    ["\\displaystyle\\frac{1}{2}", "\\frac12", C],
    ["1\\,\\frac{4}{5}", "1.8", C],
  ],
  "equations": [
    ["y = 3 + 2x", "y = 2x + 3", C],
    ["y=2x+4", "y = 2x + 3", W],
    ["2x+3", "y = 2x + 3", C],
    ["-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0", C],
    ["10x - 14y + 22z + 8 = 0", "5x - 7y + 11z + 4 = 0", C],
    ["5x-7y+11z-4=0", "5x - 7y + 11z + 4 = 0", W],
    ["y=-2x", "y = -2x", C],
    ["y=2x", "y = -2x", W],
    ["2x - y + 3 = 0", "y = 2x + 3", C],
    ["y = 2x + 3", "2x-y+3=0", C],
    ["2x - y + 4 = 0", "y = 2x + 3", W],
    ["5 = x", "x = 5", C],
    ["6 = x", "x = 5", W],
  ],
  "polynomials and expressions": [
    ["3x+x^3-6", "x^3+3x-6", C],
    ["x^3+3x+6", "x^3+3x-6", W],
    ["ab+2a+5b+10", "(a+5)(b+2)", C],
    ["(b+2)(a+5)", "(a+5)(b+2)", C],
    ["(a+5)(b+3)", "(a+5)(b+2)", W],
    ["\\frac{9a+11}{20}", "\\frac{11+9a}{20}", C],
    ["-q+p", "p - q", C],
    ["q-p", "p - q", W],
    ["2(k+1)", "2k+2", C],
    ["2k+1", "2k+2", W],
    ["3r^2", "3R^2", W],
    ["\\frac{x^9-1}{x-1}", "x^8 + x^7 + x^6 + x^5 + x^4 + x^3 + x^2 + x + 1", C],
    ["(x-1)(x^4+x^2+1)", "x^5 - x^4 + x^3 - x^2 + x - 1", C],
    ["(x+1)(x^4+x^2+1)", "x^5 - x^4 + x^3 - x^2 + x - 1", W],
    ["\\frac{\\cos x}{\\sin x}", "\\cot x", C],
    ["\\tan x", "\\cot x", W],
    ["5(3x-16)", "15x - 80", C],
    ["2(3r^2-2r-12)", "6r^2-4r-24", C],
    ["x^2", "y^2", W],
  ],
  "complex numbers": [
    ["7i-2", "-2 + 7i", C],
    ["-2-7i", "-2 + 7i", W],
    ["274i+1", "1+274i", C],
    ["6-5i", "6 - 5i", C],
  ],
  "base-n numerals": [
    ["204_{5}", "204_5", C],
    ["204", "204_5", C],
    ["205_5", "204_5", W],
    ["204_6", "204_5", W],
    ["4210_5", "4210_{5}", C],
  ],
  "no false positives on near integers": [
    ["13535", "13536", W],
    ["1234567", "1234568", W],
    ["12345678901234567890", "12345678901234567891", W],
    ["12345678901234567890", "12345678901234567890", C],
    ["1000001", "1000000", W],
    ["999999.9999", "1000000", W],
    ["0.1001", "0.1", W],
  ],
};

for (const [category, cases] of Object.entries(CASES)) {
  Deno.test(`computeReward() scores ${category}`, () => {
    for (const [predicted, truth, status] of cases) assertScore(box(predicted), truth, status);
  });
}

Deno.test("the case table has at least 150 cases", () => {
  const n = Object.values(CASES).reduce((sum, cases) => sum + cases.length, 0);
  assert.ok(n >= 150, `only ${n} cases`);
});

Deno.test("extractAnswer() takes the last box, nested braces, \\fbox and \\boxed 5", () => {
  assert.equal(extractAnswer("\\boxed{\\frac{1}{\\sqrt{2}}}"), "\\frac{1}{\\sqrt{2}}");
  assert.equal(extractAnswer("\\boxed{1} then \\boxed{2}"), "2");
  assert.equal(extractAnswer("\\boxed{1} then \\fbox{2}"), "2");
  assert.equal(extractAnswer("\\fbox{2} then \\boxed{3}"), "3");
  assert.equal(extractAnswer("so \\boxed 5."), "5");
  assert.equal(extractAnswer("$\\boxed 5$"), "5");
  assert.equal(extractAnswer("\\boxed{\\{1,2\\}}"), "\\{1,2\\}");
  assert.equal(extractAnswer("\\boxed{ 7 }"), "7");
  assert.equal(extractAnswer("nothing"), null);
  assert.equal(extractAnswer("\\boxed{}"), null);
  assert.equal(extractAnswer("\\boxed{1} and \\boxed{2"), null);
  assert.equal(extractAnswer("\\boxed"), null);
});

Deno.test("computeReward() reports no_answer without a closed box", () => {
  for (const text of ["The answer is 5", "\\boxed{5", "\\boxed{}", "", "\\boxed{{5}"]) {
    assert.deepEqual(computeReward(text, "5"), {
      reward: -0.5,
      predicted: null,
      correct: false,
      status: "no_answer",
    });
  }
  assertScore("\\fbox{5}", "5", "correct");
  assertScore("\\boxed 5", "5", "correct");
  assertScore("\\boxed{4} no wait \\boxed{5}", "5", "correct");
  assertScore("\\boxed{4} no wait \\boxed{5}", "4", "wrong");
});

Deno.test("computeReward() accepts GSM8K answer fields and boxed solutions as truth", () => {
  assertScore("\\boxed{18}", "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "correct");
  assertScore("\\boxed{17}", "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "wrong");
  assertScore("\\boxed{\\frac{14}{3}}", "so $2+\\frac53+1=\\boxed{\\frac{14}{3}}$", "correct");
});

Deno.test("computeReward() uses the given reward values and rejects non-finite ones", () => {
  const options = { correct: 2, wrong: 0, noAnswer: -3 };
  assert.equal(computeReward("\\boxed{1}", "1", options).reward, 2);
  assert.equal(computeReward("\\boxed{2}", "1", options).reward, 0);
  assert.equal(computeReward("1", "1", options).reward, -3);
  assert.equal(computeReward("\\boxed{2}", "1", { wrong: -0.25 }).reward, -0.25);
  assert.deepEqual(DEFAULT_REWARDS, { correct: 1, wrong: -1, noAnswer: -0.5 });
  assert.throws(() => computeReward("\\boxed{1}", "1", { correct: NaN }), {
    name: "RangeError",
    message: /correct/,
  });
});

Deno.test("accuracyReward() scores each completion against its answer", () => {
  const completions = ["\\boxed{4}", "\\boxed{5}", "no idea", "\\boxed{\\frac{8}{2}}"];
  assert.deepEqual(accuracyReward(completions, ["4", "4", "4", "4"]), [1, -1, -0.5, 1]);
  assert.deepEqual(
    accuracyReward(completions, ["4", "4", "4", "4"], { correct: 1, wrong: 0, noAnswer: 0 }),
    [1, 0, 0, 1],
  );
  assert.deepEqual(accuracyReward([], []), []);
  assert.throws(() => accuracyReward(["\\boxed{4}"], []), {
    name: "RangeError",
    message: /1 completions/,
  });
});

Deno.test("formatReward() wants exactly one box, at the end", () => {
  const cases: [string, number][] = [
    ["The answer is $\\boxed{4}$.", 1],
    ["The answer is \\boxed{4}", 1],
    ["\\[\\boxed{\\frac{1}{2}}\\]\n", 1],
    ["\\(\\boxed{4}\\)!", 1],
    ["\\fbox{4}", 1],
    ["\\boxed{4} because 2+2", 0],
    ["\\boxed{1} no, \\boxed{4}", 0],
    ["\\boxed{4", 0],
    ["\\boxed 4", 0],
    ["4", 0],
    ["", 0],
  ];
  assert.deepEqual(formatReward(cases.map((c) => c[0])), cases.map((c) => c[1]));
});

function readJsonl(path: string): Record<string, unknown>[] {
  return Deno.readTextFileSync(new URL(path, import.meta.url)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
}

Deno.test("every GSM8K test answer scores correct when boxed and wrong when off by one", () => {
  const rows = readJsonl("../data/gsm8k/test.jsonl");
  assert.equal(rows.length, 1319);
  let correct = 0, wrong = 0, formatted = 0;
  for (const row of rows) {
    const truth = String(row.answer).split("####").pop()!.trim();
    const n = BigInt(truth.replace(/,/g, ""));
    if (computeReward(box(truth), truth).status === "correct") correct++;
    if (computeReward(box(String(n + 1n)), truth).status === "wrong") wrong++;
    const pretty = `\\$${n.toLocaleString("en-US")}.00`; // e.g. \$1,450,000.00
    if (computeReward(box(pretty), truth).status === "correct") formatted++;
  }
  assert.deepEqual({ correct, wrong, formatted }, { correct: 1319, wrong: 1319, formatted: 1319 });
});

// One wrong variant per MATH-500 answer: integer + 1, fraction inverted, tuple reordered, else the
// first number in the answer + 1 (or a hand-picked change for the few answers without digits).
function perturb(answer: string): { kind: string; wrong: string } {
  const plain = answer.replace(/,\\!\s*/g, "").replace(/^\\\$/, "");
  if (/^-?\d+$/.test(plain)) return { kind: "integer+1", wrong: String(BigInt(plain) + 1n) };
  const frac = /^(-?)\\d?frac\{?(\d+)\}?\{?(\d+)\}?$/.exec(answer.replace(/\s/g, ""));
  if (frac !== null && frac[2] !== frac[3]) {
    return { kind: "fraction inverted", wrong: `${frac[1]}\\frac{${frac[3]}}{${frac[2]}}` };
  }
  const tuple = /^(\\left)?\(([^()]*,[^()]*)(\\right)?\)$/.exec(answer.replace(/\\right\)$/, ")"));
  if (tuple !== null && !answer.includes("\\cup")) {
    const items = tuple[2].replace(/\\right$/, "").split(",");
    return { kind: "tuple reordered", wrong: `(${items.reverse().join(",")})` };
  }
  if (/\d/.test(answer)) {
    return {
      kind: "first number+1",
      wrong: answer.replace(/\d+/, (d) => String(BigInt(d) + 1n)),
    };
  }
  const manual: Record<string, string> = {
    "p - q": "p + q",
    "\\cot x": "\\tan x",
    "\\pi": "2\\pi",
    "\\text{(B)}": "\\text{(C)}",
    "\\text{(C)}": "\\text{(D)}",
    "\\text{(E)}": "\\text{(A)}",
    "\\text{Evelyn}": "\\text{Navin}",
    "\\text{Navin}": "\\text{Evelyn}",
    "\\text{east}": "\\text{west}",
    "\\text{ellipse}": "\\text{parabola}",
    "\\text{even}": "\\text{odd}",
  };
  if (answer in manual) return { kind: "manual", wrong: manual[answer] };
  throw new Error(`no perturbation for ${answer}`);
}

Deno.test("every MATH-500 reference solution scores correct, and its perturbations wrong", () => {
  const rows = readJsonl("../data/math500/test.jsonl");
  assert.equal(rows.length, 500);
  let correct = 0;
  const wrongByKind: Record<string, [number, number]> = {};
  const failures: string[] = [];
  for (const row of rows) {
    const answer = String(row.answer);
    if (computeReward(String(row.solution), answer).status === "correct") correct++;
    else failures.push(`reference: ${answer}`);
    const { kind, wrong } = perturb(answer);
    const counts = wrongByKind[kind] ??= [0, 0];
    counts[1]++;
    if (computeReward(box(wrong), answer).status === "wrong") counts[0]++;
    else failures.push(`${kind}: ${wrong} vs ${answer}`);
  }
  assert.deepEqual(failures, []);
  assert.equal(correct, 500);
  for (const [kind, [wrong, total]] of Object.entries(wrongByKind)) {
    assert.equal(wrong, total, kind);
  }
  // Each perturbation kind is exercised, so this test cannot pass vacuously.
  assert.ok(wrongByKind["integer+1"][1] > 200);
  assert.ok(wrongByKind["fraction inverted"][1] > 40);
  assert.ok(wrongByKind["tuple reordered"][1] > 10);
});

const LATEX_TOKENS = [
  "\\boxed{",
  "\\fbox{",
  "{",
  "}",
  "\\frac",
  "\\sqrt",
  "\\pm",
  "\\text{",
  "\\left(",
  "\\right)",
  "\\{",
  "\\}",
  "\\\\",
  "\\",
  "\\begin{pmatrix}",
  "\\end{pmatrix}",
  "&",
  "\\cup",
  "\\in",
  "\\infty",
  "\\pi",
  "^",
  "_",
  "(",
  ")",
  "[",
  "]",
  ",",
  "=",
  "-",
  "+",
  "/",
  ".",
  "!",
  "|",
  "%",
  "$",
  " ",
  "0",
  "1",
  "9",
  "x",
  "e",
  "i",
  "é",
  "😀",
  "\u0000",
];

Deno.test("computeReward() and isEquivalent() never throw on random input", () => {
  const latex = fc.array(fc.constantFrom(...LATEX_TOKENS), { maxLength: 80 }).map((a) =>
    a.join("")
  );
  const anything = fc.oneof(latex, fc.string({ unit: "binary", maxLength: 80 }));
  fc.assert(
    fc.property(anything, anything, (generated, truth) => {
      const result = computeReward(generated, truth);
      assert.ok(["correct", "wrong", "no_answer"].includes(result.status));
      assert.equal(typeof isEquivalent(generated, truth), "boolean");
      assert.equal(formatReward([generated]).length, 1);
    }),
    { numRuns: 1500, seed: 42 },
  );
});

Deno.test("isEquivalent() is exact on integers and accepts their formatted forms", () => {
  fc.assert(
    fc.property(fc.bigInt({ min: -(10n ** 20n), max: 10n ** 20n }), (n) => {
      const plain = String(n);
      assert.ok(isEquivalent(plain, plain.replace(/\B(?=(\d{3})+(?!\d))/g, ",")));
      assert.ok(isEquivalent(`${plain}.00`, plain));
      assert.ok(!isEquivalent(String(n + 1n), plain));
      assert.ok(!isEquivalent(String(n - 1n), plain));
    }),
    { numRuns: 300, seed: 7 },
  );
});

Deno.test("isEquivalent() compares fractions exactly and lists as multisets", () => {
  const nonzero = fc.integer({ min: -999, max: 999 }).filter((x) => x !== 0);
  fc.assert(
    fc.property(nonzero, nonzero, fc.integer({ min: 2, max: 50 }), (p, q, k) => {
      assert.ok(isEquivalent(`\\frac{${k * p}}{${k * q}}`, `\\frac{${p}}{${q}}`));
      assert.ok(!isEquivalent(`\\frac{${p + 1}}{${q}}`, `\\frac{${p}}{${q}}`));
    }),
    { numRuns: 200, seed: 11 },
  );
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.integer({ min: -99, max: 99 }), { minLength: 2, maxLength: 6 }),
      (xs) => {
        const truth = xs.join(", ");
        assert.ok(isEquivalent([...xs].reverse().join(","), truth));
        assert.ok(!isEquivalent([...xs.slice(1), xs[0] + 1000].join(","), truth));
        assert.ok(!isEquivalent(`(${[...xs].reverse().join(",")})`, `(${truth})`));
      },
    ),
    { numRuns: 200, seed: 13 },
  );
});

function timed(fn: () => void): number {
  const start = performance.now();
  fn();
  return performance.now() - start;
}

Deno.test("hostile inputs finish quickly and never throw", () => {
  const megabyte = "x".repeat(1 << 20);
  const hostile = [
    "{".repeat(1 << 20),
    `${megabyte}\\boxed{${"{".repeat(1000)}`,
    `\\boxed{${"{".repeat(10_000)}1${"}".repeat(10_000)}}`,
    `\\boxed{${"(".repeat(10_000)}1${")".repeat(10_000)}}`,
    `\\boxed{${"-".repeat(10_000)}1}`,
    `\\boxed{${"\\frac".repeat(5000)}}`,
    `\\boxed{${"\\sqrt".repeat(5000)}2}`,
    `\\boxed{${"1,".repeat(100_000)}1}`,
    `\\boxed{${"\\pm 1".repeat(1000)}}`,
    `\\boxed{${"}{".repeat(100_000)}}`,
    `${"\\boxed{1}".repeat(100_000)}`,
    `\\boxed{${"😀é\u0000".repeat(100_000)}}`,
    `\\boxed ${".".repeat(200_000)}x`, // once quadratic: /[.,]+$/ on a long run of dots
    `\\boxed{${";.".repeat(200_000)}x}`,
    `\\boxed{${"x9".repeat(495)}}`, // 495-factor product: gcd cost once made this 0.3 s
    "\\boxed{10^{10^{10}}}",
    "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}",
    "\\boxed{999999!}",
    "\\boxed{x^{99999999}}",
    "\\boxed{\\binom{5000}{2500}}",
    "\\boxed{1e9999}",
    `\\boxed{${"(1,".repeat(300)}1${")".repeat(300)}}`,
    `\\boxed{${"9".repeat(999)}}`,
  ];
  for (const text of hostile) {
    for (const truth of ["1", "x^{99999998}", "(1,2)", "10^{10^{10}}"]) {
      const ms = timed(() => {
        computeReward(text, truth);
        formatReward([text]);
      });
      assert.ok(ms < 2000, `${ms.toFixed(0)} ms on ${text.slice(0, 40)}`);
    }
  }
  assert.equal(computeReward("\\boxed{10^{10^{10}}}", "10^{10^{10}+1}").status, "wrong");
});

Deno.test("scorePhase() runs the verifier once per completion and agrees with computeReward()", () => {
  const texts = ["\\boxed{4}", "\\boxed{5}", "no idea", "so \\boxed{\\frac{8}{2}}."];
  const answers = ["4", "4", "4", "4"];
  const reward = {
    reward_functions: ["accuracy" as const, "format" as const],
    reward_weights: [1, 0.5],
    reward_correct: 2,
    reward_wrong: -1,
    reward_no_answer: -3,
  };
  const calls: string[] = [];
  const scores = scorePhase({ texts, answers }, {
    ...reward,
    verify: (text, answer, rewards) => {
      calls.push(text);
      return computeReward(text, answer, rewards);
    },
  });
  assert.deepEqual(calls, texts);
  const verdicts = texts.map((t, i) => computeReward(t, answers[i], reward));
  assert.deepEqual(scores.perFunction.accuracy, verdicts.map((v) => v.reward));
  assert.deepEqual(scores.perFunction.format, formatReward(texts));
  assert.deepEqual(scores.rewards, [2.5, -0.5, -3, 2.5]);
  assert.deepEqual(scores.status, verdicts.map((v) => v.status));
  assert.deepEqual(scores.predicted, ["4", "5", null, "\\frac{8}{2}"]);
  assert.deepEqual(scorePhase({ texts, answers }, reward), scores);
  assert.throws(() => scorePhase({ texts, answers: [] }, reward), {
    name: "RangeError",
    message: /0 answers for 4 completions/,
  });
});

Deno.test("computeReward() and accuracyReward() take the config's reward keys", () => {
  const config = { reward_correct: 2, reward_wrong: 0, reward_no_answer: -3 };
  assert.equal(computeReward("\\boxed{1}", "1", config).reward, 2);
  assert.equal(computeReward("\\boxed{2}", "1", config).reward, 0);
  assert.deepEqual(accuracyReward(["\\boxed{1}", "1"], ["1", "1"], config), [2, -3]);
  assert.equal(computeReward("1", "1", { reward_wrong: 0 }).reward, -0.5);
  assert.throws(() => computeReward("1", "1", { reward_no_answer: Infinity }), {
    name: "RangeError",
    message: /reward_no_answer/,
  });
});
