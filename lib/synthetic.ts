/**
 * Synthetic grade-school word problems with short, regular step-by-step solutions, for training a
 * tiny character-level model. Every problem takes one to three integer steps `a op b = c`
 * (`+ - * /`, exact division only), every intermediate and final result is a non-negative integer,
 * and the solution ends `The answer is \boxed{N}.`, e.g.
 *
 * ```text
 * Q: Tom buys 4 pens at $3 each and a bag for $9. How much does Tom spend?
 * A: 4 * 3 = 12. 12 + 9 = 21. The answer is \boxed{21}.
 * ```
 *
 * Deterministic: the same options give the same problems (PRNG: {@linkcode mulberry32}).
 *
 * @module
 */
import { mulberry32 } from "./data.ts";

/** Inclusive integer ranges the operands are drawn from. */
export interface SyntheticRanges {
  /** Counts, prices, ages and amounts that are added or subtracted. */
  add: [number, number];
  /** Factors, divisors and quotients (multiplication and division). */
  mul: [number, number];
}

/**
 * Default operand ranges: mostly one- and two-digit numbers, times tables up to 10, so answers
 * stay below a few hundred and a tiny model can learn the arithmetic.
 */
export const DEFAULT_RANGES: Readonly<SyntheticRanges> = Object.freeze({
  add: [2, 50] as [number, number],
  mul: [2, 10] as [number, number],
});

/** The problem templates, each with one to three variants. */
export const SYNTHETIC_TEMPLATES = [
  "buy",
  "share",
  "ages",
  "speed",
  "give_away",
  "combo",
  "savings",
] as const;

/** One of {@linkcode SYNTHETIC_TEMPLATES}. */
export type SyntheticTemplate = typeof SYNTHETIC_TEMPLATES[number];

/** A generated problem. */
export interface SyntheticProblem {
  /** The word problem, one line of at most ~120 characters (with the default ranges). */
  question: string;
  /** The final answer, a non-negative integer. */
  answer: number;
  /** `a op b = c.` steps, then `The answer is \boxed{N}.` (or `The answer is N.` when unboxed). */
  solution: string;
  /** Which template made it. */
  template: SyntheticTemplate;
  /** False for the format-defect variant (no `\boxed{}`), see `dropBoxFraction`. */
  boxed: boolean;
}

/** Options for {@linkcode generateProblems} and {@linkcode generateSplits}. */
export interface GenerateOptions {
  /** PRNG seed (integer). */
  seed: number;
  /** Operand ranges; missing keys take {@linkcode DEFAULT_RANGES}. */
  ranges?: Partial<SyntheticRanges>;
  /**
   * Fraction in [0, 1] of solutions that end `The answer is N.` without `\boxed{}` (default 0), a
   * format defect for a second SFT stage. Drawn from its own PRNG stream, so the questions and
   * steps do not depend on it.
   */
  dropBoxFraction?: number;
}

/**
 * Every character the generator can emit, sorted: the vocabulary a character-level tokenizer must
 * cover. No newline: questions and solutions are one line each. `tests/synthetic_test.ts` checks
 * that generated text uses these characters only, and all of them.
 */
export const SYNTHETIC_CHARS = " $*+,-./0123456789=?ABEHJLMSTZ\\abcdefghiklmnopqrstuvwxy{}";

const NAMES = [
  "Tom",
  "Ann",
  "Sam",
  "Mia",
  "Ben",
  "Lily",
  "Max",
  "Zoe",
  "Leo",
  "Eva",
  "Jack",
  "Emma",
];
const ITEMS = ["apples", "pens", "books", "cards", "eggs", "cups", "toys", "stickers", "cookies"];
const THINGS = ["bag", "hat", "ball", "box", "kite"];
const VEHICLES = ["car", "bus", "train", "truck"];

type Op = "+" | "-" | "*" | "/";
type Step = [a: number, op: Op, b: number, c: number];

