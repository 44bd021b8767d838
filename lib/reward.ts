/**
 * Rule-based reward verifier for math answers: pull the last `\boxed{...}` out of a completion,
 * decide whether it is equivalent to the ground truth, and turn that into the seed's
 * +1 / -1 / -0.5 reward (seed `utils/reward_utils.py` `compute_reward`).
 *
 * Equivalence follows the ideas of Math-Verify, the Qwen2.5-Math grader and the PRM800K grader
 * (normalise LaTeX, then compare structure, then compare values) without their code:
 *
 * 1. Normalise both strings (`\dfrac` → `\frac`, drop `\left`/`\right`, `\!`, `\,`, `\$`, `\%`,
 *    `^\circ`, trailing `\text{units}`, thousands separators) and compare them as strings.
 * 2. Parse both into structure (lib/_reward_answers.ts): text, number/expression, `name = ...`,
 *    equation, inequality, ratio, unordered list or set (`2, -3`, `-12; -11`, `1 and 2`, `\{...\}`,
 *    `a \pm b`), tuple or interval (ordered; brackets must match; `-2 \le x \le 7` is one), union
 *    of intervals, matrix, base-n numeral (`204_5`).
 * 3. Compare expressions by evaluation with a hand-written evaluator of a LaTeX subset
 *    (lib/_reward_latex.ts): exact rational arithmetic while it stays rational, doubles once it
 *    involves `\pi`, roots of non-squares or functions. Free variables are substituted with three
 *    fixed rational points (polynomial identity testing), so `x^3+3x-6` equals `3x+x^3-6`.
 *
 * Tolerance (no false positives):
 * - If either side is an exact integer, equality is exact: 13535 never equals 13536, and 5 equals
 *   `5.00` or `\frac{10}{2}` but not `4.9999999`. Against an irrational value (`(\sqrt2)^2`), an
 *   integer n allows round-off only: |x - n| <= 1e-9 * max(1, |n|).
 * - Otherwise values are equal when |a - b| <= 1e-6 * max(|a|, |b|) (relative tolerance 1e-6).
 *
 * Why not `@cortex-js/compute-engine`: measured here (Deno 2.9.6), it costs ~300 ms to import and
 * construct and ~0.2 ms per warm comparison (2-17 ms for the first ones), cannot be interrupted,
 * and returned `undefined` for `(a+5)(b+2)` vs its expansion. Our evaluator is bounded by
 * construction (input length, parser depth, rational size caps) and keeps the verifier above
 * 5,000 completions/s on one core.
 *
 * @module
 */

import type { Config } from "./config.ts";
import { answersEqual, normalize, parseAnswer, percentOf, squash } from "./_reward_answers.ts";
import { finalBoxes, lastBox } from "./_reward_boxes.ts";
import { RELATIVE_TOLERANCE } from "./_reward_latex.ts";

/**
 * Relative tolerance (1e-6) for comparing non-integer values; integers always compare exactly.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { isEquivalent, REWARD_RELATIVE_TOLERANCE } from "./reward.ts";
 * assert.equal(REWARD_RELATIVE_TOLERANCE, 1e-6);
 * assert.ok(isEquivalent("1.41421356", "\\sqrt2")); // off by 2e-9 relative
 * assert.ok(!isEquivalent("1.4142", "\\sqrt2")); // off by 1e-5 relative
 * ```
 */
export const REWARD_RELATIVE_TOLERANCE: number = RELATIVE_TOLERANCE;

/** Answers longer than this (after normalisation) are compared as strings only. */
const MAX_PARSE_CHARS = 1000;
/** Answers longer than this are not even normalised: compared verbatim (no real answer is). */
const MAX_RAW_CHARS = 4096;

// ---------------------------------------------------------------------------------------------
// Extraction

