/**
 * Replacements for five tfjs-backend-wasm 4.22 kernels that copy more than they need to, found by
 * the profile of the demo GRPO step (bench/PROFILE.md, findings 2, 3 and 10). Each gives the stock
 * kernel's result bit for bit (tests/wasm_kernels_test.ts) and hands the cases it does not cover
 * (strings, gathers on other axes) to the stock kernel. `lib/backend.ts` registers them when it
 * sets up wasm.
 *
 * - `Identity`: the stock kernel copies its input, and the engine clones every tensor a gradient
 *   needs through it (`saveTensorsForBackwardMode`): 2,700 copies per demo step. This one shares
 *   the data and counts a reference, as the stock `Reshape` does.
 * - `Slice` and `SplitV`: the stock kernels `readSync` the whole input out of the heap before
 *   copying the slice back in; these copy runs of the last axis straight from a heap view.
 * - `GatherV2` on axis 0 of a float32 matrix (the embedding lookup): the stock kernel reads the
 *   indices out of the heap, checks each in a closure and gathers element by element in C++; this
 *   one copies whole rows.
 * - `Cast` to the dtype a tensor already has: the stock kernel copies it; tfjs's Multiply gradient
 *   casts its other operand to float32 on every backward step (`mul(dy, cast(b, "float32"))`).
 *   This one shares the data, as Identity.
 *
 * @module
 */
import { tf } from "./tf.ts";

/** The parts of tfjs-backend-wasm's `BackendWasm` these kernels use. */
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

/** A replacement: the kernel name and how to build its function around the stock one. */
export interface WasmKernelReplacement {
  kernelName: string;
  replace(stock: tf.KernelFunc): tf.KernelFunc;
}

function sizeOf(shape: number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

/** Copies `x[begin : begin + size]` (any rank) into a new output, reading a heap view. */
function sliceFromHeap(
  backend: WasmBackend,
  x: tf.TensorInfo,
  begin: number[],
  size: number[],
): tf.TensorInfo {
  const out = backend.makeOutput(size, x.dtype);
  const n = sizeOf(size);
  if (n === 0) return out;
  // subtle: views after makeOutput, which may grow (replace) the heap.
  const xv = backend.typedArrayFromHeap(x);
  const ov = backend.typedArrayFromHeap(out);
  const rank = x.shape.length;
  if (rank === 0) {
    ov[0] = xv[0];
    return out;
  }
  const strides = new Array<number>(rank);
  let stride = 1;
  for (let d = rank - 1; d >= 0; d--) {
    strides[d] = stride;
    stride *= x.shape[d];
  }
  // Merge the trailing axes that are taken whole into one contiguous run.
  let inner = size[rank - 1];
  let innerAxis = rank - 1;
  while (innerAxis > 0 && size[innerAxis] === x.shape[innerAxis]) {
    innerAxis--;
    inner *= size[innerAxis];
  }
  let base = 0;
  for (let d = 0; d < rank; d++) base += begin[d] * strides[d];
  const outer = n / inner;
  // An odometer over the axes before `innerAxis`.
  const idx = new Array<number>(innerAxis).fill(0);
  for (let r = 0; r < outer; r++) {
    let offset = base;
    for (let d = 0; d < innerAxis; d++) offset += idx[d] * strides[d];
    ov.set(xv.subarray(offset, offset + inner), r * inner);
    for (let d = innerAxis - 1; d >= 0; d--) {
      if (++idx[d] < size[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

/** A new tensor info on `x`'s memory (one more reference to it), in place of a copy. */
function shareInput(args: KernelArgs, x: tf.TensorInfo): tf.TensorInfo {
  args.backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
}

function identity(stock: tf.KernelFunc): tf.KernelFunc {
  return function identityShared(args: KernelArgs) {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === "string") return stock(args as unknown as Parameters<tf.KernelFunc>[0]);
    return shareInput(args, x);
  } as unknown as tf.KernelFunc;
}

function cast(stock: tf.KernelFunc): tf.KernelFunc {
  return function castShared(args: KernelArgs) {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === "string" || x.dtype !== args.attrs.dtype) {
      return stock(args as unknown as Parameters<tf.KernelFunc>[0]);
    }
    return shareInput(args, x);
  } as unknown as tf.KernelFunc;
}

function slice(stock: tf.KernelFunc): tf.KernelFunc {
  return function sliceView(args: KernelArgs) {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === "string") return stock(args as unknown as Parameters<tf.KernelFunc>[0]);
    const [begin, size] = tf.slice_util.parseSliceParams(
      x as unknown as tf.Tensor,
      args.attrs.begin as number[],
      args.attrs.size as number[],
    );
    return sliceFromHeap(args.backend, x, begin, size);
  } as unknown as tf.KernelFunc;
}

function splitV(stock: tf.KernelFunc): tf.KernelFunc {
  return function splitVView(args: KernelArgs) {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === "string") return stock(args as unknown as Parameters<tf.KernelFunc>[0]);
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
      const out = sliceFromHeap(args.backend, x, [...begin], size);
      begin[axis] += s;
      return out;
    });
  } as unknown as tf.KernelFunc;
}

function gatherV2(stock: tf.KernelFunc): tf.KernelFunc {
  return function gatherRowsOfMatrix(args: KernelArgs) {
    const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
    const axis = tf.util.parseAxisParam(args.attrs.axis as number, x.shape)[0];
    const batchDims = (args.attrs.batchDims as number | undefined) ?? 0;
    if (axis !== 0 || batchDims !== 0 || x.dtype !== "float32" || indices.dtype !== "int32") {
      return stock(args as unknown as Parameters<tf.KernelFunc>[0]);
    }
    const rows = x.shape[0];
    const row = sizeOf(x.shape.slice(1));
    // Check the indices before allocating, as the stock kernel does: a bad one leaves no output.
    for (const r of args.backend.typedArrayFromHeap(indices)) {
      if (r < 0 || r >= rows) {
        // The stock kernel's message (tfjs-backend-wasm kernels/GatherV2.ts).
        throw new Error(`GatherV2: the index value ${r} is not in [0, ${rows - 1}]`);
      }
    }
    const out = args.backend.makeOutput([...indices.shape, ...x.shape.slice(1)], "float32");
    // Views after makeOutput (it may grow the heap).
    const xv = args.backend.typedArrayFromHeap(x);
    const iv = args.backend.typedArrayFromHeap(indices);
    const ov = args.backend.typedArrayFromHeap(out);
    for (let i = 0; i < iv.length; i++) {
      const r = iv[i];
      ov.set(xv.subarray(r * row, (r + 1) * row), i * row);
    }
    return out;
  } as unknown as tf.KernelFunc;
}

/** The replacements, for `lib/backend.ts` to register over the stock wasm kernels. */
export const WASM_KERNEL_REPLACEMENTS: readonly WasmKernelReplacement[] = [
  { kernelName: "Identity", replace: identity },
  { kernelName: "Cast", replace: cast },
  { kernelName: "Slice", replace: slice },
  { kernelName: "SplitV", replace: splitV },
  { kernelName: "GatherV2", replace: gatherV2 },
];
