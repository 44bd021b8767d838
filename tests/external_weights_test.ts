/**
 * lib/_external_weights.ts: the external-weight matMul and gather against tfjs's own matMul and
 * gather of the same values as a tensor, for F32, BF16 and F16 storage, on wasm+blas and
 * cpu+blas (the backends whose kernels read external weights).
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { useBackend } from "../lib/backend.ts";
import {
  bf16SimdWidening,
  type ExternalDtype,
  externalGather,
  externalMatMul,
  externalValues,
  externalWeight,
  releaseExternalWeight,
  setBf16Simd,
  widenBf16,
} from "../lib/_external_weights.ts";
import { bf16ToF32, f32ToBf16, f32ToF16 } from "../lib/safetensors.ts";
import { assertCloseToMax } from "./_assert.ts";
import { test } from "./_requires.ts";

function seeded(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    out[i] = (s / 2147483648 - 0.5) * 2;
  }
  return out;
}

/** A weight stored as `dtype`, and the float32 values it stands for (16-bit ones rounded). */
function weightOf(rows: number, cols: number, dtype: ExternalDtype, seed: number) {
  const values = seeded(rows * cols, seed);
  const data = dtype === "F32" ? values : dtype === "BF16" ? f32ToBf16(values) : f32ToF16(values);
  const w = externalWeight(`w${seed}`, [rows, cols], dtype, data);
  return { w, values: externalValues(w) };
}

const DTYPES: ExternalDtype[] = ["F32", "BF16", "F16"];
// [rows, cols, n]: one block; several blocks of 512 KiB with few x rows (decode: F32 is blocked
// too up to 8 rows), rows and lengths not multiples of the block or of 8 (the SIMD widener's
// group); one row wider than a block; several 8 MiB blocks with many x rows.
const SHAPES: [number, number, number][] = [
  [7, 5, 3],
  [600, 256, 4],
  [300, 1001, 1],
  [300, 1001, 8],
  [300, 1001, 9],
  [3, 131073, 4],
  [9000, 256, 64],
];

for (const backend of ["wasm+blas", "cpu+blas"] as const) {
  await test.openblas(`externalMatMul() and its x gradient equal tf.matMul on the widened weight (${backend})`, async () => {
    await useBackend(backend);
    const before = tf.memory().numTensors;
    for (const dtype of DTYPES) {
      for (const [rows, cols, n] of SHAPES) {
        const { w, values } = weightOf(rows, cols, dtype, rows + cols);
        const x = tf.tensor2d(seeded(n * cols, 3), [n, cols]);
        const dy = tf.tensor2d(seeded(n * rows, 4), [n, rows]);
        const wt = tf.tensor2d(values, [rows, cols]);
        const [got, want] = tf.tidy(() => [externalMatMul(x, w), tf.matMul(x, wt, false, true)]);
        const [dGot, dWant] = tf.tidy(() => [
          tf.grad((x: tf.Tensor) => tf.sum(tf.mul(externalMatMul(x as tf.Tensor2D, w), dy)))(x),
          tf.grad((x: tf.Tensor) => tf.sum(tf.mul(tf.matMul(x, wt, false, true), dy)))(x),
        ]);
        const label = `${dtype} [${rows}, ${cols}] × ${n} rows`;
        assert.deepEqual(got.shape, [n, rows]);
        // Relative to the largest value: sums over 131,073 terms reach ~100.
        assertCloseToMax(await got.data(), await want.data(), 1e-5, label);
        assertCloseToMax(await dGot.data(), await dWant.data(), 1e-5, `${label} dx`);
        tf.dispose([x, dy, wt, got, want, dGot, dWant]);
        releaseExternalWeight(w);
      }
    }
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
  });

  await test.openblas(`externalGather() equals tf.gather of the widened table (${backend})`, async () => {
    await useBackend(backend);
    const before = tf.memory().numTensors;
    for (const dtype of DTYPES) {
      const { w, values } = weightOf(11, 6, dtype, 9);
      const ids = tf.tensor2d([[3, 0, 10], [3, 3, 1]], [2, 3], "int32");
      const table = tf.tensor2d(values, [11, 6]);
      const got = externalGather(w, ids);
      const want = tf.gather(table, ids);
      assert.deepEqual(got.shape, [2, 3, 6]);
      assert.deepEqual(Array.from(await got.data()), Array.from(await want.data()), dtype);
      tf.dispose([ids, table, got, want]);
      releaseExternalWeight(w);
    }
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
  });

  await test.openblas(`externalGather() names the table of an out-of-range id (${backend})`, async () => {
    await useBackend(backend);
    const { w } = weightOf(4, 2, "F32", 1);
    const ids = tf.tensor1d([1, 4], "int32");
    const dataIds = tf.engine().backend.numDataIds();
    assert.throws(() => externalGather(w, ids), { name: "RangeError", message: /index 4 .*w1/ });
    assert.equal(tf.engine().backend.numDataIds(), dataIds, "the refused gather left an output");
    ids.dispose();
    releaseExternalWeight(w);
  });
}

