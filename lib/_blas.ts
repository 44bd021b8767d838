/**
 * The CPU fast path behind `lib/backend.ts`: a native BLAS `cblas_sgemm` opened through Deno FFI,
 * and `BatchMatMul` / `_FusedMatMul` kernels that call it on the operands where they lie, for two
 * tfjs backends: wasm (views into the wasm heap) and cpu (the backend's own Float32Arrays, which
 * are not bound by wasm32's 4 GiB). Both share one sgemm plan (batch broadcasting, transposes)
 * and one bias/activation epilogue; only the `Host` (how a view is taken) differs. No copies either way. Private
 * to lib; `setupBackend()` is the way in.
 *
 * @module
 */
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { tf } from "./tf.ts";

// cblas.h enum values (CBLAS_ORDER, CBLAS_TRANSPOSE).
const CBLAS_ROW_MAJOR = 101;
const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;

const BLAS_SYMBOLS = {
  // void cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
  cblas_sgemm: {
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "pointer",
      "i32",
      "pointer",
      "i32",
      "f32",
      "pointer",
      "i32",
    ],
    result: "void",
    nonblocking: false,
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
  openblas_get_num_threads: { parameters: [], result: "i32", optional: true },
  openblas_get_config: { parameters: [], result: "pointer", optional: true },
} as const;

/** An opened BLAS library. */
export interface Blas {
  /** The path it was opened from. */
  library: string;
  /** "OpenBLAS 0.3.21 ...", "Accelerate" or "BLAS". */
  vendor: string;
  /** Sets the thread count where the library allows it; returns the count in effect (0: unknown). */
  setThreads(n: number): number;
  /**
   * Switches the library to `n` threads (at most what `setThreads` set) for the calls that follow,
   * when it runs a different count now: the matMul kernels pick 1 thread for small products.
   */
  useThreads(n: number): void;
  /** Row-major C[M,N] = A @ B (+ C when `accumulate`), with A, B optionally transposed. */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    a: Float32Array,
    b: Float32Array,
    c: Float32Array,
    accumulate: boolean,
  ): void;
  /**
   * Row-major C = op(A) @ op(B) + beta·C on blocks of larger matrices: each view starts at its
   * block's first element and `lda`/`ldb`/`ldc` are the row lengths as stored (cblas_sgemm's
   * leading dimensions). The external-weight kernels (`lib/_external_weights.ts`) read frozen
   * weights outside the wasm heap through it, in place.
   */
  gemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    c: Float32Array,
    ldc: number,
    beta: 0 | 1,
  ): void;
}

/**
 * Where `runtime.blas: auto` looks, in order. On Debian/Ubuntu the openblas-pthread directory is
 * named explicitly: plain `libblas.so.3` is whatever the alternatives system points at, which may be
 * the slow reference BLAS.
 */
export function blasCandidates(): string[] {
  if (Deno.build.os === "darwin") {
    return ["/System/Library/Frameworks/Accelerate.framework/Accelerate"];
  }
  if (Deno.build.os === "windows") return ["libopenblas.dll", "openblas.dll"];
  const multiarch = Deno.build.arch === "aarch64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
  const dir = `/usr/lib/${multiarch}/openblas-pthread`;
  return [
    `${dir}/libopenblas.so.0`,
    `${dir}/libblas.so.3`,
    "/usr/lib64/libopenblas.so.0", // Fedora, Arch
    "/usr/lib/libopenblas.so.0",
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
  ];
}

const opened = new Map<string, Blas>();

/**
 * Opens `path` with Deno.dlopen and binds `cblas_sgemm`. Cached per path: a library stays open for
 * the life of the process, since registered kernels may call it at any time.
 *
 * @throws Error when the library cannot be opened or lacks `cblas_sgemm`.
 */
