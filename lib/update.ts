/**
 * The "update" phase: one optimizer step of GRPO on a scored rollout. The rollout is split into
 * micro-batches of `per_device_train_batch_size` completions ({@linkcode prepareMicroBatches}),
 * whose gradients are summed (gradient accumulation), clipped by global norm and applied by
 * AdamW ({@linkcode updatePhase}).
 *
 * Follows TRL `GRPOTrainer._compute_loss` and `Trainer.training_step` with LoRA as the policy
 * and the adapter switched off as the reference (no second copy of the weights).
 *
 * @module
 */
import { tf } from "./tf.ts";
import type { Config } from "./config.ts";
import { deriveSeed } from "./data.ts";
import type { GrpoLossKey, GrpoMetrics } from "./grpo.ts";
import {
  completionLogProbs,
  completionLogProbsAndEntropies,
  disposeMetrics,
  GRPO_METRIC_NAMES,
  grpoLossAndGrads,
} from "./grpo.ts";
import type { LoraAdapter } from "./lora.ts";
import type { LinearAdapter, Qwen2Model } from "./model.ts";
import type { AdamW } from "./optim.ts";
import { accumulateGrads, clipGradNorm, globalGradNorm } from "./optim.ts";
import type { Rollout, TrainingBatch } from "./rollout.ts";
import { disposeBatch, toTrainingBatch } from "./rollout.ts";
import type { Tokenizer } from "./tokenizer.ts";

/**
 * The config slices the update reads: `grpo`, `generation` and `training`. TRL 1.13's loss
 * options ({@linkcode GrpoLossKey}) may be left out of a literal; the loss then uses the
 * schema's defaults.
 */
export interface UpdateConfig {
  grpo:
    & Pick<
      Config["grpo"],
      | "loss_type"
      | "epsilon"
      | "epsilon_high"
      | "kl_coef"
      | "num_iterations"
      | "mask_truncated_completions"
    >
    & Partial<Pick<Config["grpo"], GrpoLossKey>>;
  generation: Pick<Config["generation"], "temperature" | "max_new_tokens">;
  training: Pick<
    Config["training"],
    "per_device_train_batch_size" | "gradient_checkpointing" | "max_grad_norm"
  >;
}

/** What {@linkcode prepareBatch} reads: the policy, the pad id and the config slices. */
export interface PrepareInputs {
  model: Qwen2Model;
  tokenizer: Pick<Tokenizer, "padTokenId">;
  /** The policy's adapter (its log-probs are the old policy's when num_iterations > 1). */
  adapter: LinearAdapter | null;
  config: UpdateConfig;
}

/** What {@linkcode updatePhase} reads and changes: the policy, its optimizer and the config. */
export interface UpdateInputs {
  model: Qwen2Model;
  /** The LoRA policy; its variables are what the optimizer updates. */
  adapter: LoraAdapter;
  optimizer: AdamW;
  config: UpdateConfig;
}

/**
 * A micro-batch ready for the update: padded tensors (with the sampler's log-probs when the
 * rollout gave them), advantages, reference/old log-probs.
 */
export interface PreparedBatch {
  batch: TrainingBatch;
  /** [B] */
  advantages: tf.Tensor1D;
  /** [B, C] adapter-off log-probs, or null when kl_coef = 0. */
  ref: tf.Tensor2D | null;
  /** [B, C] log-probs at generation time, or null when num_iterations = 1. */
  old: tf.Tensor2D | null;
}

/**
 * The numbers of one optimizer step, named as TRL logs them. Besides the keys below, every
 * metric {@linkcode grpoLossAndGrads} gives for the configured options, under its
 * {@linkcode GRPO_METRIC_NAMES} name: `clip_ratio/low_mean`, `/high_mean` and `/region_mean`
 * (not for cispo, sapo and vespo, as in TRL), `entropy`, `cispo_clip_ratio`,
 * `vespo/phi_seq_mean` and the `sampling/*` metrics of the IS correction.
 */
export type UpdateMetrics = {
  /** The loss of the step: the sum over micro-batches (each already normalised). */
  loss: number;
  /** The loss without the β·KL term, summed like the loss. */
  policy_loss: number;
  /** Mean per-token KL to the reference (k3), averaged over micro-batches; 0 without one. */
  kl: number;
  /** kl_coef · kl. */
  kl_penalty: number;
  /** Global gradient norm before clipping. */
  grad_norm: number;
  learning_rate: number;
  /**
   * 1 when the optimizer step was skipped because the loss or gradients were not finite (or
   * vanished to exactly 0 while the KL term was not: float32 overflow in the forward pass).
   */
  update_skipped: number;
  [metric: string]: number;
};

