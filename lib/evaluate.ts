/**
 * The "evaluate" phase: greedy accuracy (and with k samples pass@k / maj@k) of a model, with or
 * without an adapter, on held-out problems, scored by the same verifier as training.
 *
 * @module
 */
import type { Config } from "./config.ts";
import type { Example } from "./data.ts";
import type { LinearAdapter, Qwen2Model } from "./model.ts";
import { computeReward, isEquivalent } from "./reward.ts";
import { repeatGroups, rollout } from "./rollout.ts";
import type { FinishReason, GenerationOptions } from "./rollout.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { formatPrompt } from "./tokenizer.ts";

/** One problem's result. */
export interface ProblemResult {
  id: string;
  question: string;
  answer: string;
  /** First (greedy, or first sample's) completion. */
  completion: string;
  predicted: string | null;
  status: "correct" | "wrong" | "no_answer";
  reward: number;
  finish_reason: FinishReason;
  subject?: string;
  level?: number;
  /** With k samples: how many of the k were correct. */
  num_correct?: number;
  /** With k samples: whether the most frequent extracted answer is correct. */
  majority_correct?: boolean;
}

/** Aggregate scores. `accuracy_boxed` is accuracy among completions that gave an answer. */
export interface EvalSummary {
  n: number;
  accuracy: number;
  no_answer_rate: number;
  mean_reward: number;
  accuracy_boxed: number;
  mean_length: number;
  /** With k > 1 samples. */
  pass_at_k?: number;
  maj_at_k?: number;
  /** With k > 1 samples: the mean share of correct samples (unbiased pass@1). */
  pass_at_1?: number;
  k: number;
}

/** Settings of {@linkcode evaluate}. */
export interface EvalOptions {
  generation: GenerationOptions;
  reward: Pick<Config["reward"], "reward_correct" | "reward_wrong" | "reward_no_answer">;
  /** Rows per generation batch. */
  batchSize: number;
  /** Samples per problem: 1 = greedy; k > 1 = sampled (pass@k, maj@k). */
  samples?: number;
  /** Seed for sampling (k > 1). */
  seed?: number;
  adapter?: LinearAdapter | null;
  /** Called after each batch with (problems done, total). */
  onProgress?: (done: number, total: number) => void;
}

/**
 * The evaluation settings of a config: greedy generation with `eval.max_new_tokens` (or
 * `generation.max_new_tokens`), the config's rewards, `eval.eval_batch_size` rows per batch.
 * Add `adapter`, `samples` and `seed` as needed.
 *
 * @param config The `generation`, `reward` and `eval` config sections.
 * @returns Options for {@linkcode evaluate}.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { defaultConfig } from "./config.ts";
 * import { evalOptions } from "./evaluate.ts";
 * const config = defaultConfig();
 * config.eval.max_new_tokens = 64;
 * assert.equal(evalOptions(config).generation.max_new_tokens, 64);
 * ```
 */
export function evalOptions(config: {
  generation: EvalOptions["generation"];
  reward: EvalOptions["reward"];
  eval: Pick<Config["eval"], "max_new_tokens" | "eval_batch_size"> & {
    temperature?: Config["eval"]["temperature"];
  };
}): EvalOptions {
  return {
    generation: {
      ...config.generation,
      max_new_tokens: config.eval.max_new_tokens ?? config.generation.max_new_tokens,
      temperature: config.eval.temperature ?? config.generation.temperature,
    },
    reward: config.reward,
    batchSize: config.eval.eval_batch_size,
  };
}

/**
 * One line of an eval summary, for logs and notebooks.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatEval } from "./evaluate.ts";
 * const line = formatEval({ n: 2, accuracy: 0.5, no_answer_rate: 0, mean_reward: 0,
 *   accuracy_boxed: 0.5, mean_length: 10, k: 1 });
 * assert.equal(line.slice(0, 14), "accuracy 50.0%");
 * ```
 */