export function openBlas(path: string): Blas {
  const cached = opened.get(path);
  if (cached) return cached;
  const lib = Deno.dlopen(path, BLAS_SYMBOLS);
  const sym = lib.symbols;
  let vendor = path.includes("Accelerate") ? "Accelerate" : "BLAS";
  let maxThreads = 0; // 0 until setThreads: the library's own count
  let current = 0;
  const config = sym.openblas_get_config?.();
  if (config) vendor = new Deno.UnsafePointerView(config).getCString();
  else if (path.toLowerCase().includes("openblas")) vendor = "OpenBLAS";
  const blas: Blas = {
    library: path,
    vendor,
    setThreads(n: number): number {
      if (!sym.openblas_set_num_threads) return 0;
      sym.openblas_set_num_threads(n);
      maxThreads = current = sym.openblas_get_num_threads?.() ?? n;
      return maxThreads;
    },
    useThreads(n: number): void {
      const want = Math.min(n, maxThreads);
      if (!sym.openblas_set_num_threads || maxThreads === 0 || want === current) return;
      sym.openblas_set_num_threads(want);
      current = want;
    },
    sgemm(transA, transB, m, n, k, a, b, c, accumulate) {
      // lda/ldb/ldc: the row lengths of A, B and C as stored
      blas.gemm(
        transA,
        transB,
        m,
        n,
        k,
        a,
        transA ? m : k,
        b,
        transB ? k : n,
        c,
        n,
        accumulate ? 1 : 0,
      );
    },
    gemm(transA, transB, m, n, k, a, lda, b, ldb, c, ldc, beta) {
      sym.cblas_sgemm(
        CBLAS_ROW_MAJOR,
        transA ? CBLAS_TRANS : CBLAS_NO_TRANS,
        transB ? CBLAS_TRANS : CBLAS_NO_TRANS,
        m,
        n,
        k,
        1,
        Deno.UnsafePointer.of(a),
        lda,
        Deno.UnsafePointer.of(b),
        ldb,
        beta,
        Deno.UnsafePointer.of(c),
        ldc,
      );
    },
  };
  opened.set(path, blas);
  return blas;
}

// ---------------------------------------------------------------------------------------------
// Kernels

/** The tfjs backends whose matMul kernels `setKernelMode()` can point at a BLAS. */
export type BlasBackend = "wasm" | "cpu";

type Activation = "linear" | "relu" | "relu6" | "prelu" | "leakyrelu" | "sigmoid" | "elu";
const ACTIVATIONS = new Set(["linear", "relu", "relu6", "prelu", "leakyrelu", "sigmoid", "elu"]);

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  backend: object;
  attrs?: tf.NamedAttrMap;
}

/**
 * How a kernel reaches one backend's tensor memory: float32 views it reads and writes in place.
 * The sgemm planning and the epilogues below see only this, so wasm and cpu share them.
 */
export interface Host {
  /** Allocates a float32 tensor of `shape` (contents unspecified). */
  alloc(shape: number[]): tf.TensorInfo;
  /**
   * The float32 values of `info`, in place. NOTE: on wasm a view dies at the next `alloc` (a
   * growing heap replaces its buffer), so take views after allocating.
   */
  view(info: tf.TensorInfo): Float32Array;
  /** The int32 values of `info` (token ids), in place; the same caveat as `view`. */
  viewInt32(info: tf.TensorInfo): Int32Array;
}

/** The parts of tfjs-backend-cpu's `MathBackendCPU` used here (its tensors are JS typed arrays). */
interface CpuBackend {
  data: { get(dataId: object): { values?: unknown } };
  makeTensorInfo(shape: number[], dtype: "float32", values: Float32Array): tf.TensorInfo;
}

function wasmHost(backend: BackendWasm): Host {
  return {
    alloc(shape) {
      return backend.makeOutput(shape, "float32");
    },
    view(info) {
      return backend.typedArrayFromHeap(info) as Float32Array;
    },
    viewInt32(info) {
      return backend.typedArrayFromHeap(info) as Int32Array;
    },
  };
}

function cpuHost(backend: CpuBackend): Host {
  return {
    alloc(shape) {
      // The cpu backend keeps this very array as the tensor's storage (no copy).
      return backend.makeTensorInfo(shape, "float32", new Float32Array(sizeOf(shape)));
    },
    view(info) {
      const values = backend.data.get(info.dataId).values;
      if (!(values instanceof Float32Array)) {
        throw new Error(`cpu tensor of shape [${info.shape}] has no Float32Array values`);
      }
      return values;
    },
    viewInt32(info) {
      const values = backend.data.get(info.dataId).values;
      if (!(values instanceof Int32Array)) {
        throw new Error(`cpu tensor of shape [${info.shape}] has no Int32Array values`);
      }
      return values;
    },
  };
}

/** How kernels of `backendName` reach `backend`'s tensor memory. */
export function hostOf(backendName: BlasBackend, backend: object): Host {
  return backendName === "wasm"
    ? wasmHost(backend as BackendWasm)
    : cpuHost(backend as unknown as CpuBackend);
}

