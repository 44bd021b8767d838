/**
 * Fused kernels for the Qwen2 forward and backward passes on the wasm and cpu backends: each
 * replaces a chain of small tfjs kernels (bench/PROFILE.md: the demo GRPO step spends most of its
 * time in per-kernel overhead, broadcasts and copies, not in matMuls) with one pass over the
 * tensors' memory, written in JS over the backend's own Float32Arrays (the wasm heap, or the cpu
 * backend's arrays). Private to lib: `lib/backend.ts` registers them, `lib/model.ts`, `grpo.ts`,
 * `lora.ts` and `rollout.ts` call the ops below when {@linkcode hasFusedKernel} says the active
 * backend has them, and their stock tfjs compositions otherwise (webgpu, stock cpu, tensorflow).
 *
 * | kernel                 | replaces                                                        | gradient            |
 * | ---------------------- | --------------------------------------------------------------- | ------------------- |
 * | `FusedRmsNorm`         | square, mean, add, rsqrt, mul, mul                              | x and w             |
 * | `FusedRope`            | split, neg, concat, 2 mul, add, sin/cos tables, 2 transposes    | x (inverse rotation)|
 * | `FusedAttention`       | scores matMul, scale, mask bias (logicalAnd, where), softmax,   | q, k, v             |
 * |                        | probs matMul, 4 transposes: one strided sgemm pair per head     |                     |
 * | `FusedCachedAttention` | the same against a KV cache that it appends to in place          | none (inference)    |
 * | `TokenLogSoftmax`      | div, logSumExp, one-hot gather, entropy (TRL selective_log_softmax) | logits          |
 * | `DropoutMask`          | randomUniform (a JS closure per value), add, floor, div         | none (no inputs)    |
 * | `SampleTokens`         | softmax, cumsum, compare, count, gather (top_k 0, top_p 1)      | none (sampling)     |
 *
 * Every kernel has a test against its stock composition, values and gradients
 * (tests/kernels_test.ts). The attention kernels call `cblas_sgemm` through their own FFI
 * binding of the BLAS lib/backend.ts opened (with leading dimensions, which lib/_blas.ts's matMul
 * plan does not need), so they exist only where a BLAS does.
 *
 * @module
 */
import { tf } from "./tf.ts";
import { openBlas } from "./_blas.ts";

// ---------------------------------------------------------------------------------------------
// Kernel names

/** `w * x / sqrt(mean(x^2) + eps)` over the last axis (HF `Qwen2RMSNorm`). */
export const RMS_NORM = "FusedRmsNorm";
/** RoPE of `[B, T, n, hd]` at positions `[B, T]` (HF `apply_rotary_pos_emb`, rotate_half). */
export const ROPE = "FusedRope";
/** Causal attention of a whole sequence with a padding mask (HF `eager_attention_forward`). */
export const ATTENTION = "FusedAttention";
/** Attention of T new tokens against a KV cache that the kernel appends them to. */
export const CACHED_ATTENTION = "FusedCachedAttention";
/** Per-row log-probability of one token and the entropy of the temperature-scaled softmax. */
export const TOKEN_LOG_SOFTMAX = "TokenLogSoftmax";
/** tf.dropout's multiplier, from the same seeded alea stream. */
export const DROPOUT_MASK = "DropoutMask";
/** One token per row by inverse-CDF sampling of softmax(logits / temperature), unsorted. */
export const SAMPLE_TOKENS = "SampleTokens";
/** PEFT's LoRA delta `lora_B(lora_A(dropout(x))) * scaling` in two sgemms. */
export const LORA_DELTA = "LoraDelta";

const RMS_NORM_GRAD_X = "FusedRmsNormGradX";
const RMS_NORM_GRAD_W = "FusedRmsNormGradW";
const ATTENTION_GRAD = "FusedAttentionGrad";
const TOKEN_LOG_SOFTMAX_GRAD = "TokenLogSoftmaxGrad";
const LORA_DELTA_GRAD = "LoraDeltaGrad";

/** The kernels lib/backend.ts can register, on "wasm" and "cpu". */
export type FusedBackend = "wasm" | "cpu";

/** One kernel: its name, whether it needs BLAS, and its function on a backend. */
export interface FusedKernel {
  kernelName: string;
  needsBlas: boolean;
  kernelFunc(backendName: FusedBackend): tf.KernelFunc;
}

/**
 * Whether the active backend has `kernelName` registered, i.e. whether the fused op can run.
 *
 * @example Usage
 * ```ts
 * import { hasFusedKernel, RMS_NORM } from "./_kernels.ts";
 * console.log(hasFusedKernel(RMS_NORM)); // false until lib/backend.ts sets up wasm or cpu+blas
 * ```
 */
export function hasFusedKernel(kernelName: string): boolean {
  return tf.getKernel(kernelName, tf.getBackend()) !== undefined;
}

// ---------------------------------------------------------------------------------------------
// Memory access: the wasm heap or the cpu backend's arrays

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  backend: object;
  attrs?: tf.NamedAttrMap;
}

type IntView = Int32Array | Float32Array | Uint8Array;

/**
 * How a kernel reaches a backend's tensor memory. NOTE: on wasm a view dies at the next `alloc`
 * (a growing heap replaces its buffer), so every kernel allocates its outputs first.
 */
interface Host {
  alloc(shape: number[], dtype?: "float32" | "int32"): tf.TensorInfo;
  f32(info: tf.TensorInfo): Float32Array;
  /** ids, positions, masks: int32, float32 or bool, read as numbers. */
  ints(info: tf.TensorInfo): IntView;
}

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): IntView;
}

interface CpuBackendLike {
  data: { get(dataId: object): { values?: unknown } };
  makeTensorInfo(
    shape: number[],
    dtype: tf.DataType,
    values: Float32Array | Int32Array,
  ): tf.TensorInfo;
}

function hostOf(backendName: FusedBackend, backend: object): Host {
  if (backendName === "wasm") {
    const wasm = backend as WasmBackendLike;
    return {
      alloc: (shape, dtype = "float32") => wasm.makeOutput(shape, dtype),
      f32: (info) => wasm.typedArrayFromHeap(info) as Float32Array,
      ints: (info) => wasm.typedArrayFromHeap(info),
    };
  }
  const cpu = backend as CpuBackendLike;
  const values = (info: tf.TensorInfo) => {
    const v = cpu.data.get(info.dataId).values;
    if (!ArrayBuffer.isView(v)) throw new Error(`cpu tensor [${info.shape}] has no typed values`);
    return v as IntView;
  };
  return {
    // The cpu backend keeps this very array as the tensor's storage (no copy).
    alloc: (shape, dtype = "float32") =>
      cpu.makeTensorInfo(
        shape,
        dtype,
        dtype === "int32" ? new Int32Array(sizeOf(shape)) : new Float32Array(sizeOf(shape)),
      ),
    f32: (info) => values(info) as Float32Array,
    ints: values,
  };
}