/** A step `a op b = c`, checked to be a non-negative integer (a bug here is a generator bug). */
function step(a: number, op: Op, b: number): Step {
  const c = op === "+" ? a + b : op === "-" ? a - b : op === "*" ? a * b : a / b;
  if (!Number.isInteger(c) || c < 0) throw new Error(`synthetic step ${a} ${op} ${b} = ${c}`);
  return [a, op, b, c];
}

/** The random draws a template needs. */
class Draw {
  constructor(private random: () => number, readonly ranges: SyntheticRanges) {}
  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.random() * (hi - lo + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)];
  }
  add(): number {
    return this.int(this.ranges.add[0], this.ranges.add[1]);
  }
  mul(): number {
    return this.int(this.ranges.mul[0], this.ranges.mul[1]);
  }
  /** An amount in the add range, clipped to at most `max` (>= 0). */
  addUpTo(max: number): number {
    return this.int(Math.min(this.ranges.add[0], max), Math.min(this.ranges.add[1], max));
  }
  /** Two different names. */
  names(): [string, string] {
    const first = this.pick(NAMES);
    let second = this.pick(NAMES);
    while (second === first) second = this.pick(NAMES);
    return [first, second];
  }
}

type Made = { question: string; steps: Step[] };

const TEMPLATES: Record<SyntheticTemplate, (d: Draw) => Made> = {
  buy(d) {
    const n = d.pick(NAMES), items = d.pick(ITEMS), a = d.mul(), p = d.mul();
    if (d.int(0, 1) === 0) {
      return {
        question: `${n} buys ${a} ${items} at $${p} each. How much does ${n} spend?`,
        steps: [step(a, "*", p)],
      };
    }
    const thing = d.pick(THINGS), q = d.add(), x = step(a, "*", p);
    return {
      question:
        `${n} buys ${a} ${items} at $${p} each and a ${thing} for $${q}. How much does ${n} spend?`,
      steps: [x, step(x[3], "+", q)],
    };
  },
  share(d) {
    const n = d.pick(NAMES), items = d.pick(ITEMS);
    if (d.int(0, 1) === 0) {
      const k = d.mul(), q = d.mul(), t = k * q;
      return {
        question: `${n} shares ${t} ${items} equally among ${k} friends. ` +
          `How many ${items} does each friend get?`,
        steps: [step(t, "/", k)],
      };
    }
    const b = d.mul(), c = d.mul(), x = step(b, "*", c);
    // b and c themselves divide b * c, so there is always a divisor in the mul range.
    const divisors = [];
    for (let k = d.ranges.mul[0]; k <= d.ranges.mul[1]; k++) if (x[3] % k === 0) divisors.push(k);
    const k = d.pick(divisors);
    return {
      question: `${n} has ${b} bags of ${c} ${items} and shares them equally among ${k} friends. ` +
        `How many ${items} does each friend get?`,
      steps: [x, step(x[3], "/", k)],
    };
  },
  ages(d) {
    const [n, m] = d.names();
    const variant = d.int(0, 2);
    if (variant === 0) {
      const y = d.add(), r = d.add(), a = y + r;
      return {
        question: `${n} is ${a} years old. How old was ${n} ${y} years ago?`,
        steps: [step(a, "-", y)],
      };
    }
    if (variant === 1) {
      const a = d.add(), older = d.add(), y = d.add(), x = step(a, "+", older);
      return {
        question: `${n} is ${a} years old. ${m} is ${older} years older. ` +
          `How old will ${m} be in ${y} years?`,
        steps: [x, step(x[3], "+", y)],
      };
    }
    const a = d.mul(), k = d.mul(), y = d.add(), x = step(a, "*", k);
    return {
      question: `${n} is ${a} years old. ${m} is ${k} times as old. ` +
        `How old will ${m} be in ${y} years?`,
      steps: [x, step(x[3], "+", y)],
    };
  },
  speed(d) {
    const v = d.pick(VEHICLES), s = d.mul(), t = d.mul();
    const variant = d.int(0, 2);
    if (variant === 0) {
      return {
        question: `A ${v} goes ${s} km per hour for ${t} hours. How far does it go?`,
        steps: [step(s, "*", t)],
      };
    }
    if (variant === 1) {
      return {
        question: `A ${v} goes ${s * t} km in ${t} hours. How many km does it go per hour?`,
        steps: [step(s * t, "/", t)],
      };
    }
    const e = d.add(), x = step(s, "*", t);
    return {
      question: `A ${v} goes ${s} km per hour for ${t} hours, then ${e} km more. ` +
        `How far does it go in total?`,
      steps: [x, step(x[3], "+", e)],
    };
  },
  give_away(d) {
    const [n, m] = d.names(), items = d.pick(ITEMS);
    if (d.int(0, 1) === 0) {
      const b = d.add(), r = d.add(), a = b + r;
      return {
        question: `${n} has ${a} ${items} and gives ${b} to ${m}. How many ${items} are left?`,
        steps: [step(a, "-", b)],
      };
    }
    let p = d.pick(NAMES);
    while (p === n || p === m) p = d.pick(NAMES);
    const b = d.add(), c = d.add(), r = d.add(), a = b + c + r, x = step(a, "-", b);
    return {
      question: `${n} has ${a} ${items}, gives ${b} to ${m} and ${c} to ${p}. ` +
        `How many ${items} are left?`,
      steps: [x, step(x[3], "-", c)],
    };
  },
  combo(d) {
    const n = d.pick(NAMES), items = d.pick(ITEMS);
    const variant = d.int(0, 2);
    if (variant === 0) {
      const a = d.mul(), c = d.mul(), x = step(a, "*", c), g = d.addUpTo(x[3]);
      return {
        question: `${n} buys ${a} packs of ${c} ${items} and gives away ${g}. ` +
          `How many ${items} are left?`,
        steps: [x, step(x[3], "-", g)],
      };
    }
    if (variant === 1) {
      const thing = d.pick(THINGS), a = d.mul(), p = d.mul(), q = d.add(), r = d.add();
      const x = step(a, "*", p), y = step(x[3], "+", q), m = y[3] + r;
      return {
        question: `${n} has $${m}. ${n} buys ${a} ${items} at $${p} each and a ${thing} ` +
          `for $${q}. How much money is left?`,
        steps: [x, y, step(m, "-", y[3])],
      };
    }
    const k = d.mul(), q = d.mul(), t = Math.max(2, k * q), a = d.int(1, t - 1);
    return {
      question: `${n} has ${a} ${items} and buys ${t - a} more, then shares them equally ` +
        `among ${k} friends. How many does each friend get?`,
      steps: [step(a, "+", t - a), step(t, "/", k)],
    };
  },
  savings(d) {
    const n = d.pick(NAMES), w = d.mul(), k = d.mul(), x = step(w, "*", k);
    if (d.int(0, 1) === 0) {
      const s = d.addUpTo(x[3]);
      return {
        question: `${n} saves $${w} a week for ${k} weeks, then spends $${s}. How much is left?`,
        steps: [x, step(x[3], "-", s)],
      };
    }
    const m = d.add();
    return {
      question: `${n} has $${m} and saves $${w} a week for ${k} weeks. ` +
        `How much does ${n} have now?`,
      steps: [x, step(x[3], "+", m)],
    };
  },
};

