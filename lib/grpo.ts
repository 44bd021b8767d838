/**
 * The GRPO objective, independent of the model: group-relative advantages, per-token log-probs
 * from logits, and TRL's clipped per-token loss with its four aggregations and its metrics.
 *
 * Mirrors TRL `GRPOTrainer._generate_and_score_completions` (advantages) and
 * `GRPOTrainer._compute_loss` (loss, clip ratios, KL) at v0.21 / main naming; see
 * tests/fixtures/README.md for the golden numbers this is tested against.
 *
 * @module
 */
import { tf } from "./tf.ts";
import type { Config } from "./config.ts";
import { gatherRows } from "./model.ts";

/**
 * The slice of the `grpo` config section that advantages need: `num_return_sequences`
 * (TRL `num_generations`; groups are contiguous) and `scale_rewards`.
 */
export type AdvantageOptions = Pick<Config["grpo"], "num_return_sequences" | "scale_rewards">;

/**
 * Group-relative advantages A_i = (r_i - mean(r_group)) / std,
 * DeepSeekMath (arXiv:2402.03300) §4.1.2. Mirrors TRL `GRPOTrainer._generate_and_score_completions`:
 * Bessel-corrected std (torch `.std()`), with 1e-4 added to the std, not to the variance.
 * `scale_rewards` "group" divides by each group's std, "batch" by the std of all rewards in the
 * batch (TRL ≥ 0.22, still after subtracting the *group* mean), "none" only centres (Dr. GRPO).
 * A group whose rewards are all equal gets advantage 0.
 *
 * @param rewards Shape [num_prompts * num_return_sequences]; each group contiguous.
 * @param config The `grpo` section of the config, or a literal.
 * @returns Same shape as `rewards`. The caller disposes it.
 * @example Usage
 * ```ts
 * import { tf } from "./tf.ts";
 * import { groupRelativeAdvantages } from "./grpo.ts";
 * const config = { num_return_sequences: 2, scale_rewards: "group" } as const;
 * groupRelativeAdvantages(tf.tensor1d([1, 0, 0, 0]), config).print(); // [0.707, -0.707, 0, 0]
 * ```
 */
export function groupRelativeAdvantages(
  rewards: tf.Tensor1D,
  config: AdvantageOptions,
): tf.Tensor1D {
  const { num_return_sequences: g, scale_rewards } = config;
  checkGroups(rewards.size, g);
  return tf.tidy(() => {
    const grouped = tf.reshape(rewards, [-1, g]); // [B, G]
    const centred = tf.sub(grouped, tf.mean(grouped, 1, true)); // [B, G]
    if (scale_rewards === "none") return tf.reshape(centred, [-1]); // Dr. GRPO
    let std: tf.Tensor;
    if (scale_rewards === "group") {
      // tf.moments() gives the population variance; TRL (torch .std()) divides by G - 1.
      std = tf.sqrt(tf.div(tf.sum(tf.square(centred), 1, true), g - 1)); // [B, 1]
    } else if (scale_rewards === "batch") {
      const all = tf.sub(rewards, tf.mean(rewards)); // [B*G]
      std = tf.sqrt(tf.div(tf.sum(tf.square(all)), rewards.size - 1)); // []
    } else {
      throw new RangeError(`Unknown scale_rewards: ${scale_rewards}`);
    }
    return tf.reshape(tf.div(centred, tf.add(std, 1e-4)), [-1]);
  });
}

/** Reward statistics of one generation batch, as TRL logs them. */
export interface GroupStats {
  /** Mean reward of each group, [num_prompts]. */
  groupMean: number[];
  /** Bessel-corrected std of each group, [num_prompts]. */
  groupStd: number[];
  /** Mean of all rewards (TRL metric `reward`). */
  rewardMean: number;
  /** Mean of the group stds (TRL metric `reward_std` with scale_rewards "group"/"none"). */
  rewardStd: number;
  /** Bessel-corrected std of all rewards (TRL ≥ 0.22 `reward_std` with scale_rewards "batch"). */
  batchStd: number;
  /** Share of groups whose std is 0 (TRL `frac_reward_zero_std`; |std| <= 1e-8 as torch.isclose). */
  fracRewardZeroStd: number;
}

