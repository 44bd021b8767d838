/**
 * Small views of each phase's output for the notebooks: tables of completions and verdicts,
 * per-token log-probs and KL of sampled completions, log-prob changes across an update, and
 * evaluation breakdowns. Plain records in, plain records out (console.table-ready), except
 * {@linkcode nextTokens} and {@linkcode completionTokenLogProbs}, which run the model and read
 * back once.
 *
 * @module
 */
import { tf } from "./tf.ts";
import type { ProblemResult } from "./evaluate.ts";
import type { LinearAdapter, Qwen2Model } from "./model.ts";
import { forward } from "./model.ts";
import { completionLogProbs } from "./grpo.ts";
import { jupyterDisplay } from "./plot.ts";
import type { TokenValue } from "./plot.ts";
import type { RewardResult } from "./reward.ts";
import type { FinishReason, Rollout } from "./rollout.ts";
import { disposeBatch, toTrainingBatch } from "./rollout.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** The verifier's verdict on one completion. */
export type Verdict = RewardResult["status"];

/** One candidate next token. */
export interface TopToken {
  /** 1 = most likely. */
  rank: number;
  id: number;
  /** The decoded token (special tokens shown as themselves). */
  token: string;
  /** softmax(logits) at the last position. */
  prob: number;
}

/**
 * One forward pass over `text` (no sampling): the logits' shape and the `k` most likely next
 * tokens after the last position.
 *
 * @param model The model.
 * @param tokenizer Its tokenizer.
 * @param options `text` (encoded without special tokens), `k` (default 5), `adapter`.
 * @returns `shape` = [1, T, V] of the logits, and the top `k` tokens.
 * @example Usage
 * ```ts ignore
 * const { shape, top } = await nextTokens(model, tokenizer, { text: "Question: 2+2?\nAnswer:" });
 * ```
 */
export async function nextTokens(
  model: Qwen2Model,
  tokenizer: Pick<Tokenizer, "encode" | "decode">,
  options: { text: string; k?: number; adapter?: LinearAdapter | null },
): Promise<{ shape: number[]; top: TopToken[] }> {
  const k = options.k ?? 5;
  const ids = tokenizer.encode(options.text);
  if (ids.length === 0) throw new RangeError("Cannot run a forward pass on empty text");
  const input = tf.tensor2d([ids], [1, ids.length], "int32");
  const logits = forward(model, input, { adapter: options.adapter }); // [1, T, V]
  const shape = logits.shape;
  const { values, indices } = tf.tidy(() => {
    const last = logits.slice([0, ids.length - 1, 0], [1, 1, -1]).reshape([-1]); // [V]
    return tf.topk(tf.softmax(last), Math.min(k, shape[2]));
  });
  const [probs, top] = [await values.data(), await indices.data()]; // sync point
  tf.dispose([input, logits, values, indices]);
  return {
    shape,
    top: Array.from(top, (id, i) => ({
      rank: i + 1,
      id,
      token: tokenizer.decode([id]),
      prob: probs[i],
    })),
  };
}

/** One sampled completion, for a table. */
export interface CompletionRow {
  /** Prompt index in the batch. */
  prompt: number;
  /** Index inside the prompt's group. */
  sample: number;
  /** Completion tokens (EOS included when it ended on EOS). */
  tokens: number;
  finish: FinishReason;
  /** The decoded completion, cut to `maxChars`. */
  completion: string;
}

/**
 * A rollout as rows: which prompt and sample, how long, why it ended, and the text.
 *
 * @param rollout Completions in group order (`num_return_sequences` rows per prompt).
 * @param options `num_return_sequences`; `maxChars` cuts long texts (default 100, ending "…").
 * @returns One row per completion.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { rolloutRows } from "./inspect.ts";
 * const rows = rolloutRows({
 *   completionIds: [[1, 2], [3]], texts: ["ab", "c"], finishReasons: ["eos", "length"],
 * }, { num_return_sequences: 2 });
 * assert.deepEqual(rows[1], { prompt: 0, sample: 1, tokens: 1, finish: "length", completion: "c" });
 * ```
 */
export function rolloutRows(
  rollout: Pick<Rollout, "completionIds" | "texts" | "finishReasons">,
  options: { num_return_sequences: number; maxChars?: number },
): CompletionRow[] {
  const n = rollout.texts.length;
  const g = checkGroup(n, options.num_return_sequences);
  if (rollout.completionIds.length !== n || rollout.finishReasons.length !== n) {
    throw new RangeError(
      `Expected ${n} completionIds and finishReasons, one per text, but found ${rollout.completionIds.length} and ${rollout.finishReasons.length}`,
    );
  }
  return rollout.texts.map((text, i) => ({
    prompt: Math.floor(i / g),
    sample: i % g,
    tokens: rollout.completionIds[i].length,
    finish: rollout.finishReasons[i],
    completion: clip(text, options.maxChars ?? 100),
  }));
}

