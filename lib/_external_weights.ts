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
 * sgemm (OpenBLAS 0.3.21 as Debian builds it has no `sbgemm`), BF16 by a small SIMD wasm module.
 *
 * Private to lib: `lib/model_loader.ts` makes these weights, `lib/model.ts` reads them.
 *
 * @module
 */
import { tf } from "./tf.ts";
import { activeBlas, type BlasBackend, hostOf, threadsFor } from "./_blas.ts";
import { bf16ToF32, f16ToF32 } from "./safetensors.ts";

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

// A hand-assembled wasm module that widens BF16 with SIMD: 0.26 ns per value on an L2-sized block
// (copies in and out included) vs 0.7 for the JS loop. Decode reads every weight once per token,
// so the widening is much of its cost: x [4, 1536] @ W^T for a BF16 [8960, 1536] W takes 7.2 ms
// instead of 11.4 (1 thread, this 2-core box at load 4). In WAT:
//   (func (export "widen") (param $src i32) (param $dst i32) (param $n i32) (local $end i32)
//     ;; n groups of 8: each 16-bit pattern becomes the high half of a float32
//     (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 4))))
//     (block (br_if 0 (i32.eqz (local.get $n)))
//       (loop
//         (v128.store offset=0 (local.get $dst)
//           (i32x4.shl (i32x4.extend_low_i16x8_u (v128.load (local.get $src))) (i32.const 16)))
//         (v128.store offset=16 (local.get $dst)
//           (i32x4.shl (i32x4.extend_high_i16x8_u (v128.load (local.get $src))) (i32.const 16)))
//         (local.set $src (i32.add (local.get $src) (i32.const 16)))
//         (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
//         (br_if 0 (i32.lt_u (local.get $src) (local.get $end))))))
// plus an exported memory. Integer lanes only, so every bit pattern (NaN payloads included)
// comes through as the JS loop gives it; tests/external_weights_test.ts checks that.
// deno-fmt-ignore
const WIDEN_BF16_WASM = (() => {
  const leb = (n: number): number[] => { // unsigned LEB128
    const out: number[] = [];
    do {
      const low = n & 0x7f;
      n >>>= 7;
      out.push(n ? low | 0x80 : low);
    } while (n);
    return out;
  };
  const section = (id: number, body: number[]) => [id, ...leb(body.length), ...body];
  const name = (text: string) => [...leb(text.length), ...new TextEncoder().encode(text)];
  const simd = (op: number) => [0xfd, ...leb(op)]; // SIMD prefix + opcode
  const [get, set, i32, add, shl, ltU, eqz, brIf, end] =
    [0x20, 0x21, 0x41, 0x6a, 0x74, 0x49, 0x45, 0x0d, 0x0b];
  const [load, store, extendLowU, extendHighU, i32x4Shl] = [0, 11, 169, 170, 171];
  const memarg = (offset: number) => [0, offset]; // align hint 1, offset
  const widenHalf = (extend: number, offset: number) => [
    get, 1, get, 0, ...simd(load), ...memarg(0), ...simd(extend), i32, 16, ...simd(i32x4Shl),
    ...simd(store), ...memarg(offset),
  ];
  const body = [
    1, 1, 0x7f, // one i32 local: $end
    get, 0, get, 2, i32, 4, shl, add, set, 3, // end = src + n * 16
    0x02, 0x40, get, 2, eqz, brIf, 0, // block; br_if n == 0
    0x03, 0x40, // loop
    ...widenHalf(extendLowU, 0),
    ...widenHalf(extendHighU, 16),
    get, 0, i32, 16, add, set, 0, // src += 16
    get, 1, i32, 32, add, set, 1, // dst += 32
    get, 0, get, 3, ltU, brIf, 0, // br_if src < end
    end, end, end, // loop, block, function
  ];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0, // magic, version
    ...section(1, [1, 0x60, 3, 0x7f, 0x7f, 0x7f, 0]), // type: (i32, i32, i32) -> ()
    ...section(3, [1, 0]), // one function of type 0
    ...section(5, [1, 0, 1]), // memory: 1 page, grown on demand
    ...section(7, [2, ...name("memory"), 2, 0, ...name("widen"), 0, 0]), // exports
    ...section(10, [1, ...leb(body.length), ...body]), // code
  ]);
})();

