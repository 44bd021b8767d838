/**
 * Gradient checkpointing on TensorFlow.js (torch `torch.utils.checkpoint.checkpoint`, which HF
 * `gradient_checkpointing_enable` wraps around each decoder layer): the forward pass keeps only
 * a function's arguments, and the backward pass recomputes the function under `tf.grads`.
 *
 * It leans on one tfjs internal, the engine's `state.activeTape` (see {@linkcode engineTape});
 * tests/gradient_checkpointing_test.ts pins its behaviour, so a tfjs upgrade that changes it
 * fails there first.
 *
 * @module
 */
import { tf } from "./tf.ts";

/** Arguments of {@linkcode gradientCheckpoint}. */
export interface CheckpointArgs {
  /** Tensors the result is differentiated with respect to (a layer input, adapter weights). */
  inputs: tf.Tensor[];
  /** Tensors f reads but that get a zero gradient (masks, RoPE tables). */
  constants: tf.Tensor[];
}

/** The piece of tfjs's engine state that {@linkcode gradientCheckpoint} saves and restores. */
export interface EngineTape {
  /** The tape being recorded or back-propagated; null after a top-level `tf.grads` ends. */
  activeTape: unknown[] | null | undefined;
  /** Nesting depth of `tf.grads` calls that are recording (0 during a backward pass). */
  gradientDepth: number;
}

/**
 * The engine's tape state (a tfjs-core 4.x internal: `EngineState.activeTape` and
 * `gradientDepth` in `engine.ts`).
 *
 * @returns The live state object; writes go to the engine.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { engineTape } from "./_gradient_checkpointing.ts";
 * assert.equal(engineTape().gradientDepth, 0);
 * ```
 */
export function engineTape(): EngineTape {
  return (tf.engine() as unknown as { state: EngineTape }).state;
}

/**
 * `f(inputs, constants)`, keeping only the arguments for the backward pass, which recomputes f
 * and differentiates it with respect to `inputs` (`constants` get zero gradients). Memory: f's
 * intermediates live only during its own recomputation, at the cost of one more forward of f.
 *
 * NOTE: the constants are arguments, not closure captures, so that the tape keeps them: a
 * caller's tidy may dispose them before the backward pass runs.
 *
 * @param f A pure function of tensors (the same values must give the same result).
 * @param args The differentiable `inputs` and the `constants`.
 * @returns f's value. The caller disposes it.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { tf } from "./tf.ts";
 * import { gradientCheckpoint } from "./_gradient_checkpointing.ts";
 * const x = tf.tensor1d([1, 2]);
 * const c = tf.tensor1d([3, 4]);
 * const dx = tf.grad((x: tf.Tensor) =>
 *   gradientCheckpoint(([x], [c]) => tf.sum(tf.mul(tf.square(x), c)), {
 *     inputs: [x],
 *     constants: [c],
 *   })
 * )(x);
 * assert.deepEqual(Array.from(dx.dataSync()), [6, 16]); // d/dx sum(c * x^2) = 2 c x
 * ```
 */
export function gradientCheckpoint(
  f: (inputs: tf.Tensor[], constants: tf.Tensor[]) => tf.Tensor,
  args: CheckpointArgs,
): tf.Tensor {
  const n = args.inputs.length;
  const checkpointed = tf.customGrad((...all: (tf.Tensor | ((t: tf.Tensor[]) => void))[]) => {
    const save = all[all.length - 1] as (tensors: tf.Tensor[]) => void;
    const tensors = all.slice(0, -1) as tf.Tensor[];
    const value = f(tensors.slice(0, n), tensors.slice(n));
    save(tensors);
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const constants = saved.slice(n);
        const grads = tf.grads((...xs: tf.Tensor[]) => f(xs, constants));
        // NOTE: tfjs does not nest tapes: an inner tf.grads run during the outer backward pass
        // (gradientDepth 0) replaces the engine's active tape and nulls it when done, and the
        // outer gradients() then fails cleaning up. Keep the outer tape aside and restore it.
        const state = engineTape();
        const outerTape = state.activeTape;
        let dInputs: tf.Tensor[];
        try {
          dInputs = grads(saved.slice(0, n), dy);
        } finally {
          state.activeTape = outerTape;
        }
        return [...dInputs, ...constants.map((c) => tf.zerosLike(c))];
      },
    };
  });
  return checkpointed(...args.inputs, ...args.constants);
}