/**
 * Plain-number reward statistics for logging (no tensors). Group std is Bessel-corrected like
 * TRL's `rewards.view(-1, G).std(dim=1)`; a group counts as zero-std when torch.isclose(std, 0)
 * would say so (|std| <= 1e-8). Computed in float64, so it can differ from a float32 torch run
 * in the last digits.
 *
 * @param rewards One reward per completion, groups of `num_return_sequences` contiguous.
 * @param config Needs `num_return_sequences`.
 * @returns The statistics.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { groupStats } from "./grpo.ts";
 * const stats = groupStats([1, 0, 1, 1], { num_return_sequences: 2 });
 * assert.equal(stats.fracRewardZeroStd, 0.5);
 * assert.deepEqual(stats.groupMean, [0.5, 1]);
 * ```
 */
export function groupStats(
  rewards: ArrayLike<number>,
  config: Pick<AdvantageOptions, "num_return_sequences">,
): GroupStats {
  const g = config.num_return_sequences;
  checkGroups(rewards.length, g);
  for (let i = 0; i < rewards.length; i++) {
    if (!Number.isFinite(rewards[i])) {
      throw new RangeError(`Cannot compute reward statistics: reward ${i} is ${rewards[i]}`);
    }
  }
  const groupMean: number[] = [];
  const groupStd: number[] = [];
  for (let start = 0; start < rewards.length; start += g) {
    const group = Array.from({ length: g }, (_, j) => rewards[start + j]);
    const mean = group.reduce((a, b) => a + b, 0) / g;
    groupMean.push(mean);
    groupStd.push(Math.sqrt(group.reduce((a, r) => a + (r - mean) ** 2, 0) / (g - 1)));
  }
  const n = rewards.length;
  let total = 0;
  for (let i = 0; i < n; i++) total += rewards[i];
  const rewardMean = total / n;
  let squares = 0;
  for (let i = 0; i < n; i++) squares += (rewards[i] - rewardMean) ** 2;
  const zero = groupStd.filter((s) => Math.abs(s) <= 1e-8).length;
  return {
    groupMean,
    groupStd,
    rewardMean,
    rewardStd: groupStd.reduce((a, b) => a + b, 0) / groupStd.length,
    batchStd: Math.sqrt(squares / (n - 1)),
    fracRewardZeroStd: zero / groupStd.length,
  };
}

/**
 * Advantage phase: {@linkcode groupRelativeAdvantages} of plain rewards, read back as plain
 * numbers (one read per step), so the score and update phases never hand tensors around.
 *
 * @param rewards One reward per completion, groups of `num_return_sequences` contiguous.
 * @param grpo The `grpo` config section, or a literal.
 * @returns One advantage per completion.
 * @example Usage
 * ```ts
 * import { advantagePhase } from "./grpo.ts";
 * const a = await advantagePhase([1, 0, 0, 0], { num_return_sequences: 2, scale_rewards: "group" });
 * console.assert(Math.abs(a[0] - 0.7070) < 1e-3 && a[2] === 0);
 * ```
 */
export async function advantagePhase(
  rewards: readonly number[],
  grpo: AdvantageOptions,
): Promise<number[]> {
  const r = tf.tensor1d([...rewards]);
  const a = groupRelativeAdvantages(r, grpo);
  const out = Array.from(await a.data()); // sync point: one read of the step's advantages
  tf.dispose([r, a]);
  return out;
}

function checkGroups(size: number, g: number): void {
  if (!Number.isInteger(g) || g < 2 || size === 0 || size % g !== 0) {
    throw new RangeError(
      `Cannot group ${size} rewards by num_return_sequences=${g}: need an integer >= 2 that divides ${size}`,
    );
  }
}