function sizeOf(shape: readonly number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

/** 2^k for k in [-150, 149], indexed by k + 150 (fastExp's scale). */
const POW2 = Float64Array.from({ length: 300 }, (_, i) => Math.pow(2, i - 150));

/**
 * e^v for v <= 88 (softmax arguments are <= 0): e^v = 2^k · e^r, k = round(v / ln 2) by the
 * 1.5·2^52 rounding trick, r = v − k·ln 2 split in two parts (Cody-Waite), e^r by its Taylor
 * polynomial of degree 7 (|r| <= ln 2 / 2, relative error < 1e-8, far below float32's 6e-8).
 * NOTE: about 2x faster than Math.exp in V8 (4.5 vs 10 ns a value), which is most of a
 * softmax's cost here; tfjs-backend-wasm's own exp runs in SIMD C++ and is not reachable from JS.
 */
function fastExp(v: number): number {
  if (v < -103) return 0; // below float32's smallest subnormal
  const k = v * 1.4426950408889634 + 6755399441055744.0 - 6755399441055744.0;
  const r = v - k * 0.6931471803691238 - k * 1.9082149292705877e-10;
  const p = 1 + r * (1 + r * (0.5 + r * (0.16666666666666666 + r * (0.041666666666666664 +
                    r *
                      (0.008333333333333333 +
                        r * (0.001388888888888889 + r * 0.0001984126984126984))))));
  return p * POW2[(k | 0) + 150];
}

function checkFloat32(kernel: string, ...infos: tf.TensorInfo[]): void {
  for (const info of infos) {
    if (info.dtype !== "float32") {
      throw new TypeError(`${kernel}: expected float32 tensors, got ${info.dtype} [${info.shape}]`);
    }
  }
}

type Compute = (host: Host, args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[];

function kernel(kernelName: string, compute: Compute): FusedKernel {
  return blasKernel(kernelName, () => compute, false);
}

/** A kernel whose compute function depends on the backend (the attention kernels' sgemm). */
function blasKernel(
  kernelName: string,
  make: (backendName: FusedBackend) => Compute,
  needsBlas = true,
): FusedKernel {
  return {
    kernelName,
    needsBlas,
    kernelFunc(backendName) {
      const compute = make(backendName);
      return function fusedKernel(args: KernelArgs) {
        return compute(hostOf(backendName, args.backend), args);
      } as unknown as tf.KernelFunc;
    },
  };
}

function runKernel(
  name: string,
  inputs: tf.NamedTensorMap,
  attrs: Record<string, unknown> = {},
): tf.Tensor | tf.Tensor[] {
  return tf.engine().runKernel(name, inputs, attrs as unknown as tf.NamedAttrMap);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

interface RmsNormAttrs {
  eps: number;
}

function rmsNormForward(host: Host, { inputs, attrs }: KernelArgs): tf.TensorInfo {
  const { x, w } = inputs as { x: tf.TensorInfo; w: tf.TensorInfo };
  const { eps } = attrs as unknown as RmsNormAttrs;
  checkFloat32(RMS_NORM, x, w);
  const out = host.alloc(x.shape);
  const [xv, wv, ov] = [host.f32(x), host.f32(w), host.f32(out)];
  const h = wv.length;
  for (let o = 0; o < xv.length; o += h) {
    let squares = 0;
    for (let i = 0; i < h; i++) squares += xv[o + i] * xv[o + i];
    const inv = 1 / Math.sqrt(squares / h + eps);
    for (let i = 0; i < h; i++) ov[o + i] = wv[i] * (xv[o + i] * inv);
  }
  return out;
}

/** dx = r·(w·dy) − x·r³·mean(w·dy·x), r = 1/sqrt(mean(x²) + eps), per row. */
function rmsNormGradX(host: Host, { inputs, attrs }: KernelArgs): tf.TensorInfo {
  const { dy, x, w } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo; w: tf.TensorInfo };
  const { eps } = attrs as unknown as RmsNormAttrs;
  const out = host.alloc(x.shape);
  const [dyv, xv, wv, ov] = [host.f32(dy), host.f32(x), host.f32(w), host.f32(out)];
  const h = wv.length;
  for (let o = 0; o < xv.length; o += h) {
    let squares = 0;
    let dot = 0;
    for (let i = 0; i < h; i++) {
      squares += xv[o + i] * xv[o + i];
      dot += dyv[o + i] * wv[i] * xv[o + i];
    }
    const inv = 1 / Math.sqrt(squares / h + eps);
    const c = (inv * inv * inv * dot) / h;
    for (let i = 0; i < h; i++) ov[o + i] = inv * dyv[o + i] * wv[i] - xv[o + i] * c;
  }
  return out;
}

/** dw = Σ_rows dy·x·r. */
function rmsNormGradW(host: Host, { inputs, attrs }: KernelArgs): tf.TensorInfo {
  const { dy, x, w } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo; w: tf.TensorInfo };
  const { eps } = attrs as unknown as RmsNormAttrs;
  const out = host.alloc(w.shape);
  const [dyv, xv, ov] = [host.f32(dy), host.f32(x), host.f32(out)];
  const h = ov.length;
  const sum = new Float64Array(h);
  for (let o = 0; o < xv.length; o += h) {
    let squares = 0;
    for (let i = 0; i < h; i++) squares += xv[o + i] * xv[o + i];
    const inv = 1 / Math.sqrt(squares / h + eps);
    for (let i = 0; i < h; i++) sum[i] += dyv[o + i] * xv[o + i] * inv;
  }
  ov.set(sum);
  return out;
}

/**
 * RMSNorm in one kernel: `w * x / sqrt(mean(x^2) + eps)` over the last axis, in double precision
 * within each row (the stock chain rounds to float32 after every op; they agree to ~1e-7).
 *
 * @param x [..., H] float32.
 * @param w [H] float32.
 * @param eps `rms_norm_eps`.
 * @returns The shape of x. The caller disposes it.
 */
export function fusedRmsNorm(x: tf.Tensor, w: tf.Tensor, eps: number): tf.Tensor {
  return runKernel(RMS_NORM, { x, w }, { eps }) as tf.Tensor;
}

// ---------------------------------------------------------------------------------------------
// RoPE

interface RopeAttrs {
  theta: number;
  /** Rotate by −angle (the gradient of the rotation is its inverse). */
  inverse: boolean;
}

/** cos and sin of `position * inv_freq[i]` for positions [0, length), i < hd/2, float32. */
interface RopeTable {
  half: number;
  length: number;
  cos: Float32Array;
  sin: Float32Array;
}

/** Per (rope_theta, head_dim): grown to the largest position seen; positions never change. */
const ropeTables = new Map<string, RopeTable>();

function ropeTable(theta: number, hd: number, maxPosition: number): RopeTable {
  const key = `${theta}/${hd}`;
  let table = ropeTables.get(key);
  if (table !== undefined && table.length > maxPosition) return table;
  const half = hd / 2;
  const length = Math.max(maxPosition + 1, 2 * (table?.length ?? 0), 256);
  // float32 like HF's Qwen2RotaryEmbedding: inv_freq = 1 / theta ** (arange(0, d, 2) / d), and
  // freqs = position * inv_freq rounded to float32 before cos/sin (lib/model.ts ropeTables).
  const invFreq = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    invFreq[i] = Math.fround(1 / Math.pow(theta, Math.fround((2 * i) / hd)));
  }
  const cos = new Float32Array(length * half);
  const sin = new Float32Array(length * half);
  for (let p = 0; p < length; p++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(p * invFreq[i]);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  table = { half, length, cos, sin };
  ropeTables.set(key, table);
  return table;
}

/**
 * x [B, T, n, hd] rotated at positions [B, T]: for i < hd/2, out_i = x_i·cos − x_{i+hd/2}·sin and
 * out_{i+hd/2} = x_{i+hd/2}·cos + x_i·sin, each product rounded to float32 as the stock
 * `x * cos + rotate_half(x) * sin` rounds it.
 */
function ropeForward(host: Host, { inputs, attrs }: KernelArgs): tf.TensorInfo {
  const { x, positions } = inputs as { x: tf.TensorInfo; positions: tf.TensorInfo };
  const { theta, inverse } = attrs as unknown as RopeAttrs;
  checkFloat32(ROPE, x);
  const [B, T, n, hd] = x.shape;
  if (x.shape.length !== 4 || positions.shape.join() !== [B, T].join() || hd % 2 !== 0) {
    throw new RangeError(
      `${ROPE}: expected x [B, T, n, hd] with an even hd and positions [B, T], got [${x.shape}] and [${positions.shape}]`,
    );
  }
  // Check the positions before allocating, so that a bad one leaves no orphaned output behind.
  let maxPosition = 0;
  for (const p of host.ints(positions)) {
    if (!(p >= 0)) throw new RangeError(`${ROPE}: negative position ${p}`);
    maxPosition = Math.max(maxPosition, p);
  }
  const out = host.alloc(x.shape);
  const [xv, pv, ov] = [host.f32(x), host.ints(positions), host.f32(out)];
  const { half, cos, sin } = ropeTable(theta, hd, maxPosition);
  const sign = inverse ? -1 : 1;
  for (let row = 0; row < B * T; row++) {
    const t = pv[row] * half;
    for (let head = 0; head < n; head++) {
      const o = (row * n + head) * hd;
      for (let i = 0; i < half; i++) {
        const c = cos[t + i];
        const s = sign * sin[t + i];
        const x1 = xv[o + i];
        const x2 = xv[o + half + i];
        ov[o + i] = Math.fround(x1 * c) - Math.fround(x2 * s);
        ov[o + half + i] = Math.fround(x2 * c) + Math.fround(x1 * s);
      }
    }
  }
  return out;
}

/**
 * RoPE in one kernel, in the token-major layout the projections produce (no transposes).
 *
 * @param x [B, T, n, hd] float32 queries or keys.
 * @param positions [B, T] int32 position ids.
 * @param theta `rope_theta`.
 * @returns [B, T, n, hd]. The caller disposes it.
 */
export function fusedRope(x: tf.Tensor4D, positions: tf.Tensor2D, theta: number): tf.Tensor4D {
  return runKernel(ROPE, { x, positions }, { theta, inverse: false }) as tf.Tensor4D;
}

// ---------------------------------------------------------------------------------------------
// Attention

/** cblas_sgemm with leading dimensions, bound with `buffer` parameters (no pointer objects). */
interface Sgemm {
  (
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void;
}

const sgemmByBackend = new Map<FusedBackend, { library: string; sgemm: Sgemm }>();
const sgemmByLibrary = new Map<string, Sgemm>();

function bindSgemm(library: string): Sgemm {
  const cached = sgemmByLibrary.get(library);
  if (cached) return cached;
  // cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), with the
  // matrices as `buffer`s: a typed array passes straight through, no pointer object per call.
  const ints = ["i32", "i32", "i32", "i32", "i32", "i32"] as const;
  const matrix = ["buffer", "i32"] as const;
  const lib = Deno.dlopen(
    library,
    {
      cblas_sgemm: {
        parameters: [...ints, "f32", ...matrix, ...matrix, "f32", ...matrix],
        result: "void",
      },
    } as const,
  );
  const call = lib.symbols.cblas_sgemm;
  const blas = openBlas(library);
  const sgemm: Sgemm = (transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) => {
    call(101, transA ? 112 : 111, transB ? 112 : 111, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  };
  // Per-head products are a few MFLOP: a second OpenBLAS thread costs more than it gives.
  const single: Sgemm = (...args) => {
    blas.useThreads(1);
    sgemm(...args);
  };
  sgemmByLibrary.set(library, single);
  return single;
}

/**
 * Points the attention kernels of `backendName` at the BLAS `library` (lib/backend.ts calls this
 * with the library it opened; null when there is none, and then the attention kernels are not
 * registered).
 */
export function setFusedBlas(backendName: FusedBackend, library: string | null): void {
  if (library === null) sgemmByBackend.delete(backendName);
  else sgemmByBackend.set(backendName, { library, sgemm: bindSgemm(library) });
}

function sgemmOf(backendName: FusedBackend): Sgemm {
  const entry = sgemmByBackend.get(backendName);
  if (!entry) throw new Error(`attention kernels on ${backendName} need a BLAS`);
  return entry.sgemm;
}

interface AttentionAttrs {
  scale: number;
}

interface CachedAttentionAttrs extends AttentionAttrs {
  /** Positions of the cache filled before this call; the new keys go to [length, length + T). */
  length: number;
}

/** Where the keys (or values) of batch row b, kv head j start, and the row stride. */
interface KeyLayout {
  data: Float32Array;
  offset(b: number, j: number): number;
  ld: number;
}

let scratch = new Float32Array(0);

function scratchOf(size: number): Float32Array {
  if (scratch.length < size) scratch = new Float32Array(Math.max(size, 2 * scratch.length));
  return scratch;
}

/**
 * The real keys of one batch row among its first S positions: [lo, hi) spans every position whose
 * mask is non-zero. Padding outside it (left-padded prompts, right-padded completions) is skipped:
 * no query sees those keys, and queries before `lo` see no key at all.
 */
function keyRange(mask: IntView, offset: number, S: number): [number, number] {
  let lo = 0;
  while (lo < S && mask[offset + lo] === 0) lo++;
  let hi = S;
  while (hi > lo && mask[offset + hi - 1] === 0) hi--;
  return [lo, hi];
}

/**
 * Masked softmax in place of `rows` rows of scores for keys [lo, lo + n), row stride `ld`: row r
 * is the query at position `position + r * step`, which sees key s when `mask[maskOffset + s]`
 * is non-zero and s is not after it. Returns false when a row sees no key and [lo, lo + n) is not
 * all S keys (the caller then redoes the block over all S); over all S, such a row gets the
 * uniform distribution HF's finite mask value gives.
 */
function maskedSoftmax(
  p: Float32Array,
  offset: number,
  ld: number,
  rows: number,
  [lo, n, S]: [number, number, number],
  [position, step]: [number, number],
  mask: IntView,
  maskOffset: number,
): boolean {
  const m = maskOffset + lo;
  let dense = true; // no padding among the keys: the loops below skip the mask
  for (let s = 0; s < n && dense; s++) dense = mask[m + s] !== 0;
  for (let r = 0; r < rows; r++) {
    const o = offset + r * ld;
    const limit = Math.min(n, position + r * step - lo + 1); // keys not in the future
    if (dense) {
      softmaxRow(p, o, limit);
      p.fill(0, o + limit, o + n);
      continue;
    }
    let max = -Infinity;
    for (let s = 0; s < limit; s++) {
      if (mask[m + s] !== 0 && p[o + s] > max) max = p[o + s];
    }
    if (max === -Infinity) {
      if (n !== S) return false;
      p.fill(1 / S, o, o + S);
      continue;
    }
    let sum = 0;
    for (let s = 0; s < limit; s++) {
      if (mask[m + s] !== 0) {
        const e = fastExp(p[o + s] - max);
        p[o + s] = e;
        sum += e;
      } else p[o + s] = 0;
    }
    const inv = 1 / sum;
    for (let s = 0; s < limit; s++) p[o + s] *= inv;
    p.fill(0, o + Math.max(limit, 0), o + n);
  }
  return true;
}

/** Softmax in place of p[o, o + n). */
function softmaxRow(p: Float32Array, o: number, n: number): void {
  let max = -Infinity;
  for (let s = o; s < o + n; s++) if (p[s] > max) max = p[s];
  let sum = 0;
  for (let s = o; s < o + n; s++) {
    const e = fastExp(p[s] - max);
    p[s] = e;
    sum += e;
  }
  const inv = 1 / sum;
  for (let s = o; s < o + n; s++) p[s] *= inv;
}

/** The mean of the S value rows of (b, kv head j): what a query that sees no key gets. */
function meanValue(values: KeyLayout, b: number, j: number, S: number, hd: number): Float32Array {
  const sum = new Float64Array(hd);
  const o = values.offset(b, j);
  for (let s = 0; s < S; s++) {
    for (let d = 0; d < hd; d++) sum[d] += values.data[o + s * values.ld + d];
  }
  return Float32Array.from(sum, (x) => x / S);
}

/**
 * Attention of q [B, T, nH, hd] (token-major) against S keys/values, per batch row and head:
 * scores = scale · Q Kᵀ (sgemm), masked softmax, out = P V (sgemm), written token-major into
 * `ov`. Only the real keys [lo, hi) of a row enter the products (queries before lo see none: they
 * get the mean value, HF's uniform distribution). `probs` receives P [B, nH, T, S] when given
 * (the backward pass needs it). Query heads j·nRep … j·nRep + nRep − 1 read kv head j (HF
 * repeat_kv).
 */
function attend(
  sgemm: Sgemm,
  q: Float32Array,
  [B, T, nH, hd]: number[],
  nKV: number,
  keys: KeyLayout,
  values: KeyLayout,
  S: number,
  mask: IntView,
  maskStride: number,
  scale: number,
  ov: Float32Array,
  probs: Float32Array | null,
): void {
  const nRep = nH / nKV;
  const ldq = nH * hd;
  // Over keys [lo, hi) of batch row b; false when a query inside sees no key (a hole in the mask).
  const attendRow = (b: number, lo: number, hi: number): boolean => {
    const n = hi - lo;
    const first = Math.min(T, Math.max(0, lo - (S - T))); // queries before it see no key
    const rows = T - first;
    for (let j = 0; j < nKV; j++) {
      const k = keys.data.subarray(keys.offset(b, j) + lo * keys.ld);
      const v = values.data.subarray(values.offset(b, j) + lo * values.ld);
      // One decoded token (T = 1): the nRep query heads of a kv head are contiguous rows, so one
      // sgemm pair per (b, kv head) instead of per (b, head).
      if (T === 1 && probs === null && rows === 1) {
        const qo = (b * nH + j * nRep) * hd;
        const p = scratchOf(nRep * n);
        sgemm(false, true, nRep, n, hd, scale, q.subarray(qo), hd, k, keys.ld, 0, p, n);
        if (!maskedSoftmax(p, 0, n, nRep, [lo, n, S], [S - 1, 0], mask, b * maskStride)) {
          return false;
        }
        sgemm(false, false, nRep, hd, n, 1, p, n, v, values.ld, 0, ov.subarray(qo), hd);
        continue;
      }
      const mean = first > 0 ? meanValue(values, b, j, S, hd) : null;
      for (let h = j * nRep; h < (j + 1) * nRep; h++) {
        const qo = b * T * ldq + h * hd;
        const po = (b * nH + h) * T * S;
        for (let t = 0; t < first; t++) ov.set(mean!, qo + t * ldq);
        if (probs !== null) probs.fill(1 / S, po, po + first * S);
        if (rows === 0) continue;
        const ld = probs === null ? n : S;
        const p = probs ?? scratchOf(rows * n);
        const block = probs === null ? 0 : po + first * S + lo;
        const qs = q.subarray(qo + first * ldq);
        sgemm(false, true, rows, n, hd, scale, qs, ldq, k, keys.ld, 0, p.subarray(block), ld);
        const positions: [number, number] = [S - T + first, 1];
        if (!maskedSoftmax(p, block, ld, rows, [lo, n, S], positions, mask, b * maskStride)) {
          return false;
        }
        const os = ov.subarray(qo + first * ldq);
        sgemm(false, false, rows, hd, n, 1, p.subarray(block), ld, v, values.ld, 0, os, ldq);
        if (probs !== null && n < S) {
          for (let t = first; t < T; t++) {
            probs.fill(0, po + t * S, po + t * S + lo);
            probs.fill(0, po + t * S + hi, po + (t + 1) * S);
          }
        }
      }
    }
    return true;
  };
  for (let b = 0; b < B; b++) {
    const [lo, hi] = keyRange(mask, b * maskStride, S);
    if (!attendRow(b, lo, hi)) attendRow(b, 0, S);
  }
}

function tokenMajor(data: Float32Array, [, S, nKV, hd]: number[]): KeyLayout {
  return { data, offset: (b, j) => (b * S * nKV + j) * hd, ld: nKV * hd };
}

/** `suffix`: q may hold only the last T of k's S positions (k and v [B, S, nKV, hd], S >= T). */
function checkAttentionShapes(
  kernelName: string,
  q: tf.TensorInfo,
  k: tf.TensorInfo,
  v: tf.TensorInfo,
  suffix = false,
): void {
  checkFloat32(kernelName, q, k, v);
  const [B, T, nH, hd] = q.shape;
  const [kb, kt, nKV, khd] = k.shape;
  if (
    q.shape.length !== 4 || k.shape.length !== 4 || kb !== B || khd !== hd ||
    (suffix ? kt < T : kt !== T) || nH % nKV !== 0 || v.shape.join() !== k.shape.join()
  ) {
    throw new RangeError(
      `${kernelName}: expected q [B, T, nH, hd], k and v [B, ${suffix ? "S >= T" : "T"}, nKV, ` +
        `hd] with nKV dividing nH, got [${q.shape}], [${k.shape}], [${v.shape}]`,
    );
  }
}

function attentionForward(backendName: FusedBackend): Compute {
  return (host, { inputs, attrs }) => {
    const { q, k, v, mask } = inputs as Record<string, tf.TensorInfo>;
    const { scale } = attrs as unknown as AttentionAttrs;
    checkAttentionShapes(ATTENTION, q, k, v, true);
    const [B, T, nH] = q.shape;
    const S = k.shape[1];
    const out = host.alloc(q.shape);
    const probs = host.alloc([B, nH, T, S]);
    const [qv, kv, vv, mv] = [host.f32(q), host.f32(k), host.f32(v), host.ints(mask)];
    const [ov, pv] = [host.f32(out), host.f32(probs)];
    const nKV = k.shape[2];
    const [keys, values] = [tokenMajor(kv, k.shape), tokenMajor(vv, v.shape)];
    attend(sgemmOf(backendName), qv, q.shape, nKV, keys, values, S, mv, S, scale, ov, pv);
    return [out, probs];
  };
}

/**
 * Gradients of {@linkcode attend} (no cache) per (b, head), j its kv head:
 * dP = dO Vᵀ; dS = P ⊙ (dP − rowsum(P ⊙ dP)); dQ = scale·dS K; dK += scale·dSᵀ Q; dV += Pᵀ dO
 * (the nRep heads of a kv head accumulate into its dK, dV). The T queries are the last T of the
 * S keys' positions. As in the forward pass, queries from the first real key on use only the
 * real keys [lo, hi) (P is 0 outside them); the queries before (P uniform over all keys) use all S.
 */
function attentionGrad(backendName: FusedBackend): Compute {
  return (host, { inputs, attrs }) => {
    const { dy, q, k, v, probs, mask } = inputs as Record<string, tf.TensorInfo>;
    const { scale } = attrs as unknown as AttentionAttrs;
    const [B, T, nH, hd] = q.shape;
    const S = k.shape[1];
    const nKV = k.shape[2];
    const nRep = nH / nKV;
    const dq = host.alloc(q.shape);
    const dk = host.alloc(k.shape);
    const dv = host.alloc(v.shape);
    const [dyv, qv, kv, vv, pv] = [dy, q, k, v, probs].map((t) => host.f32(t));
    const [dqv, dkv, dvv] = [dq, dk, dv].map((t) => host.f32(t));
    const mv = host.ints(mask);
    const sgemm = sgemmOf(backendName);
    const ldq = nH * hd;
    const ldk = nKV * hd;
    dkv.fill(0);
    dvv.fill(0);
    // Rows [r0, r0 + rows) of one (b, h) against keys [lo, lo + n); P read in place (row stride S).
    // `causal`: P is 0 past each query's own position, so dS is too (no need to compute it).
    const region = (
      qo: number,
      ko: number,
      po: number,
      r0: number,
      rows: number,
      lo: number,
      n: number,
      causal: boolean,
    ) => {
      if (rows === 0 || n === 0) return;
      const dp = scratchOf(rows * n);
      const p = pv.subarray(po + r0 * S + lo);
      const dO = dyv.subarray(qo + r0 * ldq);
      const qs = qv.subarray(qo + r0 * ldq);
      const [kb, vb] = [kv.subarray(ko + lo * ldk), vv.subarray(ko + lo * ldk)];
      sgemm(false, true, rows, n, hd, 1, dO, ldq, vb, ldk, 0, dp, n);
      for (let r = 0; r < rows; r++) {
        const limit = causal ? Math.max(0, Math.min(n, S - T + r0 + r - lo + 1)) : n;
        const [pr, dr] = [r * S, r * n];
        let dot = 0;
        for (let s = 0; s < limit; s++) dot += p[pr + s] * dp[dr + s];
        for (let s = 0; s < limit; s++) dp[dr + s] = p[pr + s] * (dp[dr + s] - dot);
        dp.fill(0, dr + limit, dr + n);
      }
      sgemm(false, false, rows, hd, n, scale, dp, n, kb, ldk, 0, dqv.subarray(qo + r0 * ldq), ldq);
      sgemm(true, false, n, hd, rows, scale, dp, n, qs, ldq, 1, dkv.subarray(ko + lo * ldk), ldk);
      sgemm(true, false, n, hd, rows, 1, p, S, dO, ldq, 1, dvv.subarray(ko + lo * ldk), ldk);
    };
    for (let b = 0; b < B; b++) {
      let [lo, hi] = keyRange(mv, b * S, S);
      // Queries before the first real key (positions S - T + t < lo) see none: uniform P.
      let first = Math.min(T, Math.max(0, lo - (S - T)));
      // A query after it that saw no key (a hole in the mask) has P uniform over all S: use all S.
      const outside = lo > 0 ? 0 : hi < S ? S - 1 : -1;
      let causal = true;
      for (let h = 0; h < nH && outside >= 0 && first < T && causal; h++) {
        const po = (b * nH + h) * T * S;
        for (let t = first; t < T; t++) {
          if (pv[po + t * S + outside] !== 0) [lo, hi, first, causal] = [0, S, 0, false];
        }
      }
      for (let h = 0; h < nH; h++) {
        const qo = b * T * ldq + h * hd;
        const ko = b * S * ldk + Math.floor(h / nRep) * hd;
        const po = (b * nH + h) * T * S;
        region(qo, ko, po, 0, first, 0, S, false); // queries before the first real key: uniform P
        region(qo, ko, po, first, T - first, lo, hi - lo, causal);
      }
    }
    return [dq, dk, dv];
  };
}

/**
 * Causal self-attention of a whole padded sequence in one kernel (HF `eager_attention_forward`
 * with `repeat_kv`, the causal mask and the padding mask): per batch row and head, a strided sgemm
 * for the scores, a masked softmax, a strided sgemm for the output. Its gradient (q, k, v) is one
 * more kernel, from the probabilities kept for it. The queries may be the last T of S positions
 * only (HF `logits_to_keep` on a last layer: the keys and values cover every position, the
 * queries only those whose outputs are read).
 *
 * @param q [B, T, nH, hd] queries after RoPE, token-major: positions S - T .. S - 1.
 * @param k [B, S, nKV, hd] keys after RoPE, S >= T.
 * @param v [B, S, nKV, hd] values.
 * @param mask [B, S] 1 for real tokens, 0 for padding.
 * @param scale 1 / sqrt(hd).
 * @returns [B, T, nH, hd]. The caller disposes it.
 */
export function fusedAttention(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  mask: tf.Tensor2D,
  scale: number,
): tf.Tensor4D {
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [qIn, kIn, vIn] = args as tf.Tensor[];
    const save = args[3] as tf.GradSaveFunc;
    const [out, probs] = runKernel(ATTENTION, { q: qIn, k: kIn, v: vIn, mask }, {
      scale,
    }) as tf.Tensor[];
    save([qIn, kIn, vIn, probs, mask]);
    return {
      value: out,
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
        const [sq, sk, sv, sp, sm] = saved;
        const inputs = { dy: dy as tf.Tensor, q: sq, k: sk, v: sv, probs: sp, mask: sm };
        return runKernel(ATTENTION_GRAD, inputs, { scale }) as tf.Tensor[];
      },
    };
  });
  return f(q, k, v) as tf.Tensor4D;
}