export function formatEval(s: EvalSummary): string {
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  const sampled = s.pass_at_k === undefined || s.maj_at_k === undefined
    ? ""
    : ` | pass@${s.k} ${pct(s.pass_at_k)} | maj@${s.k} ${pct(s.maj_at_k)}`;
  return `accuracy ${pct(s.accuracy)} | no answer ${pct(s.no_answer_rate)} | ` +
    `accuracy among boxed ${pct(s.accuracy_boxed)} | mean reward ${
      s.mean_reward.toFixed(3)
    }${sampled} | n ${s.n}`;
}

/**
 * Unbiased pass@k of one problem with c correct out of n samples (Chen et al. 2021, Codex):
 * `1 - C(n-c, k) / C(n, k)`.
 *
 * @example Usage
 * ```ts
 * import { passAtK } from "./evaluate.ts";
 * console.assert(passAtK(4, 1, 4) === 1 && passAtK(4, 0, 2) === 0);
 * ```
 */
export function passAtK(n: number, c: number, k: number): number {
  if (n - c < k) return 1;
  let p = 1;
  for (let i = n - c + 1; i <= n; i++) p *= 1 - k / i;
  return 1 - p;
}

/** The answer given most often (by equivalence), or null when none was given. */
export function majorityAnswer(predictions: (string | null)[]): string | null {
  const groups: { answer: string; count: number }[] = [];
  for (const p of predictions) {
    if (p === null) continue;
    const g = groups.find((x) => isEquivalent(p, x.answer));
    if (g) g.count++;
    else groups.push({ answer: p, count: 1 });
  }
  let best: { answer: string; count: number } | null = null;
  for (const g of groups) if (!best || g.count > best.count) best = g;
  return best?.answer ?? null;
}

/**
 * Evaluates a model on problems: greedy accuracy, no-answer rate, mean reward; with
 * `samples: k` also pass@k and maj@k.
 *
 * @param model The model.
 * @param tokenizer Its tokenizer.
 * @param examples The problems.
 * @param options Generation, reward and batching settings.
 * @returns Per-problem results and the summary.
 * @example Usage
 * ```ts ignore
 * const { summary } = await evaluate(model, tokenizer, examples, {
 *   generation: config.generation, reward: config.reward, batchSize: 64 });
 * ```
 */
export async function evaluate(
  model: Qwen2Model,
  tokenizer: Tokenizer,
  examples: Example[],
  options: EvalOptions,
): Promise<{ results: ProblemResult[]; summary: EvalSummary }> {
  const k = samplesOf(options);
  if (examples.length === 0) throw new RangeError("Expected at least one problem to evaluate");
  const perBatch = Math.max(1, Math.floor(options.batchSize / k));
  options.onProgress?.(0, examples.length); // lets a progress bar start its clock now
  const results: ProblemResult[] = [];
  let lengths = 0;
  for (let start = 0; start < examples.length; start += perBatch) {
    const chunk = examples.slice(start, start + perBatch);
    const prompts = repeatGroups(
      chunk.map((ex) => tokenizer.encode(formatPrompt(tokenizer, ex.question, options.generation))),
      k,
    );
    const out = await rollout(model, prompts, {
      tokenizer,
      adapter: options.adapter,
      sampling: {
        ...options.generation,
        greedy: k === 1,
        seed: (options.seed ?? 0) + start,
      },
    });
    chunk.forEach((ex, i) => {
      const scored = out.texts.slice(i * k, (i + 1) * k).map((t) =>
        computeReward(t, ex.answer, options.reward)
      );
      const first = scored[0];
      const result: ProblemResult = {
        id: ex.id,
        question: ex.question,
        answer: ex.answer,
        completion: out.texts[i * k],
        predicted: first.predicted,
        status: first.status,
        reward: first.reward,
        finish_reason: out.finishReasons[i * k],
      };
      if (ex.subject !== undefined) result.subject = ex.subject;
      if (ex.level !== undefined) result.level = ex.level;
      if (k > 1) {
        result.num_correct = scored.filter((s) => s.correct).length;
        const majority = majorityAnswer(scored.map((s) => s.predicted));
        result.majority_correct = majority !== null && isEquivalent(majority, ex.answer);
      }
      results.push(result);
      lengths += out.completionIds[i * k].length;
    });
    options.onProgress?.(Math.min(start + perBatch, examples.length), examples.length);
  }
  return { results, summary: summarize(results, k, lengths / results.length) };
}