/**
 * Log-probability of each chosen token: `log_softmax(logits / temperature)` gathered at `ids`
 * (TRL `selective_log_softmax`: logit minus logsumexp). The same gather as model.ts
 * `completionLogProbs`, through its `gatherRows` (a one-hot product, whose gradient every backend
 * has, unlike tf.gather's UnsortedSegmentSum), for logits that are already computed.
 *
 * @param logits Shape [B, C, V], the logits that predict each completion token (already shifted).
 * @param ids Shape [B, C], int32 token ids in [0, V).
 * @param options `temperature` > 0 (TRL divides the logits by it before log_softmax).
 * @returns Shape [B, C], float32. The caller disposes it.
 * @example Usage
 * ```ts
 * import { tf } from "./tf.ts";
 * import { tokenLogProbs } from "./grpo.ts";
 * const logits = tf.tensor3d([[[0, 0], [1, 0]]]); // [1, 2, 2]
 * const logps = tokenLogProbs(logits, tf.tensor2d([[0, 1]], [1, 2], "int32"), { temperature: 1 });
 * logps.print(); // [[-0.693, -1.313]]
 * ```
 */
export function tokenLogProbs(
  logits: tf.Tensor3D,
  ids: tf.Tensor2D,
  options: { temperature: number },
): tf.Tensor2D {
  const { temperature } = options;
  if (!(temperature > 0)) {
    throw new RangeError(`Expected temperature > 0 but found ${temperature}`);
  }
  const [b, c, v] = logits.shape;
  if (ids.shape[0] !== b || ids.shape[1] !== c) {
    throw new RangeError(
      `Cannot gather ids of shape [${ids.shape}] from logits of shape [${logits.shape}]`,
    );
  }
  return tf.tidy(() => {
    const scaled = tf.div(tf.reshape(logits, [b * c, v]), temperature) as tf.Tensor2D; // [B*C, V]
    const picked = gatherRows(scaled, tf.reshape(ids, [b * c])); // [B*C]
    return tf.reshape(tf.sub(picked, tf.logSumExp(scaled, 1)), [b, c]); // [B, C]
  });
}

/** Per-token inputs of the GRPO loss; names are TRL's batch fields. */
export interface GrpoLossInputs {
  /** [B, C] current policy log-probs; the only input gradients flow through. */
  per_token_logps: tf.Tensor2D;
  /**
   * [B, C] log-probs of the policy that sampled the completions, or null when
   * num_iterations = 1 (TRL then uses `per_token_logps.detach()`, so coef_1 = 1).
   */
  old_per_token_logps: tf.Tensor2D | null;
  /** [B, C] reference-model log-probs; null skips KL (required when kl_coef != 0). */
  ref_per_token_logps: tf.Tensor2D | null;
  /** [B] one advantage per completion. */
  advantages: tf.Tensor1D;
  /** [B, C] 1 for completion tokens up to and including the first eos, 0 after. */
  completion_mask: tf.Tensor2D;
}

/**
 * Loss settings: the `grpo` config keys `loss_type`, `epsilon` (ε_low), `epsilon_high` (null →
 * epsilon; DAPO arXiv:2503.14476 clip-higher) and `kl_coef` (β; 0 leaves KL out of the loss),
 * plus what the trainer knows about the batch.
 */
export interface GrpoLossOptions
  extends Pick<Config["grpo"], "loss_type" | "epsilon" | "epsilon_high" | "kl_coef"> {
  /** dr_grpo's constant normaliser per row (TRL `max_completion_length` = our max_new_tokens). */
  max_completion_length?: number;
  /**
   * dapo: active tokens in the whole accumulated batch (TRL `num_items_in_batch` / num_processes).
   * Defaults to this batch's mask sum, which is right for one accumulation step.
   */
  num_items_in_batch?: number;
  /**
   * TRL main divides grpo/bnpo/dr_grpo losses by the gradient-accumulation steps, so summing the
   * micro-batch gradients averages them. dapo is not divided (its normaliser already spans the
   * accumulated batch). Default 1.
   */
  gradient_accumulation_steps?: number;
}

/** The per-token tensors of the GRPO loss, all [B, C]. */
export interface GrpoPerToken {
  /** exp(logp - old_logp), the importance ratio. */
  coef_1: tf.Tensor2D;
  /** clamp(coef_1, 1 - ε_low, 1 + ε_high). */
  coef_2: tf.Tensor2D;
  /** k3 estimator exp(ref - logp) - (ref - logp) - 1, or null without a reference. */
  per_token_kl: tf.Tensor2D | null;
  /** -min(coef_1·A, coef_2·A), the clipped surrogate without KL. */
  per_token_policy_loss: tf.Tensor2D;
  /** per_token_policy_loss + β·per_token_kl (β = 0: equal to the policy loss). */
  per_token_loss: tf.Tensor2D;
}

