/**
 * Frozen base weights kept outside the backend's tensor memory: plain `Float32Array`s (or the
 * checkpoint's 16-bit bits in `Uint16Array`s) in ordinary process memory, read in place by native
 * BLAS through Deno FFI (`Blas.gemm` in `lib/_blas.ts`). This is how a model bigger than the wasm
 * heap (wasm32 stops at 4 GiB; Qwen2.5-Math-1.5B is 6.2 GB as float32) still runs on the wasm
 * backend: weights out here, activations, KV cache and LoRA in the heap.
 *
 * Two tfjs kernels, registered on wasm and cpu, take a weight by registry id (an attribute, so a
 * tensor never holds it): `ExternalMatMul` (`x @ W^T`, or `x @ W` for its own gradient) and
 * `ExternalGather` (embedding rows). The matMul's gradient flows to `x` only: base weights are
 * frozen. BF16/F16 weights are widened block by block into a scratch buffer right before each
 * sgemm (OpenBLAS 0.3.21 as Debian builds it has no `sbgemm`).
 *
 * Private to lib: `lib/model_loader.ts` makes these weights, `lib/model.ts` reads them.
 *
 * @module
 */
import { tf } from "./tf.ts";
import { activeBlas, type BlasBackend, hostOf } from "./_blas.ts";
import { f16ToF32 } from "./safetensors.ts";

/** How an external weight's values are stored (safetensors spelling). */
export type ExternalDtype = "F32" | "BF16" | "F16";

/** A frozen 2-D weight `[rows, cols]` (HF layout `[out_features, in_features]`) outside tfjs. */
export interface ExternalWeight {
  /** HF tensor name, e.g. `model.layers.0.mlp.up_proj.weight`. */
  readonly name: string;
  readonly shape: readonly [number, number];
  /** F32: `data` holds floats; BF16/F16: `data` holds the 16-bit patterns. */
  readonly dtype: ExternalDtype;
  readonly data: Float32Array | Uint16Array;
  /** Registry id: what the kernels receive as their `weight` attribute. */
  readonly id: number;
}

/** Kernel names (tfjs registry). */
export const EXTERNAL_MATMUL = "ExternalMatMul";
export const EXTERNAL_GATHER = "ExternalGather";

const registry = new Map<number, ExternalWeight>();
let nextId = 1;

/**
 * Registers a frozen weight so the kernels can find it; {@linkcode releaseExternalWeight} forgets
 * it. `data` is kept, not copied.
 *
 * @param name HF tensor name (for errors).
 * @param shape `[rows, cols]`.
 * @param dtype How `data` stores the values.
 * @param data Row-major values (F32) or 16-bit patterns (BF16, F16).
 * @returns The weight.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { externalWeight, releaseExternalWeight } from "./_external_weights.ts";
 * const w = externalWeight("w", [2, 3], "F32", new Float32Array(6));
 * assert.equal(w.shape[1], 3);
 * releaseExternalWeight(w);
 * ```
 */
export function externalWeight(
  name: string,
  shape: readonly [number, number],
  dtype: ExternalDtype,
  data: Float32Array | Uint16Array,
): ExternalWeight {
  const [rows, cols] = shape;
  const f32 = dtype === "F32";
  if (data.length !== rows * cols || (f32 !== (data instanceof Float32Array))) {
    throw new TypeError(
      `Cannot keep ${name} outside the heap: ${data.constructor.name}(${data.length}) does not ` +
        `hold [${shape}] as ${dtype}`,
    );
  }
  const w: ExternalWeight = { name, shape: [rows, cols], dtype, data, id: nextId++ };
  registry.set(w.id, w);
  return w;
}

/** Forgets a weight (its kernels can no longer find it); the memory goes with its last reference. */
export function releaseExternalWeight(w: ExternalWeight): void {
  registry.delete(w.id);
}

function lookup(id: number): ExternalWeight {
  const w = registry.get(id);
  if (w === undefined) {
    throw new Error(`External weight #${id} was released (its model was disposed)`);
  }
  return w;
}

// ---------------------------------------------------------------------------------------------
// Widening 16-bit rows

let f16Table: Uint32Array | null = null;

