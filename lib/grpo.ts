/**
 * The GRPO objective: group-relative advantages, per-token log-probs of completions (from the
 * model, or from logits), and TRL's clipped per-token loss with its four aggregations and its
 * metrics.
 *
 * Mirrors TRL `GRPOTrainer._generate_and_score_completions` (advantages) and
 * `GRPOTrainer._compute_loss` (loss, clip ratios, KL) at v0.21 / main naming; see
 * tests/fixtures/README.md for the golden numbers this is tested against.
 *
 * @module
 */
import { tf } from "./tf.ts";
import type { Config } from "./config.ts";
import { defaultConfig } from "./config.ts";
import type { ForwardOptions, Qwen2Model } from "./model.ts";
import { hiddenStates, lmHead, lmHeadProducts, sharedPromptHiddenStates } from "./model.ts";
import { engineTape } from "./_gradient_checkpointing.ts";
import { fusedTokenLogSoftmax, hasFusedKernel, TOKEN_LOG_SOFTMAX } from "./_kernels.ts";

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

/** Most logits {@linkcode completionLogProbs} materialises at once (64 MiB of float32). */
const LOGITS_CHUNK_FLOATS = 1 << 24;

/**
 * Per-token log-probabilities of the completion tokens (TRL
 * `_get_per_token_logps_and_entropies`): `log_softmax(logits[:, -C-1:-1] / temperature)`
 * gathered at the completion ids. Only the completion positions reach the LM head, in chunks of
 * rows of at most 2^24 logits (one row at a time for a large vocabulary), so memory stays
 * O(max(C × V, 2^24)), not O(B × T × V).
 *
 * @param model The model.
 * @param batch `inputIds` [B, P+C] (prompt left-padded, completion right-padded),
 *   `attentionMask` [B, P+C], `completionLength` C, `temperature`, optional `positionIds`.
 * @param options `adapter` (null = reference model), `dropoutSeed`, `gradientCheckpointing`.
 * @returns [B, C] log-probs. The caller disposes it.
 * @example Usage
 * ```ts ignore
 * const logps = completionLogProbs(model, { inputIds, attentionMask, completionLength: 6, temperature: 0.7 });
 * ```
 */
export function completionLogProbs(
  model: Qwen2Model,
  batch: CompletionBatch,
  options: Pick<ForwardOptions, "adapter" | "dropoutSeed" | "gradientCheckpointing"> = {},
): tf.Tensor2D {
  return completionHeads(model, batch, options, false).logps;
}

/** The batch {@linkcode completionLogProbs} scores. */
export interface CompletionBatch {
  /** [B, P+C] int32, prompt left-padded, completion right-padded. */
  inputIds: tf.Tensor2D;
  /** [B, P+C]. */
  attentionMask: tf.Tensor2D;
  /** C, the padded completion width. */
  completionLength: number;
  /** Logits are divided by it before log_softmax. */
  temperature: number;
  /** [B, P+C] int32 RoPE positions; default from the mask. */
  positionIds?: tf.Tensor2D;
  /**
   * For each row, the index of a row with the same prompt (a GRPO group's completions share
   * theirs). A scoring pass (no gradient tape, no dropout, positions from the mask) then runs
   * each distinct prompt through the model once and the completions against its KV cache; the
   * log-probs are the same.
   */
  promptOf?: number[];
}

/**
 * {@linkcode completionLogProbs} plus the entropy of each position's temperature-scaled
 * next-token distribution, from the same logits (TRL `_get_per_token_logps_and_entropies` with
 * `compute_entropy=True`, `entropy_from_logits`). The entropies carry no gradient (TRL computes
 * them under no_grad); they feed `top_entropy_quantile` and the `entropy` metric.
 *
 * @param model The model.
 * @param batch As {@linkcode completionLogProbs}.
 * @param options `adapter`, `dropoutSeed`, `gradientCheckpointing`.
 * @returns `per_token_logps` and `entropies`, both [B, C]. The caller disposes them.
 * @example Usage
 * ```ts ignore
 * const { per_token_logps, entropies } = completionLogProbsAndEntropies(model, batch, { adapter });
 * ```
 */
export function completionLogProbsAndEntropies(
  model: Qwen2Model,
  batch: CompletionBatch,
  options: Pick<ForwardOptions, "adapter" | "dropoutSeed" | "gradientCheckpointing"> = {},
): { per_token_logps: tf.Tensor2D; entropies: tf.Tensor2D } {
  const { logps, entropies } = completionHeads(model, batch, options, true);
  return { per_token_logps: logps, entropies: entropies! };
}