function sizeOf(shape: number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

/** What one backend's kernels read at call time; `setKernelMode()` changes it. */
interface KernelState {
  blas: Blas | null;
  notes: string[];
  stock: { batchMatMul: tf.KernelConfig; fusedMatMul: tf.KernelConfig };
  /** Whether the kernels of this module, not tfjs's, are the registered ones. */
  installed: boolean;
}
const states = new Map<BlasBackend, KernelState>();

/**
 * Points the `BatchMatMul` and `_FusedMatMul` kernels of `backendName` at `blas`.
 *
 * On wasm the replacements are registered once and stay (the wasm backend must already be
 * initialised, so that the stock kernels' setup has run); with `blas = null` they run the stock
 * matMul plus a bias/activation epilogue done here. On cpu, `blas = null` registers tfjs's own
 * kernels again, so stock `cpu` stays the untouched reference that parity tests compare against.
 *
 * NOTE: the stock wasm `_FusedMatMul` adds the bias at wrong offsets when `a` is batched or
 * `transposeB` is set (measured ~20% of the output scale off on tfjs-backend-wasm 4.22), so it is
 * never called, even with BLAS off.
 *
 * @param notes Where a kernel appends one line the first time it falls back to a stock kernel.
 */
export function setKernelMode(backendName: BlasBackend, blas: Blas | null, notes: string[]): void {
  let state = states.get(backendName);
  if (state === undefined) {
    const batchMatMul = tf.getKernel(tf.BatchMatMul, backendName);
    const fusedMatMul = tf.getKernel(tf._FusedMatMul, backendName);
    if (!batchMatMul || !fusedMatMul) {
      throw new Error(
        `Cannot replace the ${backendName} matMul kernels: the ${backendName} backend is not registered`,
      );
    }
    state = { blas, notes, stock: { batchMatMul, fusedMatMul }, installed: false };
    states.set(backendName, state);
  }
  state.blas = blas;
  state.notes = notes;
  const install = backendName === "wasm" || blas !== null;
  if (install === state.installed) return;
  tf.unregisterKernel(tf.BatchMatMul, backendName);
  tf.unregisterKernel(tf._FusedMatMul, backendName);
  if (install) {
    // The stock BatchMatMul's setup (wasm only): the BLAS-off path runs that kernel.
    const setupFunc = state.stock.batchMatMul.setupFunc;
    tf.registerKernel({
      kernelName: tf.BatchMatMul,
      backendName,
      setupFunc,
      kernelFunc: batchMatMulKernel(backendName),
    });
    tf.registerKernel({
      kernelName: tf._FusedMatMul,
      backendName,
      setupFunc,
      kernelFunc: fusedMatMulKernel(backendName),
    });
  } else {
    tf.registerKernel(state.stock.batchMatMul);
    tf.registerKernel(state.stock.fusedMatMul);
  }
  state.installed = install;
}

/**
 * The BLAS that `backendName`'s matMul kernels call now, or null (BLAS off, or
 * {@linkcode setKernelMode} not called for it).
 */
export function activeBlas(backendName: BlasBackend): Blas | null {
  return states.get(backendName)?.blas ?? null;
}

function note(state: KernelState, line: string): void {
  if (!state.notes.includes(line)) state.notes.push(line);
}

/** The sgemm plan shared by both kernels and backends, following tfjs-core's matMul op. */
interface Geometry {
  m: number;
  n: number;
  k: number;
  outBatchShape: number[];
  /** For each output batch, the batch index into a and into b (broadcasting). */
  aIndex: Int32Array;
  bIndex: Int32Array;
}

function geometry(a: tf.TensorInfo, b: tf.TensorInfo, transA: boolean, transB: boolean): Geometry {
  const ra = a.shape.length;
  const rb = b.shape.length;
  const k = transA ? a.shape[ra - 2] : a.shape[ra - 1];
  const kb = transB ? b.shape[rb - 1] : b.shape[rb - 2];
  if (k !== kb) {
    throw new Error(
      `Error in matMul: inner shapes (${k}) and (${kb}) of Tensors with shapes ${a.shape} and ` +
        `${b.shape} and transposeA=${transA} and transposeB=${transB} must match.`,
    );
  }
  const m = transA ? a.shape[ra - 1] : a.shape[ra - 2];
  const n = transB ? b.shape[rb - 2] : b.shape[rb - 1];
  const aOuter = a.shape.slice(0, -2);
  const bOuter = b.shape.slice(0, -2);
  const outBatchShape = tf.broadcast_util.assertAndGetBroadcastShape(aOuter, bOuter);
  const batch = sizeOf(outBatchShape);
  const aIndex = new Int32Array(batch);
  const bIndex = new Int32Array(batch);
  // Row-major strides of each operand's batch dims, aligned right, 0 where broadcast.
  const rank = outBatchShape.length;
  const aStride = broadcastStrides(aOuter, rank);
  const bStride = broadcastStrides(bOuter, rank);
  for (let i = 0; i < batch; i++) {
    let rest = i;
    let ai = 0;
    let bi = 0;
    for (let d = rank - 1; d >= 0; d--) {
      const idx = rest % outBatchShape[d];
      rest = (rest - idx) / outBatchShape[d];
      ai += idx * aStride[d];
      bi += idx * bStride[d];
    }
    aIndex[i] = ai;
    bIndex[i] = bi;
  }
  return { m, n, k, outBatchShape, aIndex, bIndex };
}

function broadcastStrides(shape: number[], rank: number): number[] {
  const strides = new Array<number>(rank).fill(0);
  let stride = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    const at = rank - shape.length + d;
    strides[at] = shape[d] === 1 ? 0 : stride;
    stride *= shape[d];
  }
  return strides;
}