/** float32 bits of every f16 pattern (256 KiB, built once from the exact scalar conversion). */
function f16Bits(): Uint32Array {
  if (f16Table === null) {
    const all = new Uint16Array(65536);
    for (let i = 0; i < all.length; i++) all[i] = i;
    const out = new Float32Array(65536);
    f16ToF32(all, out, 0);
    f16Table = new Uint32Array(out.buffer);
  }
  return f16Table;
}

/** Rows `[r0, r0 + n)` of a 16-bit weight as float32 bits into `dst` (a Uint32 view). */
function widenRows(w: ExternalWeight, r0: number, n: number, dst: Uint32Array): void {
  const cols = w.shape[1];
  const src = (w.data as Uint16Array).subarray(r0 * cols, (r0 + n) * cols);
  const len = src.length;
  if (w.dtype === "BF16") {
    for (let i = 0; i < len; i++) dst[i] = src[i] << 16;
  } else {
    const table = f16Bits();
    for (let i = 0; i < len; i++) dst[i] = table[src[i]];
  }
}

/** Scratch for widened rows, outside the heap. */
let scratch = new Float32Array(0);

/** Rows `[r0, r0 + n)` of a 16-bit weight as float32, in a buffer the next call reuses. */
function widenedBlock(w: ExternalWeight, r0: number, n: number): Float32Array {
  const cols = w.shape[1];
  if (scratch.length < n * cols) scratch = new Float32Array(n * cols);
  const block = scratch.subarray(0, n * cols);
  widenRows(w, r0, n, new Uint32Array(block.buffer, 0, block.length));
  return block;
}

// ---------------------------------------------------------------------------------------------
// Kernels

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  backend: object;
  attrs?: tf.NamedAttrMap;
}

function blasFor(backendName: BlasBackend, w: ExternalWeight) {
  const blas = activeBlas(backendName);
  if (blas === null) {
    throw new Error(
      `${w.name} is kept outside the ${backendName} heap and is read by native BLAS, which is ` +
        `off (runtime.blas); load the model with weightStorage "tensors" or turn BLAS on`,
    );
  }
  return blas;
}

/**
 * Rows of x at most which a call counts as few-rowed (decode: one row per sequence). With
 * `transposeB` such a call streams even an F32 weight through sgemm in L2-sized blocks of W's
 * rows: OpenBLAS 0.3.21's sgemm with M = 4 reads a [8960, 1536] weight in ~15 ms in one call and
 * ~7.5 ms in 512 KiB blocks (1 thread, this 2-core box; no gain from M = 16 on).
 */
const FEW_ROWS = 8;
/**
 * Floats per block of W's rows: L2-sized below `LARGE_CALL_ROWS` rows of x, so sgemm reads a
 * freshly widened (or streamed) block from cache; larger above, so OpenBLAS packs x fewer times.
 */
const SMALL_BLOCK_FLOATS = 1 << 17; // 512 KiB
const LARGE_BLOCK_FLOATS = 1 << 21; // 8 MiB
const LARGE_CALL_ROWS = 64;

/**
 * `out = x @ W^T` ([n, rows]) when `transposeB`, else `out = x @ W` ([n, cols]); x is [n, k].
 * F32 weights go to sgemm whole, except for a few rows of x times W^T (by blocks of W's rows,
 * read in place); 16-bit ones a widened block of rows at a time.
 */