function completionHeads(
  model: Qwen2Model,
  batch: CompletionBatch,
  options: Pick<ForwardOptions, "adapter" | "dropoutSeed" | "gradientCheckpointing">,
  withEntropies: boolean,
): { logps: tf.Tensor2D; entropies: tf.Tensor2D | null } {
  const [B, T] = batch.inputIds.shape;
  const C = batch.completionLength;
  if (!Number.isInteger(C) || C < 1 || C >= T) {
    throw new RangeError(`Expected completionLength in [1, ${T - 1}], got ${C}`);
  }
  if (!(batch.temperature > 0)) {
    throw new RangeError(`Expected temperature > 0, got ${batch.temperature}`);
  }
  const shared = batch.promptOf !== undefined && batch.positionIds === undefined &&
    options.dropoutSeed == null && engineTape().gradientDepth === 0;
  const out = tf.tidy(() => {
    const h = shared
      ? sharedPromptHiddenStates(model, batch.inputIds, {
        attentionMask: batch.attentionMask,
        adapter: options.adapter,
        promptLength: T - C,
        promptOf: batch.promptOf!,
      })
      : hiddenStates(model, batch.inputIds, {
        attentionMask: batch.attentionMask,
        positionIds: batch.positionIds,
        adapter: options.adapter,
        dropoutSeed: options.dropoutSeed,
        gradientCheckpointing: options.gradientCheckpointing,
        keepLast: C + 1, // TRL logits_to_keep
      }); // [B, C+1, H]
    const targets = batch.inputIds.slice([0, T - C], [B, C]); // [B, C]
    const hs = h.slice([0, 0, 0], [B, C, -1]); // [B, C, H]: positions predicting targets
    // Rows go through the LM head in chunks of at most LOGITS_CHUNK_FLOATS logits (a 151,936
    // vocab gets one row at a time; the demo's 63-symbol vocab does the whole batch at once).
    const V = model.config.vocab_size;
    const rowsPerChunk = Math.max(1, Math.floor(LOGITS_CHUNK_FLOATS / (C * V)));
    const logps: tf.Tensor[] = [];
    const entropies: tf.Tensor[] = [];
    const fused = hasFusedKernel(TOKEN_LOG_SOFTMAX);
    for (let b = 0; b < B; b += rowsPerChunk) {
      const n = Math.min(rowsPerChunk, B - b);
      const hidden = hs.slice([b, 0, 0], [n, C, -1]).reshape([n * C, -1]) as tf.Tensor2D;
      const ids = targets.slice([b, 0], [n, C]).reshape([n * C]) as tf.Tensor1D;
      if (fused) {
        // One pass per row for the log-prob and the entropy, and one for the gradient
        // (lib/_kernels.ts), instead of a logSumExp, a one-hot gather and their gradients.
        const logits = lmHead(model, hidden) as tf.Tensor2D;
        const heads = fusedTokenLogSoftmax(logits, ids, batch.temperature);
        logps.push(heads.logps.reshape([n, C]));
        if (withEntropies) entropies.push(heads.entropies.reshape([n, C]));
        continue;
      }
      // Elsewhere (webgpu) one custom-gradient op that keeps no [N, V] logits on the tape.
      const both = headLogProbs(
        model,
        hidden,
        tf.cast(ids, "int32") as tf.Tensor1D,
        batch.temperature,
      ); // [2, n*C]
      logps.push(both.slice([0, 0], [1, n * C]).reshape([n, C]));
      if (withEntropies) entropies.push(both.slice([1, 0], [1, n * C]).reshape([n, C]));
    }
    const join = (parts: tf.Tensor[]) => (parts.length === 1 ? parts[0] : tf.concat(parts, 0));
    return withEntropies ? [join(logps), join(entropies)] : [join(logps)]; // [B, C] each
  }) as tf.Tensor2D[];
  return { logps: out[0], entropies: out[1] ?? null };
}

/**
 * The log-probability of each row's token `ids[i]` under `softmax(hidden @ W^T / temperature)`
 * (TRL `selective_log_softmax`: logit minus logsumexp) and the entropy of that distribution
 * (TRL `entropy_from_logits`), stacked as [2, N].
 *
 * The logits [N, V] exist only inside this function: the backward pass recomputes them from
 * `hidden` (as Liger-Kernel's fused linear cross-entropy does), so a 151,936-token vocabulary
 * keeps no [N, V] tensor on the tape, where the plain chain kept about a dozen per chunk. Its
 * gradient is the textbook one, d log p_i / d logits = onehot(ids_i) - p, so with W the head's
 * weight: dHidden = (dlogp · W[ids] - (dlogp · p) @ W) / temperature. It flows to `hidden` only (base
 * weights are frozen) and not through the entropies (TRL computes them under no_grad).
 */
function headLogProbs(
  model: Qwen2Model,
  hidden: tf.Tensor2D,
  ids: tf.Tensor1D,
  temperature: number,
): tf.Tensor2D {
  const [N] = ids.shape;
  const V = model.config.vocab_size;
  // Logits and logsumexp of rows `h` (temperature applied to h [N, H], not to the logits).
  const logitsOf = (h: tf.Tensor) => {
    const logits = lmHead(model, tf.div(h, temperature)) as tf.Tensor2D; // [N, V]
    return { logits, lse: tf.logSumExp(logits, 1, true) }; // [N, V], [N, 1]
  };
  // NOTE: ids is an input, not a closure capture, so that the tape keeps it for the backward
  // pass (the caller's tidy disposes it before then).
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [h, ids, save] = args as [tf.Tensor, tf.Tensor1D, tf.GradSaveFunc];
    const value = tf.tidy(() => {
      const { logits, lse } = logitsOf(h);
      // logits[i, ids[i]] through the flat index i·V + ids[i]: N reads, no [N, V] one-hot.
      const flat = tf.add(tf.mul(tf.range(0, N, 1, "int32"), tf.scalar(V, "int32")), ids); // [N]
      const picked = tf.gather(tf.reshape(logits, [-1]), flat); // [N]
      const logp = tf.sub(picked, tf.reshape(lse, [-1])); // [N]
      const logpAll = tf.sub(logits, lse); // [N, V]
      const entropy = tf.neg(tf.sum(tf.mul(tf.exp(logpAll), logpAll), 1)); // [N]
      return tf.stack([logp, entropy]) as tf.Tensor2D; // [2, N]
    });
    save([h, ids]);
    return {
      value,
      gradFunc: (dy: tf.Tensor, [hSaved, idsSaved]: tf.Tensor[]) =>
        tf.tidy(() => {
          const dlogp = tf.reshape(tf.slice(dy, [0, 0], [1, N]), [N, 1]); // [N, 1]
          const { logits, lse } = logitsOf(hSaved);
          const p = tf.exp(tf.sub(logits, lse)); // [N, V] softmax
          const { dHidden, rows } = lmHeadProducts(
            model,
            tf.mul(p, dlogp) as tf.Tensor2D,
            idsSaved as tf.Tensor1D,
          ); // [N, H] each
          const dh = tf.div(tf.sub(tf.mul(rows!, dlogp), dHidden!), temperature); // [N, H]
          return [dh, tf.zerosLike(idsSaved)];
        }),
    };
  });
  return tf.tidy(() => f(hidden, ids) as tf.Tensor2D);
}

/**
 * `m[i, ids[i]]` for each row i. m: [N, V], ids: [N] → [N].
 *
 * NOTE: a one-hot product, not tf.gather: gather's gradient (UnsortedSegmentSum) has no wasm
 * kernel, and the one-hot costs no more than the [N, V] logits already there.
 */
