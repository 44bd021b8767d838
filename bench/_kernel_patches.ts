/**
 * Experimental replacements for tfjs-backend-wasm 4.22 kernels that the profile
 * (bench/PROFILE.md) found slow, registered over the stock ones so that
 * `bench/profile_kernels.ts --patch ...` can measure what fixing them would gain before anything
 * moves to lib/. Each keeps the stock kernel's results bit for bit; shapes a patch does not handle
 * go to the stock kernel.
 *
 * - `identity`: stock Identity copies its input (every tensor the tape saves is cloned through
 *   it); this one shares the data and counts a reference, as the stock Reshape does.
 * - `slice`: stock Slice (and SplitV, which calls it directly) copies the whole input out of the
 *   wasm heap with `readSync` before copying the slice back in; this one reads a heap view.
 * - `logicaland`: stock LogicalAnd goes through the generic C++ broadcast path (~100-400 ns per
 *   element for the attention mask's [1, T, S] & [B, 1, S]); this one is an odometer loop in JS.
 * - `gather`: stock GatherV2 checks every index with a closure and gathers element by element;
 *   this one copies whole rows for the axis-0 float32 case (the embedding lookup).
 *
 * @module
 */
import { tf } from "../lib/tf.ts";

/** The parts of tfjs-backend-wasm's `BackendWasm` the patches use. */
interface WasmBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
  incRef(dataId: object): void;
}

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  backend: WasmBackend;
  attrs: tf.NamedAttrMap;
}

/** The names `--patch` accepts. */
export const PATCHES = ["identity", "slice", "logicaland", "gather"] as const;

/** One of {@linkcode PATCHES}. */
export type Patch = typeof PATCHES[number];

