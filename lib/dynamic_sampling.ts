/**
 * Dynamic sampling (DAPO, arXiv:2503.14476 §3.2; verl `RayDAPOTrainer.fit` with
 * `algorithm.filter_groups`): a group whose completions all got the same reward has advantage 0
 * everywhere and teaches nothing, so generate more batches of prompts and keep only groups with
 * a non-zero reward std until the step's prompts are filled. With `filter_groups` off this is
 * the plain rollout and score phases, once.
 *
 * @module
 */
import type { Config } from "./config.ts";
import type { Example } from "./data.ts";
import { deriveSeed } from "./data.ts";
import { groupStats } from "./grpo.ts";
import type { ScoreOptions, Scores } from "./reward.ts";
import { scorePhase } from "./reward.ts";
import type { GenerateInputs, GroupRollout } from "./rollout.ts";
import { generatePhase } from "./rollout.ts";

/** What {@linkcode dynamicSamplingPhase} reads besides the policy: the config sections. */
export interface DynamicSamplingConfig {
  generation: GenerateInputs["config"]["generation"];
  grpo: Pick<Config["grpo"], "num_return_sequences" | "filter_groups" | "max_num_gen_batches">;
  reward: ScoreOptions;
}

/** One step's training groups and what it took to draw them. */
export interface SampledGroups {
  /** The groups to train on: the step's number of prompts, G completions each. */
  group: GroupRollout;
  /** Their scores. */
  scores: Scores;
  /** Every drawn prompt with its correct completions (trained or dropped), for the data order. */
  outcomes: { id: string; correct: number; total: number }[];
  /** Generation batches drawn (verl `num_gen_batches`); 1 without filter_groups. */
  numGenBatches: number;
  /** Prompts generated for. */
  promptsDrawn: number;
  /** Completion tokens generated, over every batch. */
  tokensGenerated: number;
  /** Zero-std groups left out of the batch. */
  groupsDropped: number;
  /** Zero-std groups put back to fill the batch at max_num_gen_batches. */
  groupsFilled: number;
}

/**
 * Which groups carry signal: a reward std above 0 (TRL's `torch.isclose(std, 0)` says no at
 * |std| <= 1e-8, as {@linkcode groupStats}).
 *
 * @param rewards One reward per completion, groups of `g` contiguous.
 * @param g The group size.
 * @returns One flag per group.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { groupsWithSignal } from "./dynamic_sampling.ts";
 * assert.deepEqual(groupsWithSignal([1, 1, 1, -1, -1, -1], 2), [false, true, false]);
 * ```
 */
export function groupsWithSignal(rewards: readonly number[], g: number): boolean[] {
  return groupStats(rewards, { num_return_sequences: g }).groupStd.map((s) => Math.abs(s) > 1e-8);
}

/**
 * The groups `indices` of a rollout and its scores, in that order.
 *
 * @param group A rollout of G completions per prompt.
 * @param scores Its scores.
 * @param indices Group (prompt) indices.
 * @returns The selected rows.
 * @example Usage
 * ```ts ignore
 * const { group: kept } = selectGroups(group, scores, [0, 2]);
 * ```
 */
export function selectGroups(
  group: GroupRollout,
  scores: Scores,
  indices: readonly number[],
): { group: GroupRollout; scores: Scores } {
  const g = group.texts.length / group.examples.length;
  const rows = indices.flatMap((i) => Array.from({ length: g }, (_, j) => i * g + j));
  const pick = <T>(xs: readonly T[]): T[] => rows.map((r) => xs[r]);
  const completionIds = pick(group.completionIds);
  return {
    group: {
      promptIds: pick(group.promptIds),
      completionIds,
      texts: pick(group.texts),
      finishReasons: pick(group.finishReasons),
      samplingLogProbs: pick(group.samplingLogProbs),
      numTokens: completionIds.reduce((s, c) => s + c.length, 0),
      examples: indices.map((i) => group.examples[i]),
      answers: pick(group.answers),
    },
    scores: {
      rewards: pick(scores.rewards),
      perFunction: Object.fromEntries(
        Object.entries(scores.perFunction).map(([fn, v]) => [fn, pick(v)]),
      ),
      status: pick(scores.status),
      predicted: pick(scores.predicted),
    },
  };
}

/** Rollouts and scores one after the other, as one. */
function concatGroups(parts: { group: GroupRollout; scores: Scores }[]): {
  group: GroupRollout;
  scores: Scores;
} {
  const all = <T>(f: (p: { group: GroupRollout; scores: Scores }) => readonly T[]): T[] =>
    parts.flatMap((p) => [...f(p)]);
  const functions = Object.keys(parts[0].scores.perFunction);
  return {
    group: {
      promptIds: all((p) => p.group.promptIds),
      completionIds: all((p) => p.group.completionIds),
      texts: all((p) => p.group.texts),
      finishReasons: all((p) => p.group.finishReasons),
      samplingLogProbs: all((p) => p.group.samplingLogProbs),
      numTokens: parts.reduce((s, p) => s + p.group.numTokens, 0),
      examples: all((p) => p.group.examples),
      answers: all((p) => p.group.answers),
    },
    scores: {
      rewards: all((p) => p.scores.rewards),
      perFunction: Object.fromEntries(
        functions.map((fn) => [fn, all((p) => p.scores.perFunction[fn])]),
      ),
      status: all((p) => p.scores.status),
      predicted: all((p) => p.scores.predicted),
    },
  };
}