/** One scored completion, for a table. */
export interface ScoreRow {
  prompt: number;
  sample: number;
  /** The ground truth. */
  truth: string;
  /** The last `\boxed{}` content, or null. */
  predicted: string | null;
  status: Verdict;
  reward: number;
  advantage: number;
  /** Why the verifier said so, in words. */
  why: string;
}

/**
 * Why the verifier judged a completion as it did, in a few words.
 *
 * @param status The verdict.
 * @param predicted The extracted answer (null when there was none).
 * @param truth The ground truth.
 * @returns A short reason.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { verdictReason } from "./inspect.ts";
 * assert.equal(verdictReason("wrong", "12", "13"), "boxed 12 ≠ 13");
 * assert.equal(verdictReason("no_answer", null, "13"), "no boxed answer");
 * ```
 */
export function verdictReason(status: Verdict, predicted: string | null, truth: string): string {
  if (status === "no_answer" || predicted === null) return "no boxed answer";
  return status === "correct" ? `boxed ${predicted} = ${truth}` : `boxed ${predicted} ≠ ${truth}`;
}

/**
 * Scores and advantages of a rollout as rows, with the verifier's reason for each verdict.
 *
 * @param scores `rewards`, `status` and `predicted` per completion (the score phase's output).
 * @param options `answers` (ground truth per completion), `advantages` per completion and
 *   `num_return_sequences`.
 * @returns One row per completion.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { scoreRows } from "./inspect.ts";
 * const rows = scoreRows(
 *   { rewards: [1, -1], status: ["correct", "wrong"], predicted: ["4", "5"] },
 *   { answers: ["4", "4"], advantages: [0.707, -0.707], num_return_sequences: 2 },
 * );
 * assert.equal(rows[1].why, "boxed 5 ≠ 4");
 * ```
 */
export function scoreRows(
  scores: { rewards: number[]; status: Verdict[]; predicted: (string | null)[] },
  options: { answers: string[]; advantages: number[]; num_return_sequences: number },
): ScoreRow[] {
  const n = scores.rewards.length;
  const g = checkGroup(n, options.num_return_sequences);
  if (scores.status.length !== n || scores.predicted.length !== n) {
    throw new RangeError(
      `Expected ${n} statuses and predictions, one per reward, but found ${scores.status.length} and ${scores.predicted.length}`,
    );
  }
  if (options.answers.length !== n || options.advantages.length !== n) {
    throw new RangeError(
      `Expected ${n} answers and advantages, one per reward, but found ${options.answers.length} and ${options.advantages.length}`,
    );
  }
  return scores.rewards.map((reward, i) => ({
    prompt: Math.floor(i / g),
    sample: i % g,
    truth: options.answers[i],
    predicted: scores.predicted[i],
    status: scores.status[i],
    reward,
    advantage: round(options.advantages[i], 4),
    why: verdictReason(scores.status[i], scores.predicted[i], options.answers[i]),
  }));
}

/**
 * Per-token log-probabilities of each sampled completion under the model (with or without an
 * adapter): the batch the update would build ({@linkcode toTrainingBatch}), one
 * {@linkcode completionLogProbs} pass, one read, each row cut to its completion's length.
 *
 * @param model The model.
 * @param rows Prompt and completion ids per row.
 * @param options `padTokenId`, `temperature` (as in training: logits / T) and `adapter`
 *   (null = the reference model).
 * @returns One array of log-probs per completion, `completionIds[i].length` long.
 * @example Usage
 * ```ts ignore
 * const policy = await completionTokenLogProbs(model, groups, {
 *   padTokenId: tokenizer.padTokenId, temperature: 0.8, adapter });
 * ```
 */
export async function completionTokenLogProbs(
  model: Qwen2Model,
  rows: Pick<Rollout, "promptIds" | "completionIds" | "finishReasons">,
  options: { padTokenId: number; temperature: number; adapter: LinearAdapter | null },
): Promise<number[][]> {
  const batch = toTrainingBatch(rows, options.padTokenId);
  let logps: tf.Tensor2D | null = null;
  try {
    logps = completionLogProbs(model, {
      inputIds: batch.inputIds,
      attentionMask: batch.attentionMask,
      completionLength: batch.completionLength,
      temperature: options.temperature,
    }, { adapter: options.adapter }); // [B, C]
    const flat = await logps.data(); // sync point: the whole batch at once
    const c = batch.completionLength;
    return rows.completionIds.map((ids, b) => Array.from(flat.subarray(b * c, b * c + ids.length)));
  } finally {
    disposeBatch(batch);
    logps?.dispose();
  }
}

