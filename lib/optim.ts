/**
 * The optimiser side of a training step: AdamW with exportable state, global-norm gradient
 * clipping, gradient accumulation and HF learning-rate schedules.
 *
 * Mirrors `torch.optim.AdamW` (single-tensor path), `torch.nn.utils.clip_grad_norm_` and
 * transformers' `get_{constant,linear,cosine}_schedule_with_warmup`; the golden numbers are in
 * tests/fixtures/qwen2-tiny/expected.json (`adamw`).
 *
 * @module
 */
import { tf } from "./tf.ts";
import type { Config } from "./config.ts";

/** Gradients keyed by variable name, as `tf.variableGrads` returns them or as a Map. */
export type NamedGrads = tf.NamedTensorMap | Map<string, tf.Tensor>;

/** AdamW hyperparameters: the HF TrainingArguments keys of the `training` config section. */
export type AdamWOptions = Pick<
  Config["training"],
  "adam_beta1" | "adam_beta2" | "adam_epsilon" | "weight_decay"
>;

/** AdamW state as plain arrays, for checkpoints (torch `state_dict()["state"]` per parameter). */
export interface AdamWState {
  /** Optimizer steps taken so far (torch `state["step"]`; the same for every parameter). */
  step: number;
  /** First moments by variable name, flattened in the variable's row-major order. */
  exp_avg: Record<string, Float32Array>;
  /** Second moments by variable name, flattened in the variable's row-major order. */
  exp_avg_sq: Record<string, Float32Array>;
}

function getGrad(grads: NamedGrads, name: string): tf.Tensor | undefined {
  return grads instanceof Map ? grads.get(name) : grads[name];
}

function gradNames(grads: NamedGrads): string[] {
  return grads instanceof Map ? [...grads.keys()] : Object.keys(grads);
}

/**
 * AdamW (Loshchilov & Hutter, arXiv:1711.05101) with torch.optim.AdamW semantics: decoupled
 * decay `p *= 1 - lr·wd`, then `m = β1·m + (1-β1)·g`, `v = β2·v + (1-β2)·g²`,
 * `p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + ε)`. The learning rate is passed to every
 * {@linkcode AdamW.step}, so a scheduler can change it per step.
 *
 * Owns its moment tensors: call {@linkcode AdamW.dispose} when done (the variables stay).
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { tf } from "./tf.ts";
 * import { AdamW } from "./optim.ts";
 * const w = tf.variable(tf.tensor1d([1, -1]), true, "doc/adamw/w");
 * const optimizer = new AdamW([w], {
 *   adam_beta1: 0.9, adam_beta2: 0.999, adam_epsilon: 1e-8, weight_decay: 0,
 * });
 * const grad = tf.tensor1d([0.5, -2]);
 * optimizer.step({ "doc/adamw/w": grad }, 0.1); // first step moves each entry by lr·sign(g)
 * assert.deepEqual(Array.from(w.dataSync()).map((x) => +x.toFixed(4)), [0.9, -0.9]);
 * tf.dispose([grad, w]);
 * optimizer.dispose();
 * ```
 */
export class AdamW {
  /** The variables updated, in the order given. */
  readonly variables: readonly tf.Variable[];
  readonly #options: AdamWOptions;
  #step = 0;
  #expAvg = new Map<string, tf.Tensor>();
  #expAvgSq = new Map<string, tf.Tensor>();

