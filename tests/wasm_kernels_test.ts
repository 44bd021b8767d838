import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { useBackend } from "../lib/backend.ts";

/** The values of `f()` on stock cpu and on wasm (whose Slice, SplitV, GatherV2 are lib's). */
async function onCpuAndWasm(f: () => tf.Tensor | tf.Tensor[]): Promise<[number[][], number[][]]> {
  const out: number[][][] = [];
  for (const backend of ["cpu", "wasm"] as const) {
    await useBackend(backend);
    const before = tf.memory().numTensors;
    const result = tf.tidy(f);
    const list = Array.isArray(result) ? result : [result];
    out.push(await Promise.all(list.map(async (t) => Array.from(await t.data()))));
    tf.dispose(list);
    assert.equal(tf.memory().numTensors, before, `leaked tensors on ${backend}`);
  }
  return [out[0], out[1]];
}

function iota(shape: number[], dtype: "float32" | "int32" = "float32"): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Array.from({ length: n }, (_, i) => (i * 7919) % 1013 - 500.25), shape, dtype);
}

Deno.test("wasm Slice gives the stock cpu values on every rank and layout", async () => {
  const cases: [number[], number[], number[]][] = [
    [[10], [3], [4]],
    [[4, 6], [1, 2], [2, 3]],
    [[4, 6], [1, 0], [2, 6]], // contiguous rows
    [[3, 4, 5], [0, 1, 0], [3, 2, 5]],
    [[2, 3, 4, 5], [1, 0, 2, 1], [1, 3, 2, 3]],
    [[2, 3, 4, 5, 2], [0, 1, 1, 0, 1], [2, 2, 3, 5, 1]],
    [[3, 4], [0, 0], [0, 4]], // empty
  ];
  for (const [shape, begin, size] of cases) {
    const [cpu, wasm] = await onCpuAndWasm(() => tf.slice(iota(shape), begin, size));
    assert.deepEqual(wasm, cpu, `slice of [${shape}] at [${begin}] size [${size}]`);
  }
  const [cpu, wasm] = await onCpuAndWasm(() =>
    tf.slice(tf.tensor2d([[1, 2, 3], [4, 5, 6]], [2, 3], "int32"), [0, 1], [2, 2])
  );
  assert.deepEqual(wasm, cpu, "int32");
});

Deno.test("wasm SplitV gives the stock cpu values (RoPE's split of the head axis)", async () => {
  for (const axis of [0, 1, 2, 3]) {
    const [cpu, wasm] = await onCpuAndWasm(() => tf.split(iota([4, 2, 6, 8]), 2, axis));
    assert.deepEqual(wasm, cpu, `axis ${axis}`);
  }
  const [cpu, wasm] = await onCpuAndWasm(() => tf.split(iota([3, 10]), [2, 5, 3], 1));
  assert.deepEqual(wasm, cpu, "uneven sizes");
});

Deno.test("wasm GatherV2 gives the stock cpu rows and rejects an out-of-range id", async () => {
  const [cpu, wasm] = await onCpuAndWasm(() =>
    tf.gather(iota([7, 5]), tf.tensor2d([[6, 0, 3], [3, 3, 1]], [2, 3], "int32"))
  );
  assert.deepEqual(wasm, cpu, "axis 0");
  const [cpu1, wasm1] = await onCpuAndWasm(() =>
    tf.gather(iota([3, 4, 2]), tf.tensor1d([3, 0], "int32"), 1)
  );
  assert.deepEqual(wasm1, cpu1, "axis 1 (stock kernel)");
  await useBackend("wasm");
  const x = iota([7, 5]);
  const ids = tf.tensor1d([1, 7], "int32");
  const dataIds = tf.engine().backend.numDataIds();
  assert.throws(() => tf.gather(x, ids), { message: /index value 7 is not in \[0, 6\]/ });
  assert.equal(tf.engine().backend.numDataIds(), dataIds, "the refused gather left an output");
  tf.dispose([x, ids]);
});

Deno.test("wasm Identity shares the data: clones survive their source, gradients are unchanged", async () => {
  await useBackend("wasm");
  const before = tf.memory().numTensors;
  const x = tf.tensor1d([1, 2, 3]);
  const y = tf.clone(x);
  x.dispose();
  assert.deepEqual(Array.from(await y.data()), [1, 2, 3]);
  y.dispose();
  // Every tensor the tape saves goes through Identity.
  const w0 = tf.tensor2d([[0.5, -1], [2, 0.25]]);
  const w = tf.variable(w0);
  const { value, grads } = tf.variableGrads(
    () => tf.sum(tf.mul(tf.sigmoid(tf.matMul(w, w)), w)) as tf.Scalar,
    [w],
  );
  const got = Array.from(await grads[w.name].data());
  tf.dispose([value, ...Object.values(grads)]);
  await useBackend("cpu");
  const wc0 = tf.tensor2d([[0.5, -1], [2, 0.25]]);
  const wc = tf.variable(wc0);
  const ref = tf.variableGrads(
    () => tf.sum(tf.mul(tf.sigmoid(tf.matMul(wc, wc)), wc)) as tf.Scalar,
    [wc],
  );
  const want = Array.from(await ref.grads[wc.name].data());
  tf.dispose([ref.value, ...Object.values(ref.grads), wc, wc0]);
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i] - want[i]) < 1e-6);
  await useBackend("wasm");
  tf.dispose([w, w0]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("wasm Cast to the same dtype shares the data; to another dtype it converts", async () => {
  await useBackend("wasm");
  const before = tf.memory().numTensors;
  const x = tf.tensor1d([1.5, -2, 3]);
  const same = tf.cast(x, "float32");
  const ints = tf.cast(x, "int32");
  x.dispose();
  assert.deepEqual(Array.from(await same.data()), [1.5, -2, 3]);
  assert.deepEqual(Array.from(await ints.data()), [1, -2, 3]);
  tf.dispose([same, ints]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});