export function gatherRows(m: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor1D {
  return tf.tidy(() => {
    const oneHot = tf.oneHot(tf.cast(ids, "int32"), m.shape[1]); // [N, V]
    return tf.sum(tf.mul(m, oneHot), 1) as tf.Tensor1D;
  });
}

/**
 * Log-probability of each chosen token: `log_softmax(logits / temperature)` gathered at `ids`
 * (TRL `selective_log_softmax`: logit minus logsumexp). The same gather as
 * {@linkcode completionLogProbs} takes, through {@linkcode gatherRows} (a one-hot product,
 * whose gradient every backend has), for logits that are already computed.
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
  /**
   * [B, C] log-probs of the sampled tokens under the rollout engine's sampling distribution
   * (TRL `sampling_per_token_logps`; ours from rollout.ts `rollout()`). Needed by
   * `vllm_importance_sampling_correction`; the off-policy mask prefers it to the old log-probs.
   */
  sampling_per_token_logps?: tf.Tensor2D | null;
  /**
   * [B, C] entropy of the policy's temperature-scaled next-token distribution at each position
   * (TRL `entropies`; {@linkcode completionLogProbsAndEntropies}). Needed by
   * `top_entropy_quantile` < 1; logged as `entropy` when given. No gradient flows through it.
   */
  entropies?: tf.Tensor2D | null;
}

/**
 * The `grpo` keys of TRL 1.13's options that the loss reads besides `loss_type`, the clip
 * ranges and the KL coefficient; {@linkcode GrpoLossOptions} takes each as optional.
 */
export type GrpoLossKey =
  | "importance_sampling_level"
  | "delta"
  | "top_entropy_quantile"
  | "use_bias_correction_kl"
  | "off_policy_mask_threshold"
  | "sapo_temperature_pos"
  | "sapo_temperature_neg"
  | "vespo_k_pos"
  | "vespo_lambda_pos"
  | "vespo_k_neg"
  | "vespo_lambda_neg"
  | "vllm_importance_sampling_correction"
  | "vllm_importance_sampling_mode"
  | "vllm_importance_sampling_clip_min"
  | "vllm_importance_sampling_clip_max";

const LOSS_KEYS: readonly GrpoLossKey[] = [
  "importance_sampling_level",
  "delta",
  "top_entropy_quantile",
  "use_bias_correction_kl",
  "off_policy_mask_threshold",
  "sapo_temperature_pos",
  "sapo_temperature_neg",
  "vespo_k_pos",
  "vespo_lambda_pos",
  "vespo_k_neg",
  "vespo_lambda_neg",
  "vllm_importance_sampling_correction",
  "vllm_importance_sampling_mode",
  "vllm_importance_sampling_clip_min",
  "vllm_importance_sampling_clip_max",
];

/**
 * Loss settings: the `grpo` config keys `loss_type`, `epsilon` (ε_low), `epsilon_high` (null →
 * epsilon; DAPO arXiv:2503.14476 clip-higher; the ratio cap itself for cispo) and `kl_coef`
 * (β; 0 leaves KL out of the loss), the TRL 1.13 options (each optional, defaulting to the
 * schema's value, so `config.grpo` can be passed as is), plus what the trainer knows about the
 * batch.
 */
export interface GrpoLossOptions
  extends
    Pick<Config["grpo"], "loss_type" | "epsilon" | "epsilon_high" | "kl_coef">,
    Partial<Pick<Config["grpo"], GrpoLossKey>> {
  /** dr_grpo's constant normaliser per row (TRL `max_completion_length` = our max_new_tokens). */
  max_completion_length?: number;
  /**
   * dapo, cispo, vespo: active tokens in the whole accumulated batch (TRL `num_items_in_batch`
   * / num_processes). Defaults to this batch's mask sum, which is right for one accumulation
   * step.
   */
  num_items_in_batch?: number;
  /**
   * TRL main divides grpo/bnpo/dr_grpo/sapo/luspo losses by the gradient-accumulation steps, so
   * summing the micro-batch gradients averages them. dapo, cispo and vespo are not divided (their
   * normaliser already spans the accumulated batch). Default 1.
   */
  gradient_accumulation_steps?: number;
}

/** Every loss setting resolved: {@linkcode GrpoLossOptions} with the schema's defaults filled in. */
type LossSettings = GrpoLossOptions & Pick<Config["grpo"], GrpoLossKey> & {
  epsilon_low: number;
  epsilon_high: number;
};

/** The per-token tensors of the GRPO loss (TRL `_compute_loss` locals). */
export interface GrpoPerToken {
  /**
   * exp(logp - old), the importance ratio: [B, C], or [B, 1] with importance_sampling_level
   * sequence (exp of the masked mean log-ratio, GSPO). Capped at `delta` when that is set.
   */
  coef_1: tf.Tensor2D;
  /** clamp(coef_1, 1 - ε_low, 1 + ε_high) for the clipped losses; null for cispo, sapo, vespo. */
  coef_2: tf.Tensor2D | null;
  /** cispo: min(coef_1, epsilon_high), detached (TRL `clamped_ratios`); null otherwise. */
  clamped_ratios: tf.Tensor2D | null;
  /** vespo: [B, 1] detached gamma weight of each sequence (TRL `phi_seq`); null otherwise. */
  phi_seq: tf.Tensor2D | null;
  /** [B, C] 1 where top_entropy_quantile keeps the token, 0 elsewhere; null when it is 1. */
  entropy_mask: tf.Tensor2D | null;
  /** [B, 1] 0 for the sequences off_policy_mask_threshold drops, 1 elsewhere; null when off. */
  off_policy_mask: tf.Tensor2D | null;
  /**
   * The rollout-mismatch ratio multiplied into the policy loss ([B, C] token modes, [B, 1]
   * sequence modes; TRL `importance_sampling_ratio`); null when the correction is off.
   */
  importance_sampling_ratio: tf.Tensor2D | null;
  /** [B, C] k3 estimator exp(ref - logp) - (ref - logp) - 1 (times coef_1 with
   * use_bias_correction_kl), or null without a reference. */
  per_token_kl: tf.Tensor2D | null;
  /** The policy loss without KL, after the masks and the IS ratio: [B, C], or [B, 1] when
   * every factor is per sequence. */
  per_token_policy_loss: tf.Tensor2D;
  /** per_token_policy_loss + β·per_token_kl (β = 0: equal to the policy loss). */
  per_token_loss: tf.Tensor2D;
}

