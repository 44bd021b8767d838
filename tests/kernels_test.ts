// Each fused kernel of lib/_kernels.ts against the stock tfjs composition it replaces: values and
// gradients, the stock side on stock cpu (where no fused kernel is registered), the fused side on
// every backend that registers them.
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { useBackend } from "../lib/backend.ts";
import {
  ATTENTION,
  dropoutMask,
  fusedAttention,
  fusedCachedAttention,
  fusedRmsNorm,
  fusedRope,
  fusedTokenLogSoftmax,
  hasFusedKernel,
  loraDelta,
  RMS_NORM,
} from "../lib/_kernels.ts";
import { sampleTokens } from "../lib/rollout.ts";
import { assertAllClose } from "./_assert.ts";

const FUSED = ["wasm", "wasm+blas", "cpu+blas"] as const;

/** Deterministic values in [-scale, scale). */
function values(n: number, seed: number, scale = 1): number[] {
  let x = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return ((x >>> 0) / 4294967296 - 0.5) * 2 * scale;
  });
}

function tensor(shape: number[], seed: number, scale = 1): tf.Tensor {
  return tf.tensor(values(shape.reduce((a, b) => a * b, 1), seed, scale), shape);
}

/** `f`'s value and its gradients with respect to the float inputs, as plain arrays. */
async function valueAndGrads(
  f: (...xs: tf.Tensor[]) => tf.Tensor,
  inputs: () => tf.Tensor[],
): Promise<number[][]> {
  const before = tf.memory().numTensors;
  const xs = inputs();
  const y = tf.tidy(() => f(...xs));
  // A fixed random cotangent, so every element of the output matters.
  const dy = tensor(y.shape, 99);
  const grads = tf.grads((...a: tf.Tensor[]) => tf.sum(tf.mul(f(...a), dy)))(xs);
  const out = [Array.from(await y.data())];
  for (const g of grads) out.push(Array.from(await g.data()));
  tf.dispose([...xs, y, dy, ...grads]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  return out;
}

async function assertFusedMatchesStock(
  name: string,
  stock: (...xs: tf.Tensor[]) => tf.Tensor,
  fused: (...xs: tf.Tensor[]) => tf.Tensor,
  inputs: () => tf.Tensor[],
  atol: number,
  backends: readonly (typeof FUSED)[number][] = FUSED,
): Promise<void> {
  await useBackend("cpu");
  const want = await valueAndGrads(stock, inputs);
  for (const backend of backends) {
    await useBackend(backend);
    const got = await valueAndGrads(fused, inputs);
    for (let i = 0; i < want.length; i++) {
      assertAllClose(got[i], want[i], atol, `${name} on ${backend}, ${i ? `grad ${i}` : "value"}`);
    }
  }
}

Deno.test("fusedRmsNorm() matches the stock RMSNorm and its gradients (x and w)", async () => {
  const eps = 1e-6;
  await assertFusedMatchesStock(
    "rmsNorm",
    (x, w) => tf.mul(w, tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps)))),
    (x, w) => fusedRmsNorm(x, w, eps),
    () => [tensor([3, 5, 8], 1, 3), tensor([8], 2)],
    1e-5,
  );
});

/** lib/model.ts's stock RoPE on [B, T, n, hd]: transpose, HF rotate_half, transpose back. */
function stockRope(x: tf.Tensor, positions: number[][], theta: number): tf.Tensor {
  const [B, T, , hd] = x.shape;
  const invFreq = new Float32Array(hd / 2);
  for (let i = 0; i < hd / 2; i++) {
    invFreq[i] = Math.fround(1 / Math.pow(theta, Math.fround((2 * i) / hd)));
  }
  const freqs = tf.mul(
    tf.tensor2d(positions, [B, T], "int32").cast("float32").reshape([B, T, 1]),
    tf.tensor1d(invFreq).reshape([1, 1, hd / 2]),
  );
  const emb = tf.concat([freqs, freqs], -1).reshape([B, 1, T, hd]);
  const xt = x.transpose([0, 2, 1, 3]);
  const [x1, x2] = tf.split(xt, 2, 3);
  const rotated = tf.concat([tf.neg(x2), x1], 3);
  return tf.add(tf.mul(xt, tf.cos(emb)), tf.mul(rotated, tf.sin(emb))).transpose([0, 2, 1, 3]);
}

