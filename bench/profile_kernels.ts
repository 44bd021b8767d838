/**
 * Where does our time go? Wraps every registered tfjs kernel of the active backend with a timer
 * (the wasm and cpu kernels run synchronously, so wall time around `kernelFunc` is the kernel's
 * time), counts backend reads and writes (syncs and host copies), and prints markdown tables per
 * phase: kernels by time, by category, by call shape, matMul GFLOP/s, and how much of each phase's
 * wall time is outside any kernel (tfjs engine bookkeeping, tape, JS glue).
 *
 *   deno run -A bench/profile_kernels.ts demo [--backend wasm] [--steps 1]
 *   deno run -A bench/profile_kernels.ts large [--backend auto] [--layers 4] \
 *     [--parts forward,decode,update]
 *
 * `demo`: one GRPO step of configs/demo.yaml (after one unprofiled warm-up step), through the
 * same phase functions `trainStep` chains: generatePhase, scorePhase, advantagePhase,
 * prepareMicroBatches (reference log-probs), updatePhase. `large`: a Qwen2.5-Math-1.5B-shaped
 * model (hidden 1536, intermediate 8960, 12/2 heads, vocab 151,936, tied) cut to `--layers`
 * decoder layers, random weights: `deno task bench`'s workloads (3) and (4) from
 * bench/workloads.ts: forward of 4 × 256 tokens (every position's logits), prefill + 16 decode
 * steps × 4 rows, and one GRPO update on 4 × (64 + 64) tokens with LoRA r16 on q/k/v/o and
 * gradient checkpointing.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  AdamW,
  advantagePhase,
  createLora,
  describeBackend,
  disposePrepared,
  generatePhase,
  loadConfig,
  loadDataset,
  loadModel,
  loadTokenizer,
  prepareMicroBatches,
  promptsForStep,
  promptsPerStep,
  scorePhase,
  setupBackend,
  tf,
  updatePhase,
} from "../lib/mod.ts";
import type { Config, PreparedBatch, TrainerContext } from "../lib/mod.ts";
import { largeDecode, largeForward, largeModel, largeUpdate } from "./workloads.ts";
import { type Patch, PATCHES, patchWasmKernels } from "./_kernel_patches.ts";

/** What `main` passes to a workload. */
interface Options {
  backend: Config["runtime"]["backend"];
  threads: number;
  patches: Patch[];
  topN: number;
  /** Time the steps without wrapping any kernel. */
  timeOnly: boolean;
}

// ---------------------------------------------------------------------------------------------
// The profiler

interface Stat {
  count: number;
  ms: number;
  /** Multiply-adds × 2 of matMul kernels. */
  flops: number;
}

interface EngineState {
  gradientDepth: number;
  scopeStack: { name: string }[];
}

const byKernel = new Map<string, Stat>(); // `${phase}\t${kernel}`
const byShape = new Map<string, Stat>(); // `${phase}\t${kernel}\t${shapes}`
const io = new Map<string, Stat>(); // `${phase}\t${method}`, flops = bytes
const phaseWall = new Map<string, number>();
/** The profiler's own bookkeeping time per top-level phase, taken out of "outside kernels". */
const bookkeeping = new Map<string, number>();
let phase = "idle";
let phaseStart = performance.now();
let enabled = false;
/** The kernel running now, or null (a backend read or write then comes from JS outside kernels). */
let inKernel: string | null = null;

/** Starts a new phase; the wall time of the previous one is added to its total. */
function setPhase(next: string): void {
  const now = performance.now();
  if (enabled) phaseWall.set(phase, (phaseWall.get(phase) ?? 0) + now - phaseStart);
  phase = next;
  phaseStart = now;
}

/** The phase a kernel runs in; an update is split into forward, recompute, backward and the rest. */
function currentPhase(): string {
  if (phase !== "update") return phase;
  const state = (tf.engine() as unknown as { state: EngineState }).state;
  const backward = state.scopeStack.some((s) => s.name === "backward");
  if (state.gradientDepth > 0) return backward ? "update: recompute" : "update: policy fwd";
  return backward ? "update: policy bwd" : "update: clip+AdamW";
}

function add(map: Map<string, Stat>, key: string, ms: number, flops: number): void {
  const s = map.get(key);
  if (s) {
    s.count++;
    s.ms += ms;
    s.flops += flops;
  } else map.set(key, { count: 1, ms, flops });
}

function shapeOf(info: unknown): string {
  const shape = (info as { shape?: number[] } | null)?.shape;
  return shape ? `[${shape.join(",")}]` : "-";
}

