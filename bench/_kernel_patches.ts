/**
 * Experimental replacements for tfjs-backend-wasm 4.22 kernels that the profile
 * (bench/PROFILE.md) found slow, registered over the stock ones so that
 * `bench/profile_kernels.ts --patch ...` can measure what fixing them would gain before anything
 * moves to lib/. Each keeps the stock kernel's results bit for bit; shapes a patch does not handle
 * go to the stock kernel.
 *
 * - `logicaland`: stock LogicalAnd goes through the generic C++ broadcast path (~100-400 ns per
 *   element for the attention mask's [1, T, S] & [B, 1, S]); this one is an odometer loop in JS.
 *   (Only the stock attention path builds that mask: with a BLAS, lib/_kernels.ts's attention
 *   kernel masks as it goes.)
 *
 * The `identity`, `slice` and `gather` patches measured here are lib/_wasm_kernels.ts now.
 *
 * @module
 */
import { tf } from "../lib/tf.ts";

/** The parts of tfjs-backend-wasm's `BackendWasm` the patches use. */
interface WasmBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  backend: WasmBackend;
  attrs: tf.NamedAttrMap;
}

/** The names `--patch` accepts. */
export const PATCHES = ["logicaland"] as const;

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

/**
 * Registers the named patches over the active wasm kernels.
 *
 * @param patches Names from {@linkcode PATCHES}.
 */
export function patchWasmKernels(patches: Patch[]): void {
  if (tf.getBackend() !== "wasm") throw new Error(`patches are for wasm, not ${tf.getBackend()}`);
  for (const p of patches) {
    if (p === "logicaland") patchLogicalAnd();
  }
}