Deno.test("fusedRope() matches HF's rotate_half RoPE, token-major, and its gradient", async () => {
  const positions = [[1, 0, 1, 2, 3], [0, 1, 2, 3, 4]];
  for (const theta of [10000, 1000000]) {
    await assertFusedMatchesStock(
      `rope theta ${theta}`,
      (x) => stockRope(x, positions, theta),
      (x) => fusedRope(x as tf.Tensor4D, tf.tensor2d(positions, [2, 5], "int32"), theta),
      () => [tensor([2, 5, 3, 8], 5, 2)],
      2e-6,
    );
  }
});

/** HF eager attention with repeat_kv, causal and padding masks; q [B,T,nH,hd], k/v [B,T,nKV,hd]. */
function stockAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  mask: number[][],
): tf.Tensor {
  const [B, T, nH, hd] = q.shape;
  const nRep = nH / k.shape[2]!;
  // repeat_kv: query head h reads kv head floor(h / nRep).
  const heads = tf.tensor1d(Array.from({ length: nH }, (_, h) => Math.floor(h / nRep)), "int32");
  const repeat = (t: tf.Tensor) => tf.gather(t, heads, 2).transpose([0, 2, 1, 3]);
  const scores = tf.mul(
    tf.matMul(q.transpose([0, 2, 1, 3]), repeat(k), false, true),
    1 / Math.sqrt(hd),
  ); // [B, nH, T, T]
  const allowed = mask.map((row) =>
    Array.from({ length: T }, (_, t) => row.map((m, s) => (m === 1 && s <= t ? 0 : -1e9)))
  );
  const bias = tf.tensor(allowed.flat(2), [B, 1, T, T]);
  const probs = tf.softmax(tf.add(scores, bias), -1);
  return tf.matMul(probs, repeat(v)).transpose([0, 2, 1, 3]); // [B, T, nH, hd]
}

Deno.test("fusedAttention() matches HF eager attention (GQA, causal, left padding) and its gradients", async () => {
  // Row 0 is left-padded by 2: its first two queries see no key (uniform, as HF's finite mask).
  // Row 2 is right-padded; row 3 has holes (its second query sees no key).
  const mask = [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 1, 0, 0, 1, 1]];
  await assertFusedMatchesStock(
    "attention",
    (q, k, v) => stockAttention(q, k, v, mask),
    (q, k, v) =>
      fusedAttention(
        q as tf.Tensor4D,
        k as tf.Tensor4D,
        v as tf.Tensor4D,
        tf.tensor2d(mask, [4, 6], "int32"),
        1 / Math.sqrt(8),
      ),
    () => [tensor([4, 6, 4, 8], 6, 2), tensor([4, 6, 2, 8], 7, 2), tensor([4, 6, 2, 8], 8)],
    2e-5,
    ["wasm+blas", "cpu+blas"], // the attention kernels call BLAS
  );
});

Deno.test("fusedAttention() of the last queries only equals the last rows of the full attention, gradients too", async () => {
  // Row 3's first real key comes after the first kept query (which sees no key: uniform); row 4
  // has holes.
  const mask = [
    [0, 0, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 1, 1],
    [0, 1, 0, 0, 1, 1],
  ];
  const [B, S, K] = [5, 6, 3];
  // The stock side: every position's queries (zeros before the kept ones), then the last K rows.
  const full = (q: tf.Tensor) => tf.concat([tf.zeros([B, S - K, 4, 8]), q], 1);
  await assertFusedMatchesStock(
    "attention of the last queries",
    (q, k, v) => stockAttention(full(q), k, v, mask).slice([0, S - K, 0, 0], [B, K, 4, 8]),
    (q, k, v) =>
      fusedAttention(
        q as tf.Tensor4D,
        k as tf.Tensor4D,
        v as tf.Tensor4D,
        tf.tensor2d(mask, [B, S], "int32"),
        1 / Math.sqrt(8),
      ),
    () => [tensor([B, K, 4, 8], 16, 2), tensor([B, S, 2, 8], 17, 2), tensor([B, S, 2, 8], 18)],
    2e-5,
    ["wasm+blas", "cpu+blas"],
  );
});

