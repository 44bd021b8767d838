/**
 * The CPU fast path behind `lib/backend.ts`: a native BLAS `cblas_sgemm` opened through Deno FFI,
 * and wasm kernels for `BatchMatMul` and `_FusedMatMul` that call it on the operands where they lie
 * in the wasm heap (no copies). Private to lib; `setupBackend()` is the way in.
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
  const config = sym.openblas_get_config?.();
  if (config) vendor = new Deno.UnsafePointerView(config).getCString();
  else if (path.toLowerCase().includes("openblas")) vendor = "OpenBLAS";
  const blas: Blas = {
    library: path,
    vendor,
    setThreads(n: number): number {
      if (!sym.openblas_set_num_threads) return 0;
      sym.openblas_set_num_threads(n);
      return sym.openblas_get_num_threads?.() ?? n;
    },
    sgemm(transA, transB, m, n, k, a, b, c, accumulate) {
      sym.cblas_sgemm(
        CBLAS_ROW_MAJOR,
        transA ? CBLAS_TRANS : CBLAS_NO_TRANS,
        transB ? CBLAS_TRANS : CBLAS_NO_TRANS,
        m,
        n,
        k,
        1,
        Deno.UnsafePointer.of(a),
        transA ? m : k, // lda: row length of A as stored
        Deno.UnsafePointer.of(b),
        transB ? k : n,
        accumulate ? 1 : 0,
        Deno.UnsafePointer.of(c),
        n,
      );
    },
  };
  opened.set(path, blas);
  return blas;
}

// ---------------------------------------------------------------------------------------------
// Kernels

type Activation = "linear" | "relu" | "relu6" | "prelu" | "leakyrelu" | "sigmoid" | "elu";
const ACTIVATIONS = new Set(["linear", "relu", "relu6", "prelu", "leakyrelu", "sigmoid", "elu"]);

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  backend: object;
  attrs?: tf.NamedAttrMap;
}

/** What the kernels read at call time; `setKernelMode()` changes it. */
const mode: { blas: Blas | null; notes: string[] } = { blas: null, notes: [] };
let stock: { batchMatMul: tf.KernelConfig; fusedMatMul: tf.KernelConfig } | null = null;

/**
 * Replaces the wasm `BatchMatMul` and `_FusedMatMul` kernels (once; the wasm backend must already be
 * initialised so the stock kernels' setup has run) and points them at `blas`, or with `blas = null`
 * at the stock matMul plus a bias/activation epilogue done here.
 *
 * NOTE: the stock wasm `_FusedMatMul` adds the bias at wrong offsets when `a` is batched or
 * `transposeB` is set (measured ~20% of the output scale off on tfjs-backend-wasm 4.22), so it is
 * never called, even with BLAS off.
 *
 * @param notes Where a kernel appends one line the first time it falls back to a stock kernel.
 */
export function setKernelMode(blas: Blas | null, notes: string[]): void {
  if (stock === null) {
    const batchMatMul = tf.getKernel(tf.BatchMatMul, "wasm");
    const fusedMatMul = tf.getKernel(tf._FusedMatMul, "wasm");
    if (!batchMatMul || !fusedMatMul) {
      throw new Error("Cannot replace the wasm matMul kernels: the wasm backend is not registered");
    }
    stock = { batchMatMul, fusedMatMul };
    tf.unregisterKernel(tf.BatchMatMul, "wasm");
    tf.unregisterKernel(tf._FusedMatMul, "wasm");
    tf.registerKernel({
      kernelName: tf.BatchMatMul,
      backendName: "wasm",
      setupFunc: batchMatMul.setupFunc,
      kernelFunc: batchMatMulKernel as unknown as tf.KernelFunc,
    });
    tf.registerKernel({
      kernelName: tf._FusedMatMul,
      backendName: "wasm",
      // The stock BatchMatMul's setup: the BLAS-off path runs that kernel.
      setupFunc: batchMatMul.setupFunc,
      kernelFunc: fusedMatMulKernel as unknown as tf.KernelFunc,
    });
  }
  mode.blas = blas;
  mode.notes = notes;
}