/**
 * Per-token KL of the policy from the reference, the k3 estimator the GRPO loss uses
 * (`exp(ref - logp) - (ref - logp) - 1`, TRL `GRPOTrainer._compute_loss`; Schulman,
 * "Approximating KL divergence", 2020). Always >= 0, and 0 where the two agree.
 *
 * @param logps Policy log-probs of the sampled tokens.
 * @param refLogps Reference log-probs of the same tokens.
 * @returns One value per token.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { perTokenKl } from "./inspect.ts";
 * const kl = perTokenKl([-1, -2], [-1, -1]);
 * assert.equal(kl[0], 0);
 * assert.ok(Math.abs(kl[1] - (Math.E - 2)) < 1e-12);
 * ```
 */
export function perTokenKl(logps: readonly number[], refLogps: readonly number[]): number[] {
  if (logps.length !== refLogps.length) {
    throw new RangeError(
      `Expected as many reference log-probs as policy log-probs but found ${refLogps.length} and ${logps.length}`,
    );
  }
  return logps.map((logp, i) => {
    const d = refLogps[i] - logp;
    return Math.exp(d) - d - 1;
  });
}

/**
 * How much each token's log-prob moved across an update: `after[t] - before[t]`.
 *
 * @param before Log-probs of one completion's tokens before the update.
 * @param after The same tokens' log-probs after it.
 * @returns One change per token (> 0: the token became more likely).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { perTokenChange } from "./inspect.ts";
 * assert.deepEqual(perTokenChange([-1, -2], [-0.5, -2.5]), [0.5, -0.5]);
 * ```
 */
export function perTokenChange(before: readonly number[], after: readonly number[]): number[] {
  if (before.length !== after.length) {
    throw new RangeError(
      `Expected as many log-probs after as before but found ${after.length} and ${before.length}`,
    );
  }
  return after.map((a, t) => a - before[t]);
}

/**
 * Pairs each token of a completion with a value, for {@linkcode tokenStripChart}.
 *
 * @param tokenizer Decodes each id on its own (special tokens kept, so EOS shows).
 * @param ids The completion's token ids.
 * @param values One value per id.
 * @returns `{ token, value }` per id.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { tokenValues } from "./inspect.ts";
 * const tokenizer = { decode: (ids: number[]) => String.fromCharCode(...ids) };
 * assert.deepEqual(tokenValues(tokenizer, [52], [-0.5]), [{ token: "4", value: -0.5 }]);
 * ```
 */
export function tokenValues(
  tokenizer: Pick<Tokenizer, "decode">,
  ids: readonly number[],
  values: readonly number[],
): TokenValue[] {
  if (ids.length !== values.length) {
    throw new RangeError(
      `Expected one value per token but found ${values.length} for ${ids.length}`,
    );
  }
  return ids.map((id, i) => ({ token: tokenizer.decode([id]), value: values[i] }));
}

/** How one completion's log-probability moved across an update. */
export interface LogProbChangeRow {
  row: number;
  advantage: number;
  tokens: number;
  /** Sum of the completion's token log-probs before the update (its sequence log-prob). */
  before: number;
  /** The same after the update. */
  after: number;
  /** after - before. */
  change: number;
  /** change / tokens. */
  perToken: number;
}

/** Mean change of the completions whose advantage has one sign. */
export interface ChangeBySign {
  advantage: "A > 0" | "A = 0" | "A < 0";
  completions: number;
  /** Mean of `change` over these completions (NaN when there are none). */
  meanChange: number;
}

/**
 * Sequence log-prob of each completion before and after an update, and the mean change by the
 * sign of its advantage. A GRPO step should raise completions with A > 0 and lower those with
 * A < 0 (clipping and KL only limit how far).
 *
 * @param before Per-token log-probs per completion before the update.
 * @param after The same after the update (same lengths).
 * @param advantages One advantage per completion.
 * @returns Per-completion rows and the three sign groups.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { logProbChanges } from "./inspect.ts";
 * const { rows, bySign } = logProbChanges([[-1, -1], [-2]], [[-0.5, -1], [-3]], [1, -1]);
 * assert.equal(rows[0].change, 0.5);
 * assert.deepEqual(bySign.map((s) => s.meanChange), [0.5, NaN, -1]);
 * ```
 */