/**
 * The per-token quantities of TRL 1.13 `GRPOTrainer._compute_loss`, in its order:
 * 1. `coef_1 = exp(logp - old)` per token, or per sequence from the masked mean log-ratio
 *    (`importance_sampling_level` "sequence", GSPO arXiv:2507.18071);
 * 2. the k3 KL `exp(ref - logp) - (ref - logp) - 1` (Schulman, "Approximating KL divergence",
 *    2020), times coef_1 with `use_bias_correction_kl` (DeepSeek-V3.2);
 * 3. the policy loss of `loss_type`: `-min(coef_1·A, clamp(coef_1, 1 - ε_low, 1 + ε_high)·A)`
 *    for grpo, bnpo, dr_grpo, dapo and luspo, with coef_1 first capped at `delta` (INTELLECT-2
 *    two-sided clipping); cispo `-min(coef_1, ε_high).detach()·A·logp`; sapo
 *    `-sigmoid(τ(coef_1 - 1))·4/τ·A` (τ by the sign of A); vespo `-φ·A·logp` with the detached
 *    gamma weight of TRL `get_gamma_weights`;
 * 4. times the high-entropy mask (TRL `get_high_entropy_mask`), the off-policy sequence mask
 *    (TRL `get_off_policy_mask`) and, except for vespo, the rollout-mismatch IS ratio (TRL
 *    `_generate_and_score_completions`);
 * 5. plus β·kl.
 * Values at masked positions are computed but meaningless; aggregate with {@linkcode grpoLoss}.
 *
 * @param inputs Log-probs, advantages and mask; sampler log-probs and entropies when the
 *   options need them.
 * @param options Loss type, clip ranges, KL coefficient and the TRL 1.13 options.
 * @returns The tensors above. The caller disposes them.
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
 * assert.ok(Math.abs(out.coef_2!.dataSync()[0] - 1.2) < 1e-6); // exp(0.5) clipped to 1 + 0.2
 * ```
 */
export function grpoPerToken(inputs: GrpoLossInputs, options: GrpoLossOptions): GrpoPerToken {
  const o = lossSettings(options);
  checkInputs(inputs, o);
  const parts = tf.tidy(() => {
    const logp = inputs.per_token_logps;
    const mask = tf.cast(inputs.completion_mask, "float32"); // [B, C]
    // num_iterations = 1: TRL's old logps are `per_token_logps.detach()`, so coef_1 is exactly 1
    // but its gradient is still d coef_1 / d logp = 1.
    const old = inputs.old_per_token_logps ?? stopGradient(logp);
    const a = tf.reshape(inputs.advantages, [-1, 1]); // [B, 1]
    const logRatio = tf.sub(logp, old); // [B, C]
    const logWeights = o.importance_sampling_level === "sequence"
      ? tf.reshape(tf.div(tf.sum(tf.mul(logRatio, mask), 1), rowTokens(mask)), [-1, 1]) // [B, 1]
      : logRatio;
    let coef1 = tf.exp(logWeights) as tf.Tensor2D;
    const sampling = inputs.sampling_per_token_logps ?? null;
    const isRatio = o.vllm_importance_sampling_correction
      ? noGrad(() => importanceSamplingRatio(old, sampling!, mask, o))
      : null;
    let kl: tf.Tensor2D | null = null;
    if (inputs.ref_per_token_logps !== null) {
      const d = tf.sub(inputs.ref_per_token_logps, logp); // [B, C]
      kl = tf.sub(tf.sub(tf.exp(d), d), 1) as tf.Tensor2D;
      if (o.use_bias_correction_kl) kl = tf.mul(kl, coef1) as tf.Tensor2D; // DeepSeek-V3.2
    }
    let policy: tf.Tensor;
    let coef2: tf.Tensor2D | null = null;
    let clamped: tf.Tensor2D | null = null;
    let phi: tf.Tensor2D | null = null;
    if (o.loss_type === "cispo") {
      // The ratio only weights the REINFORCE term A·logp; it carries no gradient itself.
      clamped = noGrad(() => tf.minimum(coef1, o.epsilon_high)) as tf.Tensor2D;
      policy = tf.neg(tf.mul(tf.mul(clamped, a), logp));
    } else if (o.loss_type === "sapo") {
      const tau = tf.where(tf.greater(a, 0), o.sapo_temperature_pos, o.sapo_temperature_neg);
      const gate = tf.div(tf.mul(tf.sigmoid(tf.mul(tau, tf.sub(coef1, 1))), 4), tau);
      policy = tf.neg(tf.mul(gate, a));
    } else if (o.loss_type === "vespo") {
      phi = noGrad(() => gammaWeights(logRatio, a, mask, isRatio, o));
      policy = tf.neg(tf.mul(tf.mul(phi, a), logp));
    } else {
      coef2 = tf.clipByValue(coef1, 1 - o.epsilon_low, 1 + o.epsilon_high) as tf.Tensor2D;
      if (o.delta !== null) coef1 = tf.minimum(coef1, o.delta) as tf.Tensor2D; // after coef_2
      policy = tf.neg(tf.minimum(tf.mul(coef1, a), tf.mul(coef2, a)));
    }
    let entropyMask: tf.Tensor2D | null = null;
    if (o.top_entropy_quantile < 1) {
      entropyMask = noGrad(() =>
        highEntropyMask(inputs.entropies!, mask, 1 - o.top_entropy_quantile)
      );
      policy = tf.mul(policy, entropyMask);
    }
    let offPolicyMask: tf.Tensor2D | null = null;
    if (o.off_policy_mask_threshold !== null) {
      const threshold = o.off_policy_mask_threshold;
      offPolicyMask = noGrad(() => {
        // DeepSeek-V3.2 eq. 9: the mean log-ratio of sampler to current policy per sequence.
        const drift = tf.div(
          tf.sum(tf.mul(tf.sub(sampling ?? old, logp), mask), 1, true),
          rowTokens(mask, true),
        ); // [B, 1]
        return tf.cast(
          tf.logicalOr(tf.greaterEqual(a, 0), tf.lessEqual(drift, threshold)),
          "float32",
        );
      }) as tf.Tensor2D;
      policy = tf.mul(policy, offPolicyMask);
    }
    // VESPO folds the IS ratio into its weight instead (TRL).
    if (isRatio !== null && o.loss_type !== "vespo") policy = tf.mul(policy, isRatio);
    const perToken = o.kl_coef !== 0 && kl !== null
      ? tf.add(policy, tf.mul(kl, o.kl_coef))
      : policy.clone();
    const out: tf.TensorContainerObject = {
      coef_1: coef1,
      per_token_policy_loss: policy,
      per_token_loss: perToken,
    };
    const optional = {
      coef_2: coef2,
      clamped_ratios: clamped,
      phi_seq: phi,
      entropy_mask: entropyMask,
      off_policy_mask: offPolicyMask,
      importance_sampling_ratio: isRatio,
      per_token_kl: kl,
    };
    for (const [k, v] of Object.entries(optional)) if (v !== null) out[k] = v;
    return out;
  }) as Partial<Record<keyof GrpoPerToken, tf.Tensor2D>>;
  return {
    coef_1: parts.coef_1!,
    coef_2: parts.coef_2 ?? null,
    clamped_ratios: parts.clamped_ratios ?? null,
    phi_seq: parts.phi_seq ?? null,
    entropy_mask: parts.entropy_mask ?? null,
    off_policy_mask: parts.off_policy_mask ?? null,
    importance_sampling_ratio: parts.importance_sampling_ratio ?? null,
    per_token_kl: parts.per_token_kl ?? null,
    per_token_policy_loss: parts.per_token_policy_loss!,
    per_token_loss: parts.per_token_loss!,
  };
}