function note(line: string): void {
  if (!mode.notes.includes(line)) mode.notes.push(line);
}

/** The operand geometry shared by both kernels, following tfjs-core's matMul op. */
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
  const batch = outBatchShape.reduce((p, d) => p * d, 1);
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
    blas.sgemm(false, transB, batch * m, n, k, av, bv, out, accumulate);
    return;
  }
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

function batchMatMulKernel(args: KernelArgs): tf.TensorInfo {
  const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
  const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
  const blas = mode.blas;
  if (blas === null) return stock!.batchMatMul.kernelFunc(args) as tf.TensorInfo;
  if (a.dtype !== "float32" || b.dtype !== "float32") {
    note(`BatchMatMul on ${a.dtype}/${b.dtype}: not float32, stock wasm kernel used`);
    return stock!.batchMatMul.kernelFunc(args) as tf.TensorInfo;
  }
  const backend = args.backend as BackendWasm;
  const g = geometry(a, b, transposeA, transposeB);
  const outShape = [...g.outBatchShape, g.m, g.n];
  // subtle: allocate first, then take heap views; the allocation may grow (replace) the heap.
  const out = backend.makeOutput(outShape, "float32");
  if (g.aIndex.length * g.m * g.n === 0) return out;
  const ov = backend.typedArrayFromHeap(out) as Float32Array;
  if (g.k === 0) {
    ov.fill(0);
    return out;
  }
  const av = backend.typedArrayFromHeap(a) as Float32Array;
  const bv = backend.typedArrayFromHeap(b) as Float32Array;
  blasMatMul(blas, g, av, bv, ov, transposeA, transposeB, false);
  return out;
}

/** How an auxiliary tensor (bias, prelu weights) of rank <= 3 broadcasts over [batch, M, N]. */
interface Aux {
  data: Float32Array;
  batchStride: number;
  rowStride: number;
  colStride: number;
}

function auxLayout(
  info: tf.TensorInfo,
  data: Float32Array,
  batch: number,
  m: number,
  n: number,
  what: string,
): Aux {
  const shape = info.shape;
  if (shape.length > 3) {
    throw new Error(
      `_FusedMatMul: ${what} of shape [${shape}] has rank > 3; the kernel output is [${batch},${m},${n}]`,
    );
  }
  const [eb, em, en] = [...new Array<number>(3 - shape.length).fill(1), ...shape];
  if ((eb !== 1 && eb !== batch) || (em !== 1 && em !== m) || (en !== 1 && en !== n)) {
    throw new Error(
      `_FusedMatMul: ${what} of shape [${shape}] does not broadcast to [${batch},${m},${n}]`,
    );
  }
  return {
    data,
    batchStride: eb === 1 ? 0 : em * en,
    rowStride: em === 1 ? 0 : en,
    colStride: en === 1 ? 0 : 1,
  };
}

/** out[b, i, :] = aux row (broadcast), via memcpy-speed `set`/`fill`. */
function fillRows(out: Float32Array, aux: Aux, batch: number, m: number, n: number): void {
  for (let bi = 0; bi < batch; bi++) {
    for (let i = 0; i < m; i++) {
      const src = bi * aux.batchStride + i * aux.rowStride;
      const dst = (bi * m + i) * n;
      if (aux.colStride === 0) out.fill(aux.data[src], dst, dst + n);
      else out.set(aux.data.subarray(src, src + n), dst);
    }
  }
}

function addRows(out: Float32Array, aux: Aux, batch: number, m: number, n: number): void {
  for (let bi = 0; bi < batch; bi++) {
    for (let i = 0; i < m; i++) {
      const src = bi * aux.batchStride + i * aux.rowStride;
      const dst = (bi * m + i) * n;
      const cs = aux.colStride;
      for (let j = 0; j < n; j++) out[dst + j] += aux.data[src + j * cs];
    }
  }
}