/** The rollout rows {@linkcode prepareBatch} reads. */
export type MicroBatchRows =
  & Pick<Rollout, "promptIds" | "completionIds" | "finishReasons">
  & Partial<Pick<Rollout, "samplingLogProbs">>;

/**
 * Builds the tensors of one micro-batch: padding, advantages, and the log-probs that stay fixed
 * during the update (reference with the adapter off; old policy when num_iterations > 1).
 *
 * @param policy Model, tokenizer, adapter and config slices.
 * @param rows Prompt ids, completion ids and finish reasons per row, and the sampler's
 *   log-probs when the rollout gave them (`sampling_per_token_logps` of the loss).
 * @param advantages One per row.
 * @returns The prepared batch. The caller disposes it ({@linkcode disposePrepared}).
 * @example Usage
 * ```ts ignore
 * const prepared = prepareBatch({ model, tokenizer, adapter, config }, groups, advantages);
 * ```
 */
export function prepareBatch(
  policy: PrepareInputs,
  rows: MicroBatchRows,
  advantages: number[],
): PreparedBatch {
  const { config } = policy;
  const batch = toTrainingBatch(rows, policy.tokenizer.padTokenId, {
    maskTruncated: config.grpo.mask_truncated_completions,
  });
  // Rows with the same prompt (a group's completions) share one prefill in the scoring passes.
  const first = new Map<string, number>();
  const promptOf = rows.promptIds.map((ids, i) => {
    const key = ids.join(",");
    if (!first.has(key)) first.set(key, i);
    return first.get(key)!;
  });
  const input = {
    inputIds: batch.inputIds,
    attentionMask: batch.attentionMask,
    completionLength: batch.completionLength,
    temperature: config.generation.temperature,
    promptOf,
  };
  // No dropout seed: the reference and the old policy are evaluated, not trained.
  let ref: tf.Tensor2D | null = null;
  let old: tf.Tensor2D | null = null;
  try {
    if (config.grpo.kl_coef !== 0) {
      ref = completionLogProbs(policy.model, input, { adapter: null });
    }
    if (config.grpo.num_iterations > 1) {
      old = completionLogProbs(policy.model, input, { adapter: policy.adapter });
    }
    return { batch, advantages: tf.tensor1d(advantages), ref, old };
  } catch (error) {
    // A failed pass (out of memory, say) leaves nothing behind.
    disposeBatch(batch);
    tf.dispose([...(ref ? [ref] : []), ...(old ? [old] : [])]);
    throw error;
  }
}

/**
 * Splits a rollout into micro-batches of `per_device_train_batch_size` completions (gradient
 * accumulation) and prepares each with {@linkcode prepareBatch}.
 *
 * @param policy Model, tokenizer, adapter and config slices.
 * @param rows The rollout.
 * @param advantages One per completion.
 * @returns One prepared batch per micro-batch. The caller disposes them ({@linkcode disposePrepared}).
 * @example Usage
 * ```ts ignore
 * const prepared = prepareMicroBatches(ctx, groups, advantages);
 * const metrics = await updatePhase(ctx, prepared, { learningRate: 1e-3, dropoutSeed: 1 });
 * prepared.forEach(disposePrepared);
 * ```
 */
export function prepareMicroBatches(
  policy: PrepareInputs,
  rows: MicroBatchRows,
  advantages: number[],
): PreparedBatch[] {
  const size = policy.config.training.per_device_train_batch_size;
  const out: PreparedBatch[] = [];
  try {
    for (let row = 0; row < rows.completionIds.length; row += size) {
      const end = Math.min(row + size, rows.completionIds.length);
      out.push(prepareBatch(policy, {
        promptIds: rows.promptIds.slice(row, end),
        completionIds: rows.completionIds.slice(row, end),
        finishReasons: rows.finishReasons.slice(row, end),
        samplingLogProbs: rows.samplingLogProbs?.slice(row, end),
      }, advantages.slice(row, end)));
    }
  } catch (error) {
    out.forEach(disposePrepared);
    throw error;
  }
  return out;
}