/** `options.samples` (default 1), checked to be a whole number >= 1. */
function samplesOf(options: Pick<EvalOptions, "samples">): number {
  const k = options.samples ?? 1;
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`Expected samples >= 1, got ${k}`);
  return k;
}

/** Aggregates per-problem results. */
export function summarize(results: ProblemResult[], k = 1, meanLength = 0): EvalSummary {
  const n = results.length;
  const correct = results.filter((r) => r.status === "correct").length;
  const noAnswer = results.filter((r) => r.status === "no_answer").length;
  const summary: EvalSummary = {
    n,
    accuracy: correct / n,
    no_answer_rate: noAnswer / n,
    mean_reward: results.reduce((s, r) => s + r.reward, 0) / n,
    accuracy_boxed: n - noAnswer > 0 ? correct / (n - noAnswer) : 0,
    mean_length: meanLength,
    k,
  };
  if (k > 1) {
    summary.pass_at_k = results.reduce((s, r) => s + passAtK(k, r.num_correct ?? 0, k), 0) / n;
    summary.maj_at_k = results.filter((r) => r.majority_correct).length / n;
    summary.pass_at_1 = results.reduce((s, r) => s + (r.num_correct ?? 0) / k, 0) / n;
  }
  return summary;
}

/**
 * Greedy evaluation, and with `samples: k > 1` a second, sampled pass over the same problems:
 * the summary is the greedy one (accuracy, no-answer rate, accuracy among boxed answers) plus
 * the sampled pass@k, maj@k and pass@1; each result is the greedy one with the sampled
 * `num_correct` and `majority_correct`. What training logs as `eval/*`, so the curves show the
 * greedy answer next to what the policy could sample.
 *
 * @param model The model.
 * @param tokenizer Its tokenizer.
 * @param examples The problems.
 * @param options As {@linkcode evaluate}; `samples` k and the sampling `seed`; `onProgress`
 *   counts both passes (total 2n with k > 1).
 * @returns Per-problem results and the summary.
 * @example Usage
 * ```ts ignore
 * const { summary } = await evaluateGreedyAndSampled(model, tokenizer, examples, {
 *   ...evalOptions(config), samples: 8, seed: 42 });
 * console.log(summary.accuracy, summary.pass_at_k, summary.maj_at_k);
 * ```
 */
export async function evaluateGreedyAndSampled(
  model: Qwen2Model,
  tokenizer: Tokenizer,
  examples: Example[],
  options: EvalOptions,
): Promise<{ results: ProblemResult[]; summary: EvalSummary }> {
  const k = samplesOf(options); // checked before the greedy pass, not after it
  const n = examples.length;
  const greedy = await evaluate(model, tokenizer, examples, {
    ...options,
    samples: 1,
    onProgress: (done) => options.onProgress?.(done, k > 1 ? 2 * n : n),
  });
  if (k === 1) return greedy;
  const sampled = await evaluate(model, tokenizer, examples, {
    ...options,
    onProgress: (done) => options.onProgress?.(n + done, 2 * n),
  });
  const results = greedy.results.map((r, i) => ({
    ...r,
    num_correct: sampled.results[i].num_correct,
    majority_correct: sampled.results[i].majority_correct,
  }));
  const { pass_at_k, maj_at_k, pass_at_1 } = sampled.summary;
  return { results, summary: { ...greedy.summary, k, pass_at_k, maj_at_k, pass_at_1 } };
}
