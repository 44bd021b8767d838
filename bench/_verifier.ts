/**
 * The verifier workload shared by `deno task bench:reward` and `deno task bench` (workload 5):
 * suites of (completion, answer) pairs from MATH-500 and GSM8K, a throughput loop, and hostile
 * inputs.
 *
 * @module
 */
import { computeReward } from "../lib/reward.ts";

/** A completion and the ground truth it is scored against. */
export interface Pair {
  generated: string;
  truth: string;
}

function readJsonl(path: string): Record<string, unknown>[] {
  return Deno.readTextFileSync(path).trim().split("\n").map((line) => JSON.parse(line));
}

/** Completions per second over `pairs`, repeated until `seconds` have passed. */
export function throughput(pairs: Pair[], seconds: number): { perSecond: number; n: number } {
  let n = 0;
  const start = performance.now();
  while (performance.now() - start < seconds * 1000) {
    for (const p of pairs) computeReward(p.generated, p.truth);
    n += pairs.length;
  }
  return { perSecond: n / ((performance.now() - start) / 1000), n };
}

/** Inputs built to make a verifier slow: huge, deeply nested, pathological LaTeX. */
export function hostileInputs(): [string, string][] {
  const megabyte = "x".repeat(1 << 20);
  return [
    ["1 MB of text, no box", megabyte],
    ["1 MB of '{'", "{".repeat(1 << 20)],
    ["1 MB then an unclosed box", `${megabyte}\\boxed{${"{".repeat(1000)}`],
    ["10,000 nested braces", `\\boxed{${"{".repeat(10_000)}1${"}".repeat(10_000)}}`],
    ["10,000 nested parens", `\\boxed{${"(".repeat(10_000)}1${")".repeat(10_000)}}`],
    ["10,000 unary minus", `\\boxed{${"-".repeat(10_000)}1}`],
    ["5,000 \\sqrt", `\\boxed{${"\\sqrt".repeat(5000)}2}`],
    ["100,000-item list", `\\boxed{${"1,".repeat(100_000)}1}`],
    ["200 KB of '}{'", `\\boxed{${"}{".repeat(100_000)}}`],
    ["100,000 boxes", "\\boxed{1}".repeat(100_000)],
    ["100,000 boxes joined by commas", "\\boxed{1}, ".repeat(100_000)],
    ["300-term chain of inequalities", `\\boxed{${"x < ".repeat(300)}1}`],
    ["300 items joined by `and`", `\\boxed{${"1 and ".repeat(300)}1}`],
    ["unicode box 700 KB", `\\boxed{${"😀é\u0000".repeat(100_000)}}`],
    ["\\boxed then 200,000 dots", `\\boxed ${".".repeat(200_000)}x`],
    ["400 KB of ';.'", `\\boxed{${";.".repeat(200_000)}x}`],
    ["495-factor product x9x9...", `\\boxed{${"x9".repeat(495)}}`],
    ["10^{10^{10}}", "\\boxed{10^{10^{10}}}"],
    ["tower of 2s", "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}"],
    ["999999!", "\\boxed{999999!}"],
    ["\\binom{5000}{2500}", "\\boxed{\\binom{5000}{2500}}"],
    ["x^{99999999}", "\\boxed{x^{99999999}}"],
    ["300 nested tuples", `\\boxed{${"(1,".repeat(300)}1${")".repeat(300)}}`],
    ["999-digit integer", `\\boxed{${"9".repeat(999)}}`],
    ["3 \\pm in a 1000-char sum", `\\boxed{${"1\\pm x+".repeat(3)}${"x+".repeat(480)}1}`],
    [
      "64-element set of sums",
      `\\boxed{\\{${Array.from({ length: 64 }, (_, i) => `x+${i}`).join(",")}\\}}`,
    ],
  ];
}

/**
 * The throughput suites of `deno task bench:reward`: MATH-500 solutions against their answers
 * (right), against the next problem's answer (wrong: the full structural path), and answers
 * rewritten so that only normalisation or evaluation makes them equal.
 */
export function verifierSuites(): [string, Pair[]][] {
  const math = readJsonl("data/math500/test.jsonl");
  const gsm8k = readJsonl("data/gsm8k/test.jsonl");
  const answers = math.map((r) => String(r.answer));
  return [
    [
      "MATH-500 reference solutions vs their answers",
      math.map((r) => ({ generated: String(r.solution), truth: String(r.answer) })),
    ],
    [
      "MATH-500 solutions vs the next problem's answer (wrong: full structural path)",
      math.map((r, i) => ({
        generated: String(r.solution),
        truth: answers[(i + 1) % answers.length],
      })),
    ],
    [
      "MATH-500 answers re-boxed as \\dfrac/\\left forms, same truth",
      answers.map((a) => ({
        generated: `so $\\boxed{${
          a.replace(/\\frac/g, "\\dfrac").replace(/\(/g, "\\left(")
            .replace(/\)/g, "\\right)")
        }}$.`,
        truth: a,
      })),
    ],
    [
      "MATH-500 integer and fraction answers as \\frac{2p}{2q} (equal only by evaluation)",
      answers.flatMap((a) => {
        const m = /^(-?)(?:(\d+)|\\frac\{(\d+)\}\{(\d+)\})$/.exec(a);
        if (m === null) return [];
        const [p, q] = m[2] !== undefined ? [m[2], "1"] : [m[3], m[4]];
        const doubled = `${m[1]}\\frac{${2n * BigInt(p)}}{${2n * BigInt(q)}}`;
        return [{ generated: `The answer is $\\boxed{${doubled}}$.`, truth: a }];
      }),
    ],
    [
      "GSM8K answers boxed with thousands separators",
      gsm8k.map((r) => {
        const truth = String(r.answer).split("####").pop()!.trim();
        const n = BigInt(truth.replace(/,/g, ""));
        return { generated: `The total is $\\boxed{\\$${n.toLocaleString("en-US")}}$.`, truth };
      }),
    ],
  ];
}
