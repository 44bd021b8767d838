/**
 * Picks the TensorFlow.js backend (`runtime.backend`) and wires the CPU fast path: on `wasm` and
 * `cpu`, the `BatchMatMul` and `_FusedMatMul` kernels call a native BLAS `cblas_sgemm` through
 * Deno FFI, reading and writing the operands in place (wasm heap views, or the cpu backend's
 * Float32Arrays; see `lib/_blas.ts`).
 *
 * wasm + BLAS is the default CPU path. Models past wasm32's 4 GiB heap (Qwen2.5-Math-1.5B is
 * 6.2 GB as float32) run there too: their frozen base weights stay outside the heap and BLAS
 * reads them in place (weight storage `external`, `lib/_external_weights.ts`). cpu + BLAS (the
 * cpu backend keeps tensors in ordinary typed arrays, at the price of tfjs's plain-JS kernels for
 * everything but matMul) is the fallback when no BLAS opens.
 *
 * Measured on a 2-core x86 box, 16×96×256 → 704 → 256 linear block, forward + backward: stock
 * wasm 844 ms, wasm + OpenBLAS (2 threads) 24 ms (`deno task bench:blas`). Another run, on the
 * same box under load from other jobs: stock wasm 2394 ms, wasm + OpenBLAS 74 ms, cpu + OpenBLAS
 * 401 ms (its elementwise ops are plain JS), stock cpu 6200 ms; one 1024² matMul: cpu + OpenBLAS
 * 35 ms, stock cpu 3407 ms.
 *
 * Needs `--allow-ffi` for BLAS (tasks run with `-A`); without it the kernels stay stock.
 *
 * @module
 */
import { BackendError } from "./errors.ts";
import { tf } from "./tf.ts";
import { type BlasBackend, blasCandidates, openBlas, setKernelMode } from "./_blas.ts";
import { WASM_KERNEL_REPLACEMENTS } from "./_wasm_kernels.ts";
import { FUSED_GRADIENTS, FUSED_KERNELS, setFusedBlas } from "./_kernels.ts";
import { registerExternalWeightKernels } from "./_external_weights.ts";
import type { WeightStorage } from "./model_loader.ts";

/**
 * Models with more float32 weight bytes than this keep their base weights outside the wasm heap
 * (weight storage `external`; under `auto` without BLAS, the cpu backend): the heap stops at
 * 4 GiB and also holds activations, KV cache and optimizer state.
 */
export const WASM_WEIGHT_LIMIT_BYTES = 2 * 2 ** 30;

/** The `runtime` options this module reads (the same keys as `Config["runtime"]`). */
export interface RuntimeOptions {
  /**
   * `auto` is webgpu on a hardware adapter, else wasm (models over 2 GiB with their weights
   * outside the heap; cpu + BLAS when no BLAS opens).
   */
  backend: "auto" | "wasm" | "webgpu" | "cpu" | "tensorflow";
  /** `auto`, `off`, or the path of a library exporting `cblas_sgemm`. Used on wasm and cpu. */
  blas: string;
  /** BLAS threads (OpenBLAS `openblas_set_num_threads`). */
  num_threads: number;
}

/** What {@linkcode setupBackend} set up. */
export interface BackendInfo {
  /** The tfjs backend now active: "wasm", "webgpu", "cpu" or "tensorflow". */
  name: string;
  /** The BLAS behind the wasm or cpu matMul kernels, or null (stock kernels, or neither). */
  blas: { library: string; threads: number; vendor: string } | null;
  /** The WebGPU adapter's description, or null. */
  adapter: string | null;
  /**
   * Where `loadModel` should keep the model's base weights on this backend: `external` (outside
   * tfjs, read by BLAS) for a model over {@linkcode WASM_WEIGHT_LIMIT_BYTES} on wasm with BLAS,
   * else `tensors`.
   */
  weightStorage: WeightStorage;
  /**
   * One line per fallback or caveat, for the driver to print. The wasm kernels append to the
   * latest info's notes at run time, the first time a shape or dtype falls back to stock.
   */
  notes: string[];
}