function isConstant(index: Int32Array, value: number): boolean {
  for (let i = 0; i < index.length; i++) if (index[i] !== value) return false;
  return true;
}

function isIdentity(index: Int32Array): boolean {
  for (let i = 0; i < index.length; i++) if (index[i] !== i) return false;
  return true;
}

/**
 * Fewest multiply-adds per sgemm call that get more than one thread. Below it the hand-off to a
 * second OpenBLAS thread costs more than it saves, and on a busy machine far more: a demo decode
 * product [64,128] x [128,128] took 99 us on 1 thread and 385-2,741 us on 2 at load 8 (the 2-core
 * box of bench/PROFILE.md, finding 9).
 */
const MULTITHREAD_MIN_MACS = 1 << 24;

/**
 * Threads for one sgemm call of `macs` multiply-adds: all of `runtime.num_threads` for a large
 * product on a machine with cores to spare, else 1. With every core taken by other jobs, a second
 * OpenBLAS thread waits for one and slows even large products (bench/PROFILE.md finding 9).
 */
export function threadsFor(macs: number): number {
  return macs >= MULTITHREAD_MIN_MACS && !coresBusy() ? Infinity : 1;
}

let busyCheckedAt = -Infinity;
let busy = false;

/**
 * Whether the 1-minute load average exceeds the core count (this process's own threads count in
 * it too), read at most once a second. Without permission to read it: false.
 */
function coresBusy(): boolean {
  const now = performance.now();
  if (now - busyCheckedAt < 1000) return busy;
  busyCheckedAt = now;
  try {
    busy = Deno.loadavg()[0] > navigator.hardwareConcurrency;
  } catch {
    busy = false;
  }
  return busy;
}

/** Runs sgemm for every output batch; `out` already holds the bias when `accumulate`. */
function blasMatMul(
  blas: Blas,
  g: Geometry,
  av: Float32Array,
  bv: Float32Array,
  out: Float32Array,
  transA: boolean,
  transB: boolean,
  accumulate: boolean,
): void {
  const { m, n, k, aIndex, bIndex } = g;
  const batch = aIndex.length;
  // One call when a's batches are stacked rows against a single b: [batch*M, K] @ B.
  if (!transA && batch > 1 && isConstant(bIndex, 0) && isIdentity(aIndex)) {
    blas.useThreads(threadsFor(batch * m * n * k));
    blas.sgemm(false, transB, batch * m, n, k, av, bv, out, accumulate);
    return;
  }
  blas.useThreads(threadsFor(m * n * k));
  for (let i = 0; i < batch; i++) {
    blas.sgemm(
      transA,
      transB,
      m,
      n,
      k,
      av.subarray(aIndex[i] * m * k, (aIndex[i] + 1) * m * k),
      bv.subarray(bIndex[i] * k * n, (bIndex[i] + 1) * k * n),
      out.subarray(i * m * n, (i + 1) * m * n),
      accumulate,
    );
  }
}