/**
 * The content of the last `\boxed{...}` (or `\fbox{...}`, or `\boxed 5`) in `text`, with nested
 * braces kept intact. Escaped braces `\{ \}` do not count as nesting.
 *
 * When the final answer holds several boxes joined only by connectors (`,`, `;`, `and`, `or`),
 * math delimiters, spacing, `\text{...}`, labels such as `y_2 =` and at most two other words,
 * within 80 characters of each other (`\boxed{1} and \boxed{2}`, `\boxed{(2, 2)} \quad
 * \text{and} \quad \boxed{(6, 2)}`), their contents are joined with `; ` into one answer list.
 * Boxes further apart, or separated by a revision (`\boxed{3}, finally \boxed{4}`), a full stop
 * or nothing but spaces, leave the last box alone.
 *
 * Runs in linear time on any input.
 *
 * @param text A model completion.
 * @returns The boxed content, trimmed; `null` when there is no box, the last box is empty, or its
 *   braces never close (a truncated completion).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { extractAnswer } from "./reward.ts";
 * assert.equal(extractAnswer("so \\boxed{1} or rather \\boxed{\\frac{1}{2}}."), "\\frac{1}{2}");
 * assert.equal(extractAnswer("$x = \\boxed{1}$ and $x = \\boxed{-2}$."), "1; -2");
 * assert.equal(extractAnswer("no box here"), null);
 * assert.equal(extractAnswer("\\boxed{\\frac{1}{2}"), null);
 * ```
 */
export function extractAnswer(text: string): string | null {
  const boxes = finalBoxes(text);
  if (boxes === null || boxes === "unclosed") return null;
  const contents = boxes.map((box) => box.content.trim()).filter((c) => c !== "");
  return contents.length === 0 ? null : contents.join("; ");
}

function groundTruthAnswer(groundTruth: string): string {
  // Accept a raw GSM8K `answer` field (`... #### 18`) or a MATH solution with a box.
  const hashes = groundTruth.lastIndexOf("####");
  if (hashes >= 0) return groundTruth.slice(hashes + 4).trim();
  if (groundTruth.includes("\\boxed") || groundTruth.includes("\\fbox")) {
    return extractAnswer(groundTruth) ?? groundTruth;
  }
  return groundTruth;
}

/**
 * Whether a predicted answer is mathematically equivalent to the ground truth.
 *
 * Handles GSM8K numbers (`1,234`, `\$18.00`, `18 dollars`), units and `\text{...}` words, `\%`,
 * degrees, decimals vs fractions (`0.5`, `1/2`, `\frac12`, `\dfrac{1}{2}`), mixed numbers
 * (`1\frac{4}{5}`), roots, `\pi`, scientific notation, `x = 5` vs `5` and other named answers
 * (`(p,q)=(3,2)` vs `(3,2)`, `|AB| = 1`; several named values pair by name), tuples and intervals
 * (ordered, brackets must match), inequalities (`-x > -1` vs `x < 1` vs `(-\infty, 1)`), ratios
 * (`11:21`), unordered lists and sets (`2, -3` vs `-3, 2`, `1 \pm \sqrt2`, `-12; -11`,
 * `21, 16 or 11`; `32, 349` is a list, `32,349` a number), unions of intervals, matrices, base-n
 * numerals, multiple-choice letters (`\text{(C)}` vs `C`) and plain text (case-insensitive).
 * Expressions with variables are compared at three exact rational sample points.
 *
 * Numeric tolerance: exact when either side is an exact integer (13535 ≠ 13536); an integer
 * against an irrational value allows |x - n| <= 1e-9 * max(1, |n|); otherwise relative tolerance
 * 1e-6 ({@linkcode REWARD_RELATIVE_TOLERANCE}): |a - b| <= 1e-6 * max(|a|, |b|). A percent answer
 * also matches its value divided by 100 (`50\%` vs `0.5`).
 *
 * Never throws; time is bounded: answers over 1,000 characters after normalisation compare as
 * strings only, and over 4,096 characters verbatim.
 *
 * @param predicted The extracted answer (see {@linkcode extractAnswer}).
 * @param truth The reference answer.
 * @returns true when equivalent.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { isEquivalent } from "./reward.ts";
 * assert.ok(isEquivalent("\\frac{\\sqrt{3}}{2}", "\\sqrt3/2"));
 * assert.ok(isEquivalent("-3, 2", "2,-3"));
 * assert.ok(!isEquivalent("13535", "13536"));
 * assert.ok(!isEquivalent("(2, 1)", "(1, 2)"));
 * assert.ok(isEquivalent("(p,q)=(3,2)", "(3,2)"));
 * assert.ok(isEquivalent("-2 \\le x \\le 7", "x \\in [-2,7]"));
 * assert.ok(!isEquivalent("32, 349", "32349"));
 * ```
 */