/**
 * The per-token quantities of TRL `GRPOTrainer._compute_loss` (token-level importance sampling):
 * `coef_1 = exp(logp - old)`, `coef_2 = clamp(coef_1, 1 - ε_low, 1 + ε_high)`,
 * `per_token_loss = -min(coef_1·A, coef_2·A) + β·kl` with the k3 KL estimator
 * (Schulman, "Approximating KL divergence", 2020). Values at masked positions are computed but
 * meaningless; aggregate with {@linkcode grpoLoss}.
 *
 * @param inputs Log-probs, advantages and mask.
 * @param options Clip ranges and KL coefficient.
 * @returns All [B, C]. The caller disposes them.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { tf } from "./tf.ts";
 * import { grpoPerToken } from "./grpo.ts";
 * const out = grpoPerToken({
 *   per_token_logps: tf.tensor2d([[-1, -2]]),
 *   old_per_token_logps: tf.tensor2d([[-1.5, -2]]),
 *   ref_per_token_logps: null,
 *   advantages: tf.tensor1d([1]),
 *   completion_mask: tf.tensor2d([[1, 1]]),
 * }, { loss_type: "bnpo", epsilon: 0.2, epsilon_high: null, kl_coef: 0 });
 * assert.ok(Math.abs(out.coef_2.dataSync()[0] - 1.2) < 1e-6); // exp(0.5) clipped to 1 + 0.2
 * ```
 */
export function grpoPerToken(inputs: GrpoLossInputs, options: GrpoLossOptions): GrpoPerToken {
  const { epsilon_low, epsilon_high } = clipRange(options);
  checkInputs(inputs, options);
  const parts = tf.tidy(() => {
    const logp = inputs.per_token_logps;
    // num_iterations = 1: TRL's old logps are `per_token_logps.detach()`, so coef_1 is exactly 1
    // but its gradient is still d coef_1 / d logp = 1.
    const old = inputs.old_per_token_logps ?? stopGradient(logp);
    const coef1 = tf.exp(tf.sub(logp, old)) as tf.Tensor2D; // [B, C]
    const coef2 = tf.clipByValue(coef1, 1 - epsilon_low, 1 + epsilon_high) as tf.Tensor2D;
    const a = tf.reshape(inputs.advantages, [-1, 1]); // [B, 1]
    const policy = tf.neg(tf.minimum(tf.mul(coef1, a), tf.mul(coef2, a))) as tf.Tensor2D; // [B, C]
    let kl: tf.Tensor2D | null = null;
    if (inputs.ref_per_token_logps !== null) {
      const d = tf.sub(inputs.ref_per_token_logps, logp); // [B, C]
      kl = tf.sub(tf.sub(tf.exp(d), d), 1) as tf.Tensor2D;
    }
    const perToken = options.kl_coef !== 0 && kl !== null
      ? tf.add(policy, tf.mul(kl, options.kl_coef)) as tf.Tensor2D
      : policy.clone();
    const out: tf.TensorContainerObject = {
      coef_1: coef1,
      coef_2: coef2,
      per_token_policy_loss: policy,
      per_token_loss: perToken,
    };
    if (kl !== null) out.per_token_kl = kl;
    return out;
  }) as unknown as Omit<GrpoPerToken, "per_token_kl"> & { per_token_kl?: tf.Tensor2D };
  return { ...parts, per_token_kl: parts.per_token_kl ?? null };
}