Deno.test("fusedCachedAttention() prefills and decodes into its cache as fusedAttention() attends", async () => {
  for (const backend of ["wasm+blas", "cpu+blas"] as const) {
    await useBackend(backend);
    assert.ok(hasFusedKernel(ATTENTION), `${backend} registers the attention kernels`);
    const before = tf.memory().numTensors;
    const [B, T, nH, nKV, hd, capacity] = [2, 7, 4, 2, 8, 9];
    const mask = [[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]];
    const q = tensor([B, T, nH, hd], 11, 2) as tf.Tensor4D;
    const k = tensor([B, T, nKV, hd], 12, 2) as tf.Tensor4D;
    const v = tensor([B, T, nKV, hd], 13) as tf.Tensor4D;
    const scale = 1 / Math.sqrt(hd);
    const maskT = tf.tensor2d(mask, [B, T], "int32");
    const whole = fusedAttention(q, k, v, maskT, scale);
    // Prefill 4 tokens, then 3 one at a time; the cache mask is 1 past the prompt.
    const cache = {
      keys: tf.zeros([B, nKV, capacity, hd]) as tf.Tensor4D,
      values: tf.zeros([B, nKV, capacity, hd]) as tf.Tensor4D,
      mask: tf.tensor2d(mask.map((m) => [...m.slice(0, 4), 1, 1, 1, 1, 1]), [B, capacity], "int32"),
      length: 0,
    };
    const steps: tf.Tensor[] = [];
    for (const [start, n] of [[0, 4], [4, 1], [5, 1], [6, 1]]) {
      const part = (t: tf.Tensor4D) => t.slice([0, start, 0, 0], [B, n, -1, -1]);
      const [qs, ks, vs] = [part(q), part(k), part(v)];
      steps.push(fusedCachedAttention(qs, ks, vs, cache, scale));
      tf.dispose([qs, ks, vs]);
      cache.length += n;
    }
    const stepped = tf.concat(steps, 1);
    const got = await stepped.data();
    const want = await whole.data();
    // Row 0's padded query (t = 0) sees no key: uniform over the 7 keys as a whole sequence, over
    // the 4 prefilled ones in the cache; compare the real queries.
    const real = (a: ArrayLike<number>) =>
      Array.from(a).filter((_, i) =>
        Math.floor(i / (T * nH * hd)) === 1 || i % (T * nH * hd) >= nH * hd
      );
    assertAllClose(real(got), real(want), 1e-5, `${backend} outputs`);
    const [kt, filled] = [
      k.transpose([0, 2, 1, 3]),
      cache.keys.slice([0, 0, 0, 0], [B, nKV, T, hd]),
    ];
    assert.deepEqual(Array.from(await filled.data()), Array.from(await kt.data()), "cache keys");
    tf.dispose([kt, filled]);
    tf.dispose([q, k, v, maskT, whole, stepped, ...steps, cache.keys, cache.values, cache.mask]);
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
  }
});

Deno.test("loraDelta() matches PEFT's lora_B(lora_A(x)) * scaling and its gradients", async () => {
  for (const scaling of [2, 0.3]) {
    await assertFusedMatchesStock(
      `loraDelta scaling ${scaling}`,
      (x, a, b) => tf.mul(tf.matMul(tf.matMul(x, a, false, true), b, false, true), scaling),
      (x, a, b) => loraDelta(x as tf.Tensor2D, a as tf.Tensor2D, b as tf.Tensor2D, scaling),
      () => [tensor([6, 8], 22, 2), tensor([3, 8], 23), tensor([5, 3], 24)],
      1e-5,
      ["wasm+blas", "cpu+blas"], // two sgemms
    );
  }
});

Deno.test("fusedTokenLogSoftmax() matches log_softmax gathered at ids, entropy, and the gradient", async () => {
  const ids = [3, 0, 6, 6, 2];
  const temperature = 0.8;
  for (const which of ["logps", "entropies"] as const) {
    await assertFusedMatchesStock(
      `token log-softmax ${which}`,
      (logits) => {
        const z = tf.div(logits, temperature);
        const logp = tf.logSoftmax(z, -1);
        if (which === "entropies") {
          // No gradient flows through the entropy (TRL computes it under no_grad).
          return tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
            value: tf.neg(tf.sum(tf.mul(tf.exp(logp), logp), 1)),
            gradFunc: () => tf.zerosLike(args[0] as tf.Tensor),
          }))(logits);
        }
        return tf.sum(tf.mul(logp, tf.oneHot(tf.tensor1d(ids, "int32"), 7)), 1);
      },
      (logits) =>
        fusedTokenLogSoftmax(logits as tf.Tensor2D, tf.tensor1d(ids, "int32"), temperature)[which],
      () => [tensor([5, 7], 21, 4)],
      2e-5,
    );
  }
});