export function isEquivalent(predicted: string, truth: string): boolean {
  if (predicted.length > MAX_RAW_CHARS || truth.length > MAX_RAW_CHARS) {
    return predicted.trim() === truth.trim() && predicted.trim() !== "";
  }
  const p = normalize(predicted), t = normalize(truth);
  if (p.text === "" || t.text === "") return false;
  if (squash(p.text) === squash(t.text)) return true;
  if (p.text.length > MAX_PARSE_CHARS || t.text.length > MAX_PARSE_CHARS) return false;
  const pa = parseAnswer(p.text, 0), ta = parseAnswer(t.text, 0);
  if (answersEqual(pa, ta)) return true;
  const pp = p.percent ? percentOf(pa) : null;
  if (pp !== null && answersEqual(pp, ta)) return true;
  const tp = t.percent ? percentOf(ta) : null;
  return tp !== null && answersEqual(pa, tp);
}

// ---------------------------------------------------------------------------------------------
// Rewards

/** Reward values for the three outcomes under the config's keys (the `reward` section). */
export type RewardConfig = Pick<
  Config["reward"],
  "reward_correct" | "reward_wrong" | "reward_no_answer"
>;

/** Reward values for the three outcomes, short names (same as {@linkcode RewardConfig}'s). */
export interface RewardValues {
  /** Reward when the boxed answer is equivalent to the ground truth (seed default 1.0). */
  correct: number;
  /** Reward when the boxed answer is wrong (seed default -1.0). */
  wrong: number;
  /** Reward when there is no closed `\boxed{}` (seed default -0.5). */
  noAnswer: number;
}

/**
 * The seed's default rewards: +1 correct, -1 wrong, -0.5 no answer.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { DEFAULT_REWARDS } from "./reward.ts";
 * assert.deepEqual(DEFAULT_REWARDS, { correct: 1, wrong: -1, noAnswer: -0.5 });
 * ```
 */
export const DEFAULT_REWARDS: Readonly<RewardValues> = Object.freeze({
  correct: 1.0,
  wrong: -1.0,
  noAnswer: -0.5,
});

/** Outcome of {@linkcode computeReward}. */
export interface RewardResult {
  reward: number;
  /** The extracted answer, or null when there was none. */
  predicted: string | null;
  correct: boolean;
  status: "correct" | "wrong" | "no_answer";
}

/**
 * Rewards per outcome as a caller gives them: the config's keys (`config.reward` itself) or
 * the short names of {@linkcode RewardValues}; missing ones default to {@linkcode DEFAULT_REWARDS}.
 */
export type RewardOptions = Partial<RewardConfig> | Partial<RewardValues>;

function checkRewards(options: RewardOptions): RewardValues {
  const given = options as Partial<RewardConfig & RewardValues>;
  const values: RewardValues = {
    correct: given.reward_correct ?? given.correct ?? DEFAULT_REWARDS.correct,
    wrong: given.reward_wrong ?? given.wrong ?? DEFAULT_REWARDS.wrong,
    noAnswer: given.reward_no_answer ?? given.noAnswer ?? DEFAULT_REWARDS.noAnswer,
  };
  const keys = { correct: "reward_correct", wrong: "reward_wrong", noAnswer: "reward_no_answer" };
  for (const key of ["correct", "wrong", "noAnswer"] as const) {
    if (!Number.isFinite(values[key])) {
      throw new RangeError(`Expected ${keys[key]} to be a finite number but found ${values[key]}`);
    }
  }
  return values;
}

/**
 * Scores one completion against its ground truth, like the seed's `compute_reward`: extract the
 * last `\boxed{}`, compare with {@linkcode isEquivalent}, and map the outcome to a reward.
 *
 * `groundTruth` may be a bare answer, a GSM8K `answer` field (the text after the last `####` is
 * used) or a solution containing `\boxed{}` (its last box is used).
 *
 * @param generated The model completion.
 * @param groundTruth The reference answer.
 * @param options Rewards per outcome ({@linkcode RewardOptions}, e.g. `config.reward`); defaults
 *   {@linkcode DEFAULT_REWARDS}.
 * @returns reward, extracted answer, correctness and status.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { computeReward } from "./reward.ts";
 * assert.deepEqual(computeReward("The answer is \\boxed{42}", "42"), {
 *   reward: 1, predicted: "42", correct: true, status: "correct",
 * });
 * assert.equal(computeReward("I think 42", "42").status, "no_answer");
 * assert.equal(computeReward("\\boxed{41}", "42", { reward_wrong: 0 }).reward, 0);
 * ```
 */