interface Widener {
  memory: WebAssembly.Memory;
  widen(src: number, dst: number, groups: number): void;
}

/** undefined until first asked for; null where the engine lacks wasm SIMD. */
let widener: Widener | null | undefined;
let simdEnabled = true;

/** The SIMD widener, or null (no wasm SIMD here, or turned off): then the JS loop runs. */
function simdWidener(): Widener | null {
  if (widener === undefined) {
    widener = null;
    if (WebAssembly.validate(WIDEN_BF16_WASM)) {
      const instance = new WebAssembly.Instance(new WebAssembly.Module(WIDEN_BF16_WASM));
      widener = instance.exports as unknown as Widener;
    }
  }
  return simdEnabled ? widener : null;
}

/**
 * Whether BF16 weights are widened by the SIMD wasm module: true where the wasm engine has SIMD
 * (Deno's V8 does) unless {@linkcode setBf16Simd} turned it off. Otherwise a JS loop widens them.
 *
 * @returns Whether the SIMD widener runs.
 */
export function bf16SimdWidening(): boolean {
  return simdWidener() !== null;
}

/**
 * Turns the SIMD widener off (`false`) or back on where the engine has it, so tests can run the
 * JS loop through the same kernels. Process-wide.
 *
 * @param enabled Whether to use SIMD where available.
 * @returns The previous setting.
 */
export function setBf16Simd(enabled: boolean): boolean {
  const previous = simdEnabled;
  simdEnabled = enabled;
  return previous;
}

/**
 * `src` widened inside the module's memory: a float32 view there, valid until the next call.
 * Layout: [0, 2·cap) the 16-bit patterns, [2·cap, 6·cap) their floats, with cap = src.length
 * rounded up to a multiple of 8, so the last group of 8 stays inside both (its extra lanes are
 * stale values nobody reads).
 */
function simdWiden(simd: Widener, src: Uint16Array): Float32Array {
  const len = src.length;
  const cap = Math.ceil(len / 8) * 8;
  const have = simd.memory.buffer.byteLength;
  if (have < 6 * cap) simd.memory.grow(Math.ceil((6 * cap - have) / 65536));
  const buffer = simd.memory.buffer; // after grow: the old buffer is detached
  new Uint16Array(buffer, 0, len).set(src);
  simd.widen(0, 2 * cap, cap / 8);
  return new Float32Array(buffer, 2 * cap, len);
}

/** Values per SIMD call in {@linkcode widenBf16}: 128 Ki values keep the module at 768 KiB. */
const WIDEN_CHUNK = 1 << 17;

/**
 * BF16 patterns widened to float32, bit for bit (`bf16ToF32` of lib/safetensors.ts), by the SIMD
 * module where the engine has it.
 *
 * @param src bf16 bits.
 * @param dst float32 values out, `src.length` of them from index 0.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { widenBf16 } from "./_external_weights.ts";
 * const out = new Float32Array(2);
 * widenBf16(new Uint16Array([0x3f80, 0xc040]), out);
 * assert.deepEqual(Array.from(out), [1, -3]);
 * ```
 */
export function widenBf16(src: Uint16Array, dst: Float32Array): void {
  if (dst.length < src.length) {
    throw new RangeError(`Cannot widen ${src.length} bf16 values into ${dst.length} floats`);
  }
  const simd = simdWidener();
  if (simd === null) {
    bf16ToF32(src, dst, 0);
    return;
  }
  for (let i = 0; i < src.length; i += WIDEN_CHUNK) {
    // Same-type TypedArray set copies bytes: NaN payloads survive.
    dst.set(simdWiden(simd, src.subarray(i, i + WIDEN_CHUNK)), i);
  }
}