/** Frees a {@linkcode PreparedBatch}. */
export function disposePrepared(p: PreparedBatch): void {
  disposeBatch(p.batch);
  tf.dispose([p.advantages, ...(p.ref ? [p.ref] : []), ...(p.old ? [p.old] : [])]);
}

/**
 * Loss types without TRL's `clip_ratio/*` metrics: TRL `_compute_loss` logs them only for grpo,
 * bnpo, dr_grpo, dapo and luspo (cispo logs `cispo_clip_ratio`, vespo `vespo/phi_seq_mean`).
 */
const NO_CLIP_RATIO: ReadonlySet<string> = new Set(["cispo", "sapo", "vespo"]);
const CLIP_RATIO_METRICS: ReadonlySet<keyof GrpoMetrics> = new Set([
  "clipLow",
  "clipHigh",
  "clipRegion",
]);

/**
 * How a metric combines over micro-batches: the policy loss sums like the loss, the extremes
 * stay extremes, the others average.
 */
function reduction(key: keyof GrpoMetrics): "sum" | "mean" | "min" | "max" {
  if (key === "policyLoss") return "sum";
  if (key === "importanceSamplingRatioMin") return "min";
  if (key === "samplingLogpDifferenceMax" || key === "importanceSamplingRatioMax") return "max";
  return "mean";
}

/** One scalar per micro-batch → one scalar; a mean is a sum here, divided after the read-back. */
function reduceOnDevice(values: tf.Scalar[], how: ReturnType<typeof reduction>): tf.Scalar {
  if (how === "min") return tf.tidy(() => tf.min(tf.stack(values))) as tf.Scalar;
  if (how === "max") return tf.tidy(() => tf.max(tf.stack(values))) as tf.Scalar;
  return tf.addN(values);
}

/**
 * Update phase: one optimizer step. Gradients of the GRPO loss (TRL 1.13's `_compute_loss`,
 * with every option of the `grpo` section) are summed over the micro-batches (gradient
 * accumulation), clipped by global norm, and applied by AdamW. The policy forward also gives
 * each token's entropy (TRL computes it in every `_compute_loss`): the `entropy` metric, and
 * what `top_entropy_quantile` masks by. LoRA dropout draws its masks from
 * `deriveSeed(dropoutSeed, micro-batch index)`. A step whose loss or gradients are not finite is
 * not applied (`update_skipped: 1`; the adapter and AdamW state stay as they were).
 *
 * @param policy Model, LoRA adapter, optimizer and config slices.
 * @param prepared The micro-batches ({@linkcode prepareMicroBatches}); not disposed here.
 * @param options `learningRate` of this step and `dropoutSeed`.
 * @returns Loss parts, KL, the loss options' metrics and the pre-clip gradient norm.
 * @example Usage
 * ```ts ignore
 * const metrics = await updatePhase(ctx, prepared, { learningRate: 1e-3, dropoutSeed: 7 });
 * ```
 */