/**
 * Appends the new keys and values to the cache (in place: `kCache` and `vCache` are written), then
 * attends over cache positions [0, length + T).
 */
function cachedAttentionForward(backendName: FusedBackend): Compute {
  return (host, { inputs, attrs }) => {
    const { q, k, v, kCache, vCache, mask } = inputs as Record<string, tf.TensorInfo>;
    const { scale, length } = attrs as unknown as CachedAttentionAttrs;
    checkAttentionShapes(CACHED_ATTENTION, q, k, v);
    checkFloat32(CACHED_ATTENTION, kCache, vCache);
    const [B, T, , hd] = q.shape;
    const nKV = k.shape[2];
    const capacity = kCache.shape[2];
    const S = length + T;
    if (
      kCache.shape.join() !== [B, nKV, capacity, hd].join() ||
      vCache.shape.join() !== kCache.shape.join() || S > capacity ||
      mask.shape.join() !== [B, capacity].join()
    ) {
      throw new RangeError(
        `${CACHED_ATTENTION}: caches [${kCache.shape}] and mask [${mask.shape}] cannot take ` +
          `${T} tokens after ${length} for q [${q.shape}]`,
      );
    }
    const out = host.alloc(q.shape);
    const [qv, kv, vv, kc, vc, mv, ov] = [
      host.f32(q),
      host.f32(k),
      host.f32(v),
      host.f32(kCache),
      host.f32(vCache),
      host.ints(mask),
      host.f32(out),
    ];
    // NOTE: in place. The cache tensors are owned by one decoding loop (lib/model.ts KVCache).
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        for (let j = 0; j < nKV; j++) {
          const src = ((b * T + t) * nKV + j) * hd;
          const dst = ((b * nKV + j) * capacity + length + t) * hd;
          kc.set(kv.subarray(src, src + hd), dst);
          vc.set(vv.subarray(src, src + hd), dst);
        }
      }
    }
    const headMajor = (data: Float32Array): KeyLayout => ({
      data,
      offset: (b, j) => (b * nKV + j) * capacity * hd,
      ld: hd,
    });
    attend(
      sgemmOf(backendName),
      qv,
      q.shape,
      nKV,
      headMajor(kc),
      headMajor(vc),
      S,
      mv,
      capacity,
      scale,
      ov,
      null,
    );
    return out;
  };
}

