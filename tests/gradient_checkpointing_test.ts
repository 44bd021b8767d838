// lib/_gradient_checkpointing.ts, and the tfjs internal it relies on. The model-level checks
// (every GRPO case and LoRA gradient with gradient checkpointing on) are in tests/grpo_test.ts,
// tests/trainer_test.ts and tests/_fixtures.ts.
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { useBackend } from "../lib/backend.ts";
import { engineTape, gradientCheckpoint } from "../lib/_gradient_checkpointing.ts";
import { assertAllClose } from "./_assert.ts";

await useBackend("cpu");

// NOTE: if this test fails after a tfjs upgrade, the engine's tape handling changed:
// gradientCheckpoint() keeps the outer tape aside around its inner tf.grads because of exactly
// the behaviour pinned here. Re-read tfjs-core engine.ts (startTape, gradients) and adapt it.
Deno.test("tfjs internal: a tf.grads inside a backward pass replaces engine().state.activeTape, then nulls it", () => {
  const before = tf.memory().numTensors;
  const state = engineTape();
  assert.equal(typeof state.gradientDepth, "number", "tf.engine().state has no gradientDepth");
  const seen: { depth: number; outer: unknown; isArray: boolean; afterInner: unknown }[] = [];
  const square = tf.customGrad((...args: (tf.Tensor | ((t: tf.Tensor[]) => void))[]) => {
    const x = args[0] as tf.Tensor;
    (args[1] as (t: tf.Tensor[]) => void)([x]);
    return {
      value: tf.square(x),
      gradFunc: (dy: tf.Tensor, [xs]: tf.Tensor[]) => {
        const outer = state.activeTape;
        const inner = tf.grads((v: tf.Tensor) => tf.square(v))([xs], dy);
        seen.push({
          depth: state.gradientDepth,
          outer,
          isArray: Array.isArray(outer),
          afterInner: state.activeTape,
        });
        state.activeTape = outer; // what gradientCheckpoint() does; without it gradients() throws
        return inner;
      },
    };
  });
  const x = tf.tensor1d([1, 2, 3]);
  const dx = tf.grad((v: tf.Tensor) => tf.sum(square(v)))(x);
  assert.equal(seen.length, 1);
  assert.equal(seen[0].depth, 0, "gradientDepth during the backward pass");
  assert.ok(seen[0].isArray, "activeTape is the outer tape (an array) during the backward pass");
  assert.equal(seen[0].afterInner, null, "the inner tf.grads left activeTape null");
  assert.equal(state.activeTape, null, "a finished top-level tf.grads leaves activeTape null");
  assert.deepEqual(Array.from(dx.dataSync()), [2, 4, 6]);
  tf.dispose([x, dx]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("gradientCheckpoint() gives f's value and the same gradients as f, zero for constants", () => {
  const before = tf.memory().numTensors;
  const x = tf.tensor2d([[0.5, -1, 2], [1.5, 0.25, -0.75]]);
  const w = tf.tensor2d([[0.1, 0.2], [-0.3, 0.4], [0.5, -0.6]]);
  const c = tf.tensor2d([[1, -2], [3, 0.5]]);
  const f = ([x, w]: tf.Tensor[], [c]: tf.Tensor[]) =>
    tf.sum(tf.mul(tf.tanh(tf.matMul(x, w)), c)) as tf.Scalar;
  const plain = tf.grads((x: tf.Tensor, w: tf.Tensor, c: tf.Tensor) => f([x, w], [c]));
  const checkpointed = tf.grads((x: tf.Tensor, w: tf.Tensor, c: tf.Tensor) =>
    gradientCheckpoint(f, { inputs: [x, w], constants: [c] })
  );
  const want = plain([x, w, c]);
  const got = checkpointed([x, w, c]);
  assertAllClose(got[0].dataSync(), want[0].dataSync(), 1e-6, "dx");
  assertAllClose(got[1].dataSync(), want[1].dataSync(), 1e-6, "dw");
  assert.deepEqual(Array.from(got[2].dataSync()), [0, 0, 0, 0], "constants get zero gradients");
  const value = gradientCheckpoint(f, { inputs: [x, w], constants: [c] });
  const direct = tf.tidy(() => f([x, w], [c]));
  assert.equal(value.dataSync()[0], direct.dataSync()[0]);
  tf.dispose([...want, ...got, value, direct, x, w, c]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});