function matMulInto(
  blas: ReturnType<typeof blasFor>,
  x: Float32Array,
  n: number,
  w: ExternalWeight,
  transposeB: boolean,
  out: Float32Array,
): void {
  const [rows, cols] = w.shape;
  const f32 = w.dtype === "F32";
  if (f32 && !(transposeB && n <= FEW_ROWS)) {
    const wv = w.data as Float32Array;
    if (transposeB) blas.gemm(false, true, n, rows, cols, x, cols, wv, cols, out, rows, 0);
    else blas.gemm(false, false, n, cols, rows, x, rows, wv, cols, out, cols, 0);
    return;
  }
  const blockFloats = n >= LARGE_CALL_ROWS ? LARGE_BLOCK_FLOATS : SMALL_BLOCK_FLOATS;
  const blockRows = Math.max(1, Math.floor(blockFloats / cols));
  // Each call on a small block is < 2^23 multiply-adds, below where lib/_blas.ts gives a product
  // a second thread; say so rather than inherit whatever count the previous kernel set.
  if (blockFloats === SMALL_BLOCK_FLOATS) blas.useThreads(1);
  for (let r0 = 0; r0 < rows; r0 += blockRows) {
    const nb = Math.min(blockRows, rows - r0);
    const buf = f32
      ? (w.data as Float32Array).subarray(r0 * cols, (r0 + nb) * cols) // in place
      : widenedBlock(w, r0, nb); // [nb, cols]
    if (transposeB) {
      // out[:, r0:r0+nb] = x @ block^T: the block's columns of out, row stride `rows`.
      blas.gemm(false, true, n, nb, cols, x, cols, buf, cols, out.subarray(r0), rows, 0);
    } else {
      // out += x[:, r0:r0+nb] @ block: the sum over W's rows runs block by block.
      blas.gemm(
        false,
        false,
        n,
        cols,
        nb,
        x.subarray(r0),
        rows,
        buf,
        cols,
        out,
        cols,
        r0 > 0 ? 1 : 0,
      );
    }
  }
}

function matMulKernel(backendName: BlasBackend): tf.KernelFunc {
  return function externalMatMul(args: KernelArgs): tf.TensorInfo {
    const x = args.inputs.x as tf.TensorInfo;
    const { weight, transposeB } = args.attrs as unknown as { weight: number; transposeB: boolean };
    const w = lookup(weight);
    const [rows, cols] = w.shape;
    const [n, k] = x.shape;
    if (x.shape.length !== 2 || k !== (transposeB ? cols : rows) || x.dtype !== "float32") {
      throw new Error(
        `${EXTERNAL_MATMUL}: x ${x.dtype}[${x.shape}] does not multiply ${w.name} [${w.shape}]` +
          (transposeB ? "^T" : ""),
      );
    }
    const blas = blasFor(backendName, w);
    const host = hostOf(backendName, args.backend);
    // subtle: allocate first, then take views; on wasm the allocation may grow (replace) the heap.
    const out = host.alloc([n, transposeB ? rows : cols]);
    if (n === 0) return out;
    matMulInto(blas, host.view(x), n, w, transposeB, host.view(out));
    return out;
  } as unknown as tf.KernelFunc;
}

function gatherKernel(backendName: BlasBackend): tf.KernelFunc {
  return function externalGather(args: KernelArgs): tf.TensorInfo {
    const indices = args.inputs.indices as tf.TensorInfo;
    const { weight } = args.attrs as unknown as { weight: number };
    const w = lookup(weight);
    const [rows, cols] = w.shape;
    const host = hostOf(backendName, args.backend);
    const n = indices.shape.reduce((a, b) => a * b, 1);
    const out = host.alloc([...indices.shape, cols]);
    if (n === 0) return out;
    const ov = host.view(out);
    const ids = host.viewInt32(indices);
    const bits = new Uint32Array(ov.buffer, ov.byteOffset, ov.length);
    for (let i = 0; i < n; i++) {
      const id = ids[i];
      if (!(id >= 0 && id < rows)) {
        throw new RangeError(
          `${EXTERNAL_GATHER}: index ${id} is out of range [0, ${rows}) of ${w.name}`,
        );
      }
      if (w.dtype === "F32") {
        ov.set((w.data as Float32Array).subarray(id * cols, (id + 1) * cols), i * cols);
      } else widenRows(w, id, 1, bits.subarray(i * cols, (i + 1) * cols));
    }
    return out;
  } as unknown as tf.KernelFunc;
}

let gradientRegistered = false;

/**
 * Registers the two kernels on `backendName` (idempotent), and once the matMul's gradient:
 * d(x @ W^T)/dx = dy @ W, the same kernel with `transposeB` flipped. Nothing flows to W.
 *
 * @param backendName "wasm" or "cpu"; their kernels call the BLAS `setKernelMode` attached.
 */