/**
 * Attention of T new tokens against a KV cache (prefill with `length` 0, then one token per
 * decoding step). Writes the new keys and values into the caches at [length, length + T) in
 * place. Inference only: it has no gradient.
 *
 * @param q [B, T, nH, hd] after RoPE.
 * @param k [B, T, nKV, hd] new keys after RoPE.
 * @param v [B, T, nKV, hd] new values.
 * @param cache `keys`, `values` [B, nKV, capacity, hd], `mask` [B, capacity] (1 = real token;
 *   positions past the prompt are 1), `length` positions filled before.
 * @param scale 1 / sqrt(hd).
 * @returns [B, T, nH, hd]. The caller disposes it.
 */
export function fusedCachedAttention(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  cache: { keys: tf.Tensor4D; values: tf.Tensor4D; mask: tf.Tensor2D; length: number },
  scale: number,
): tf.Tensor4D {
  return runKernel(CACHED_ATTENTION, {
    q,
    k,
    v,
    kCache: cache.keys,
    vCache: cache.values,
    mask: cache.mask,
  }, { scale, length: cache.length }) as tf.Tensor4D;
}

// ---------------------------------------------------------------------------------------------
// LoRA

interface LoraDeltaAttrs {
  scaling: number;
}

function checkLoraShapes(
  kernelName: string,
  x: tf.TensorInfo,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
): void {
  checkFloat32(kernelName, x, a, b);
  if (
    x.shape.length !== 2 || a.shape.length !== 2 || b.shape.length !== 2 ||
    a.shape[1] !== x.shape[1] || b.shape[1] !== a.shape[0]
  ) {
    throw new RangeError(
      `${kernelName}: expected x [N, in], a [r, in] and b [out, r], got [${x.shape}], ` +
        `[${a.shape}] and [${b.shape}]`,
    );
  }
}