  /**
   * @param variables The trainable variables, each with a unique `name` (its PEFT key).
   * @param options β1, β2, ε and weight decay (the `training` config section fits).
   */
  constructor(variables: tf.Variable[], options: AdamWOptions) {
    const { adam_beta1: b1, adam_beta2: b2, adam_epsilon: eps, weight_decay: wd } = options;
    if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1) || !(eps > 0) || !(wd >= 0)) {
      throw new RangeError(
        `Expected 0 <= adam_beta1, adam_beta2 < 1, adam_epsilon > 0, weight_decay >= 0 but found ` +
          `${b1}, ${b2}, ${eps}, ${wd}`,
      );
    }
    const seen = new Set<string>();
    for (const v of variables) {
      if (seen.has(v.name)) throw new RangeError(`Duplicate variable name: ${v.name}`);
      if (v.dtype !== "float32") {
        throw new TypeError(`Expected float32 variable ${v.name} but found ${v.dtype}`);
      }
      seen.add(v.name);
    }
    this.variables = [...variables];
    this.#options = { ...options };
    for (const v of this.variables) {
      this.#expAvg.set(v.name, tf.keep(tf.zerosLike(v)));
      this.#expAvgSq.set(v.name, tf.keep(tf.zerosLike(v)));
    }
  }

  /** Steps taken so far (torch `state["step"]`). */
  get stepCount(): number {
    return this.#step;
  }

  /**
   * One AdamW update of every variable. `grads` must hold exactly one gradient per variable,
   * shaped like it (clip and accumulate first). Does not dispose `grads`.
   *
   * @param grads Gradients by variable name.
   * @param lr Learning rate for this step (e.g. {@linkcode learningRateAt}).
   */
  step(grads: NamedGrads, lr: number): void {
    if (!(lr >= 0) || !Number.isFinite(lr)) {
      throw new RangeError(`Expected a finite learning rate >= 0 but found ${lr}`);
    }
    this.#checkGrads(grads);
    const { adam_beta1: b1, adam_beta2: b2, adam_epsilon: eps, weight_decay: wd } = this.#options;
    this.#step += 1;
    const t = this.#step;
    // torch: step_size = lr / bias_correction1; denom = sqrt(v) / sqrt(bias_correction2) + eps
    const stepSize = lr / (1 - b1 ** t);
    const bias2Sqrt = Math.sqrt(1 - b2 ** t);
    const decay = 1 - lr * wd;
    for (const v of this.variables) {
      const g = getGrad(grads, v.name)!;
      const oldM = this.#expAvg.get(v.name)!;
      const oldS = this.#expAvgSq.get(v.name)!;
      const [m, s] = tf.tidy(() => {
        const m = tf.add(tf.mul(oldM, b1), tf.mul(g, 1 - b1));
        const s = tf.add(tf.mul(oldS, b2), tf.mul(tf.square(g), 1 - b2));
        const decayed = decay === 1 ? v : tf.mul(v, decay);
        const denom = tf.add(tf.div(tf.sqrt(s), bias2Sqrt), eps);
        v.assign(tf.sub(decayed, tf.mul(tf.div(m, denom), stepSize)));
        return [tf.keep(m), tf.keep(s)];
      });
      tf.dispose([oldM, oldS]);
      this.#expAvg.set(v.name, m);
      this.#expAvgSq.set(v.name, s);
    }
  }

  /**
   * Copies the moments out as plain arrays (a GPU/wasm read-back: call it only when saving).
   *
   * @returns Step count and moments by variable name.
   */
  async state(): Promise<AdamWState> {
    const expAvg: Record<string, Float32Array> = {};
    const expAvgSq: Record<string, Float32Array> = {};
    for (const v of this.variables) {
      // Copy: the cpu backend hands back its own storage.
      expAvg[v.name] = new Float32Array(await this.#expAvg.get(v.name)!.data());
      expAvgSq[v.name] = new Float32Array(await this.#expAvgSq.get(v.name)!.data());
    }
    return { step: this.#step, exp_avg: expAvg, exp_avg_sq: expAvgSq };
  }

  /**
   * Replaces the step count and moments with saved ones (from {@linkcode AdamW.state}), so
   * training resumes exactly. Every variable needs both moments with its element count.
   *
   * @param state A state exported by an optimizer over variables with the same names and sizes.
   */
  loadState(state: AdamWState): void {
    if (!Number.isInteger(state.step) || state.step < 0) {
      throw new RangeError(`Expected an integer step >= 0 but found ${state.step}`);
    }
    const known = new Set(this.variables.map((v) => v.name));
    for (const key of ["exp_avg", "exp_avg_sq"] as const) {
      for (const name of Object.keys(state[key])) {
        if (!known.has(name)) throw new RangeError(`Unknown variable in ${key}: ${name}`);
      }
      for (const v of this.variables) {
        const values = state[key][v.name];
        if (values === undefined) throw new RangeError(`Missing ${key} for ${v.name}`);
        if (values.length !== v.size) {
          throw new RangeError(
            `Expected ${v.size} values of ${key} for ${v.name} [${v.shape}] but found ${values.length}`,
          );
        }
      }
    }
    for (const v of this.variables) {
      tf.dispose([this.#expAvg.get(v.name)!, this.#expAvgSq.get(v.name)!]);
      this.#expAvg.set(v.name, tf.keep(tf.tensor(state.exp_avg[v.name], v.shape, "float32")));
      this.#expAvgSq.set(v.name, tf.keep(tf.tensor(state.exp_avg_sq[v.name], v.shape, "float32")));
    }
    this.#step = state.step;
  }

  /** Disposes the moment tensors (not the variables). */
  dispose(): void {
    tf.dispose([...this.#expAvg.values(), ...this.#expAvgSq.values()]);
    this.#expAvg.clear();
    this.#expAvgSq.clear();
  }

  #checkGrads(grads: NamedGrads): void {
    const names = new Set(this.variables.map((v) => v.name));
    for (const name of gradNames(grads)) {
      if (!names.has(name)) throw new TypeError(`Gradient for unknown variable ${name}`);
    }
    for (const v of this.variables) {
      const g = getGrad(grads, v.name);
      if (g === undefined || g === null) throw new TypeError(`Missing gradient for ${v.name}`);
      if (g.shape.length !== v.shape.length || g.shape.some((d, i) => d !== v.shape[i])) {
        throw new RangeError(
          `Expected gradient of ${v.name} with shape [${v.shape}] but found [${g.shape}]`,
        );
      }
    }
  }
}

/**
 * Global L2 norm of all gradients, `||[||g_1||, ..., ||g_n||]||` as torch's
 * `clip_grad_norm_` computes it (HF logs it as `grad_norm`).
 *
 * @param grads Gradients by name.
 * @returns A scalar. The caller disposes it.
 * @example Usage
 * ```ts
 * import { tf } from "./tf.ts";
 * import { globalGradNorm } from "./optim.ts";
 * globalGradNorm({ a: tf.tensor1d([3]), b: tf.tensor1d([4]) }).print(); // 5
 * ```
 */
export function globalGradNorm(grads: NamedGrads): tf.Scalar {
  const names = gradNames(grads);
  if (names.length === 0) throw new RangeError("Cannot take the norm of no gradients");
  return tf.tidy(() => {
    const norms = names.map((n) => tf.norm(getGrad(grads, n)!)); // each []
    return tf.norm(tf.stack(norms)) as tf.Scalar;
  });
}

/**
 * Scales all gradients by `min(1, maxNorm / (norm + 1e-6))`, as `torch.nn.utils.clip_grad_norm_`
 * (which always multiplies, so a coefficient of 1 changes nothing).
 *
 * @param grads Gradients by name; not modified or disposed.
 * @param maxNorm The largest global norm allowed, > 0 (HF `max_grad_norm`; skip the call for 0).
 * @returns New clipped gradients and the norm before clipping. The caller disposes them.
 * @example Usage
 * ```ts
 * import { tf } from "./tf.ts";
 * import { clipGradNorm } from "./optim.ts";
 * const { grads, norm } = clipGradNorm({ a: tf.tensor1d([3, 4]) }, 1);
 * norm.print(); // 5
 * grads.a.print(); // [0.6, 0.8]
 * ```
 */
export function clipGradNorm(
  grads: NamedGrads,
  maxNorm: number,
): { grads: tf.NamedTensorMap; norm: tf.Scalar } {
  if (!(maxNorm > 0)) throw new RangeError(`Expected maxNorm > 0 but found ${maxNorm}`);
  const names = gradNames(grads);
  return tf.tidy(() => {
    const norm = globalGradNorm(grads);
    const coef = tf.minimum(tf.div(maxNorm, tf.add(norm, 1e-6)), 1); // []
    const clipped: tf.NamedTensorMap = {};
    for (const n of names) clipped[n] = tf.mul(getGrad(grads, n)!, coef);
    return { grads: clipped, norm };
  });
}

/**
 * Adds `grads` into a running sum for gradient accumulation. Consumes `sum`: its tensors are
 * disposed and the returned map replaces it; `grads` is left alone. Pass `null` to start.
 * Scale the loss (TRL divides by the accumulation steps, see grpoLoss) rather than the sum.
 *
 * @param sum The running sum so far, or null.
 * @param grads This micro-batch's gradients, with the same names as `sum`.
 * @returns The new running sum. The caller disposes it.
 * @example Usage
 * ```ts
 * import { tf } from "./tf.ts";
 * import { accumulateGrads } from "./optim.ts";
 * const g = { a: tf.tensor1d([1, 2]) };
 * let sum = accumulateGrads(null, g);
 * sum = accumulateGrads(sum, g);
 * sum.a.print(); // [2, 4]
 * ```
 */
export function accumulateGrads(
  sum: tf.NamedTensorMap | null,
  grads: NamedGrads,
): tf.NamedTensorMap {
  const names = gradNames(grads);
  if (sum !== null) {
    const have = Object.keys(sum);
    if (have.length !== names.length || names.some((n) => !(n in sum))) {
      throw new RangeError(
        `Cannot accumulate gradients for [${names}] into a sum over [${have}]`,
      );
    }
  }
  const next = tf.tidy(() => {
    const out: tf.NamedTensorMap = {};
    for (const n of names) {
      const g = getGrad(grads, n)!;
      out[n] = sum === null ? g.clone() : tf.add(sum[n], g);
    }
    return out;
  });
  if (sum !== null) tf.dispose(Object.values(sum));
  return next;
}

/** Learning-rate schedule settings: HF TrainingArguments keys plus the run length. */
export type ScheduleOptions =
  & Pick<
    Config["training"],
    "learning_rate" | "lr_scheduler_type" | "warmup_steps" | "warmup_ratio"
  >
  & {
    /** Optimizer steps in the whole run (HF `num_training_steps`). */
    totalSteps: number;
  };

/**
 * Warmup length as HF `TrainingArguments.get_warmup_steps`: `warmup_steps` when > 0, else
 * `ceil(warmup_ratio · totalSteps)`.
 *
 * @param totalSteps Optimizer steps in the run.
 * @param options `warmup_steps` and `warmup_ratio`.
 * @returns The number of warmup steps.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { warmupStepsFor } from "./optim.ts";
 * assert.equal(warmupStepsFor(30, { warmup_steps: 0, warmup_ratio: 0.05 }), 2);
 * ```
 */
export function warmupStepsFor(
  totalSteps: number,
  options: Pick<ScheduleOptions, "warmup_steps" | "warmup_ratio">,
): number {
  return options.warmup_steps > 0
    ? options.warmup_steps
    : Math.ceil(totalSteps * options.warmup_ratio);
}

/**
 * Learning rate for the optimizer step with 0-based index `step` (the number of steps already
 * taken; HF's scheduler value when `global_step == step`, so with warmup the first step uses 0).
 * Linear warmup `step / warmup`, then:
 * - linear: `(total - step) / (total - warmup)`, floored at 0 (`get_linear_schedule_with_warmup`);
 * - cosine: `0.5 · (1 + cos(π · progress))` (`get_cosine_schedule_with_warmup`, num_cycles 0.5);
 * - constant: 1 (`get_constant_schedule_with_warmup`). Differs from HF: its plain "constant"
 *   ignores warmup; we honour warmup_steps/warmup_ratio instead of silently dropping them.
 *
 * @param step Steps already taken, an integer >= 0.
 * @param options Peak rate, schedule type, warmup and total steps.
 * @returns The learning rate.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { learningRateAt } from "./optim.ts";
 * const options = {
 *   learning_rate: 1e-3, lr_scheduler_type: "linear", warmup_steps: 10, warmup_ratio: 0,
 *   totalSteps: 100,
 * } as const;
 * assert.equal(learningRateAt(5, options), 5e-4);
 * assert.equal(learningRateAt(55, options), 5e-4);
 * ```
 */
export function learningRateAt(step: number, options: ScheduleOptions): number {
  const { learning_rate: lr, lr_scheduler_type: type, totalSteps } = options;
  if (!Number.isInteger(step) || step < 0) {
    throw new RangeError(`Expected an integer step >= 0 but found ${step}`);
  }
  if (!Number.isInteger(totalSteps) || totalSteps < 1) {
    throw new RangeError(`Expected totalSteps to be an integer >= 1 but found ${totalSteps}`);
  }
  if (type !== "constant" && type !== "linear" && type !== "cosine") {
    throw new RangeError(`Unknown lr_scheduler_type: ${type}`);
  }
  const warmup = warmupStepsFor(totalSteps, options);
  if (step < warmup) return lr * (step / Math.max(1, warmup));
  if (type === "constant") return lr;
  if (type === "linear") {
    return lr * Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmup));
  }
  // cosine
  const progress = (step - warmup) / Math.max(1, totalSteps - warmup);
  return lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}