export function registerExternalWeightKernels(backendName: BlasBackend): void {
  if (tf.getKernel(EXTERNAL_MATMUL, backendName) === undefined) {
    tf.registerKernel({
      kernelName: EXTERNAL_MATMUL,
      backendName,
      kernelFunc: matMulKernel(backendName),
    });
    tf.registerKernel({
      kernelName: EXTERNAL_GATHER,
      backendName,
      kernelFunc: gatherKernel(backendName),
    });
  }
  if (!gradientRegistered) {
    tf.registerGradient({
      kernelName: EXTERNAL_MATMUL,
      inputsToSave: [],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], _saved: tf.Tensor[], attrs: tf.NamedAttrMap) => {
        const { weight, transposeB } = attrs as unknown as { weight: number; transposeB: boolean };
        return {
          x: () =>
            tf.engine().runKernel(
              EXTERNAL_MATMUL,
              { x: dy as tf.Tensor },
              { weight, transposeB: !transposeB },
            ) as tf.Tensor,
        };
      },
    });
    tf.registerGradient({
      kernelName: EXTERNAL_GATHER,
      inputsToSave: ["indices"],
      gradFunc: (_dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => ({
        indices: () => tf.zerosLike(saved[0]),
      }),
    });
    gradientRegistered = true;
  }
}

function checkBackend(w: ExternalWeight): void {
  const name = tf.getBackend();
  if (tf.getKernel(EXTERNAL_MATMUL, name) === undefined) {
    throw new Error(
      `${w.name} is kept outside tfjs (weight storage "external"), which only the wasm and cpu ` +
        `backends with BLAS read; the active backend is ${name}. Load the model with weight ` +
        `storage "tensors" for this backend`,
    );
  }
}

/**
 * `x @ W^T` for a frozen external weight W `[rows, cols]`: x `[N, cols]` → `[N, rows]`, as
 * `tf.matMul(x, w, false, true)` would give for a tensor w; with `transposeB: false`, `x @ W`
 * (x `[N, rows]` → `[N, cols]`). Differentiable in x.
 *
 * @param x `[N, cols]` float32 (`[N, rows]` when not transposed).
 * @param w The weight.
 * @param options `transposeB`, default true.
 * @returns `[N, rows]` (`[N, cols]`). The caller disposes it.
 * @example Usage
 * ```ts ignore
 * const y = externalMatMul(x, model.external.get("lm_head.weight")!); // [N, V]
 * ```
 */
export function externalMatMul(
  x: tf.Tensor2D,
  w: ExternalWeight,
  options: { transposeB?: boolean } = {},
): tf.Tensor2D {
  checkBackend(w);
  return tf.engine().runKernel(
    EXTERNAL_MATMUL,
    { x },
    { weight: w.id, transposeB: options.transposeB ?? true },
  ) as tf.Tensor2D;
}

/**
 * Rows of a frozen external weight: `tf.gather(w, ids)` for an embedding table W `[V, H]`.
 *
 * @param w The table.
 * @param ids int32 ids of any shape, each in `[0, V)`.
 * @returns `[...ids.shape, H]`. The caller disposes it.
 * @example Usage
 * ```ts ignore
 * const h = externalGather(model.external.get("model.embed_tokens.weight")!, inputIds); // [B, T, H]
 * ```
 */
export function externalGather(w: ExternalWeight, ids: tf.Tensor): tf.Tensor {
  checkBackend(w);
  const indices = ids.dtype === "int32" ? ids : tf.cast(ids, "int32");
  const out = tf.engine().runKernel(EXTERNAL_GATHER, { indices }, { weight: w.id }) as tf.Tensor;
  if (indices !== ids) indices.dispose();
  return out;
}

/**
 * The float32 values of an external weight (a copy; 16-bit ones widened), e.g. to merge LoRA or
 * save the weight.
 *
 * @param w The weight.
 * @returns `rows * cols` floats, row-major.
 */
export function externalValues(w: ExternalWeight): Float32Array {
  if (w.dtype === "F32") return new Float32Array(w.data as Float32Array);
  const out = new Float32Array(w.data.length);
  widenRows(w, 0, w.shape[0], new Uint32Array(out.buffer));
  return out;
}