/** Scalar tensors logged next to the loss. */
export interface GrpoMetrics {
  /** Masked mean of the k3 KL (TRL `kl`); null without a reference. */
  kl: tf.Scalar | null;
  /** Share of tokens with coef_1 < 1 - ε_low and A < 0 (TRL `clip_ratio/low_mean`). */
  clipLow: tf.Scalar;
  /** Share of tokens with coef_1 > 1 + ε_high and A > 0 (TRL `clip_ratio/high_mean`). */
  clipHigh: tf.Scalar;
  /** Share of tokens clipped either way (TRL `clip_ratio/region_mean`). */
  clipRegion: tf.Scalar;
  /** The loss without the β·KL term, aggregated like the loss. */
  policyLoss: tf.Scalar;
}

/** The GRPO loss and its metrics. */
export interface GrpoLossResult {
  /** Scalar loss to differentiate. */
  loss: tf.Scalar;
  /** Metrics (tf.keep()-ed, see {@linkcode grpoLoss}). */
  metrics: GrpoMetrics;
}

/**
 * The GRPO loss of TRL `GRPOTrainer._compute_loss`, aggregated per `loss_type`:
 * - grpo: mean over rows of (masked row sum / row token count) (DeepSeekMath);
 * - bnpo: masked sum / token count of this batch;
 * - dr_grpo: masked sum / (B · max_completion_length) (Dr. GRPO, arXiv:2503.20783);
 * - dapo: masked sum / `num_items_in_batch` (DAPO, arXiv:2503.14476; tokens of the whole
 *   accumulated batch, defaulting to this batch's, where it equals bnpo).
 * grpo/bnpo/dr_grpo are then divided by `gradient_accumulation_steps` (TRL main).
 *
 * Metrics follow TRL ≥ 0.17: clip ratios and KL are masked means over completion tokens.
 * Differs from TRL: the KL metric is computed whenever a reference is given, even with
 * kl_coef = 0 (TRL skips it); empty masks divide by 1 instead of giving NaN.
 *
 * Use inside `tf.variableGrads`: the metrics are `tf.keep()`-ed so that they survive the tidy
 * around the loss function; read them after the gradient step and dispose them.
 * The caller disposes `loss` and every metric (e.g. `tf.dispose([loss, ...Object.values(metrics)])`).
 *
 * @param inputs Log-probs, advantages and mask; only `per_token_logps` gets gradients.
 * @param options Loss type, clip ranges, KL coefficient and batch normalisers.
 * @returns `{ loss, metrics }`, all scalar tensors. The caller disposes them.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { tf } from "./tf.ts";
 * import { grpoLoss } from "./grpo.ts";
 * const logps = tf.variable(tf.tensor2d([[-1, -2], [-0.5, -3]]));
 * const inputs = {
 *   old_per_token_logps: null,
 *   ref_per_token_logps: null,
 *   advantages: tf.tensor1d([1, -1]),
 *   completion_mask: tf.tensor2d([[1, 1], [1, 0]]),
 * };
 * const options = { loss_type: "grpo", epsilon: 0.2, epsilon_high: null, kl_coef: 0 } as const;
 * let metrics;
 * const { value, grads } = tf.variableGrads(() => {
 *   const out = grpoLoss({ ...inputs, per_token_logps: logps }, options);
 *   metrics = out.metrics;
 *   return out.loss;
 * }, [logps]);
 * assert.equal(value.dataSync()[0], 0); // -(1 + (-1)) / 2 with coef_1 = 1
 * assert.deepEqual(Array.from(grads[logps.name].dataSync()), [-0.25, -0.25, 0.5, 0]);
 * ```
 */