export async function updatePhase(
  policy: UpdateInputs,
  prepared: PreparedBatch[],
  options: { learningRate: number; dropoutSeed: number },
): Promise<UpdateMetrics> {
  const { config } = policy;
  const vars = [...policy.adapter.variables.values()];
  // dapo, cispo and vespo normalise by the active tokens of the whole accumulated batch (TRL
  // num_items_in_batch).
  const numItems = prepared.reduce((n, p) => n + p.batch.numTokens, 0);
  let sum: tf.NamedTensorMap | null = null;
  // Per micro-batch scalars, reduced on the device and read back once at the end of the step.
  const losses: tf.Scalar[] = [];
  const perBatch: GrpoMetrics[] = [];
  const zeros: tf.Scalar[] = [];
  try {
    for (const [m, p] of prepared.entries()) {
      const { loss, grads, metrics } = grpoLossAndGrads(
        () =>
          completionLogProbsAndEntropies(policy.model, {
            inputIds: p.batch.inputIds,
            attentionMask: p.batch.attentionMask,
            completionLength: p.batch.completionLength,
            temperature: config.generation.temperature,
          }, {
            adapter: policy.adapter,
            dropoutSeed: deriveSeed(options.dropoutSeed, m),
            gradientCheckpointing: config.training.gradient_checkpointing,
          }),
        {
          old_per_token_logps: p.old,
          ref_per_token_logps: p.ref,
          advantages: p.advantages,
          completion_mask: p.batch.completionMask,
          sampling_per_token_logps: p.batch.samplingPerTokenLogps,
        },
        {
          // loss_type, epsilon, epsilon_high, kl_coef and TRL 1.13's options (GrpoLossKey).
          ...config.grpo,
          max_completion_length: config.generation.max_new_tokens,
          num_items_in_batch: Math.max(1, numItems),
          gradient_accumulation_steps: prepared.length,
          varList: vars,
        },
      );
      losses.push(loss);
      perBatch.push(metrics);
      // Keyed by tf variable name, as AdamW keys its moments.
      sum = accumulateGrads(sum, grads);
      tf.dispose(Object.values(grads));
    }
    // max_grad_norm 0 turns clipping off (HF); the norm is still logged.
    const { grads: clipped, norm } = config.training.max_grad_norm > 0
      ? clipGradNorm(sum!, config.training.max_grad_norm)
      : { grads: sum!, norm: globalGradNorm(sum!) };
    if (clipped !== sum) tf.dispose(Object.values(sum!));
    sum = clipped; // freed in finally

    // The metrics this configuration has, in GRPO_METRIC_NAMES order (TRL logs KL only with a
    // reference; we log 0 without one, as before).
    const noClipRatio = NO_CLIP_RATIO.has(config.grpo.loss_type);
    const keys = (Object.keys(GRPO_METRIC_NAMES) as (keyof GrpoMetrics)[]).filter((key) =>
      key === "kl" ||
      (perBatch[0][key] != null && !(noClipRatio && CLIP_RATIO_METRICS.has(key)))
    );
    const scalars: Record<string, tf.Scalar> = { loss: tf.addN(losses), gradNorm: norm };
    for (const key of keys) {
      const values = perBatch.map((mt) => {
        const value = mt[key];
        if (value != null) return value;
        zeros.push(tf.scalar(0)); // kl without a reference
        return zeros[zeros.length - 1];
      });
      scalars[key] = reduceOnDevice(values, reduction(key));
    }
    // Sync point: the step's one read-back, before the optimizer step, so that a step whose
    // numbers are not finite can skip it.
    const totals = await readScalars(scalars);
    // The loss of TRL's step is the sum over micro-batches (each already divided by their count
    // for grpo/bnpo/dr_grpo); ratios, KL and entropy are averaged.
    const n = prepared.length;
    const out: Record<string, number> = {};
    for (const key of keys) {
      out[GRPO_METRIC_NAMES[key]] = reduction(key) === "mean" ? totals[key] / n : totals[key];
    }
    const { kl, policy_loss, ...rest } = out;
    const klPenalty = config.grpo.kl_coef * kl;
    // Non-finite logits or gradients (NaN, Inf) would write NaN into the adapter and the AdamW
    // moments for good: skip the update (DeepSpeed's fp16 overflow skip). So do exactly zero
    // gradients while the KL term is not zero: float32 overflowed inside the forward pass
    // (RMSNorm's mean of squares became Inf and its output 0), and AdamW's momentum would keep
    // pushing the adapter further out.
    const skip = !Number.isFinite(totals.loss) || !Number.isFinite(totals.gradNorm) ||
      (totals.gradNorm === 0 && klPenalty > 0);
    if (!skip) policy.optimizer.step(clipped, options.learningRate);
    return {
      loss: totals.loss,
      policy_loss,
      kl,
      kl_penalty: klPenalty,
      ...rest,
      grad_norm: totals.gradNorm,
      learning_rate: options.learningRate,
      update_skipped: skip ? 1 : 0,
    };
  } finally {
    if (sum !== null) tf.dispose(Object.values(sum));
    tf.dispose([...losses, ...zeros]);
    perBatch.forEach(disposeMetrics);
  }
}

/**
 * Reads named scalars back in one transfer and disposes them: the step's only sync point.
 */
async function readScalars<K extends string>(
  scalars: Record<K, tf.Scalar>,
): Promise<Record<K, number>> {
  const names = Object.keys(scalars) as K[];
  const stacked = tf.stack(names.map((name) => scalars[name])); // [names.length]
  const values = await stacked.data();
  tf.dispose([stacked, ...names.map((name) => scalars[name])]);
  return Object.fromEntries(names.map((name, i) => [name, values[i]])) as Record<K, number>;
}