Deno.test("dropoutMask() gives tf.dropout's multiplier bit for bit", async () => {
  const cases = [[[5, 9], 0.05, 12345], [[300, 17], 0.5, 2147483646], [[64, 128], 0.1, 7]] as const;
  for (const backend of FUSED) {
    await useBackend(backend);
    const before = tf.memory().numTensors;
    for (const [shape, rate, seed] of cases) {
      const x = tensor([...shape], seed);
      const dropped = tf.tidy(() => tf.dropout(x, rate, undefined, seed));
      const masked = tf.tidy(() => tf.mul(x, dropoutMask([...shape], rate, seed)));
      const [want, got] = [await dropped.data(), await masked.data()];
      assert.ok(
        got.every((g, i) => Object.is(g, want[i])),
        `${backend} [${shape}] rate ${rate} seed ${seed}`,
      );
      tf.dispose([x, dropped, masked]);
    }
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
  }
});

Deno.test("SampleTokens picks the ids and log-probs of the stock unsorted sampler", async () => {
  const [B, V] = [16, 63];
  const logits = values(B * V, 31, 6);
  const uniforms = values(B, 32).map((u) => (u + 1) / 2);
  const options = { temperature: 0.8, top_p: 1, top_k: 0 };
  const run = async (backend: "cpu" | (typeof FUSED)[number]) => {
    await useBackend(backend);
    const before = tf.memory().numTensors;
    const l = tf.tensor2d(logits, [B, V]);
    const { ids, logps } = sampleTokens(l, uniforms, options);
    const out = { ids: Array.from(await ids.data()), logps: Array.from(await logps.data()) };
    tf.dispose([l, ids, logps]);
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    return out;
  };
  const want = await run("cpu");
  for (const backend of FUSED) {
    const got = await run(backend);
    assert.deepEqual(got.ids, want.ids, backend);
    assertAllClose(got.logps, want.logps, 1e-5, backend);
  }
  // Inverse CDF in vocabulary order: u below the first token's probability picks token 0.
  await useBackend("wasm");
  const l = tf.tensor2d([[0, 0, 0, 0]]);
  const first = sampleTokens(l, [0.2], options);
  assert.deepEqual(Array.from(await first.ids.data()), [0]);
  assertAllClose(Array.from(await first.logps.data()), [Math.log(0.25)], 1e-6);
  tf.dispose([l, first.ids, first.logps]);
});

Deno.test("stock cpu registers no fused kernel; wasm and cpu+blas do", async () => {
  await useBackend("cpu");
  assert.equal(hasFusedKernel(RMS_NORM), false);
  await useBackend("wasm");
  assert.equal(hasFusedKernel(RMS_NORM), true);
  assert.equal(hasFusedKernel(ATTENTION), false, "attention needs a BLAS");
  await useBackend("cpu+blas");
  assert.equal(hasFusedKernel(ATTENTION), true);
  await useBackend("cpu");
  assert.equal(hasFusedKernel(ATTENTION), false);
});

Deno.test("fusedRope() and fusedTokenLogSoftmax() refuse a bad position or id, leaving no output behind", async () => {
  for (const backend of FUSED) {
    await useBackend(backend);
    const dataIds = tf.engine().backend.numDataIds();
    const x = tf.zeros([1, 2, 1, 4]) as tf.Tensor4D;
    const positions = tf.tensor2d([[0, -1]], [1, 2], "int32");
    const logits = tf.zeros([2, 3]) as tf.Tensor2D;
    const ids = tf.tensor1d([1, 3], "int32");
    assert.throws(() => fusedRope(x, positions, 10000), {
      name: "RangeError",
      message: /negative position -1/,
    });
    assert.throws(() => fusedTokenLogSoftmax(logits, ids, 1), {
      name: "RangeError",
      message: /id 3 not in \[0, 3\)/,
    });
    tf.dispose([x, positions, logits, ids]);
    assert.equal(
      tf.engine().backend.numDataIds(),
      dataIds,
      `${backend}: a refused kernel left an output`,
    );
  }
});