export function grpoLoss(inputs: GrpoLossInputs, options: GrpoLossOptions): GrpoLossResult {
  const { epsilon_low, epsilon_high } = clipRange(options);
  const accumulation = options.gradient_accumulation_steps ?? 1;
  if (!Number.isInteger(accumulation) || accumulation < 1) {
    throw new RangeError(
      `Expected gradient_accumulation_steps to be an integer >= 1 but found ${accumulation}`,
    );
  }
  if (options.loss_type === "dr_grpo") {
    const m = options.max_completion_length;
    if (m === undefined || !Number.isInteger(m) || m < 1) {
      throw new RangeError(
        `loss_type "dr_grpo" needs max_completion_length, an integer >= 1, but found ${m}`,
      );
    }
  }
  if (options.num_items_in_batch !== undefined && !(options.num_items_in_batch > 0)) {
    throw new RangeError(
      `Expected num_items_in_batch > 0 but found ${options.num_items_in_batch}`,
    );
  }
  const parts = tf.tidy(() => {
    const t = grpoPerToken(inputs, options);
    const mask = tf.cast(inputs.completion_mask, "float32"); // [B, C]
    const tokens = tf.maximum(tf.sum(mask), 1); // []
    const maskedMean = (x: tf.Tensor) => tf.div(tf.sum(tf.mul(x, mask)), tokens);
    const a = tf.reshape(inputs.advantages, [-1, 1]); // [B, 1]
    const low = tf.logicalAnd(tf.less(t.coef_1, 1 - epsilon_low), tf.less(a, 0)); // [B, C]
    const high = tf.logicalAnd(tf.greater(t.coef_1, 1 + epsilon_high), tf.greater(a, 0));
    const region = tf.logicalOr(low, high);
    const out: tf.TensorContainerObject = {
      loss: aggregate(t.per_token_loss, mask, options, accumulation),
      policyLoss: aggregate(t.per_token_policy_loss, mask, options, accumulation),
      clipLow: maskedMean(tf.cast(low, "float32")),
      clipHigh: maskedMean(tf.cast(high, "float32")),
      clipRegion: maskedMean(tf.cast(region, "float32")),
    };
    if (t.per_token_kl !== null) out.kl = maskedMean(t.per_token_kl);
    return out;
  }) as unknown as Record<string, tf.Scalar>;
  const metrics: GrpoMetrics = {
    kl: parts.kl ?? null,
    clipLow: parts.clipLow,
    clipHigh: parts.clipHigh,
    clipRegion: parts.clipRegion,
    policyLoss: parts.policyLoss,
  };
  for (const m of Object.values(metrics)) if (m !== null) tf.keep(m);
  return { loss: parts.loss, metrics };
}

/**
 * One backward pass of the GRPO loss: runs `perTokenLogps` (the policy forward, which must read
 * the variables) inside `tf.variableGrads`, aggregates with {@linkcode grpoLoss}, and returns the
 * loss, d loss / d each variable and the metrics. Everything the forward pass allocates is freed.
 *
 * @param perTokenLogps Computes [B, C] log-probs from the variables (e.g. model + tokenLogProbs).
 * @param batch The other loss inputs (old/ref log-probs, advantages, completion_mask).
 * @param options Loss options plus `varList`, the variables to differentiate (the LoRA weights).
 * @returns Loss, gradients keyed by variable name, and metrics. The caller disposes them all.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { tf } from "./tf.ts";
 * import { grpoLossAndGrads, tokenLogProbs } from "./grpo.ts";
 * const w = tf.variable(tf.zeros([1, 2, 3]), true, "doc/grpo/logits");
 * const ids = tf.tensor2d([[0, 2]], [1, 2], "int32");
 * const mask = tf.tensor2d([[1, 1]]);
 * const advantages = tf.tensor1d([1]);
 * const { loss, grads, metrics } = grpoLossAndGrads(
 *   () => tokenLogProbs(w as tf.Variable<tf.Rank.R3>, ids, { temperature: 1 }),
 *   { old_per_token_logps: null, ref_per_token_logps: null, advantages, completion_mask: mask },
 *   { loss_type: "bnpo", epsilon: 0.2, epsilon_high: null, kl_coef: 0, varList: [w] },
 * );
 * assert.equal(loss.dataSync()[0], -1); // -A · coef_1 with coef_1 = 1
 * assert.deepEqual(grads["doc/grpo/logits"].shape, [1, 2, 3]);
 * tf.dispose([loss, ...Object.values(grads), ...Object.values(metrics).filter((m) => m !== null)]);
 * tf.dispose([w, ids, mask, advantages]);
 * ```
 */