/** Scalar tensors logged next to the loss; each names the TRL metric it is. */
export interface GrpoMetrics {
  /** Masked mean of the k3 KL as used in the loss (TRL `kl`); null without a reference. */
  kl: tf.Scalar | null;
  /**
   * Share of tokens (sequences at sequence level) with coef_1 < 1 - ε_low and A < 0
   * (TRL `clip_ratio/low_mean`). 0 for cispo, sapo and vespo, which TRL logs no clip ratio for.
   */
  clipLow: tf.Scalar;
  /** Share with coef_1 > 1 + ε_high and A > 0 (TRL `clip_ratio/high_mean`); 0 as clipLow. */
  clipHigh: tf.Scalar;
  /** Share clipped either way (TRL `clip_ratio/region_mean`); 0 as clipLow. */
  clipRegion: tf.Scalar;
  /** The loss without the β·KL term, aggregated like the loss. */
  policyLoss: tf.Scalar;
  /** Masked mean of the entropies (TRL `entropy`); null when none are given. */
  entropy?: tf.Scalar | null;
  /** cispo: share of tokens with coef_1 > ε_high and A > 0 (TRL `cispo_clip_ratio`). */
  cispoClipRatio?: tf.Scalar | null;
  /** vespo: mean gamma weight over the sequences (TRL `vespo/phi_seq_mean`). */
  vespoPhiSeqMean?: tf.Scalar | null;
  /** Mean |old - sampler log-prob| over tokens (TRL `sampling/sampling_logp_difference/mean`). */
  samplingLogpDifferenceMean?: tf.Scalar | null;
  /** Max |old - sampler log-prob| (TRL `sampling/sampling_logp_difference/max`). */
  samplingLogpDifferenceMax?: tf.Scalar | null;
  /** Smallest IS ratio, over tokens or sequences (TRL `sampling/importance_sampling_ratio/min`). */
  importanceSamplingRatioMin?: tf.Scalar | null;
  /** Mean IS ratio (TRL `sampling/importance_sampling_ratio/mean`). */
  importanceSamplingRatioMean?: tf.Scalar | null;
  /** Largest IS ratio (TRL `sampling/importance_sampling_ratio/max`). */
  importanceSamplingRatioMax?: tf.Scalar | null;
}

/**
 * The name TRL logs each {@linkcode GrpoMetrics} field under (policyLoss is ours), so a trainer
 * can write `{ [GRPO_METRIC_NAMES[k]]: value }` for every non-null metric.
 */
export const GRPO_METRIC_NAMES: Readonly<Record<keyof GrpoMetrics, string>> = Object.freeze({
  kl: "kl",
  clipLow: "clip_ratio/low_mean",
  clipHigh: "clip_ratio/high_mean",
  clipRegion: "clip_ratio/region_mean",
  policyLoss: "policy_loss",
  entropy: "entropy",
  cispoClipRatio: "cispo_clip_ratio",
  vespoPhiSeqMean: "vespo/phi_seq_mean",
  samplingLogpDifferenceMean: "sampling/sampling_logp_difference/mean",
  samplingLogpDifferenceMax: "sampling/sampling_logp_difference/max",
  importanceSamplingRatioMin: "sampling/importance_sampling_ratio/min",
  importanceSamplingRatioMean: "sampling/importance_sampling_ratio/mean",
  importanceSamplingRatioMax: "sampling/importance_sampling_ratio/max",
});

/** The GRPO loss and its metrics. */
export interface GrpoLossResult {
  /** Scalar loss to differentiate. */
  loss: tf.Scalar;
  /** Metrics (tf.keep()-ed, see {@linkcode grpoLoss}). */
  metrics: GrpoMetrics;
}