/** low = x Aᵀ, delta = scaling · low Bᵀ; both are outputs (the gradient reuses low). */
function loraDeltaForward(backendName: FusedBackend): Compute {
  return (host, { inputs, attrs }) => {
    const { x, a, b } = inputs as Record<string, tf.TensorInfo>;
    const { scaling } = attrs as unknown as LoraDeltaAttrs;
    checkLoraShapes(LORA_DELTA, x, a, b);
    const [N, K] = x.shape;
    const [r, M] = [a.shape[0], b.shape[0]];
    const out = host.alloc([N, M]);
    const low = host.alloc([N, r]);
    const sgemm = sgemmOf(backendName);
    const lv = host.f32(low);
    sgemm(false, true, N, r, K, 1, host.f32(x), K, host.f32(a), K, 0, lv, r); // [N, r]
    // NOTE: sgemm applies alpha to the float32 sum, as tf.mul(lora_B(...), scaling) rounds it.
    sgemm(false, true, N, M, r, scaling, lv, r, host.f32(b), r, 0, host.f32(out), M); // [N, out]
    return [out, low];
  };
}

/** With g = scaling · dy: dB = gᵀ low, dlow = g B, dA = dlowᵀ x, dx = dlow A. */
function loraDeltaGrad(backendName: FusedBackend): Compute {
  return (host, { inputs, attrs }) => {
    const { dy, x, a, b, low } = inputs as Record<string, tf.TensorInfo>;
    const { scaling } = attrs as unknown as LoraDeltaAttrs;
    const [N, K] = x.shape;
    const [r, M] = [a.shape[0], b.shape[0]];
    const dx = host.alloc(x.shape);
    const da = host.alloc(a.shape);
    const db = host.alloc(b.shape);
    const sgemm = sgemmOf(backendName);
    const [dyv, xv, av, bv, lv] = [dy, x, a, b, low].map((t) => host.f32(t));
    const [dxv, dav, dbv] = [dx, da, db].map((t) => host.f32(t));
    const dlow = scratchOf(N * r);
    sgemm(true, false, M, r, N, scaling, dyv, M, lv, r, 0, dbv, r); // [out, r]
    sgemm(false, false, N, r, M, scaling, dyv, M, bv, r, 0, dlow, r); // [N, r]
    sgemm(true, false, r, K, N, 1, dlow, r, xv, K, 0, dav, K); // [r, in]
    sgemm(false, false, N, K, r, 1, dlow, r, av, K, 0, dxv, K); // [N, in]
    return [dx, da, db];
  };
}

