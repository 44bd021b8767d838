// Parity of the BLAS matMul kernels (wasm and cpu, through FFI) and of wasm with BLAS off with the
// stock tfjs cpu backend. Needs --allow-ffi (deno task test runs with -A). Shapes are tiny: these
// check indexing, not speed.
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { describeBackend, setupBackend, useBackend } from "../lib/backend.ts";
import { BackendError } from "../lib/errors.ts";
import { assertCloseToMax } from "./_assert.ts";
import { test } from "./_requires.ts";

type Mode = "cpu" | "cpu+blas" | "wasm" | "wasm+blas";

/** Every mode checked against stock cpu. */
const MODES: Mode[] = ["cpu+blas", "wasm+blas", "wasm"];

function seeded(shape: number[], seed: number): Float32Array {
  const data = new Float32Array(shape.reduce((p, d) => p * d, 1));
  let s = seed;
  for (let i = 0; i < data.length; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    data[i] = s / 2147483648 - 0.5;
  }
  return data;
}

/** Runs `fn` on `mode` and returns its outputs' values; checks it leaked no tensors. */
async function valuesOn(mode: Mode, fn: () => tf.Tensor | tf.Tensor[]): Promise<Float32Array[]> {
  await useBackend(mode);
  const before = tf.memory().numTensors;
  const out = [fn()].flat();
  const values = await Promise.all(out.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(out);
  assert.equal(tf.memory().numTensors, before, `${mode}: leaked tensors`);
  return values;
}

async function assertParity(fn: () => tf.Tensor | tf.Tensor[], modes: Mode[], what: string) {
  const expected = await valuesOn("cpu", fn);
  for (const mode of modes) {
    const got = await valuesOn(mode, fn);
    assert.equal(got.length, expected.length);
    got.forEach((g, i) =>
      assertCloseToMax(g, expected[i], 1e-5, `${what} on ${mode}, output ${i}`)
    );
  }
}

function tensor(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(seeded(shape, seed), shape);
}

await test.openblas("setupBackend() opens a BLAS for wasm when blas is auto", async () => {
  const info = await useBackend("wasm+blas");
  assert.equal(info.name, "wasm");
  assert.ok(info.blas !== null, `no BLAS opened: ${info.notes.join("; ")}`);
  assert.equal(info.blas.threads, 2);
  assert.match(describeBackend(info), /^backend wasm \+ .+ \(.+, 2 threads\)$/);
  assert.equal(tf.getBackend(), "wasm");
});

Deno.test("BatchMatMul on wasm and cpu+blas matches stock cpu: transposes, batches, broadcast batch dims", async () => {
  // [aShape, bShape, transposeA, transposeB]
  const cases: [number[], number[], boolean, boolean][] = [
    [[5, 7], [7, 3], false, false],
    [[7, 5], [7, 3], true, false],
    [[5, 7], [3, 7], false, true],
    [[7, 5], [3, 7], true, true],
    [[4, 5, 7], [4, 7, 3], false, false],
    [[4, 7, 5], [4, 7, 3], true, false],
    [[4, 5, 7], [4, 3, 7], false, true],
    [[4, 7, 5], [4, 3, 7], true, true],
    [[4, 5, 7], [7, 3], false, false], // b broadcast (one sgemm over stacked rows)
    [[4, 7, 5], [3, 7], true, true],
    [[5, 7], [4, 3, 7], false, true], // a broadcast
    [[1, 5, 7], [4, 7, 3], false, false],
    [[2, 3, 5, 7], [3, 7, 4], false, false],
  ];
  for (const [aShape, bShape, ta, tb] of cases) {
    const fn = () => tf.tidy(() => tf.matMul(tensor(aShape, 1), tensor(bShape, 2), ta, tb));
    await assertParity(fn, MODES, `matMul [${aShape}] [${bShape}] ${ta} ${tb}`);
  }
});

await test.openblas("setupBackend() opens a BLAS for cpu when blas is auto, and off restores stock cpu", async () => {
  const stock = (await useBackend("cpu"), tf.getKernel(tf.BatchMatMul, "cpu")!.kernelFunc);
  const stockFused = tf.getKernel(tf._FusedMatMul, "cpu")!.kernelFunc;
  const info = await useBackend("cpu+blas");
  assert.equal(info.name, "cpu");
  assert.ok(info.blas !== null, `no BLAS opened: ${info.notes.join("; ")}`);
  assert.equal(info.blas.threads, 2);
  assert.match(describeBackend(info), /^backend cpu \+ .+ \(.+, 2 threads\)$/);
  assert.equal(tf.getBackend(), "cpu");
  assert.notEqual(tf.getKernel(tf.BatchMatMul, "cpu")!.kernelFunc, stock);
  const off = await setupBackend({ backend: "cpu", blas: "off", num_threads: 2 });
  assert.equal(off.blas, null);
  assert.equal(describeBackend(off), "backend cpu");
  assert.equal(tf.getKernel(tf.BatchMatMul, "cpu")!.kernelFunc, stock, "stock BatchMatMul back");
  assert.equal(tf.getKernel(tf._FusedMatMul, "cpu")!.kernelFunc, stockFused, "stock fused back");
});

Deno.test("BatchMatMul on cpu+blas reads tensors that view a buffer at a byteOffset", async () => {
  // The cpu backend keeps the caller's typed array as the tensor's storage, offset and all.
  const buffer = seeded([3 + 5 * 7 + 7 * 3], 7);
  const fn = () =>
    tf.tidy(() =>
      tf.matMul(
        tf.tensor2d(buffer.subarray(3, 3 + 35), [5, 7]),
        tf.tensor2d(buffer.subarray(38), [7, 3]),
      )
    );
  const [expected] = await valuesOn("cpu", fn);
  const [got] = await valuesOn("cpu+blas", fn);
  assertCloseToMax(got, expected, 1e-5, "offset operands");
});

Deno.test("BatchMatMul on wasm+blas and cpu+blas broadcasts batch dims both ways like numpy", async () => {
  // [2,1,5,7] @ [1,3,7,4] → [2,3,5,4]; tfjs's own cpu/wasm kernels get this shape wrong, so the
  // reference tiles both operands to [2,3,...] first.
  const fn = () =>
    tf.tidy(() => tf.matMul(tensor([2, 1, 5, 7], 1), tensor([1, 3, 7, 4], 2)).reshape([-1]));
  const tiled = () =>
    tf.tidy(() =>
      tf.matMul(
        tf.tile(tensor([2, 1, 5, 7], 1), [1, 3, 1, 1]),
        tf.tile(tensor([1, 3, 7, 4], 2), [2, 1, 1, 1]),
      )
        .reshape([-1])
    );
  const [expected] = await valuesOn("cpu", tiled);
  for (const mode of ["wasm+blas", "cpu+blas"] as const) {
    const [got] = await valuesOn(mode, fn);
    assert.equal(got.length, 2 * 3 * 5 * 4);
    assertCloseToMax(got, expected, 1e-5, `4-D broadcast on ${mode}`);
  }
});

Deno.test("_FusedMatMul on wasm and cpu+blas matches stock cpu with bias and activation, 3-D a and transposeB", async () => {
  // The stock wasm _FusedMatMul is off by the bias scale on every one of these (3-D a or transposeB).
  // [aShape, bShape, transposeB, biasShape, activation]
  const cases: [number[], number[], boolean, number[], tf.fused.Activation][] = [
    [[4, 5, 7], [4, 3, 7], true, [3], "relu"],
    [[4, 5, 7], [4, 7, 3], false, [3], "relu"],
    [[5, 7], [3, 7], true, [3], "relu"],
    [[4, 5, 7], [4, 3, 7], true, [5, 1], "relu"], // broadcast over columns
    [[4, 5, 7], [4, 3, 7], true, [4, 1, 3], "linear"], // per-batch bias
    [[4, 5, 7], [1, 3, 7], true, [5, 3], "elu"],
    [[5, 7], [3, 7], true, [1], "sigmoid"],
    [[4, 5, 7], [4, 3, 7], true, [3], "relu6"],
    [[4, 5, 7], [4, 3, 7], true, [3], "leakyrelu"],
  ];
  for (const [aShape, bShape, tb, biasShape, activation] of cases) {
    const fn = () =>
      tf.tidy(() =>
        tf.fused.matMul({
          a: tensor(aShape, 1),
          b: tensor(bShape, 2),
          transposeB: tb,
          bias: tf.mul(tensor(biasShape, 3), 4), // bias large next to a @ b, so misplacing it shows
          activation,
          leakyreluAlpha: 0.1,
        })
      );
    const what = `fused [${aShape}] [${bShape}] ${tb} bias [${biasShape}] ${activation}`;
    await assertParity(fn, MODES, what);
  }
});

Deno.test("_FusedMatMul on wasm and cpu+blas matches stock cpu with prelu weights and no bias", async () => {
  const fn = () =>
    tf.tidy(() =>
      tf.fused.matMul({
        a: tensor([4, 5, 7], 1),
        b: tensor([4, 3, 7], 2),
        transposeB: true,
        activation: "prelu",
        preluActivationWeights: tf.tensor1d([0.1, 0.5, 2]),
      })
    );
  await assertParity(fn, MODES, "fused prelu");
});

await test.openblas("cpu+blas runs int32 matMul and fused matMul on the stock cpu kernels, noting each once", async () => {
  const info = await useBackend("cpu+blas");
  const before = tf.memory().numTensors;
  const a = tf.tensor2d([1, 2, 3, 4], [2, 2], "int32");
  const bias = tf.tensor1d([-20, 1], "int32");
  for (let i = 0; i < 2; i++) {
    const c = tf.matMul(a, a);
    const f = tf.fused.matMul({ a, b: a, bias, activation: "relu" });
    assert.equal(c.dtype, "int32");
    assert.deepEqual(Array.from(await c.data()), [7, 10, 15, 22]);
    assert.deepEqual(Array.from(await f.data()), [0, 11, 0, 23]);
    tf.dispose([c, f]);
  }
  tf.dispose([a, bias]);
  const lines = info.notes.filter((n) => n.includes("int32"));
  assert.equal(lines.length, 2, info.notes.join("\n"));
  assert.match(lines[0], /^BatchMatMul on int32\/int32: not float32, stock cpu kernel used$/);
  assert.match(lines[1], /^_FusedMatMul: non-float32 tensors .*, stock cpu kernel used$/);
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("tf.grads() through a matMul chain on wasm and cpu+blas matches stock cpu", async () => {
  const f = (x: tf.Tensor, w1: tf.Tensor, w2: tf.Tensor, bias: tf.Tensor) => {
    const h = tf.fused.matMul({ a: x, b: w1, transposeB: true, bias, activation: "relu" }); // [6, 8]
    const y = tf.matMul(h, w2, true, false); // [8, 3]
    const z = tf.matMul(tf.reshape(y, [2, 4, 3]), tf.reshape(w2, [2, 3, 3]), false, true); // [2, 4, 3]
    return tf.sum(tf.mul(z, z));
  };
  const fn = () =>
    tf.tidy(() =>
      tf.grads(f)([tensor([6, 5], 1), tensor([8, 5], 2), tensor([6, 3], 3), tensor([8], 4)])
    );
  await assertParity(fn, MODES, "grads");
});

Deno.test("setupBackend() auto takes wasm unless Deno offers a hardware WebGPU adapter", async () => {
  const adapter = await navigator.gpu?.requestAdapter();
  const info = adapter?.info as (GPUAdapterInfo & { isFallbackAdapter?: boolean }) | undefined;
  const software = info === undefined || info.isFallbackAdapter === true ||
    /llvmpipe|lavapipe|swiftshader/i.test(info.description);
  const got = await setupBackend({ backend: "auto", blas: "auto", num_threads: 2 });
  if (software) {
    assert.equal(got.name, "wasm");
    if (info !== undefined) assert.match(got.notes.join("\n"), /software fallback/);
  } else assert.equal(got.name, "webgpu");
});

Deno.test("setupBackend() with blas off keeps the stock matMul and says so", async () => {
  const info = await setupBackend({ backend: "wasm", blas: "off", num_threads: 2 });
  assert.equal(info.name, "wasm");
  assert.equal(info.blas, null);
  assert.equal(describeBackend(info), "backend wasm (stock kernels, no BLAS)");
  const again = await setupBackend({ backend: "wasm", blas: "off", num_threads: 2 });
  assert.equal(again, info, "same options should return the same info");
});

await test.openblas("wasm+blas falls back to the stock kernel on int32 and notes it once", async () => {
  const info = await useBackend("wasm+blas");
  const before = tf.memory().numTensors;
  const a = tf.tensor2d([1, 2, 3, 4], [2, 2], "int32");
  // The stock wasm kernel rejects int32 itself; the point is that BLAS was not handed int32 data.
  assert.throws(() => tf.matMul(a, a), /non-float32/);
  assert.throws(() => tf.matMul(a, a), /non-float32/);
  a.dispose();
  assert.equal(info.notes.filter((n) => n.includes("int32")).length, 1, info.notes.join("\n"));
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("setupBackend() rejects a BLAS path that cannot be opened", async () => {
  for (const backend of ["wasm", "cpu"] as const) {
    await assert.rejects(
      setupBackend({ backend, blas: "/nonexistent/libopenblas.so.0", num_threads: 1 }),
      (error: Error) =>
        error instanceof BackendError && /\/nonexistent\/libopenblas/.test(error.message),
    );
  }
});

Deno.test("setupBackend() explains what the tensorflow backend needs", async () => {
  // tfjs-node cannot be installed here; the error must name the packages and an alternative.
  await assert.rejects(
    setupBackend({ backend: "tensorflow", blas: "auto", num_threads: 1 }),
    (error: Error) =>
      error instanceof BackendError && /tfjs-node-gpu/.test(error.message) &&
      /backend: wasm/.test(error.message),
  );
});

Deno.test("setupBackend() rejects num_threads < 1", async () => {
  await assert.rejects(setupBackend({ backend: "cpu", blas: "auto", num_threads: 0 }), RangeError);
});

Deno.test("describeBackend() names the library, threads and adapter", () => {
  const blas = {
    library: "/usr/lib/libopenblas.so.0",
    threads: 2,
    vendor: "OpenBLAS 0.3.21 DYNAMIC_ARCH",
  };
  assert.equal(
    describeBackend({ name: "wasm", blas, adapter: null, weightStorage: "tensors", notes: [] }),
    "backend wasm + OpenBLAS 0.3.21 (/usr/lib/libopenblas.so.0, 2 threads)",
  );
  assert.equal(
    describeBackend({
      name: "webgpu",
      blas: null,
      adapter: "NVIDIA H100",
      weightStorage: "tensors",
      notes: [],
    }),
    "backend webgpu (adapter: NVIDIA H100)",
  );
  assert.equal(
    describeBackend({
      name: "cpu",
      blas: null,
      adapter: null,
      weightStorage: "tensors",
      notes: [],
    }),
    "backend cpu",
  );
  assert.equal(
    describeBackend({ name: "cpu", blas, adapter: null, weightStorage: "tensors", notes: [] }),
    "backend cpu + OpenBLAS 0.3.21 (/usr/lib/libopenblas.so.0, 2 threads)",
  );
});

Deno.test("setupBackend() gives wasm the gather gradient that cpu computes", async () => {
  const grad = async () => {
    const table = tf.tensor2d([[1, 2], [3, 4], [5, 6]]);
    const ids = tf.tensor2d([[2, 0], [2, 2]], [2, 2], "int32");
    const weights = tf.tensor3d([[[1, 1], [2, 2]], [[3, 3], [4, 4]]]);
    const g = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids), weights)))(table);
    const out = Array.from(await g.data());
    tf.dispose([table, ids, weights, g]);
    return out;
  };
  await useBackend("cpu");
  const expected = await grad();
  assert.deepEqual(expected, [2, 2, 0, 0, 8, 8]);
  await useBackend("wasm");
  assert.deepEqual(await grad(), expected);
  await useBackend("cpu");
});

await test.openblas("setupBackend() keeps a model too big for the wasm heap on wasm, its weights outside the heap", async () => {
  const info = await setupBackend(
    { backend: "auto", blas: "auto", num_threads: 2 },
    { weightBytes: 6.17e9 }, // Qwen2.5-Math-1.5B as float32
  );
  assert.equal(info.name, "wasm");
  assert.equal(info.weightStorage, "external");
  assert.match(describeBackend(info), /base weights outside the heap$/);
  assert.ok(
    info.notes.some((n) => /exceed what the wasm heap can hold.*read by BLAS in place/.test(n)),
    info.notes.join("\n"),
  );
  const small = await setupBackend({ backend: "auto", blas: "auto", num_threads: 2 }, {
    weightBytes: 2.3e6,
  });
  assert.equal(small.name, "wasm");
  assert.equal(small.weightStorage, "tensors");
  await useBackend("cpu");
});

Deno.test("setupBackend() auto without BLAS sends a model too big for the wasm heap to cpu", async () => {
  const info = await setupBackend(
    { backend: "auto", blas: "off", num_threads: 2 },
    { weightBytes: 6.17e9 },
  );
  assert.equal(info.name, "cpu");
  assert.equal(info.weightStorage, "tensors");
  assert.ok(info.notes.some((n) => /cannot stay outside it/.test(n)), info.notes.join("\n"));
  await useBackend("cpu");
});