/** 2·batch·M·N·K of a BatchMatMul / _FusedMatMul call. */
function matMulFlops(inputs: tf.NamedTensorInfoMap, attrs: tf.NamedAttrMap | undefined): number {
  const { a: ta0, b: tb0 } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
  const a = ta0.shape;
  const b = tb0.shape;
  const ta = attrs?.transposeA === true;
  const tb = attrs?.transposeB === true;
  const m = ta ? a[a.length - 1] : a[a.length - 2];
  const k = ta ? a[a.length - 2] : a[a.length - 1];
  const n = tb ? b[b.length - 2] : b[b.length - 1];
  const batch = Math.max(
    a.slice(0, -2).reduce((p, d) => p * d, 1),
    b.slice(0, -2).reduce((p, d) => p * d, 1),
  );
  return 2 * batch * m * n * k;
}

/** Replaces every kernel of `backendName` with a timed copy (setupFunc kept). */
function installKernelTimers(backendName: string): number {
  const configs = tf.getKernelsForBackend(backendName);
  for (const config of configs) {
    const inner = config.kernelFunc;
    const name = config.kernelName;
    const isMatMul = name === "BatchMatMul" || name === "_FusedMatMul";
    const isExternal = name === "ExternalMatMul"; // x [N, K] → [N, M], weight outside the heap
    tf.unregisterKernel(name, backendName);
    tf.registerKernel({
      ...config,
      kernelFunc: ((args: { inputs: tf.NamedTensorInfoMap; attrs?: tf.NamedAttrMap }) => {
        if (!enabled) return inner(args as Parameters<tf.KernelFunc>[0]);
        const outer = inKernel;
        inKernel = name;
        const t0 = performance.now();
        let out;
        try {
          out = inner(args as Parameters<tf.KernelFunc>[0]);
        } finally {
          inKernel = outer;
        }
        const t1 = performance.now();
        const ms = t1 - t0;
        const p = currentPhase();
        const x = (args.inputs.x as tf.TensorInfo | undefined)?.shape;
        const flops = isMatMul
          ? matMulFlops(args.inputs, args.attrs)
          : isExternal && x
          ? 2 * x[0] * x[1] * (out as tf.TensorInfo).shape[1]
          : 0;
        add(byKernel, `${p}\t${name}`, ms, flops);
        const shapes = Object.values(args.inputs).map(shapeOf).join(" ");
        add(byShape, `${p}\t${name}\t${shapes}`, ms, flops);
        if (outer === null) {
          bookkeeping.set(phase, (bookkeeping.get(phase) ?? 0) + performance.now() - t1);
        }
        return out;
      }) as tf.KernelFunc,
    });
  }
  return configs.length;
}

/**
 * Counts the backend's reads (`readSync`, `read`: a sync point when JS asks for values, a copy out
 * of the wasm heap when a kernel falls back to JS) and writes that carry values (host → backend
 * copies; a write without values is an output allocation and is not counted).
 */