/** NOTE: tfjs-backend-wasm fetches its .wasm binaries from this folder; Deno serves file: URLs. */
const WASM_DIST = new URL("../node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url);

let wasmImported = false;
let webgpuImported = false;
let current: { key: string; info: BackendInfo } | null = null;

/**
 * Makes `options.backend` the active tfjs backend and returns what it got. Idempotent: calling it
 * again with the same options returns the same info; other options switch backend and
 * re-point the wasm matMul kernels (BLAS on/off, thread count).
 *
 * `auto` picks webgpu when Deno offers a hardware adapter (not a software fallback such as
 * llvmpipe), else wasm. A model over {@linkcode WASM_WEIGHT_LIMIT_BYTES} (`model.weightBytes`,
 * float32) on wasm gets `weightStorage: "external"` when BLAS opened (under `auto` without BLAS:
 * the cpu backend instead). On wasm and cpu, `blas: auto` opens Debian's OpenBLAS (openblas-pthread)
 * or macOS Accelerate; when none opens, the stock kernels stay and a note says so; `blas: off`
 * keeps tfjs's stock cpu kernels untouched. An explicit library path that cannot be opened is an
 * error. `tensorflow` needs `@tensorflow/tfjs-node-gpu` or
 * `@tensorflow/tfjs-node` in deno.json's imports.
 *
 * @param options `runtime` section of the config, or a literal.
 * @returns The backend now active; print it with {@linkcode describeBackend}.
 * @throws BackendError when the requested backend or library cannot be used.
 * @example Usage
 * ```ts
 * import { describeBackend, setupBackend } from "./backend.ts";
 * const info = await setupBackend({ backend: "cpu", blas: "off", num_threads: 1 });
 * console.log(describeBackend(info)); // backend cpu
 * ```
 */
export async function setupBackend(
  options: RuntimeOptions,
  model: { weightBytes?: number } = {},
): Promise<BackendInfo> {
  const { backend, blas, num_threads } = options;
  if (!Number.isInteger(num_threads) || num_threads < 1) {
    throw new RangeError(
      `Expected runtime.num_threads to be an integer >= 1 but found ${num_threads}`,
    );
  }
  const tooBigForWasm = (model.weightBytes ?? 0) > WASM_WEIGHT_LIMIT_BYTES;
  const key = JSON.stringify([backend, blas, num_threads, tooBigForWasm]);
  if (current?.key === key && tf.getBackend() === current.info.name) return current.info;
  const notes: string[] = [];
  let info: BackendInfo;
  switch (backend) {
    case "cpu":
      info = await setupCpu(blas, num_threads, notes);
      break;
    case "wasm":
      info = await setupWasm(blas, num_threads, notes);
      if (tooBigForWasm) info = externalOrNot(info, model.weightBytes!);
      break;
    case "webgpu": {
      const adapter = await findAdapter();
      if (adapter === null) {
        throw new BackendError(
          "runtime.backend: webgpu: Deno offers no WebGPU adapter here; use backend: wasm",
        );
      }
      if (!adapter.hardware) {
        notes.push(
          `webgpu adapter ${adapter.label} is a software fallback; wasm with BLAS is much faster`,
        );
      }
      info = await setupWebgpu(adapter.label, notes);
      break;
    }
    case "auto": {
      const adapter = await findAdapter();
      if (adapter?.hardware) {
        try {
          info = await setupWebgpu(adapter.label, notes);
          break;
        } catch (error) {
          notes.push(`auto: webgpu on ${adapter.label} failed (${errorText(error)}); using wasm`);
        }
      } else if (adapter !== null) {
        notes.push(`auto: WebGPU adapter ${adapter.label} is a software fallback`);
      }
      info = await setupWasm(blas, num_threads, notes);
      if (tooBigForWasm) {
        info = externalOrNot(info, model.weightBytes!);
        if (info.weightStorage === "tensors") {
          // No BLAS to read external weights: the cpu backend keeps tensors in ordinary memory.
          notes.push("auto: using cpu, whose tensors are not bound by the wasm heap");
          info = await setupCpu("off", num_threads, notes);
        }
      }
      break;
    }
    case "tensorflow":
      info = await setupTensorflow(notes);
      break;
    default:
      throw new BackendError(
        `runtime.backend: unknown backend ${JSON.stringify(backend)}; ` +
          `expected auto, wasm, webgpu, cpu or tensorflow`,
      );
  }
  if (info.name !== "wasm" && info.name !== "cpu" && blas !== "auto" && blas !== "off") {
    notes.push(`runtime.blas ${blas} is ignored on backend ${info.name}`);
  }
  current = { key, info };
  return info;
}

/**
 * A model of `weightBytes` float32 bytes, too big for the wasm heap, on wasm: its base weights go
 * outside the heap when BLAS can read them there.
 */
function externalOrNot(info: BackendInfo, weightBytes: number): BackendInfo {
  const gib = (weightBytes / 2 ** 30).toFixed(1);
  if (info.blas === null) {
    info.notes.push(
      `${gib} GiB of float32 weights exceed what the wasm heap can hold next to activations, ` +
        `and without BLAS they cannot stay outside it`,
    );
    return info;
  }
  info.notes.push(
    `${gib} GiB of float32 weights exceed what the wasm heap can hold next to activations; ` +
      `the base weights stay outside it (weight storage external), read by BLAS in place`,
  );
  return { ...info, weightStorage: "external" };
}

/**
 * One line naming the backend, e.g. `backend wasm + OpenBLAS 0.3.21 (/usr/lib/x86_64-linux-gnu/
 * openblas-pthread/libopenblas.so.0, 2 threads)`, `backend cpu + OpenBLAS 0.3.21 (...)` or
 * `backend webgpu (adapter: NVIDIA ...)`.
 *
 * @param info What {@linkcode setupBackend} returned.
 * @returns The line, without notes.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { describeBackend } from "./backend.ts";
 * const info = { name: "wasm", blas: null, adapter: null, weightStorage: "tensors", notes: [] } as const;
 * assert.equal(describeBackend(info), "backend wasm (stock kernels, no BLAS)");
 * ```
 */
export function describeBackend(info: BackendInfo): string {
  if (info.blas !== null) {
    const vendor = info.blas.vendor.split(" ").slice(0, 2).join(" ");
    const threads = info.blas.threads > 0 ? `${info.blas.threads} threads` : "library threads";
    const where = info.weightStorage === "external" ? ", base weights outside the heap" : "";
    return `backend ${info.name} + ${vendor} (${info.blas.library}, ${threads})${where}`;
  }
  if (info.name === "wasm") return "backend wasm (stock kernels, no BLAS)";
  if (info.adapter !== null) return `backend ${info.name} (adapter: ${info.adapter})`;
  return `backend ${info.name}`;
}

/**
 * Shorthand for tests and notebooks: `cpu` is stock tfjs cpu (BLAS off: the parity reference),
 * `wasm` is stock wasm (BLAS off, with the corrected fused matMul), and `cpu+blas` / `wasm+blas`
 * are those backends with `blas: auto` on 2 threads.
 *
 * @param name The backend to switch to.
 * @returns What {@linkcode setupBackend} returned.
 * @example Usage
 * ```ts
 * import { useBackend } from "./backend.ts";
 * const info = await useBackend("cpu");
 * console.log(info.name); // cpu
 * ```
 */
export function useBackend(
  name: "cpu" | "cpu+blas" | "wasm" | "wasm+blas" | "webgpu",
): Promise<BackendInfo> {
  const blas = name.endsWith("+blas");
  const backend = blas ? name.slice(0, -"+blas".length) as "cpu" | "wasm" : name as "webgpu";
  return setupBackend({ backend, blas: blas ? "auto" : "off", num_threads: 2 });
}

async function activate(name: string): Promise<void> {
  if (!(await tf.setBackend(name))) {
    throw new BackendError(`runtime.backend: ${name}: tfjs could not initialise the backend`);
  }
  await tf.ready();
}

async function setupCpu(blas: string, threads: number, notes: string[]): Promise<BackendInfo> {
  await activate("cpu");
  // NOTE: tfjs-backend-cpu prints a "looks like you are running TensorFlow.js in Node.js"
  // banner on its first write under Deno; lib prints nothing, so mark it as already shown.
  (tf.backend() as unknown as { firstUse?: boolean }).firstUse = false;
  registerExternalWeightKernels("cpu");
  return attachBlas("cpu", blas, threads, notes);
}

async function setupWasm(blas: string, threads: number, notes: string[]): Promise<BackendInfo> {
  if (!wasmImported) {
    const wasm = await import("@tensorflow/tfjs-backend-wasm");
    wasm.setWasmPaths(WASM_DIST.href);
    wasmImported = true;
  }
  // The stock kernels' setup must run before their replacements are registered.
  await activate("wasm");
  registerWasmSegmentSum();
  replaceWasmKernels();
  registerExternalWeightKernels("wasm");
  return attachBlas("wasm", blas, threads, notes);
}

/**
 * Registers an `UnsortedSegmentSum` kernel on the wasm backend, which tfjs-backend-wasm 4.22 lacks
 * and which `tf.gather`'s gradient needs: full fine-tuning differentiates the embedding lookup
 * (`model.embed_tokens.weight`), LoRA does not. A plain JS loop over wasm memory: the embedding
 * gradient is `[B·T, H]` rows summed into `[V, H]`, microseconds next to the matMuls.
 * Idempotent; {@linkcode setupBackend} calls it whenever it sets up wasm.
 */
function registerWasmSegmentSum(): void {
  if (tf.getKernel("UnsortedSegmentSum", "wasm") !== undefined) return;
  tf.registerKernel({
    kernelName: "UnsortedSegmentSum",
    backendName: "wasm",
    kernelFunc: ({ inputs, backend, attrs }) => {
      const wasm = backend as unknown as WasmBackendLike;
      const x = inputs.x as tf.TensorInfo;
      const segmentIds = inputs.segmentIds as tf.TensorInfo;
      const numSegments = (attrs as unknown as { numSegments: number }).numSegments;
      if (x.dtype !== "float32") {
        throw new TypeError(
          `UnsortedSegmentSum (wasm, lib/backend.ts): float32 only, got ${x.dtype}`,
        );
      }
      const n = segmentIds.shape.reduce((a, b) => a * b, 1);
      const inner = n === 0 ? 0 : x.shape.reduce((a, b) => a * b, 1) / n;
      const outShape = [numSegments, ...x.shape.slice(segmentIds.shape.length)];
      const out = wasm.makeOutput(outShape, "float32");
      // Views after makeOutput: it may grow the heap.
      const ov = wasm.typedArrayFromHeap(out) as Float32Array;
      const xv = wasm.typedArrayFromHeap(x) as Float32Array;
      const ids = wasm.typedArrayFromHeap(segmentIds);
      ov.fill(0);
      for (let i = 0; i < n; i++) {
        const s = ids[i];
        if (s < 0 || s >= numSegments) continue; // tf drops out-of-range ids
        const o = s * inner;
        const xi = i * inner;
        for (let j = 0; j < inner; j++) ov[o + j] += xv[xi + j];
      }
      return out;
    },
  });
}

let wasmKernelsReplaced = false;

/**
 * Registers lib/_wasm_kernels.ts's copy-free `Identity`, `Slice`, `SplitV` and `GatherV2` over the
 * stock wasm kernels (same results, bit for bit). Idempotent.
 */
function replaceWasmKernels(): void {
  if (wasmKernelsReplaced) return;
  for (const { kernelName, replace } of WASM_KERNEL_REPLACEMENTS) {
    const stock = tf.getKernel(kernelName, "wasm");
    if (stock === undefined) throw new Error(`tfjs-backend-wasm has no ${kernelName} kernel`);
    tf.unregisterKernel(kernelName, "wasm");
    tf.registerKernel({ ...stock, kernelFunc: replace(stock.kernelFunc) });
  }
  wasmKernelsReplaced = true;
}

/** The parts of tfjs-backend-wasm's `BackendWasm` that registerWasmSegmentSum uses. */
interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/** Opens `blas` (unless off) and points the active backend's matMul kernels at it. */
function attachBlas(
  name: BlasBackend,
  blas: string,
  threads: number,
  notes: string[],
): BackendInfo {
  let library = null;
  if (blas !== "off") {
    library = blas === "auto" ? openAuto(name, notes) : openExplicit(blas);
  }
  setKernelMode(name, library, notes);
  setFusedKernels(name, library?.library ?? null);
  if (library === null) return { name, blas: null, adapter: null, weightStorage: "tensors", notes };
  const actual = library.setThreads(threads);
  if (actual === 0) {
    notes.push(`${library.library} has no openblas_set_num_threads; threads not set`);
  }
  return {
    name,
    blas: { library: library.library, threads: actual, vendor: library.vendor },
    adapter: null,
    weightStorage: "tensors",
    notes,
  };
}

let fusedGradientsRegistered = false;

/**
 * Registers lib/_kernels.ts's fused kernels (RMSNorm, SwiGLU, RoPE, attention, token
 * log-softmax, dropout masks) on `name`: on wasm always, on cpu only with a BLAS, so that stock
 * cpu (`blas: off`) stays the untouched reference the parity tests compare against. The attention
 * kernels call the BLAS, so they exist only with one. Idempotent; a later call with other options
 * registers or unregisters what changed.
 */
function setFusedKernels(name: BlasBackend, blasLibrary: string | null): void {
  if (!fusedGradientsRegistered) {
    for (const gradient of FUSED_GRADIENTS) tf.registerGradient(gradient);
    fusedGradientsRegistered = true;
  }
  setFusedBlas(name, blasLibrary);
  const enabled = name === "wasm" || blasLibrary !== null;
  for (const k of FUSED_KERNELS) {
    const want = enabled && (!k.needsBlas || blasLibrary !== null);
    const has = tf.getKernel(k.kernelName, name) !== undefined;
    if (has && !want) tf.unregisterKernel(k.kernelName, name);
    if (!has && want) {
      tf.registerKernel({
        kernelName: k.kernelName,
        backendName: name,
        kernelFunc: k.kernelFunc(name),
      });
    }
  }
}

/** How much slower the stock matMul is, for the notes (bench:blas, 2-core x86). */
const STOCK_SLOWDOWN: Record<BlasBackend, string> = {
  wasm: "~35× slower",
  cpu: "~100× slower",
};

function openAuto(name: BlasBackend, notes: string[]): ReturnType<typeof openBlas> | null {
  const failures: string[] = [];
  for (const path of blasCandidates()) {
    try {
      return openBlas(path);
    } catch (error) {
      if (
        error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ) {
        notes.push(
          `runtime.blas auto: FFI not allowed (run with --allow-ffi); stock ${name} matMul used ` +
            `(${STOCK_SLOWDOWN[name]})`,
        );
        return null;
      }
      failures.push(`${path} (${errorText(error)})`);
    }
  }
  notes.push(
    `runtime.blas auto: no BLAS opened, stock ${name} matMul used (${STOCK_SLOWDOWN[name]}; ` +
      `Debian: apt-get ` +
      `install libopenblas0-pthread). Tried ${failures.join(", ")}`,
  );
  return null;
}

function openExplicit(path: string): ReturnType<typeof openBlas> {
  try {
    return openBlas(path);
  } catch (error) {
    throw new BackendError(
      `runtime.blas: cannot open ${path} with cblas_sgemm (${errorText(error)}); ` +
        `set runtime.blas to auto or off`,
      { cause: error },
    );
  }
}

interface Adapter {
  label: string;
  hardware: boolean;
}

/** Deno's WebGPU adapter, if any; llvmpipe/lavapipe/SwiftShader count as software. */
async function findAdapter(): Promise<Adapter | null> {
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  if (!gpu) return null;
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch {
    return null;
  }
  if (adapter === null) return null;
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const label = info.description || [info.vendor, info.architecture, info.device].join(" ").trim();
  const software = info.isFallbackAdapter === true ||
    /llvmpipe|lavapipe|softpipe|swiftshader|microsoft basic render/i.test(label);
  return { label: label || "unknown adapter", hardware: !software };
}

async function setupWebgpu(label: string, notes: string[]): Promise<BackendInfo> {
  if (!webgpuImported) {
    await import("@tensorflow/tfjs-backend-webgpu");
    webgpuImported = true;
  }
  await activate("webgpu");
  notes.push("webgpu: read tensors with `await t.data()`; dataSync() fails on this backend");
  notes.push(guardBufferLimits(label));
  return { name: "webgpu", blas: null, adapter: label, weightStorage: "tensors", notes };
}

/** The parts of tfjs-backend-webgpu's `WebGPUBackend` that guardBufferLimits uses. */
interface WebgpuBackendLike {
  device: GPUDevice;
  bufferManager: {
    acquireBuffer(size: number, usage: number, ...rest: unknown[]): GPUBuffer;
    limitGuarded?: boolean;
  };
}

/**
 * Makes a buffer past the device's limits a {@linkcode BackendError} naming the sizes, where
 * WebGPU would otherwise only log a validation error and compute on an invalid buffer. The limits
 * are the adapter's maxima: tfjs-backend-webgpu 4.22 (`base.ts`) requests the adapter's
 * `maxBufferSize` and `maxStorageBufferBindingSize` for its device. Tensors are bound as storage
 * buffers, so the binding limit is the one a tensor meets (llvmpipe: 128 MiB; the 151,936 × 1536
 * embedding of Qwen2.5-Math-1.5B is 933 MB).
 *
 * @returns A note stating the limits.
 */
function guardBufferLimits(label: string): string {
  const backend = tf.backend() as unknown as WebgpuBackendLike;
  const limits = backend.device.limits;
  const manager = backend.bufferManager;
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
  if (!manager.limitGuarded) {
    const acquire = manager.acquireBuffer.bind(manager);
    manager.acquireBuffer = (size, usage, ...rest) => {
      const storage = (usage & GPUBufferUsage.STORAGE) !== 0;
      const limit = storage
        ? Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize)
        : limits.maxBufferSize;
      if (size > limit) {
        throw new BackendError(
          `runtime.backend: webgpu: a tensor of ${mib(size)} exceeds the adapter's ` +
            `${storage ? "maxStorageBufferBindingSize" : "maxBufferSize"} of ${mib(limit)} ` +
            `(${label}); use backend: wasm, which keeps big weights outside its heap`,
        );
      }
      return acquire(size, usage, ...rest);
    };
    manager.limitGuarded = true;
  }
  return `webgpu limits (the adapter's): maxBufferSize ${mib(limits.maxBufferSize)}, ` +
    `maxStorageBufferBindingSize ${mib(limits.maxStorageBufferBindingSize)} per tensor`;
}

async function setupTensorflow(notes: string[]): Promise<BackendInfo> {
  const failures: string[] = [];
  // NOTE: bare names, resolved through deno.json's imports only: an `npm:` specifier here would
  // make Deno download the package (and edit deno.lock) on every machine that lacks it.
  for (const name of ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node"]) {
    try {
      await import(name);
      await activate("tensorflow");
      notes.push(`tensorflow backend from ${name}`);
      return { name: "tensorflow", blas: null, adapter: null, weightStorage: "tensors", notes };
    } catch (error) {
      failures.push(`${name}: ${errorText(error)}`);
    }
  }
  throw new BackendError(
    "runtime.backend: tensorflow needs npm:@tensorflow/tfjs-node-gpu@4.22.0 (CUDA) or " +
      "npm:@tensorflow/tfjs-node@4.22.0 in deno.json's imports with its native addon built " +
      "(deno add, then deno approve-scripts); use backend: wasm (CPU with BLAS) or webgpu instead. " +
      failures.join("; "),
  );
}

function errorText(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split("\n")[0];
}