/** Checks options and returns the full ranges. */
function resolveOptions(options: GenerateOptions): { ranges: SyntheticRanges; drop: number } {
  if (!Number.isInteger(options.seed)) {
    throw new RangeError(`Expected seed to be an integer but found ${options.seed}`);
  }
  const ranges: SyntheticRanges = {
    add: options.ranges?.add ?? DEFAULT_RANGES.add,
    mul: options.ranges?.mul ?? DEFAULT_RANGES.mul,
  };
  for (const key of ["add", "mul"] as const) {
    const [lo, hi] = ranges[key];
    if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 1 || hi < lo || hi > 10000) {
      throw new RangeError(
        `Expected ranges.${key} to be integers [lo, hi] with 1 <= lo <= hi <= 10000 but found [${lo}, ${hi}]`,
      );
    }
  }
  const drop = options.dropBoxFraction ?? 0;
  if (!(drop >= 0 && drop <= 1)) {
    throw new RangeError(`Expected dropBoxFraction to be in [0, 1] but found ${drop}`);
  }
  return { ranges, drop };
}

/** The solution text: steps, then the final sentence. */
function formatSolution(steps: Step[], boxed: boolean): string {
  const answer = steps[steps.length - 1][3];
  const work = steps.map(([a, op, b, c]) => `${a} ${op} ${b} = ${c}.`).join(" ");
  return `${work} The answer is ${boxed ? `\\boxed{${answer}}` : answer}.`;
}