/**
 * PEFT `lora.Linear.forward`'s delta without the dropout, `lora_B(lora_A(x)) * scaling`, as two
 * sgemms (the scaling is sgemm's alpha) with one gradient kernel for x, A and B, instead of two
 * matMuls, a scalar multiply and their six backward ops.
 *
 * @param x [N, in] float32 (after dropout).
 * @param a lora_A [r, in].
 * @param b lora_B [out, r].
 * @param scaling lora_alpha / r.
 * @returns [N, out]. The caller disposes it.
 */
export function loraDelta(
  x: tf.Tensor2D,
  a: tf.Tensor2D,
  b: tf.Tensor2D,
  scaling: number,
): tf.Tensor2D {
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xIn, aIn, bIn] = args as tf.Tensor[];
    const save = args[3] as tf.GradSaveFunc;
    const [out, low] = runKernel(LORA_DELTA, { x: xIn, a: aIn, b: bIn }, {
      scaling,
    }) as tf.Tensor[];
    save([xIn, aIn, bIn, low]);
    return {
      value: out,
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
        const [sx, sa, sb, sl] = saved;
        const inputs = { dy: dy as tf.Tensor, x: sx, a: sa, b: sb, low: sl };
        return runKernel(LORA_DELTA_GRAD, inputs, { scaling }) as tf.Tensor[];
      },
    };
  });
  return f(x, a, b) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------