/**
 * The GRPO loss of TRL 1.13 `GRPOTrainer._compute_loss` ({@linkcode grpoPerToken}), aggregated
 * per `loss_type`:
 * - grpo, sapo: mean over rows of (masked row sum / row token count) (DeepSeekMath);
 * - bnpo: masked sum / token count of this batch;
 * - dr_grpo: masked sum / (B · max_completion_length) (Dr. GRPO, arXiv:2503.20783);
 * - dapo, cispo, vespo: masked sum / `num_items_in_batch` (DAPO, arXiv:2503.14476; tokens of
 *   the whole accumulated batch, defaulting to this batch's, where dapo equals bnpo);
 * - luspo: mean over rows of the masked row sum (no length division).
 * All but dapo, cispo and vespo are then divided by `gradient_accumulation_steps` (TRL main).
 *
 * Metrics follow TRL 1.13: clip ratios, KL and entropy are masked means over completion tokens
 * (over sequences for sequence-level ratios); the `sampling/*` metrics appear with the IS
 * correction. Differs from TRL: the KL metric is computed whenever a reference is given, even
 * with kl_coef = 0 (TRL skips it); empty masks divide by 1 instead of giving NaN; TRL's
 * `clip_ratio/low_min` and `/high_max` are not computed.
 *
 * Use inside `tf.variableGrads`: the metrics are `tf.keep()`-ed so that they survive the tidy
 * around the loss function; read them after the gradient step and dispose them.
 * The caller disposes `loss` and every non-null metric (e.g. `disposeMetrics(metrics)`).
 *
 * @param inputs Log-probs, advantages and mask; only `per_token_logps` gets gradients.
 * @param options Loss type, clip ranges, KL coefficient, TRL 1.13 options, batch normalisers.
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
  const o = lossSettings(options);
  const accumulation = o.gradient_accumulation_steps ?? 1;
  if (!Number.isInteger(accumulation) || accumulation < 1) {
    throw new RangeError(
      `Expected gradient_accumulation_steps to be an integer >= 1 but found ${accumulation}`,
    );
  }
  if (o.loss_type === "dr_grpo") {
    const m = o.max_completion_length;
    if (m === undefined || !Number.isInteger(m) || m < 1) {
      throw new RangeError(
        `loss_type "dr_grpo" needs max_completion_length, an integer >= 1, but found ${m}`,
      );
    }
  }
  if (o.num_items_in_batch !== undefined && !(o.num_items_in_batch > 0)) {
    throw new RangeError(
      `Expected num_items_in_batch > 0 but found ${o.num_items_in_batch}`,
    );
  }
  const parts = tf.tidy(() => {
    const t = grpoPerToken(inputs, o);
    const mask = tf.cast(inputs.completion_mask, "float32"); // [B, C]
    const tokens = tf.maximum(tf.sum(mask), 1); // []
    const maskedMean = (x: tf.Tensor) => tf.div(tf.sum(tf.mul(x, mask)), tokens);
    // TRL masked_batch_mean: a per-sequence tensor ([B, 1]) is averaged over sequences.
    const batchMean = (x: tf.Tensor) => x.shape[1] === 1 ? tf.mean(x) : maskedMean(x);
    const a = tf.reshape(inputs.advantages, [-1, 1]); // [B, 1]
    const zero = tf.scalar(0);
    const out: tf.TensorContainerObject = {
      loss: aggregate(t.per_token_loss, mask, o, accumulation),
      policyLoss: aggregate(t.per_token_policy_loss, mask, o, accumulation),
      clipLow: zero,
      clipHigh: zero.clone(),
      clipRegion: zero.clone(),
    };
    if (t.coef_2 !== null) {
      const low = tf.logicalAnd(tf.less(t.coef_1, 1 - o.epsilon_low), tf.less(a, 0));
      const high = tf.logicalAnd(tf.greater(t.coef_1, 1 + o.epsilon_high), tf.greater(a, 0));
      out.clipLow = batchMean(tf.cast(low, "float32"));
      out.clipHigh = batchMean(tf.cast(high, "float32"));
      out.clipRegion = batchMean(tf.cast(tf.logicalOr(low, high), "float32"));
    }
    if (t.per_token_kl !== null) out.kl = maskedMean(t.per_token_kl);
    if (inputs.entropies) out.entropy = maskedMean(inputs.entropies);
    if (o.loss_type === "cispo") {
      const clipped = tf.logicalAnd(tf.greater(t.coef_1, o.epsilon_high), tf.greater(a, 0));
      out.cispoClipRatio = batchMean(tf.cast(clipped, "float32"));
    }
    if (t.phi_seq !== null) out.vespoPhiSeqMean = tf.mean(t.phi_seq);
    if (t.importance_sampling_ratio !== null) {
      Object.assign(out, samplingMetrics(inputs, t.importance_sampling_ratio, mask));
    }
    return out;
  }) as unknown as Record<string, tf.Scalar>;
  const { loss, ...metrics } = parts;
  const result = { kl: null, ...metrics } as GrpoMetrics;
  for (const m of Object.values(result)) if (m) tf.keep(m);
  return { loss, metrics: result };
}

/**
 * Frees every non-null metric of {@linkcode grpoLoss}.
 *
 * @param metrics The metrics.
 * @example Usage
 * ```ts ignore
 * disposeMetrics(metrics);
 * ```
 */
export function disposeMetrics(metrics: GrpoMetrics): void {
  tf.dispose(Object.values(metrics).filter((m): m is tf.Scalar => m != null));
}

/** What the policy forward pass of {@linkcode grpoLossAndGrads} may return besides log-probs. */
export interface PolicyOutputs {
  /** [B, C] log-probs of the completion tokens. */
  per_token_logps: tf.Tensor2D;
  /** [B, C] entropies (see {@linkcode GrpoLossInputs}), or null. */
  entropies: tf.Tensor2D | null;
}

/**
 * One backward pass of the GRPO loss: runs `policy` (the policy forward, which must read the
 * variables) inside `tf.variableGrads`, aggregates with {@linkcode grpoLoss}, and returns the
 * loss, d loss / d each variable and the metrics. Everything the forward pass allocates is freed.
 *
 * @param policy Computes [B, C] log-probs from the variables (e.g. model + tokenLogProbs), or
 *   `{ per_token_logps, entropies }` ({@linkcode completionLogProbsAndEntropies}) when the
 *   options need entropies.
 * @param batch The other loss inputs (old/ref/sampler log-probs, advantages, completion_mask).
 * @param options Loss options plus `varList`, the variables to differentiate (the LoRA weights).
 * @returns Loss, gradients keyed by variable name, and metrics. The caller disposes them all.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { tf } from "./tf.ts";
 * import { disposeMetrics, grpoLossAndGrads, tokenLogProbs } from "./grpo.ts";
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
 * tf.dispose([loss, ...Object.values(grads)]);
 * disposeMetrics(metrics);
 * tf.dispose([w, ids, mask, advantages]);
 * ```
 */
export function grpoLossAndGrads(
  policy: () => tf.Tensor2D | PolicyOutputs,
  batch: Omit<GrpoLossInputs, "per_token_logps">,
  options: GrpoLossOptions & { varList: tf.Variable[] },
): { loss: tf.Scalar; grads: tf.NamedTensorMap; metrics: GrpoMetrics } {
  let metrics: GrpoMetrics | undefined;
  try {
    const { value, grads } = tf.variableGrads(() => {
      const out = policy();
      const inputs = out instanceof tf.Tensor
        ? { ...batch, per_token_logps: out }
        : { ...batch, per_token_logps: out.per_token_logps, entropies: out.entropies };
      const result = grpoLoss(inputs, options);
      metrics = result.metrics;
      return result.loss;
    }, options.varList);
    return { loss: value, grads, metrics: metrics! };
  } catch (error) {
    // grpoLoss keeps its metrics; don't leak them when the backward pass fails.
    if (metrics !== undefined) disposeMetrics(metrics);
    throw error;
  }
}