/** Applies a tfjs fusable activation in place (tfjs-core `fused_util.applyActivation`). */
function activate(
  out: Float32Array,
  activation: Activation,
  alpha: number,
  prelu: Aux | null,
  batch: number,
  m: number,
  n: number,
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
      const w = prelu!;
      for (let bi = 0; bi < batch; bi++) {
        for (let i = 0; i < m; i++) {
          const src = bi * w.batchStride + i * w.rowStride;
          const dst = (bi * m + i) * n;
          for (let j = 0; j < n; j++) {
            const v = out[dst + j];
            if (v < 0) out[dst + j] = v * w.data[src + j * w.colStride];
          }
        }
      }
      return;
    }
  }
}

function fusedMatMulKernel(args: KernelArgs): tf.TensorInfo {
  const { a, b, bias, preluActivationWeights } = args.inputs as {
    a: tf.TensorInfo;
    b: tf.TensorInfo;
    bias?: tf.TensorInfo;
    preluActivationWeights?: tf.TensorInfo;
  };
  const attrs = args.attrs as {
    transposeA: boolean;
    transposeB: boolean;
    activation: string;
    leakyreluAlpha?: number;
  };
  const { transposeA, transposeB } = attrs;
  if (!ACTIVATIONS.has(attrs.activation)) {
    throw new Error(`_FusedMatMul: activation ${attrs.activation} is not supported on wasm`);
  }
  const activation = attrs.activation as Activation;
  if (activation === "prelu" && preluActivationWeights == null) {
    throw new Error("_FusedMatMul: activation prelu needs preluActivationWeights");
  }
  const dtypes = [a, b, bias, preluActivationWeights].filter((t) => t != null).map((t) => t!.dtype);
  if (dtypes.some((d) => d !== "float32")) {
    throw new Error(`_FusedMatMul for non-float32 tensors is not supported (got ${dtypes})`);
  }
  const backend = args.backend as BackendWasm;
  const g = geometry(a, b, transposeA, transposeB);
  const { m, n } = g;
  const batch = g.aIndex.length;
  const blas = mode.blas;

  let out: tf.TensorInfo;
  let ov: Float32Array;
  if (blas !== null) {
    out = backend.makeOutput([...g.outBatchShape, m, n], "float32");
    if (batch * m * n === 0) return out;
    // Views after makeOutput: it may grow the heap.
    ov = backend.typedArrayFromHeap(out) as Float32Array;
    const accumulate = bias != null;
    if (bias != null) {
      const biasView = backend.typedArrayFromHeap(bias) as Float32Array;
      fillRows(ov, auxLayout(bias, biasView, batch, m, n, "bias"), batch, m, n);
    } else if (g.k === 0) ov.fill(0);
    if (g.k > 0) {
      const av = backend.typedArrayFromHeap(a) as Float32Array;
      const bv = backend.typedArrayFromHeap(b) as Float32Array;
      blasMatMul(blas, g, av, bv, ov, transposeA, transposeB, accumulate);
    }
  } else {
    // BLAS off: stock BatchMatMul (correct), then the bias add the stock fused kernel gets wrong.
    out = stock!.batchMatMul.kernelFunc({
      inputs: { a, b },
      backend: args.backend,
      attrs: { transposeA, transposeB },
    }) as tf.TensorInfo;
    if (batch * m * n === 0) return out;
    ov = backend.typedArrayFromHeap(out) as Float32Array;
    if (bias != null) {
      const biasView = backend.typedArrayFromHeap(bias) as Float32Array;
      addRows(ov, auxLayout(bias, biasView, batch, m, n, "bias"), batch, m, n);
    }
  }
  // Views again: nothing allocated since, but keep the rule simple.
  ov = backend.typedArrayFromHeap(out) as Float32Array;
  const prelu = preluActivationWeights == null ? null : auxLayout(
    preluActivationWeights,
    backend.typedArrayFromHeap(preluActivationWeights) as Float32Array,
    batch,
    m,
    n,
    "preluActivationWeights",
  );
  activate(ov, activation, attrs.leakyreluAlpha ?? 0.2, prelu, batch, m, n);
  return out;
}