export function computeReward(
  generated: string,
  groundTruth: string,
  options: RewardOptions = {},
): RewardResult {
  const rewards = checkRewards(options);
  const predicted = extractAnswer(generated);
  if (predicted === null) {
    return { reward: rewards.noAnswer, predicted: null, correct: false, status: "no_answer" };
  }
  const correct = isEquivalent(predicted, groundTruthAnswer(groundTruth));
  return correct
    ? { reward: rewards.correct, predicted, correct, status: "correct" }
    : { reward: rewards.wrong, predicted, correct, status: "wrong" };
}

/**
 * Accuracy reward function for the trainer (TRL's reward-function idea, no tensors): one reward
 * per completion, {@linkcode computeReward} against the answer at the same index.
 *
 * @param completions Generated texts, `[B * G]`.
 * @param answers Ground truths aligned with `completions` (repeat each prompt's answer G times).
 * @param options Rewards per outcome ({@linkcode RewardOptions}, e.g. `config.reward`); defaults
 *   {@linkcode DEFAULT_REWARDS}.
 * @returns `[B * G]` rewards.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { accuracyReward } from "./reward.ts";
 * const rewards = accuracyReward(["\\boxed{4}", "\\boxed{5}", "no idea"], ["4", "4", "4"]);
 * assert.deepEqual(rewards, [1, -1, -0.5]);
 * ```
 */
export function accuracyReward(
  completions: string[],
  answers: string[],
  options: RewardOptions = {},
): number[] {
  if (completions.length !== answers.length) {
    throw new RangeError(
      `Expected one answer per completion but found ${answers.length} answers for ${completions.length} completions`,
    );
  }
  const rewards = checkRewards(options);
  return completions.map((c, i) => computeReward(c, answers[i], rewards).reward);
}

/**
 * Format reward function for the trainer: 1 when the completion contains exactly one box
 * (`\boxed{...}` or `\fbox{...}`), it closes, and only whitespace, punctuation (`. , ; : ! ?`),
 * `$` or a display-math closer (`\]`, `\)`) follow it; else 0. Linear time.
 *
 * @param completions Generated texts.
 * @returns One reward in {0, 1} per completion.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatReward } from "./reward.ts";
 * assert.deepEqual(
 *   formatReward(["so $\\boxed{4}$.", "\\boxed{4} because", "\\boxed{1} \\boxed{4}", "4"]),
 *   [1, 0, 0, 0],
 * );
 * ```
 */
export function formatReward(completions: string[]): number[] {
  return completions.map((text) => {
    let count = 0;
    for (const command of ["\\boxed", "\\fbox"]) {
      for (let i = text.indexOf(command); i >= 0; i = text.indexOf(command, i + 1)) {
        if (++count > 1) return 0;
      }
    }
    const box = lastBox(text);
    if (box === null || box === "unclosed" || text[box.end - 1] !== "}") return 0;
    return /^(?:[\s.,;:!?$]|\\\]|\\\))*$/.test(text.slice(box.end)) ? 1 : 0;
  });
}

/** One case of the reward self-test (seed `utils/reward_utils.py` `__main__`). */
export interface RewardSelfTestCase {
  generated: string;
  truth: string;
  /** Expected reward with {@linkcode DEFAULT_REWARDS}. */
  expected: number;
}

/**
 * The self-test cases shared by `deno task reward:selftest` and tests/reward_test.ts.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { computeReward, REWARD_SELF_TEST_CASES } from "./reward.ts";
 * for (const c of REWARD_SELF_TEST_CASES) {
 *   assert.equal(computeReward(c.generated, c.truth).reward, c.expected);
 * }
 * ```
 */