export function grpoLossAndGrads(
  perTokenLogps: () => tf.Tensor2D,
  batch: Omit<GrpoLossInputs, "per_token_logps">,
  options: GrpoLossOptions & { varList: tf.Variable[] },
): { loss: tf.Scalar; grads: tf.NamedTensorMap; metrics: GrpoMetrics } {
  let metrics: GrpoMetrics | undefined;
  try {
    const { value, grads } = tf.variableGrads(() => {
      const out = grpoLoss({ ...batch, per_token_logps: perTokenLogps() }, options);
      metrics = out.metrics;
      return out.loss;
    }, options.varList);
    return { loss: value, grads, metrics: metrics! };
  } catch (error) {
    // grpoLoss keeps its metrics; don't leak them when the backward pass fails.
    if (metrics !== undefined) tf.dispose(Object.values(metrics).filter((m) => m !== null));
    throw error;
  }
}

/** Reduces a [B, C] per-token loss to a scalar per `loss_type` (TRL `_compute_loss`). */
function aggregate(
  perToken: tf.Tensor2D,
  mask: tf.Tensor,
  options: GrpoLossOptions,
  accumulation: number,
): tf.Scalar {
  const masked = tf.mul(perToken, mask); // [B, C]
  const rows = perToken.shape[0];
  let loss: tf.Tensor;
  if (options.loss_type === "grpo") {
    const perRow = tf.div(tf.sum(masked, 1), tf.maximum(tf.sum(mask, 1), 1)); // [B]
    loss = tf.div(tf.mean(perRow), accumulation);
  } else if (options.loss_type === "bnpo") {
    loss = tf.div(tf.div(tf.sum(masked), tf.maximum(tf.sum(mask), 1)), accumulation);
  } else if (options.loss_type === "dr_grpo") {
    loss = tf.div(tf.sum(masked), rows * options.max_completion_length! * accumulation);
  } else if (options.loss_type === "dapo") {
    const normaliser = options.num_items_in_batch ?? tf.maximum(tf.sum(mask), 1);
    loss = tf.div(tf.sum(masked), normaliser);
  } else {
    throw new RangeError(`Unknown loss type: ${options.loss_type}`);
  }
  return loss as tf.Scalar;
}

function clipRange(options: GrpoLossOptions): { epsilon_low: number; epsilon_high: number } {
  const epsilon_low = options.epsilon;
  const epsilon_high = options.epsilon_high ?? options.epsilon;
  if (!(epsilon_low >= 0 && epsilon_low < 1) || !(epsilon_high >= 0)) {
    throw new RangeError(
      `Expected 0 <= epsilon < 1 and epsilon_high >= 0 but found epsilon=${epsilon_low}, epsilon_high=${options.epsilon_high}`,
    );
  }
  if (!(options.kl_coef >= 0)) {
    throw new RangeError(`Expected kl_coef >= 0 but found ${options.kl_coef}`);
  }
  return { epsilon_low, epsilon_high };
}

function checkInputs(inputs: GrpoLossInputs, options: GrpoLossOptions): void {
  const shape = inputs.per_token_logps.shape;
  const same = (name: string, t: tf.Tensor | null) => {
    if (
      t !== null && (t.shape.length !== 2 || t.shape[0] !== shape[0] || t.shape[1] !== shape[1])
    ) {
      throw new RangeError(`Expected ${name} of shape [${shape}] but found [${t.shape}]`);
    }
  };
  same("old_per_token_logps", inputs.old_per_token_logps);
  same("ref_per_token_logps", inputs.ref_per_token_logps);
  same("completion_mask", inputs.completion_mask);
  if (inputs.advantages.shape.length !== 1 || inputs.advantages.shape[0] !== shape[0]) {
    throw new RangeError(
      `Expected advantages of shape [${shape[0]}] but found [${inputs.advantages.shape}]`,
    );
  }
  if (options.kl_coef !== 0 && inputs.ref_per_token_logps === null) {
    throw new TypeError(
      `kl_coef=${options.kl_coef} needs ref_per_token_logps, but it is null (set kl_coef: 0 to skip KL)`,
    );
  }
}

/** Identity whose gradient is zero (torch `.detach()`); the caller disposes the result. */
function stopGradient<T extends tf.Tensor>(x: T): T {
  const f = tf.customGrad((...args: unknown[]) => {
    const [t] = args as [tf.Tensor];
    return { value: t.clone(), gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy) };
  });
  return f(x) as T;
}