/** Reduces a [B, C] (or [B, 1]) per-token loss to a scalar per `loss_type` (TRL `_compute_loss`). */
function aggregate(
  perToken: tf.Tensor2D,
  mask: tf.Tensor,
  options: LossSettings,
  accumulation: number,
): tf.Scalar {
  const masked = tf.mul(perToken, mask); // [B, C]
  const rows = mask.shape[0];
  let loss: tf.Tensor;
  const lossType = options.loss_type;
  if (lossType === "grpo" || lossType === "sapo") {
    const perRow = tf.div(tf.sum(masked, 1), rowTokens(mask)); // [B]
    loss = tf.div(tf.mean(perRow), accumulation);
  } else if (lossType === "bnpo") {
    loss = tf.div(tf.div(tf.sum(masked), tf.maximum(tf.sum(mask), 1)), accumulation);
  } else if (lossType === "dr_grpo") {
    loss = tf.div(tf.sum(masked), rows * options.max_completion_length! * accumulation);
  } else if (lossType === "dapo" || lossType === "cispo" || lossType === "vespo") {
    const normaliser = options.num_items_in_batch ?? tf.maximum(tf.sum(mask), 1);
    loss = tf.div(tf.sum(masked), normaliser);
  } else if (lossType === "luspo") {
    // LUSPO: a sequence's loss scales with its length, so no per-row length division.
    loss = tf.div(tf.mean(tf.sum(masked, 1)), accumulation);
  } else {
    throw new RangeError(`Unknown loss type: ${lossType}`);
  }
  return loss as tf.Scalar;
}

/** Per-row token counts clamped to >= 1: [B], or [B, 1] with `keepDims`. */
function rowTokens(mask: tf.Tensor, keepDims = false): tf.Tensor {
  return tf.maximum(tf.sum(mask, 1, keepDims), 1);
}

/**
 * The rollout-mismatch IS ratio of TRL `_generate_and_score_completions`: `d = (old -
 * sampling)·mask`, exp per token or of the row sum; `*_truncate` clamps it to [clip_min,
 * clip_max], `*_mask` zeroes it outside. Padding gets ratio exp(0) = 1.
 */
function importanceSamplingRatio(
  old: tf.Tensor,
  sampling: tf.Tensor2D,
  mask: tf.Tensor,
  o: LossSettings,
): tf.Tensor2D {
  const mode = o.vllm_importance_sampling_mode;
  const d = tf.mul(tf.sub(old, sampling), mask); // [B, C]
  const ratio = tf.exp(mode.startsWith("sequence") ? tf.sum(d, 1, true) : d); // [B, C] or [B, 1]
  const min = o.vllm_importance_sampling_clip_min;
  const max = o.vllm_importance_sampling_clip_max;
  if (mode.endsWith("truncate")) {
    let r = ratio;
    if (min !== null) r = tf.maximum(r, min);
    if (max !== null) r = tf.minimum(r, max);
    return r as tf.Tensor2D;
  }
  const outside = tf.logicalOr(
    min === null ? tf.zerosLike(ratio).cast("bool") : tf.less(ratio, min),
    max === null ? tf.zerosLike(ratio).cast("bool") : tf.greater(ratio, max),
  );
  return tf.where(outside, tf.zerosLike(ratio), ratio) as tf.Tensor2D;
}

/** TRL's `sampling/*` metrics: |old - sampler| over tokens, and the IS ratio's min/mean/max. */
function samplingMetrics(
  inputs: GrpoLossInputs,
  ratio: tf.Tensor2D,
  mask: tf.Tensor,
): Record<string, tf.Scalar> {
  const old = inputs.old_per_token_logps ?? inputs.per_token_logps;
  const tokens = tf.maximum(tf.sum(mask), 1);
  const diff = tf.abs(tf.sub(old, inputs.sampling_per_token_logps!)); // [B, C]
  const kept = tf.greater(mask, 0);
  // Sequence modes: over every sequence (TRL flattens the [B, 1] ratio); token modes: over tokens.
  const perSequence = ratio.shape[1] === 1;
  const any = tf.greater(tf.sum(mask), 0);
  const where = (x: tf.Tensor, fill: number) => tf.where(kept, x, tf.fill(x.shape, fill));
  return {
    samplingLogpDifferenceMean: tf.div(tf.sum(tf.mul(diff, mask)), tokens) as tf.Scalar,
    samplingLogpDifferenceMax: tf.max(tf.mul(diff, mask)) as tf.Scalar,
    importanceSamplingRatioMin:
      (perSequence
        ? tf.min(ratio)
        : tf.where(any, tf.min(where(ratio, Infinity)), tf.scalar(0))) as tf.Scalar,
    importanceSamplingRatioMean:
      (perSequence ? tf.mean(ratio) : tf.div(tf.sum(tf.mul(ratio, mask)), tokens)) as tf.Scalar,
    importanceSamplingRatioMax:
      (perSequence ? tf.max(ratio) : tf.max(where(ratio, 0))) as tf.Scalar,
  };
}

/**
 * VESPO's detached sequence weight (TRL `GRPOTrainer.get_gamma_weights`): with the sequence
 * log-ratio s = Σ clamp(logp - old, ±20)·mask (plus Σ log of the IS ratio, clamped to
 * [log 1e-8, 20], when the correction is on), log w = clamp(s, log 1e-8, 20) and
 * φ = exp(λ + k·log w - λ·w), (k, λ) = (k_pos, λ_pos) for A >= 0 else (k_neg, λ_neg); λ >= 1e-4;
 * a non-finite φ becomes 0. [B, 1].
 */
function gammaWeights(
  logRatio: tf.Tensor,
  a: tf.Tensor,
  mask: tf.Tensor,
  isRatio: tf.Tensor | null,
  o: LossSettings,
): tf.Tensor2D {
  const floor = Math.log(1e-8);
  let s = tf.sum(tf.mul(tf.clipByValue(logRatio, -20, 20), mask), 1, true); // [B, 1]
  if (isRatio !== null) {
    // A masked-out ratio of 0 gives log 0 = -inf, which the clamp turns into log 1e-8.
    s = tf.add(s, tf.sum(tf.clipByValue(tf.log(isRatio), floor, 20), 1, true));
  }
  const logW = tf.clipByValue(s, floor, 20);
  const nonNegative = tf.greaterEqual(a, 0);
  const k = tf.where(nonNegative, o.vespo_k_pos, o.vespo_k_neg);
  const lambda = tf.maximum(tf.where(nonNegative, o.vespo_lambda_pos, o.vespo_lambda_neg), 1e-4);
  const phi = tf.exp(tf.sub(tf.add(lambda, tf.mul(k, logW)), tf.mul(lambda, tf.exp(logW))));
  return tf.where(tf.isFinite(phi), phi, tf.zerosLike(phi)) as tf.Tensor2D;
}