/** An endless stream of problems for the given options. */
function* problemStream(options: GenerateOptions): Generator<SyntheticProblem> {
  const { ranges, drop } = resolveOptions(options);
  const random = mulberry32(options.seed);
  const boxRandom = mulberry32(options.seed ^ 0x5bd1e995); // separate stream: see dropBoxFraction
  const draw = new Draw(random, ranges);
  while (true) {
    const template = draw.pick(SYNTHETIC_TEMPLATES);
    const { question, steps } = TEMPLATES[template](draw);
    const boxed = !(boxRandom() < drop);
    yield {
      question,
      answer: steps[steps.length - 1][3],
      solution: formatSolution(steps, boxed),
      template,
      boxed,
    };
  }
}

/**
 * Generates `n` problems (templates drawn uniformly; duplicates possible).
 *
 * @param n How many problems (integer >= 0).
 * @param options Seed, operand ranges, `dropBoxFraction`.
 * @returns The problems; the same options always give the same list.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { generateProblems } from "./synthetic.ts";
 * const [p] = generateProblems(1, { seed: 1 });
 * assert.ok(p.solution.endsWith(`The answer is \\boxed{${p.answer}}.`));
 * assert.deepEqual(generateProblems(1, { seed: 1 }), [p]);
 * ```
 */
export function generateProblems(n: number, options: GenerateOptions): SyntheticProblem[] {
  if (!Number.isInteger(n) || n < 0) {
    throw new RangeError(`Expected n to be an integer >= 0 but found ${n}`);
  }
  const out: SyntheticProblem[] = [];
  for (const problem of problemStream(options)) {
    if (out.length >= n) break;
    out.push(problem);
  }
  return out;
}

/**
 * Generates a test split and a train split with no repeated question inside or across them. The
 * test split is drawn first, so it stays the same when only the train size changes.
 *
 * @param sizes Number of problems in each split.
 * @param options Seed, operand ranges, `dropBoxFraction`.
 * @returns `{ train, test }`.
 * @throws {RangeError} When the ranges are too narrow to give that many distinct questions.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { generateSplits } from "./synthetic.ts";
 * const { train, test } = generateSplits({ train: 20, test: 5 }, { seed: 3 });
 * const seen = new Set(test.map((p) => p.question));
 * assert.ok(train.every((p) => !seen.has(p.question)));
 * ```
 */
export function generateSplits(
  sizes: { train: number; test: number },
  options: GenerateOptions,
): { train: SyntheticProblem[]; test: SyntheticProblem[] } {
  for (const key of ["train", "test"] as const) {
    if (!Number.isInteger(sizes[key]) || sizes[key] < 0) {
      throw new RangeError(`Expected sizes.${key} to be an integer >= 0 but found ${sizes[key]}`);
    }
  }
  const wanted = sizes.train + sizes.test;
  const maxDraws = 20 * wanted + 1000;
  const seen = new Set<string>();
  const test: SyntheticProblem[] = [];
  const train: SyntheticProblem[] = [];
  let draws = 0;
  for (const problem of problemStream(options)) {
    if (test.length + train.length >= wanted) break;
    if (++draws > maxDraws) {
      throw new RangeError(
        `Cannot generate ${wanted} distinct problems: only ${seen.size} in ${maxDraws} draws; widen ranges`,
      );
    }
    if (seen.has(problem.question)) continue;
    seen.add(problem.question);
    (test.length < sizes.test ? test : train).push(problem);
  }
  return { train, test };
}