export function logProbChanges(
  before: readonly (readonly number[])[],
  after: readonly (readonly number[])[],
  advantages: readonly number[],
): { rows: LogProbChangeRow[]; bySign: ChangeBySign[] } {
  if (before.length !== after.length || before.length !== advantages.length) {
    throw new RangeError(
      `Expected as many completions after (${after.length}) and advantages (${advantages.length}) as before (${before.length})`,
    );
  }
  const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);
  const rows = before.map((b, i) => {
    if (after[i].length !== b.length) {
      throw new RangeError(`Completion ${i}: ${b.length} tokens before, ${after[i].length} after`);
    }
    const change = sum(after[i]) - sum(b);
    return {
      row: i,
      advantage: advantages[i],
      tokens: b.length,
      before: sum(b),
      after: sum(after[i]),
      change,
      perToken: b.length > 0 ? change / b.length : 0,
    };
  });
  const signs = [["A > 0", 1], ["A = 0", 0], ["A < 0", -1]] as const;
  const bySign = signs.map(([advantage, s]) => {
    const picked = rows.filter((r) => Math.sign(r.advantage) === s);
    return {
      advantage,
      completions: picked.length,
      meanChange: sum(picked.map((r) => r.change)) / picked.length,
    };
  });
  return { rows, bySign };
}

/** Verdict counts of one category of problems. */
export interface BreakdownRow {
  category: string;
  n: number;
  correct: number;
  wrong: number;
  no_answer: number;
  accuracy: number;
}

/**
 * Counts verdicts per category (e.g. solution steps, subject, level), with an "all" row last.
 *
 * @param results Evaluation results.
 * @param category The category of a result.
 * @returns One row per category, sorted by name, then "all".
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { errorBreakdown } from "./inspect.ts";
 * const rows = errorBreakdown(
 *   [{ id: "a", status: "correct" }, { id: "b", status: "no_answer" }],
 *   (r) => r.id,
 * );
 * assert.deepEqual(rows.at(-1), { category: "all", n: 2, correct: 1, wrong: 0, no_answer: 1, accuracy: 0.5 });
 * ```
 */
export function errorBreakdown<R extends Pick<ProblemResult, "status">>(
  results: readonly R[],
  category: (result: R) => string,
): BreakdownRow[] {
  const tally = (name: string, picked: readonly R[]): BreakdownRow => {
    const count = (s: Verdict) => picked.filter((r) => r.status === s).length;
    return {
      category: name,
      n: picked.length,
      correct: count("correct"),
      wrong: count("wrong"),
      no_answer: count("no_answer"),
      accuracy: picked.length > 0 ? count("correct") / picked.length : 0,
    };
  };
  const names = [...new Set(results.map(category))].sort();
  return [
    ...names.map((name) => tally(name, results.filter((r) => category(r) === name))),
    tally("all", results),
  ];
}

/**
 * Number of arithmetic steps (`a op b = c`) in a worked solution: its count of `=` signs. The
 * demo's synthetic problems take one to three.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { solutionSteps } from "./inspect.ts";
 * assert.equal(solutionSteps("8 * 6 = 48. 48 + 32 = 80. The answer is \\boxed{80}."), 2);
 * ```
 */
export function solutionSteps(solution: string): number {
  return solution.match(/=/g)?.length ?? 0;
}

/**
 * How each problem's verdict moved between two evaluations of the same problems: a matrix with
 * one row per verdict before and one column per verdict after.
 *
 * @param before Results of the first evaluation.
 * @param after Results of the second, matched by `id`.
 * @returns Three rows (`before` = correct, wrong, no_answer) with counts per `after` verdict.
 * @throws {RangeError} When a problem is missing from `after`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { statusTransitions } from "./inspect.ts";
 * const m = statusTransitions(
 *   [{ id: "a", status: "wrong" }, { id: "b", status: "correct" }],
 *   [{ id: "b", status: "correct" }, { id: "a", status: "correct" }],
 * );
 * assert.deepEqual(m[1], { before: "wrong", correct: 1, wrong: 0, no_answer: 0 });
 * ```
 */