/**
 * TRL `get_high_entropy_mask`: 1 for the completion tokens whose entropy is >= the `quantile`
 * quantile of the batch's completion-token entropies (torch.quantile: linear interpolation, in
 * float32), 0 elsewhere. Runs on the device: the entropies are sorted with topk, and the
 * threshold is gathered at the rank q·(n - 1) without reading n back.
 */
function highEntropyMask(entropies: tf.Tensor2D, mask: tf.Tensor, quantile: number): tf.Tensor2D {
  const size = entropies.size;
  const m = tf.reshape(mask, [size]);
  const kept = tf.greater(m, 0);
  // Entropies are >= 0, so -1 sorts padding after every completion token.
  const sorted = tf.topk(tf.where(kept, tf.reshape(entropies, [size]), tf.fill([size], -1)), size)
    .values; // [B*C], descending
  const n = tf.sum(m); // [] completion tokens
  const rank = tf.mul(tf.scalar(quantile), tf.sub(n, 1)); // ascending rank, float32 as torch
  const weight = tf.sub(rank, tf.floor(rank));
  // Ascending index i sits at descending index n - 1 - i.
  const at = (ascending: tf.Tensor) =>
    tf.gather(
      sorted,
      tf.clipByValue(tf.cast(tf.sub(tf.sub(n, 1), ascending), "int32"), 0, size - 1).reshape([1]),
    );
  const below = at(tf.floor(rank));
  const above = at(tf.ceil(rank));
  // torch.lerp: start + w·(end - start) for w < 0.5, end - (end - start)·(1 - w) otherwise.
  const span = tf.sub(above, below);
  const threshold = tf.where(
    tf.less(weight, 0.5),
    tf.add(below, tf.mul(weight, span)),
    tf.sub(above, tf.mul(tf.sub(1, weight), span)),
  );
  const high = tf.greaterEqual(tf.mul(entropies, mask), threshold);
  return tf.cast(tf.logicalAnd(high, tf.greater(mask, 0)), "float32") as tf.Tensor2D;
}

/** Fills the TRL 1.13 options the caller left out with the schema's defaults and checks them. */
function lossSettings(options: GrpoLossOptions): LossSettings {
  const settings = { ...options } as Record<string, unknown>;
  for (const key of LOSS_KEYS) {
    if (settings[key] === undefined) settings[key] = GRPO_DEFAULTS[key];
  }
  const o = settings as unknown as LossSettings;
  o.epsilon_low = options.epsilon;
  o.epsilon_high = options.epsilon_high ?? options.epsilon;
  if (!(o.epsilon_low >= 0 && o.epsilon_low < 1) || !(o.epsilon_high >= 0)) {
    throw new RangeError(
      `Expected 0 <= epsilon < 1 and epsilon_high >= 0 but found epsilon=${o.epsilon_low}, epsilon_high=${options.epsilon_high}`,
    );
  }
  if (!(o.kl_coef >= 0)) {
    throw new RangeError(`Expected kl_coef >= 0 but found ${o.kl_coef}`);
  }
  if (!(o.top_entropy_quantile >= 0 && o.top_entropy_quantile <= 1)) {
    throw new RangeError(
      `Expected top_entropy_quantile in [0, 1] but found ${o.top_entropy_quantile}`,
    );
  }
  if (!(o.sapo_temperature_pos > 0 && o.sapo_temperature_neg > 0)) {
    throw new RangeError(
      `Expected sapo temperatures > 0 but found ${o.sapo_temperature_pos}, ${o.sapo_temperature_neg}`,
    );
  }
  if (!["token", "sequence"].includes(o.importance_sampling_level)) {
    throw new RangeError(`Unknown importance sampling level: ${o.importance_sampling_level}`);
  }
  return o;
}

const GRPO_DEFAULTS = defaultConfig().grpo;

function checkInputs(inputs: GrpoLossInputs, o: LossSettings): void {
  const shape = inputs.per_token_logps.shape;
  const same = (name: string, t: tf.Tensor | null | undefined) => {
    if (
      t && (t.shape.length !== 2 || t.shape[0] !== shape[0] || t.shape[1] !== shape[1])
    ) {
      throw new RangeError(`Expected ${name} of shape [${shape}] but found [${t.shape}]`);
    }
  };
  same("old_per_token_logps", inputs.old_per_token_logps);
  same("ref_per_token_logps", inputs.ref_per_token_logps);
  same("completion_mask", inputs.completion_mask);
  same("sampling_per_token_logps", inputs.sampling_per_token_logps);
  same("entropies", inputs.entropies);
  if (inputs.advantages.shape.length !== 1 || inputs.advantages.shape[0] !== shape[0]) {
    throw new RangeError(
      `Expected advantages of shape [${shape[0]}] but found [${inputs.advantages.shape}]`,
    );
  }
  if (o.kl_coef !== 0 && inputs.ref_per_token_logps === null) {
    throw new TypeError(
      `kl_coef=${o.kl_coef} needs ref_per_token_logps, but it is null (set kl_coef: 0 to skip KL)`,
    );
  }
  if (o.top_entropy_quantile < 1 && !inputs.entropies) {
    throw new TypeError(
      `top_entropy_quantile=${o.top_entropy_quantile} needs entropies, but none were given ` +
        `(compute them with completionLogProbsAndEntropies, or set top_entropy_quantile: 1)`,
    );
  }
  if (o.vllm_importance_sampling_correction && !inputs.sampling_per_token_logps) {
    throw new TypeError(
      "vllm_importance_sampling_correction needs sampling_per_token_logps (the rollout's " +
        "samplingLogProbs), but none were given (or set it to false)",
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

/**
 * Runs `f` as one gradient-free node (torch `no_grad`): the tape records the result as a
 * constant, so nothing inside `f` is differentiated (topk and logical ops have no gradients in
 * tfjs). The caller disposes the result.
 */
function noGrad<T extends tf.Tensor>(f: () => T): T {
  return tf.customGrad(() => ({ value: f(), gradFunc: () => [] }))() as T;
}