await test.openblas("externalMatMul() says what to do when BLAS is off, and refuses a released weight", async () => {
  const { w } = weightOf(4, 2, "F32", 2);
  const x = tf.tensor2d([[1, 2]]);
  await useBackend("wasm");
  assert.throws(() => externalMatMul(x, w).dispose(), /outside the wasm heap .*runtime\.blas/);
  releaseExternalWeight(w);
  await useBackend("wasm+blas");
  assert.throws(() => externalMatMul(x, w).dispose(), /was released/);
  x.dispose();
});

/** bf16 patterns: every one of the 65,536 (NaNs with payloads, ±Inf, denormals, -0), then more. */
function bf16Patterns(n: number): Uint16Array {
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = i < 65536 ? i : Math.imul(i, 2654435761) >>> 16;
  return out;
}

Deno.test("widenBf16() gives the JS loop's bits for every pattern and length, with SIMD", () => {
  // Deno's V8 has wasm SIMD: without this check a broken module would hide behind the JS loop.
  assert.equal(bf16SimdWidening(), true, "the SIMD widener did not load");
  const all = bf16Patterns((1 << 18) + 5); // crosses widenBf16's 128 Ki-value chunks
  for (const len of [0, 1, 7, 8, 9, 15, 17, 65536, 65536 + 3, all.length]) {
    const src = all.subarray(all.length - len); // odd starting offsets too
    const want = new Float32Array(len);
    bf16ToF32(src, want, 0);
    const got = new Float32Array(len + 3).fill(7); // writes exactly len values
    widenBf16(src, got);
    assert.deepEqual(new Uint32Array(got.buffer, 0, len), new Uint32Array(want.buffer), `${len}`);
    assert.deepEqual(Array.from(got.subarray(len)), [7, 7, 7], `${len}: wrote past the end`);
  }
  const special = new Float32Array(6);
  widenBf16(new Uint16Array([0x7f80, 0xff80, 0x7fc1, 0x0001, 0x8000, 0xffff]), special);
  assert.deepEqual(Array.from(new Uint32Array(special.buffer)), [
    0x7f800000, // +Inf
    0xff800000, // -Inf
    0x7fc10000, // a NaN's payload
    0x00010000, // a denormal
    0x80000000, // -0
    0xffff0000, // a negative NaN
  ]);
  assert.throws(() => widenBf16(new Uint16Array(3), new Float32Array(2)), RangeError);
});

Deno.test("setBf16Simd(false) falls back to the JS loop with the same bits", () => {
  const src = bf16Patterns(70001);
  const simd = new Float32Array(src.length);
  widenBf16(src, simd);
  const previous = setBf16Simd(false);
  try {
    assert.equal(bf16SimdWidening(), false);
    const js = new Float32Array(src.length);
    widenBf16(src, js);
    assert.deepEqual(new Uint32Array(js.buffer), new Uint32Array(simd.buffer));
  } finally {
    setBf16Simd(previous);
  }
  assert.equal(bf16SimdWidening(), true);
});

await test.openblas("externalMatMul() of a BF16 weight gives the same bits with the JS widener", async () => {
  await useBackend("wasm+blas");
  const before = tf.memory().numTensors;
  for (const [rows, cols, n] of SHAPES) {
    const { w } = weightOf(rows, cols, "BF16", rows + cols);
    const x = tf.tensor2d(seeded(n * cols, 3), [n, cols]);
    const simd = externalMatMul(x, w);
    const previous = setBf16Simd(false);
    const js = externalMatMul(x, w);
    setBf16Simd(previous);
    assert.deepEqual(await js.data(), await simd.data(), `[${rows}, ${cols}] × ${n} rows`);
    tf.dispose([x, simd, js]);
    releaseExternalWeight(w);
  }
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("externalWeight() rejects data that does not hold its shape and dtype", () => {
  assert.throws(() => externalWeight("w", [2, 3], "F32", new Float32Array(5)), {
    name: "TypeError",
    message: /Float32Array\(5\) does not hold \[2,3\] as F32/,
  });
  assert.throws(() => externalWeight("w", [2, 3], "BF16", new Float32Array(6)), TypeError);
});