function sizeOf(shape: number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

function replace(
  kernelName: string,
  make: (stock: tf.KernelFunc) => (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[],
): void {
  const stock = tf.getKernel(kernelName, "wasm");
  if (!stock) throw new Error(`wasm has no ${kernelName} kernel`);
  tf.unregisterKernel(kernelName, "wasm");
  tf.registerKernel({ ...stock, kernelFunc: make(stock.kernelFunc) as unknown as tf.KernelFunc });
}

/** Row-major strides of `shape` broadcast to `outShape` (0 on broadcast axes). */
function broadcastStrides(shape: number[], outShape: number[]): number[] {
  const rank = outShape.length;
  const padded = [...new Array<number>(rank - shape.length).fill(1), ...shape];
  const strides = new Array<number>(rank).fill(0);
  let stride = 1;
  for (let d = rank - 1; d >= 0; d--) {
    strides[d] = padded[d] === 1 ? 0 : stride;
    stride *= padded[d];
  }
  return strides;
}

/** Slices `x` (wasm heap view, read after the output is allocated) into a new output. */
function sliceView(
  backend: WasmBackend,
  x: tf.TensorInfo,
  begin: number[],
  size: number[],
): tf.TensorInfo {
  const out = backend.makeOutput(size, x.dtype);
  const n = sizeOf(size);
  if (n === 0) return out;
  // Views after makeOutput: allocating may grow (replace) the heap.
  const xv = backend.typedArrayFromHeap(x);
  const ov = backend.typedArrayFromHeap(out);
  const rank = x.shape.length;
  const strides = new Array<number>(rank);
  let s = 1;
  for (let d = rank - 1; d >= 0; d--) {
    strides[d] = s;
    s *= x.shape[d];
  }
  // Copy runs of the last axis; an odometer walks the outer axes.
  const inner = size[rank - 1];
  const outer = n / inner;
  const idx = new Array<number>(Math.max(0, rank - 1)).fill(0);
  for (let r = 0; r < outer; r++) {
    let offset = begin[rank - 1];
    for (let d = 0; d < rank - 1; d++) offset += (begin[d] + idx[d]) * strides[d];
    ov.set(xv.subarray(offset, offset + inner), r * inner);
    for (let d = rank - 2; d >= 0; d--) {
      if (++idx[d] < size[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

function patchIdentity(): void {
  replace("Identity", (stock) => (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === "string") {
      return stock(args as unknown as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
    }
    args.backend.incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  });
}

function patchSlice(): void {
  replace("Slice", (stock) => (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === "string") {
      return stock(args as unknown as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
    }
    const [begin, size] = tf.slice_util.parseSliceParams(
      x as unknown as tf.Tensor,
      args.attrs.begin as number[],
      args.attrs.size as number[],
    );
    return sliceView(args.backend, x, begin, size);
  });
  replace("SplitV", (stock) => (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === "string") {
      return stock(args as unknown as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo[];
    }
    const axis = tf.util.parseAxisParam(args.attrs.axis as number, x.shape)[0];
    const sizes = tf.backend_util.prepareSplitSize(
      x as unknown as tf.Tensor,
      args.attrs.numOrSizeSplits as number[] | number,
      axis,
    );
    const begin = new Array<number>(x.shape.length).fill(0);
    return sizes.map((s) => {
      const size = [...x.shape];
      size[axis] = s;
      const out = sliceView(args.backend, x, [...begin], size);
      begin[axis] += s;
      return out;
    });
  });
}

function patchLogicalAnd(): void {
  replace("LogicalAnd", () => (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const outShape = tf.backend_util.assertAndGetBroadcastShape(a.shape, b.shape);
    const out = args.backend.makeOutput(outShape, "bool");
    const n = sizeOf(outShape);
    if (n === 0) return out;
    const av = args.backend.typedArrayFromHeap(a);
    const bv = args.backend.typedArrayFromHeap(b);
    const ov = args.backend.typedArrayFromHeap(out);
    const rank = outShape.length;
    const sa = broadcastStrides(a.shape, outShape);
    const sb = broadcastStrides(b.shape, outShape);
    const idx = new Array<number>(rank).fill(0);
    let ia = 0;
    let ib = 0;
    for (let i = 0; i < n; i++) {
      ov[i] = av[ia] !== 0 && bv[ib] !== 0 ? 1 : 0;
      // Odometer: advance the last axis, carrying into outer ones.
      for (let d = rank - 1; d >= 0; d--) {
        ia += sa[d];
        ib += sb[d];
        if (++idx[d] < outShape[d]) break;
        ia -= sa[d] * outShape[d];
        ib -= sb[d] * outShape[d];
        idx[d] = 0;
      }
    }
    return out;
  });
}

function patchGather(): void {
  replace("GatherV2", (stock) => (args) => {
    const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
    const axis = tf.util.parseAxisParam(args.attrs.axis as number, x.shape)[0];
    const batchDims = (args.attrs.batchDims as number | undefined) ?? 0;
    if (axis !== 0 || batchDims !== 0 || x.dtype !== "float32" || indices.dtype !== "int32") {
      return stock(args as unknown as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
    }
    const rows = x.shape[0];
    const row = sizeOf(x.shape.slice(1));
    const out = args.backend.makeOutput([...indices.shape, ...x.shape.slice(1)], "float32");
    const xv = args.backend.typedArrayFromHeap(x);
    const iv = args.backend.typedArrayFromHeap(indices);
    const ov = args.backend.typedArrayFromHeap(out);
    for (let i = 0; i < iv.length; i++) {
      const r = iv[i];
      if (r < 0 || r >= rows) {
        throw new RangeError(`GatherV2: the index value ${r} is not in [0, ${rows - 1}]`);
      }
      ov.set(xv.subarray(r * row, (r + 1) * row), i * row);
    }
    return out;
  });
}

/**
 * Registers the named patches over the active wasm kernels.
 *
 * @param patches Names from {@linkcode PATCHES}.
 */
export function patchWasmKernels(patches: Patch[]): void {
  if (tf.getBackend() !== "wasm") throw new Error(`patches are for wasm, not ${tf.getBackend()}`);
  for (const p of patches) {
    if (p === "identity") patchIdentity();
    else if (p === "slice") patchSlice();
    else if (p === "logicaland") patchLogicalAnd();
    else if (p === "gather") patchGather();
  }
}