export function statusTransitions(
  before: readonly Pick<ProblemResult, "id" | "status">[],
  after: readonly Pick<ProblemResult, "id" | "status">[],
): { before: Verdict; correct: number; wrong: number; no_answer: number }[] {
  const later = new Map(after.map((r) => [r.id, r.status]));
  const statuses: Verdict[] = ["correct", "wrong", "no_answer"];
  const rows = statuses.map((s) => ({ before: s, correct: 0, wrong: 0, no_answer: 0 }));
  for (const r of before) {
    const next = later.get(r.id);
    if (next === undefined) {
      throw new RangeError(`Problem ${r.id} is missing from the second evaluation`);
    }
    rows[statuses.indexOf(r.status)][next]++;
  }
  return rows;
}

/** A table that a Deno Jupyter cell shows as Markdown (GitHub renders it), or as aligned text. */
export class Table {
  /** Column names, in order. */
  readonly columns: string[];
  /** Cell texts, one array per row, already formatted. */
  readonly cells: string[][];

  constructor(columns: string[], cells: string[][]) {
    this.columns = columns;
    this.cells = cells;
  }

  /** GitHub-flavoured Markdown; strings are code spans, so `$`, `*` and `\` stay literal. */
  markdown(): string {
    const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
    return [
      line(this.columns),
      line(this.columns.map(() => "---")),
      ...this.cells.map((row) => line(row.map(markdownCell))),
    ].join("\n");
  }

  /** Plain text, columns padded to their widest cell. */
  toString(): string {
    const rows = [this.columns, ...this.cells];
    const widths = this.columns.map((_, j) => Math.max(...rows.map((r) => r[j].length)));
    return rows.map((r) => r.map((c, j) => c.padEnd(widths[j])).join("  ").trimEnd()).join("\n");
  }

  /** The mime bundle a Deno Jupyter cell displays. */
  [jupyterDisplay](): Record<string, string> {
    return { "text/markdown": this.markdown(), "text/plain": this.toString() };
  }
}

/**
 * Records as a {@linkcode Table}: one row per record, `columns` in order (default: the first
 * record's keys). Integers print as they are, other numbers with `digits` decimals (default 4),
 * or in exponent form below 1e-3; null prints as `null`, a missing value as empty, a blank
 * string (a space token, say) JSON-quoted, and newlines inside text as `⏎`.
 *
 * @param records The rows.
 * @param options `columns` and `digits`.
 * @returns The table; the last expression of a notebook cell displays it.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { table } from "./inspect.ts";
 * const t = table([{ step: 1, kl: 0.000012, completion: "$3 | 4" }]);
 * assert.equal(t.toString(), "step  kl       completion\n1     1.20e-5  $3 | 4");
 * assert.match(t.markdown(), /\| 1 \| 1\.20e-5 \| `\$3 \\| 4` \|$/);
 * ```
 */
export function table(
  records: readonly object[],
  options: { columns?: readonly string[]; digits?: number } = {},
): Table {
  const columns = [...(options.columns ?? Object.keys(records[0] ?? {}))];
  const digits = options.digits ?? 4;
  const cells = records.map((record) =>
    columns.map((c) => formatValue((record as Record<string, unknown>)[c], digits))
  );
  return new Table(columns, cells);
}

function formatValue(value: unknown, digits: number): string {
  if (value === undefined) return "";
  if (typeof value === "number") {
    if (Number.isInteger(value) || !Number.isFinite(value)) return String(value);
    return Math.abs(value) < 1e-3 ? value.toExponential(2) : value.toFixed(digits);
  }
  if (typeof value === "string") {
    // A token like " " or "\n" would be an invisible cell: show it quoted.
    return value.trim() === "" ? JSON.stringify(value) : value.replace(/\n/g, "⏎");
  }
  return JSON.stringify(value) ?? String(value);
}

function markdownCell(text: string): string {
  // Numbers and empties stay bare; text goes in a code span (a longer fence when it holds a
  // backtick). GFM splits cells on | even inside code spans, hence the escape.
  if (text === "" || /^-?[\d.]+(e[-+]\d+)?$|^(NaN|-?Infinity|null|true|false)$/.test(text)) {
    return text;
  }
  const fence = text.includes("`") ? "``" : "`";
  const pad = text.startsWith("`") || text.endsWith("`") || text.startsWith(" ") ? " " : "";
  return `${fence}${pad}${text.replace(/\|/g, "\\|")}${pad}${fence}`;
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function clip(text: string, maxChars: number): string {
  return text.length <= maxChars ? text : `${text.slice(0, maxChars - 1)}…`;
}

function checkGroup(n: number, g: number): number {
  if (!Number.isInteger(g) || g < 1 || n % g !== 0) {
    throw new RangeError(
      `Cannot group ${n} completions by num_return_sequences=${g}: need a positive integer that divides ${n}`,
    );
  }
  return g;
}