/**
 * Rollout and score phases with DAPO's dynamic sampling. Batch 0 is `first`, sampled with
 * `seed`; with `grpo.filter_groups` each later batch b comes from `next()` and is sampled with
 * `deriveSeed(seed, b)`. Groups with a non-zero reward std are kept in draw order until
 * `perStep` are kept (the rest of that batch is dropped, as verl truncates), or until
 * `max_num_gen_batches` batches were drawn (0 = no limit); then the zero-std groups drawn
 * last fill the batch (differs from verl, which raises an error there).
 *
 * @param policy Model, tokenizer, adapter and config sections (generation, grpo, reward).
 * @param first The step's first batch of prompts.
 * @param options `seed` of batch 0; `perStep` prompts to train on (default `first.length`);
 *   `next` gives the next batch of prompts; `onToken` after every sampled token.
 * @returns The training groups with their scores and what the draw took.
 * @example Usage
 * ```ts ignore
 * const sampled = await dynamicSamplingPhase(ctx, batch, { seed: 1, next: () => draw() });
 * console.log(sampled.numGenBatches, sampled.groupsDropped);
 * ```
 */
export async function dynamicSamplingPhase(
  policy: Omit<GenerateInputs, "config"> & { config: DynamicSamplingConfig },
  first: Example[],
  options: {
    seed: number;
    perStep?: number;
    next?: () => Example[];
    onToken?: (done: number, total: number) => void;
  },
): Promise<SampledGroups> {
  const { grpo, reward } = policy.config;
  const g = grpo.num_return_sequences;
  const perStep = options.perStep ?? first.length;
  const kept: { group: GroupRollout; scores: Scores }[] = [];
  const dropped: { group: GroupRollout; scores: Scores }[] = [];
  const outcomes: SampledGroups["outcomes"] = [];
  let numKept = 0;
  let promptsDrawn = 0;
  let tokensGenerated = 0;
  let batch = 0;
  for (let examples = first;; examples = options.next!()) {
    const group = await generatePhase(policy, examples, {
      seed: batch === 0 ? options.seed : deriveSeed(options.seed, batch),
      onToken: options.onToken,
    });
    const scores = scorePhase(group, reward);
    batch++;
    promptsDrawn += examples.length;
    tokensGenerated += group.numTokens;
    examples.forEach((ex, i) => {
      const status = scores.status.slice(i * g, (i + 1) * g);
      outcomes.push({ id: ex.id, correct: status.filter((s) => s === "correct").length, total: g });
    });
    if (!grpo.filter_groups) {
      return {
        group,
        scores,
        outcomes,
        numGenBatches: 1,
        promptsDrawn,
        tokensGenerated,
        groupsDropped: 0,
        groupsFilled: 0,
      };
    }
    const signal = groupsWithSignal(scores.rewards, g);
    const keep = signal.flatMap((s, i) => s ? [i] : []).slice(0, perStep - numKept);
    const drop = signal.flatMap((s, i) => s ? [] : [i]);
    kept.push(selectGroups(group, scores, keep));
    dropped.push(selectGroups(group, scores, drop));
    numKept += keep.length;
    const atLimit = grpo.max_num_gen_batches > 0 && batch >= grpo.max_num_gen_batches;
    if (numKept >= perStep || atLimit) break;
    if (!options.next) {
      throw new TypeError("dynamicSamplingPhase() needs options.next with grpo.filter_groups");
    }
  }
  // At the limit: fill with the zero-std groups drawn last (the most recent policy's samples).
  const fill: { group: GroupRollout; scores: Scores }[] = [];
  let missing = perStep - numKept;
  for (let d = dropped.length - 1; d >= 0 && missing > 0; d--) {
    const n = dropped[d].group.examples.length;
    const take = Math.min(n, missing);
    fill.unshift(selectGroups(dropped[d].group, dropped[d].scores, range(n - take, n)));
    missing -= take;
  }
  const groupsFilled = perStep - numKept - missing;
  const { group, scores } = concatGroups([...kept, ...fill]);
  return {
    group,
    scores,
    outcomes,
    numGenBatches: batch,
    promptsDrawn,
    tokensGenerated,
    groupsDropped: dropped.reduce((s, d) => s + d.group.examples.length, 0) - groupsFilled,
    groupsFilled,
  };
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}