// Log-probabilities of chosen tokens

interface TokenLogSoftmaxAttrs {
  temperature: number;
}

/** logsumexp of one row of z = logits / temperature (each z rounded to float32, as tf.div). */
function rowLogSumExp(lv: Float32Array, o: number, V: number, t32: number): number {
  let max = -Infinity;
  for (let i = 0; i < V; i++) {
    const z = Math.fround(lv[o + i] / t32);
    if (z > max) max = z;
  }
  let sum = 0;
  for (let i = 0; i < V; i++) sum += fastExp(Math.fround(lv[o + i] / t32) - max);
  return max + Math.log(sum);
}

function tokenLogSoftmaxForward(host: Host, { inputs, attrs }: KernelArgs): tf.TensorInfo[] {
  const { logits, ids } = inputs as { logits: tf.TensorInfo; ids: tf.TensorInfo };
  const { temperature } = attrs as unknown as TokenLogSoftmaxAttrs;
  checkFloat32(TOKEN_LOG_SOFTMAX, logits);
  const [N, V] = logits.shape;
  if (logits.shape.length !== 2 || ids.shape.join() !== String(N)) {
    throw new RangeError(
      `${TOKEN_LOG_SOFTMAX}: expected logits [N, V] and ids [N], got [${logits.shape}] and [${ids.shape}]`,
    );
  }
  // Check the ids before allocating, so that a bad one leaves no orphaned outputs behind.
  for (const id of host.ints(ids)) {
    if (!(id >= 0 && id < V)) {
      throw new RangeError(`${TOKEN_LOG_SOFTMAX}: id ${id} not in [0, ${V})`);
    }
  }
  const logps = host.alloc([N]);
  const entropies = host.alloc([N]);
  const [lv, iv, pv, ev] = [host.f32(logits), host.ints(ids), host.f32(logps), host.f32(entropies)];
  const t32 = Math.fround(temperature);
  for (let n = 0; n < N; n++) {
    const o = n * V;
    const id = iv[n];
    const lse = rowLogSumExp(lv, o, V, t32);
    // H = −Σ p·(z − lse) = lse − Σ p·z (TRL entropy_from_logits).
    let pz = 0;
    for (let i = 0; i < V; i++) {
      const z = Math.fround(lv[o + i] / t32);
      pz += fastExp(z - lse) * z;
    }
    pv[n] = Math.fround(lv[o + id] / t32) - lse;
    ev[n] = lse - pz;
  }
  return [logps, entropies];
}

/** d logits = dlogp · (onehot(id) − softmax(z)) / temperature; the entropy has no gradient. */
function tokenLogSoftmaxGrad(host: Host, { inputs, attrs }: KernelArgs): tf.TensorInfo {
  const { dy, logits, ids } = inputs as Record<string, tf.TensorInfo>;
  const { temperature } = attrs as unknown as TokenLogSoftmaxAttrs;
  const [N, V] = logits.shape;
  const out = host.alloc(logits.shape);
  const [dyv, lv, iv, ov] = [host.f32(dy), host.f32(logits), host.ints(ids), host.f32(out)];
  const t32 = Math.fround(temperature);
  for (let n = 0; n < N; n++) {
    const o = n * V;
    const lse = rowLogSumExp(lv, o, V, t32);
    const g = dyv[n] / t32;
    for (let i = 0; i < V; i++) ov[o + i] = -g * fastExp(Math.fround(lv[o + i] / t32) - lse);
    ov[o + iv[n]] += g;
  }
  return out;
}

/**
 * `log_softmax(logits / temperature)` at one token per row, and the entropy of each row's
 * distribution, in one pass (TRL `selective_log_softmax` and `entropy_from_logits`). The
 * gradient flows through the log-probabilities only (TRL computes entropies under no_grad).
 *
 * @param logits [N, V] raw logits.
 * @param ids [N] int32 token ids.
 * @param temperature > 0.
 * @returns `logps` and `entropies`, [N] each. The caller disposes them.
 */
export function fusedTokenLogSoftmax(
  logits: tf.Tensor2D,
  ids: tf.Tensor1D,
  temperature: number,
): { logps: tf.Tensor1D; entropies: tf.Tensor1D } {
  const [logps, entropies] = runKernel(TOKEN_LOG_SOFTMAX, { logits, ids }, {
    temperature,
  }) as tf.Tensor1D[];
  return { logps, entropies };
}

// ---------------------------------------------------------------------------------------------
// Dropout masks

interface DropoutMaskAttrs {
  shape: number[];
  seed: number;
  rate: number;
}

/**
 * Baagoe's Mash, as seedrandom 3.0.5 `alea` seeds itself with it (tf.randomUniform's PRNG).
 * Returns the state after hashing `data`, and the hash in [0, 1).
 */
function mash(n: number, data: string): [number, number] {
  for (let i = 0; i < data.length; i++) {
    n += data.charCodeAt(i);
    let h = 0.02519603282416938 * n;
    n = h >>> 0;
    h -= n;
    h *= n;
    n = h >>> 0;
    h -= n;
    n += h * 0x100000000; // 2^32
  }
  return [n, (n >>> 0) * 2.3283064365386963e-10]; // 2^-32
}

/**
 * tf.dropout's multiplier `floor(u + keep) / keep` (u from `tf.randomUniform(shape, 0, 1,
 * "float32", seed)`, float32 arithmetic), with the alea stream inlined: the same values bit for
 * bit, without a closure call per value.
 */