function batchMatMulKernel(backendName: BlasBackend): tf.KernelFunc {
  return function batchMatMul(args: KernelArgs): tf.TensorInfo {
    const state = states.get(backendName)!;
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const blas = state.blas;
    if (blas === null) return state.stock.batchMatMul.kernelFunc(args) as tf.TensorInfo;
    if (a.dtype !== "float32" || b.dtype !== "float32") {
      note(
        state,
        `BatchMatMul on ${a.dtype}/${b.dtype}: not float32, stock ${backendName} kernel used`,
      );
      return state.stock.batchMatMul.kernelFunc(args) as tf.TensorInfo;
    }
    const host = hostOf(backendName, args.backend);
    const g = geometry(a, b, transposeA, transposeB);
    // subtle: allocate first, then take views; on wasm the allocation may grow (replace) the heap.
    const out = host.alloc([...g.outBatchShape, g.m, g.n]);
    if (g.aIndex.length * g.m * g.n === 0) return out;
    const ov = host.view(out);
    if (g.k === 0) ov.fill(0);
    else blasMatMul(blas, g, host.view(a), host.view(b), ov, transposeA, transposeB, false);
    return out;
  } as unknown as tf.KernelFunc;
}

/** How an auxiliary tensor (bias, prelu weights) of rank <= 3 broadcasts over [batch, M, N]. */
interface AuxStrides {
  batchStride: number;
  rowStride: number;
  colStride: number;
}

/** The strides of `shape` broadcast over [batch, m, n], or null when it does not broadcast. */
function auxStrides(shape: number[], batch: number, m: number, n: number): AuxStrides | null {
  if (shape.length > 3) return null;
  const [eb, em, en] = [...new Array<number>(3 - shape.length).fill(1), ...shape];
  if ((eb !== 1 && eb !== batch) || (em !== 1 && em !== m) || (en !== 1 && en !== n)) return null;
  return {
    batchStride: eb === 1 ? 0 : em * en,
    rowStride: em === 1 ? 0 : en,
    colStride: en === 1 ? 0 : 1,
  };
}

/** out[b, i, :] = aux row (broadcast), via memcpy-speed `set`/`fill`. */
function fillRows(out: Float32Array, aux: Float32Array, s: AuxStrides, g: Geometry): void {
  const { m, n } = g;
  for (let bi = 0; bi < g.aIndex.length; bi++) {
    for (let i = 0; i < m; i++) {
      const src = bi * s.batchStride + i * s.rowStride;
      const dst = (bi * m + i) * n;
      if (s.colStride === 0) out.fill(aux[src], dst, dst + n);
      else out.set(aux.subarray(src, src + n), dst);
    }
  }
}

function addRows(out: Float32Array, aux: Float32Array, s: AuxStrides, g: Geometry): void {
  const { m, n } = g;
  for (let bi = 0; bi < g.aIndex.length; bi++) {
    for (let i = 0; i < m; i++) {
      const src = bi * s.batchStride + i * s.rowStride;
      const dst = (bi * m + i) * n;
      const cs = s.colStride;
      for (let j = 0; j < n; j++) out[dst + j] += aux[src + j * cs];
    }
  }
}

/** Applies a tfjs fusable activation in place (tfjs-core `fused_util.applyActivation`). */
function activate(
  out: Float32Array,
  activation: Activation,
  alpha: number,
  prelu: { data: Float32Array; strides: AuxStrides } | null,
  g: Geometry,
): void {
  const len = out.length;
  switch (activation) {
    case "linear":
      return;
    case "relu":
      for (let i = 0; i < len; i++) if (out[i] < 0) out[i] = 0;
      return;
    case "relu6":
      for (let i = 0; i < len; i++) out[i] = Math.min(Math.max(out[i], 0), 6);
      return;
    case "leakyrelu":
      for (let i = 0; i < len; i++) if (out[i] < 0) out[i] *= alpha;
      return;
    case "sigmoid":
      for (let i = 0; i < len; i++) out[i] = 1 / (1 + Math.exp(-out[i]));
      return;
    case "elu":
      for (let i = 0; i < len; i++) if (out[i] < 0) out[i] = Math.expm1(out[i]);
      return;
    case "prelu": {
      const { data: w, strides: s } = prelu!;
      const { m, n } = g;
      for (let bi = 0; bi < g.aIndex.length; bi++) {
        for (let i = 0; i < m; i++) {
          const src = bi * s.batchStride + i * s.rowStride;
          const dst = (bi * m + i) * n;
          for (let j = 0; j < n; j++) {
            const v = out[dst + j];
            if (v < 0) out[dst + j] = v * w[src + j * s.colStride];
          }
        }
      }
      return;
    }
  }
}