function installIoCounters(): void {
  const backend = tf.backend() as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (const method of ["readSync", "read", "write"]) {
    const inner = backend[method].bind(backend);
    backend[method] = (...args: unknown[]) => {
      if (!enabled || (method === "write" && args[0] == null)) return inner(...args);
      const t0 = performance.now();
      const out = inner(...args);
      const t1 = performance.now();
      const ms = t1 - t0;
      const values = (method === "write" ? args[0] : out) as
        | { byteLength?: number; length?: number }
        | null;
      const bytes = values?.byteLength ?? 4 * (values?.length ?? 0);
      add(io, `${currentPhase()}\t${method}\t${inKernel ?? "(JS, outside kernels)"}`, ms, bytes);
      if (inKernel === null) {
        bookkeeping.set(phase, (bookkeeping.get(phase) ?? 0) + performance.now() - t1);
      }
      return out;
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const CATEGORIES: [string, RegExp][] = [
  ["matMul (BLAS)", /^(BatchMatMul|_FusedMatMul|ExternalMatMul)$/],
  [
    "copies / layout",
    /^(Transpose|Concat|Slice|SplitV|Cast|Tile|PadV2|GatherV2|GatherNd|StridedSlice|Identity|Reshape|Fill|ZerosLike|OnesLike|Pack|Unpack|OneHot|Range|Reverse)$/,
  ],
  ["softmax / logSumExp", /^(Softmax|LogSoftmax|Exp|Log|Max|Min|ArgMax|TopK|Cumsum)$/],
  ["reductions", /^(Sum|Mean|Prod|All|Any)$/],
  [
    "elementwise",
    /^(Add|AddN|Sub|Multiply|RealDiv|Neg|Sqrt|Rsqrt|Square|SquaredDifference|Sigmoid|Sin|Cos|Maximum|Minimum|ClipByValue|Select|Less|LessEqual|Greater|GreaterEqual|Equal|LogicalAnd|LogicalOr|LogicalNot|Abs|Step|Pow|FloorDiv|Floor|Relu)$/,
  ],
];

function category(kernel: string): string {
  for (const [name, re] of CATEGORIES) if (re.test(kernel)) return name;
  return "other";
}

function fmtMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

function pct(part: number, whole: number): string {
  return whole > 0 ? `${(100 * part / whole).toFixed(1)}%` : "-";
}

function table(header: string[], rows: (string | number)[][]): string {
  const line = (cells: (string | number)[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

function phasesOf(map: Map<string, Stat>): string[] {
  return [...new Set([...map.keys()].map((k) => k.split("\t")[0]))];
}

/** The markdown report of what was recorded since the last reset. */
function report(title: string, topN: number): string {
  const out: string[] = [`### ${title}`, ""];
  const phases = phasesOf(byKernel);
  const kernelMs = (p: string) =>
    [...byKernel].filter(([k]) => k.startsWith(`${p}\t`)).reduce((s, [, v]) => s + v.ms, 0);
  const kernelCount = (p: string) =>
    [...byKernel].filter(([k]) => k.startsWith(`${p}\t`)).reduce((s, [, v]) => s + v.count, 0);
  // Phase table: wall time where known (update's sub-phases share one wall time).
  const walls = [...phaseWall].filter(([p]) => p !== "idle");
  const rows: (string | number)[][] = [];
  for (const [p, wall] of walls) {
    const subs = phases.filter((q) => q === p || q.startsWith(`${p}: `));
    const kms = subs.reduce((s, q) => s + kernelMs(q), 0);
    const n = subs.reduce((s, q) => s + kernelCount(q), 0);
    const own = bookkeeping.get(p) ?? 0;
    const outside = wall - kms - own;
    rows.push([
      p,
      fmtMs(wall),
      fmtMs(kms),
      n,
      fmtMs(own),
      `${fmtMs(outside)} (${pct(outside, wall)})`,
      n > 0 ? (outside * 1000 / n).toFixed(0) : "-",
    ]);
  }
  out.push(
    table([
      "phase",
      "wall ms",
      "in kernels ms",
      "kernel calls",
      "profiler's own ms",
      "outside kernels ms",
      "µs/call",
    ], rows),
    "",
  );
  // Kernels overall, with their split over phases.
  const totals = new Map<string, Stat & { perPhase: Map<string, number> }>();
  for (const [key, s] of byKernel) {
    const [p, kernel] = key.split("\t");
    const t = totals.get(kernel) ?? { count: 0, ms: 0, flops: 0, perPhase: new Map() };
    t.count += s.count;
    t.ms += s.ms;
    t.flops += s.flops;
    t.perPhase.set(p, (t.perPhase.get(p) ?? 0) + s.ms);
    totals.set(kernel, t);
  }
  const all = [...totals.values()].reduce((s, t) => s + t.ms, 0);
  const sorted = [...totals].sort((a, b) => b[1].ms - a[1].ms);
  out.push(
    table(
      ["kernel", "calls", "ms", "share", "µs/call", ...phases],
      sorted.slice(0, topN).map(([kernel, t]) => [
        kernel,
        t.count,
        fmtMs(t.ms),
        pct(t.ms, all),
        (t.ms * 1000 / t.count).toFixed(0),
        ...phases.map((p) => fmtMs(t.perPhase.get(p) ?? 0)),
      ]),
    ),
    "",
  );
  // Categories.
  const cats = new Map<string, { count: number; ms: number }>();
  for (const [kernel, t] of totals) {
    const c = cats.get(category(kernel)) ?? { count: 0, ms: 0 };
    c.count += t.count;
    c.ms += t.ms;
    cats.set(category(kernel), c);
  }
  out.push(
    table(
      ["category", "calls", "ms", "share of kernel time"],
      [...cats].sort((a, b) => b[1].ms - a[1].ms).map((
        [c, v],
      ) => [c, v.count, fmtMs(v.ms), pct(v.ms, all)]),
    ),
    "",
  );
  // MatMul throughput per phase.
  const mm = phases.map((p) => {
    let ms = 0;
    let flops = 0;
    let count = 0;
    for (const [key, s] of byKernel) {
      if (key.startsWith(`${p}\t`) && s.flops > 0) {
        ms += s.ms;
        flops += s.flops;
        count += s.count;
      }
    }
    return [
      p,
      count,
      fmtMs(ms),
      (flops / 1e9).toFixed(1),
      ms > 0 ? (flops / ms / 1e6).toFixed(1) : "-",
    ];
  }).filter((r) => r[1] !== 0);
  out.push(table(["phase", "matMul calls", "ms", "GFLOP", "GFLOP/s"], mm), "");
  // Hottest call shapes.
  const shapes = [...byShape].sort((a, b) => b[1].ms - a[1].ms).slice(0, topN);
  out.push(
    table(
      ["phase", "kernel", "input shapes", "calls", "ms", "share", "µs/call"],
      shapes.map(([key, s]) => {
        const [p, kernel, inputs] = key.split("\t");
        return [
          p,
          kernel,
          inputs,
          s.count,
          fmtMs(s.ms),
          pct(s.ms, all),
          (s.ms * 1000 / s.count).toFixed(0),
        ];
      }),
    ),
    "",
  );
  // Syncs and host copies.
  out.push(
    table(
      ["phase", "backend call", "from", "calls", "MB", "ms"],
      [...io].sort((a, b) => b[1].flops - a[1].flops).map(([key, s]) => {
        const [p, method, from] = key.split("\t");
        return [p, method, from, s.count, (s.flops / 1e6).toFixed(2), fmtMs(s.ms)];
      }),
    ),
    "",
  );
  return out.join("\n");
}

function reset(): void {
  byKernel.clear();
  byShape.clear();
  io.clear();
  phaseWall.clear();
  bookkeeping.clear();
}

// ---------------------------------------------------------------------------------------------
// Workloads

async function demo(options: Options, steps: number): Promise<string> {
  const config = await loadConfig("configs/demo.yaml");
  const { backend, threads, topN } = options;
  const info = await setupBackend({ ...config.runtime, backend, num_threads: threads });
  if (options.patches.length > 0) patchWasmKernels(options.patches);
  const model = await loadModel(config.model.path);
  const tokenizer = await loadTokenizer(config.model.path);
  const adapter = createLora(model, config.lora, { seed: config.training.seed });
  const optimizer = new AdamW([...adapter.variables.values()], config.training);
  const ctx: TrainerContext = { config, model, tokenizer, adapter, optimizer };
  const train =
    (await loadDataset(config.data.train_file, { format: config.data.format })).examples;
  // --time-only: no wrappers at all, for step times without the profiler's own cost.
  const kernels = options.timeOnly ? 0 : installKernelTimers(tf.getBackend());
  if (!options.timeOnly) installIoCounters();
  const lines: string[] = [];
  const runs: { rollout: number; update: number; tokens: number }[] = [];
  for (let step = 0; step <= steps; step++) {
    if (step === 1 && !options.timeOnly) {
      enabled = true; // step 0 warms up (kernel setup, heap growth) and is not recorded
      reset();
    }
    const examples = promptsForStep(train, step, {
      perStep: promptsPerStep(config),
      seed: config.training.seed,
      shuffle: config.data.shuffle,
    }).examples;
    const t0 = performance.now();
    setPhase("rollout: prefill");
    const group = await generatePhase(ctx, examples, {
      seed: step,
      onToken: () => {
        if (phase !== "rollout: decode") setPhase("rollout: decode");
      },
    });
    const t1 = performance.now();
    setPhase("score+advantages");
    const scores = scorePhase(group, config.reward);
    const advantages = await advantagePhase(scores.rewards, config.grpo);
    setPhase("ref (prepare)");
    const prepared: PreparedBatch[] = prepareMicroBatches(ctx, group, advantages);
    setPhase("update");
    await updatePhase(ctx, prepared, { learningRate: 1e-3, dropoutSeed: step });
    setPhase("idle");
    prepared.forEach(disposePrepared);
    const t2 = performance.now();
    const tokens = group.completionIds.reduce((s, c) => s + c.length, 0);
    const line = `step ${step}${step === 0 ? " (warm-up, not recorded)" : ""}: rollout ${
      ((t1 - t0) / 1000).toFixed(2)
    } s + update ${((t2 - t1) / 1000).toFixed(2)} s, ${tokens} completion tokens`;
    console.error(line);
    lines.push(line);
    if (step > 0) runs.push({ rollout: (t1 - t0) / 1000, update: (t2 - t1) / 1000, tokens });
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const summary = `median of ${runs.length}: step ${
    med(runs.map((r) => r.rollout + r.update)).toFixed(2)
  } s, rollout ${med(runs.map((r) => r.rollout)).toFixed(2)} s, update ${
    med(runs.map((r) => r.update)).toFixed(2)
  } s; per completion token: step ${
    med(runs.map((r) => 1000 * (r.rollout + r.update) / r.tokens)).toFixed(3)
  } ms, rollout ${med(runs.map((r) => 1000 * r.rollout / r.tokens)).toFixed(3)} ms, update ${
    med(runs.map((r) => 1000 * r.update / r.tokens)).toFixed(3)
  } ms`;
  const title = `demo GRPO step × ${steps} (${describeBackend(info)}, patches: ${
    options.patches.join(",") || "none"
  }, ${kernels} kernels wrapped). ${summary}. ${lines.join("; ")}`;
  const sections = [options.timeOnly ? `### ${title}\n` : report(title, topN)];
  adapter.dispose();
  optimizer.dispose();
  model.dispose();
  return sections.join("\n");
}

async function large(options: Options, layers: number, parts: string[]): Promise<string> {
  const { threads, topN } = options;
  const { model, backend: info } = await largeModel({
    layers,
    threads,
    torch_dtype: "float32",
    backend: options.backend,
  });
  if (options.patches.length > 0) patchWasmKernels(options.patches);
  installKernelTimers(tf.getBackend());
  installIoCounters();
  const label = `${layers} of 28 layers, ${describeBackend(info)}`;
  const sections: string[] = [];
  // Record from the first timed run on (warm-up runs grow the heap and set kernels up).
  const hooks = {
    onRun(run: number) {
      enabled = run >= 0;
      if (run === 0) reset();
    },
    onPhase: setPhase,
  };
  if (parts.includes("forward")) {
    await largeForward(model, { repeats: 1, warmup: 1, hooks });
    sections.push(report(`1.5B-shaped forward of 4 × 256 tokens, all logits (${label})`, topN));
  }
  if (parts.includes("decode")) {
    await largeDecode(model, { repeats: 1, warmup: 0, hooks });
    sections.push(
      report(`1.5B-shaped prefill 4 × 256 + 16 decode steps × 4 rows (${label})`, topN),
    );
  }
  if (parts.includes("update")) {
    await largeUpdate(model, { repeats: 1, warmup: 1, hooks });
    sections.push(
      report(
        `1.5B-shaped GRPO update, 4 × (64 + 64) tokens, LoRA r16, checkpointing (${label})`,
        topN,
      ),
    );
  }
  model.dispose();
  return sections.join("\n");
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      backend: { type: "string" },
      threads: { type: "string", default: "2" },
      patch: { type: "string", default: "" },
      steps: { type: "string", default: "1" },
      layers: { type: "string", default: "4" },
      parts: { type: "string", default: "forward,decode,update" },
      top: { type: "string", default: "15" },
      "time-only": { type: "boolean", default: false },
    },
  });
  const workload = positionals[0];
  const patches = values.patch === "all"
    ? [...PATCHES]
    : values.patch.split(",").filter((p) => p !== "") as Patch[];
  for (const p of patches) {
    if (!PATCHES.includes(p)) {
      throw new RangeError(`--patch: unknown ${p}; expected ${PATCHES.join(", ")} or all`);
    }
  }
  const options: Options = {
    backend:
      (values.backend ?? (workload === "large" ? "auto" : "wasm")) as Config["runtime"]["backend"],
    threads: Number(values.threads),
    patches,
    topN: Number(values.top),
    timeOnly: values["time-only"],
  };
  let text: string;
  const started = new Date().toISOString();
  const load = Deno.loadavg()[0];
  if (workload === "demo") {
    text = await demo(options, Number(values.steps));
  } else if (workload === "large") {
    text = await large(options, Number(values.layers), values.parts.split(","));
  } else {
    console.error(
      "usage: profile_kernels.ts demo|large [--backend wasm|cpu] [--threads n] [--patch all|...] " +
        "[--steps n] [--layers n] [--parts forward,decode,update] [--top n]",
    );
    Deno.exit(2);
  }
  console.log(
    `<!-- ${started}, load average ${load.toFixed(2)} → ${Deno.loadavg()[0].toFixed(2)} -->\n`,
  );
  console.log(text);
}

await main();