export const REWARD_SELF_TEST_CASES: readonly RewardSelfTestCase[] = Object.freeze([
  { generated: "The answer is \\boxed{42}", truth: "42", expected: 1.0 },
  { generated: "The answer is \\boxed{41}", truth: "42", expected: -1.0 },
  { generated: "The answer is 42", truth: "42", expected: -0.5 },
  { generated: "So the result is \\boxed{\\frac{1}{2}}", truth: "\\frac{1}{2}", expected: 1.0 },
  { generated: "We get \\boxed{{1,000}} apples", truth: "1000", expected: 1.0 },
  { generated: "Total: \\boxed{1,000}", truth: "1000", expected: 1.0 },
  { generated: "Half is \\boxed{0.5}", truth: "\\frac{1}{2}", expected: 1.0 },
  { generated: "\\boxed{\\dfrac{1}{2}}", truth: "0.5", expected: 1.0 },
  { generated: "\\boxed{0.33}", truth: "\\frac{1}{3}", expected: -1.0 },
  { generated: "It costs \\boxed{\\$18.00}", truth: "18", expected: 1.0 },
  { generated: "Truncated \\boxed{\\frac{1}{2}", truth: "\\frac{1}{2}", expected: -0.5 },
  { generated: "First \\boxed{3}, finally \\boxed{4}", truth: "4", expected: 1.0 },
  { generated: "\\boxed{2\\sqrt{2}}", truth: "\\sqrt{8}", expected: 1.0 },
]);

// ---------------------------------------------------------------------------------------------
// The score phase

/** Rewards of a rollout, one entry per completion. */
export interface Scores {
  /** Weighted sum of the reward functions (TRL `reward_weights`). */
  rewards: number[];
  /** Each reward function's raw values (logged as `rewards/<fn>/mean`). */
  perFunction: Record<string, number[]>;
  /** The verifier's verdict. */
  status: RewardResult["status"][];
  /** The extracted answer, or null. */
  predicted: (string | null)[];
}

/** What {@linkcode scorePhase} reads: the `reward` config section, and optionally a verifier. */
export type ScoreOptions =
  & Pick<
    Config["reward"],
    "reward_functions" | "reward_weights" | "reward_correct" | "reward_wrong" | "reward_no_answer"
  >
  & {
    /** The verifier, called once per completion; default {@linkcode computeReward}. */
    verify?: (completion: string, answer: string, rewards: RewardConfig) => RewardResult;
  };

/**
 * Score phase: the configured reward functions, weighted (TRL `reward_funcs` and
 * `reward_weights`). "accuracy" is the seed's verifier reward (`reward_correct`, `reward_wrong`,
 * `reward_no_answer`); "format" is 1 for exactly one `\boxed{}` at the end. The verifier runs
 * once per completion: its verdict gives the accuracy reward, the status and the answer.
 *
 * @param group `texts` (completions) and `answers` (ground truth per completion), e.g. the
 *   rollout phase's output.
 * @param reward The `reward` config section.
 * @returns Rewards, per-function values, verdicts and extracted answers.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { defaultConfig } from "./config.ts";
 * import { scorePhase } from "./reward.ts";
 * const s = scorePhase({ texts: ["\\boxed{4}", "no idea"], answers: ["4", "4"] }, defaultConfig().reward);
 * assert.deepEqual(s.rewards, [1, -0.5]);
 * assert.deepEqual(s.status, ["correct", "no_answer"]);
 * ```
 */
export function scorePhase(
  group: { texts: readonly string[]; answers: readonly string[] },
  reward: ScoreOptions,
): Scores {
  const { texts, answers } = group;
  if (texts.length !== answers.length) {
    throw new RangeError(
      `Expected one answer per completion but found ${answers.length} answers for ${texts.length} completions`,
    );
  }
  const verify = reward.verify ?? computeReward;
  const verdicts = texts.map((text, i) => verify(text, answers[i], reward));
  const perFunction: Record<string, number[]> = {};
  for (const fn of reward.reward_functions) {
    perFunction[fn] = fn === "accuracy" ? verdicts.map((v) => v.reward) : formatReward([...texts]);
  }
  const weights = reward.reward_weights ?? reward.reward_functions.map(() => 1);
  const rewards = texts.map((_, i) =>
    reward.reward_functions.reduce((s, fn, j) => s + weights[j] * perFunction[fn][i], 0)
  );
  return {
    rewards,
    perFunction,
    status: verdicts.map((v) => v.status),
    predicted: verdicts.map((v) => v.predicted),
  };
}