interface FusedInputs {
  a: tf.TensorInfo;
  b: tf.TensorInfo;
  bias?: tf.TensorInfo;
  preluActivationWeights?: tf.TensorInfo;
}

interface FusedAttrs {
  transposeA: boolean;
  transposeB: boolean;
  activation: string;
  leakyreluAlpha?: number;
}

/** Why these inputs cannot take the kernels' own path, or null when they can. */
function fusedUnsupported(inputs: FusedInputs, attrs: FusedAttrs): string | null {
  const { a, b, bias, preluActivationWeights: prelu } = inputs;
  if (!ACTIVATIONS.has(attrs.activation)) return `activation ${attrs.activation}`;
  if (attrs.activation === "prelu" && prelu == null) return "prelu without preluActivationWeights";
  const dtypes = [a, b, bias, prelu].filter((t) => t != null).map((t) => t!.dtype);
  if (dtypes.some((d) => d !== "float32")) return `non-float32 tensors (${dtypes})`;
  return null;
}

function fusedMatMulKernel(backendName: BlasBackend): tf.KernelFunc {
  return function fusedMatMul(args: KernelArgs): tf.TensorInfo {
    const state = states.get(backendName)!;
    const inputs = args.inputs as unknown as FusedInputs;
    const attrs = args.attrs as unknown as FusedAttrs;
    const { a, b, bias, preluActivationWeights } = inputs;
    const { transposeA, transposeB } = attrs;
    const blas = state.blas;
    // cpu: stock tfjs kernels whenever BLAS is off or the inputs need what only they do.
    const stockFused = (why: string) => {
      if (backendName === "wasm") throw new Error(`_FusedMatMul on wasm: ${why} is not supported`);
      note(state, `_FusedMatMul: ${why}, stock cpu kernel used`);
      return state.stock.fusedMatMul.kernelFunc(args) as tf.TensorInfo;
    };
    if (blas === null && backendName === "cpu") {
      return state.stock.fusedMatMul.kernelFunc(args) as tf.TensorInfo;
    }
    const why = fusedUnsupported(inputs, attrs);
    if (why !== null) return stockFused(why);
    const g = geometry(a, b, transposeA, transposeB);
    const { m, n } = g;
    const batch = g.aIndex.length;
    const biasStrides = bias == null ? null : auxStrides(bias.shape, batch, m, n);
    const preluStrides = preluActivationWeights == null
      ? null
      : auxStrides(preluActivationWeights.shape, batch, m, n);
    if (bias != null && biasStrides === null) {
      return stockFused(`bias of shape [${bias.shape}] over output [${batch},${m},${n}]`);
    }
    if (preluActivationWeights != null && preluStrides === null) {
      const shape = preluActivationWeights.shape;
      return stockFused(`prelu weights of shape [${shape}] over output [${batch},${m},${n}]`);
    }
    const host = hostOf(backendName, args.backend);
    let out: tf.TensorInfo;
    if (blas !== null) {
      out = host.alloc([...g.outBatchShape, m, n]);
      if (batch * m * n === 0) return out;
      // Views after alloc: on wasm it may grow the heap.
      const ov = host.view(out);
      if (bias != null) fillRows(ov, host.view(bias), biasStrides!, g);
      else if (g.k === 0) ov.fill(0);
      if (g.k > 0) {
        blasMatMul(blas, g, host.view(a), host.view(b), ov, transposeA, transposeB, bias != null);
      }
    } else {
      // wasm, BLAS off: stock BatchMatMul (correct), then the bias add the stock fused kernel
      // gets wrong.
      out = state.stock.batchMatMul.kernelFunc({
        inputs: { a, b },
        backend: args.backend,
        attrs: { transposeA, transposeB },
      }) as tf.TensorInfo;
      if (batch * m * n === 0) return out;
      if (bias != null) addRows(host.view(out), host.view(bias), biasStrides!, g);
    }
    const prelu = preluActivationWeights == null
      ? null
      : { data: host.view(preluActivationWeights), strides: preluStrides! };
    activate(host.view(out), attrs.activation as Activation, attrs.leakyreluAlpha ?? 0.2, prelu, g);
    return out;
  } as unknown as tf.KernelFunc;
}