/** Rows `[r0, r0 + n)` of a 16-bit weight as float32 into `dst` (from index 0). */
function widenRows(w: ExternalWeight, r0: number, n: number, dst: Float32Array): void {
  const cols = w.shape[1];
  const src = (w.data as Uint16Array).subarray(r0 * cols, (r0 + n) * cols);
  if (w.dtype === "BF16") {
    widenBf16(src, dst);
    return;
  }
  const table = f16Bits();
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) bits[i] = table[src[i]];
}

/** Scratch for widened rows outside the heap, when they are not widened inside the module. */
let scratch = new Float32Array(0);

/**
 * Rows `[r0, r0 + n)` of a 16-bit weight as float32, in a buffer the next call reuses: BF16 with
 * SIMD inside the module's memory (sgemm reads them there, no copy out), else the JS loop into
 * `scratch`.
 */
function widenedBlock(w: ExternalWeight, r0: number, n: number): Float32Array {
  const cols = w.shape[1];
  const simd = w.dtype === "BF16" ? simdWidener() : null;
  if (simd !== null) {
    return simdWiden(simd, (w.data as Uint16Array).subarray(r0 * cols, (r0 + n) * cols));
  }
  if (scratch.length < n * cols) scratch = new Float32Array(n * cols);
  const block = scratch.subarray(0, n * cols);
  widenRows(w, r0, n, block);
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
    // lib/_blas.ts's policy, not the count the previous kernel left (the attention kernels set
    // 1): a forward of 4 x 256 tokens on the 1.5B shape took 34.6 s on 1 thread, 23.4 s on 2.
    blas.useThreads(threadsFor(n * rows * cols));
    const wv = w.data as Float32Array;
    if (transposeB) blas.gemm(false, true, n, rows, cols, x, cols, wv, cols, out, rows, 0);
    else blas.gemm(false, false, n, cols, rows, x, rows, wv, cols, out, cols, 0);
    return;
  }
  const blockFloats = n >= LARGE_CALL_ROWS ? LARGE_BLOCK_FLOATS : SMALL_BLOCK_FLOATS;
  const blockRows = Math.max(1, Math.floor(blockFloats / cols));
  // Each call on a small block is < 2^23 multiply-adds, below where lib/_blas.ts gives a product
  // a second thread; say so rather than inherit whatever count the previous kernel set.
  blas.useThreads(blockFloats === SMALL_BLOCK_FLOATS ? 1 : threadsFor(n * blockRows * cols));
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
    // Check the ids before allocating, so that a bad one leaves no orphaned output behind.
    for (const id of host.viewInt32(indices).subarray(0, n)) {
      if (!(id >= 0 && id < rows)) {
        throw new RangeError(
          `${EXTERNAL_GATHER}: index ${id} is out of range [0, ${rows}) of ${w.name}`,
        );
      }
    }
    // subtle: allocate first, then take views; on wasm the allocation may grow (replace) the heap.
    const out = host.alloc([...indices.shape, cols]);
    if (n === 0) return out;
    const ov = host.view(out);
    const ids = host.viewInt32(indices);
    for (let i = 0; i < n; i++) {
      const id = ids[i];
      if (w.dtype === "F32") {
        ov.set((w.data as Float32Array).subarray(id * cols, (id + 1) * cols), i * cols);
      } else widenRows(w, id, 1, ov.subarray(i * cols, (i + 1) * cols));
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
  try {
    return tf.engine().runKernel(EXTERNAL_GATHER, { indices }, { weight: w.id }) as tf.Tensor;
  } finally {
    if (indices !== ids) indices.dispose(); // also when the kernel refuses an id
  }
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
  widenRows(w, 0, w.shape[0], out);
  return out;
}