function dropoutMaskKernel(host: Host, { attrs }: KernelArgs): tf.TensorInfo {
  const { shape, seed, rate } = attrs as unknown as DropoutMaskAttrs;
  const out = host.alloc(shape);
  const ov = host.f32(out);
  // seedrandom alea(String(seed)) (lib alea.js): three mash(' ') minus mash(seed), c = 1.
  const text = String(seed);
  let n = 0xefc8249d;
  let h: number;
  [n, h] = mash(n, " ");
  let s0 = h;
  [n, h] = mash(n, " ");
  let s1 = h;
  [n, h] = mash(n, " ");
  let s2 = h;
  [n, h] = mash(n, text);
  s0 -= h;
  if (s0 < 0) s0 += 1;
  [n, h] = mash(n, text);
  s1 -= h;
  if (s1 < 0) s1 += 1;
  [, h] = mash(n, text);
  s2 -= h;
  if (s2 < 0) s2 += 1;
  let c = 1;
  const keep = Math.fround(1 - rate);
  const scale = Math.fround(1 / keep);
  for (let i = 0; i < ov.length; i++) {
    const t = 2091639 * s0 + c * 2.3283064365386963e-10; // 2^-32
    s0 = s1;
    s1 = s2;
    c = t | 0;
    s2 = t - c;
    // float32: u, then u + keep, then floor, then / keep (tf.dropout's add, floor, div).
    ov[i] = Math.fround(Math.fround(s2) + keep) >= 1 ? scale : 0;
  }
  return out;
}

/**
 * The multiplier `tf.dropout(x, rate, undefined, seed)` multiplies x by, bit for bit: 0 where a
 * value is dropped, `1 / (1 - rate)` (float32) where it is kept.
 *
 * @param shape The shape of x.
 * @param rate Dropout probability in [0, 1).
 * @param seed The seed tf.dropout would get.
 * @returns float32 of `shape`. The caller disposes it.
 */
export function dropoutMask(shape: number[], rate: number, seed: number): tf.Tensor {
  return runKernel(DROPOUT_MASK, {}, { shape, seed, rate }) as tf.Tensor;
}

// ---------------------------------------------------------------------------------------------
// Sampling

interface SampleTokensAttrs {
  temperature: number;
}

/**
 * Per row: z = logits / temperature (float32), then the first token (in vocabulary order) at
 * which the running sum of exp(z − max) exceeds u · Σ exp(z − max), and its log-probability
 * z − logsumexp(z).
 */
function sampleTokensKernel(host: Host, { inputs, attrs }: KernelArgs): tf.TensorInfo[] {
  const { logits, uniforms } = inputs as { logits: tf.TensorInfo; uniforms: tf.TensorInfo };
  const { temperature } = attrs as unknown as SampleTokensAttrs;
  checkFloat32(SAMPLE_TOKENS, logits, uniforms);
  const [B, V] = logits.shape;
  const ids = host.alloc([B], "int32");
  const logps = host.alloc([B]);
  const [lv, uv, iv, pv] = [host.f32(logits), host.f32(uniforms), host.ints(ids), host.f32(logps)];
  const t32 = Math.fround(temperature);
  const e = scratchOf(V);
  for (let b = 0; b < B; b++) {
    const o = b * V;
    let max = -Infinity;
    for (let i = 0; i < V; i++) {
      const z = Math.fround(lv[o + i] / t32);
      e[i] = z;
      if (z > max) max = z;
    }
    let total = 0;
    for (let i = 0; i < V; i++) {
      e[i] = fastExp(e[i] - max);
      total += e[i];
    }
    const target = uv[b] * total;
    let pick = -1;
    let last = 0;
    let cdf = 0;
    for (let i = 0; i < V; i++) {
      if (e[i] === 0) continue;
      last = i;
      cdf += e[i];
      if (cdf > target) {
        pick = i;
        break;
      }
    }
    if (pick < 0) pick = last; // u · total rounded up to the total
    iv[b] = pick;
    pv[b] = Math.fround(lv[o + pick] / t32) - max - Math.log(total);
  }
  return [ids, logps];
}

/**
 * Samples one token per row from softmax(logits / temperature) by inverse CDF in vocabulary
 * order, which needs no sort (top_k 0, top_p 1).
 *
 * @param logits [B, V] raw logits.
 * @param uniforms [B] float32 in [0, 1).
 * @param temperature > 0.
 * @returns `ids` [B] int32 and `logps` [B], log_softmax(logits / temperature) at the ids. The
 *   caller disposes them.
 */
export function fusedSampleTokens(
  logits: tf.Tensor2D,
  uniforms: tf.Tensor1D,
  temperature: number,
): { ids: tf.Tensor1D; logps: tf.Tensor1D } {
  const [ids, logps] = runKernel(SAMPLE_TOKENS, { logits, uniforms }, {
    temperature,
  }) as tf.Tensor1D[];
  return { ids, logps };
}

// ---------------------------------------------------------------------------------------------
// Registration lists for lib/backend.ts

/** Every kernel of this module. */
export const FUSED_KERNELS: readonly FusedKernel[] = [
  kernel(RMS_NORM, rmsNormForward),
  kernel(RMS_NORM_GRAD_X, rmsNormGradX),
  kernel(RMS_NORM_GRAD_W, rmsNormGradW),
  kernel(ROPE, ropeForward),
  kernel(TOKEN_LOG_SOFTMAX, tokenLogSoftmaxForward),
  kernel(TOKEN_LOG_SOFTMAX_GRAD, tokenLogSoftmaxGrad),
  kernel(DROPOUT_MASK, dropoutMaskKernel),
  kernel(SAMPLE_TOKENS, sampleTokensKernel),
  blasKernel(ATTENTION, attentionForward),
  blasKernel(ATTENTION_GRAD, attentionGrad),
  blasKernel(CACHED_ATTENTION, cachedAttentionForward),
  blasKernel(LORA_DELTA, loraDeltaForward),
  blasKernel(LORA_DELTA_GRAD, loraDeltaGrad),
];

/** The gradients of the kernels that take part in training (attention's is a customGrad). */
export const FUSED_GRADIENTS: readonly tf.GradConfig[] = [
  {
    kernelName: RMS_NORM,
    inputsToSave: ["x", "w"],
    gradFunc: (dy, saved, attrs) => {
      const [x, w] = saved;
      const d = dy as tf.Tensor;
      return {
        x: () => runKernel(RMS_NORM_GRAD_X, { dy: d, x, w }, attrs) as tf.Tensor,
        w: () => runKernel(RMS_NORM_GRAD_W, { dy: d, x, w }, attrs) as tf.Tensor,
      };
    },
  },
  {
    kernelName: ROPE,
    inputsToSave: ["positions"],
    gradFunc: (dy, saved, attrs) => {
      const [positions] = saved;
      const { theta, inverse } = attrs as unknown as RopeAttrs;
      return {
        x: () =>
          runKernel(ROPE, { x: dy as tf.Tensor, positions }, {
            theta,
            inverse: !inverse,
          }) as tf.Tensor,
        positions: () => tf.zeros(positions.shape),
      };
    },
  },
  {
    kernelName: TOKEN_LOG_SOFTMAX,
    inputsToSave: ["logits", "ids"],
    gradFunc: (dys, saved, attrs) => {
      const [logits, ids] = saved;
      const [dLogps] = dys as tf.Tensor[];
      return {
        logits: () =>
          runKernel(TOKEN_LOG_SOFTMAX_GRAD, { dy: dLogps, logits, ids }, attrs) as tf.Tensor,
        ids: () => tf.zeros(ids.shape),
      };
    },
  },
];
