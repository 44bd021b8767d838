/**
 * Our side of `deno task bench` (issue #11), the twin of bench/peer_torch.py: runs workloads and
 * prints one JSON line each on stdout with the same fields the peer prints (`workload`, `seconds`
 * as the median of `--repeats` runs after `--warmup`, `seconds_per_token`, `tokens_per_second`,
 * `peak_rss_bytes`, `runs_seconds`, the load), plus the backend. Progress goes to stderr.
 *
 *   deno run -A bench/workloads.ts --workload grpo_step,rollout [--repeats 5] [--warmup 1]
 *   deno run -A bench/workloads.ts --workload forward_1.5b,decode_1.5b [--layers 28]
 *     [--torch-dtype auto] [--threads 2]
 *
 * Workloads, as the peer's:
 *   grpo_step         (1) `trainStep` of configs/demo.yaml (8 prompts × 8 completions, ≤ 96 new
 *                     tokens, 4 micro-batches of 16); rollout and update timed apart, per token.
 *   rollout           (2) the rollout of (1), completion tokens/s (same runs when both run).
 *   forward_1.5b      (3a) Qwen2.5-Math-1.5B-shaped model, random weights: forward of 4 × 256
 *                     tokens, logits of every position.
 *   decode_1.5b       (3b) same model: 16 decode steps × 4 rows with the KV cache after a 4 × 256
 *                     prefill (timed apart), sampling at temperature 1 as the peer does.
 *   grpo_update_1.5b  (4) same model: one GRPO update on 4 × (64 + 64) tokens, LoRA r16 on
 *                     q/k/v/o, gradient checkpointing: reference log-probs, policy fwd/bwd, AdamW.
 *   verifier          (5) `computeReward` on MATH-500 solutions vs their answers, completions/s.
 *
 * The 1.5B-shaped model is built as the backend wants it (`setupBackend` sized by its weights:
 * on wasm with BLAS its matrices stay outside the heap); `--torch-dtype auto` keeps them BF16.
 * bench/profile_kernels.ts runs the same large workloads under its kernel timers.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  AdamW,
  type BackendInfo,
  createLora,
  describeBackend,
  disposePrepared,
  expectedWeightShapes,
  f32ToBf16,
  forward,
  loadConfig,
  loadDataset,
  loadModel,
  loadTokenizer,
  modelFromArrays,
  parseQwen2Config,
  prepareMicroBatches,
  promptsForStep,
  promptsPerStep,
  rollout,
  setupBackend,
  tf,
  trainStep,
  updatePhase,
  weightBytes,
} from "../lib/mod.ts";
import type { Qwen2Model, RuntimeOptions, TrainerContext, WeightArray } from "../lib/mod.ts";
import {
  cpuSeconds,
  deviceLine,
  loadAverage,
  median,
  peakRssBytes,
  resetPeakRss,
} from "./_measure.ts";
import { throughput, verifierSuites } from "./_verifier.ts";

/** Workload names, as bench/peer_torch.py names them (plus the verifier, which has no peer). */
export const WORKLOADS = [
  "grpo_step",
  "rollout",
  "forward_1.5b",
  "decode_1.5b",
  "grpo_update_1.5b",
  "verifier",
] as const;
export type Workload = (typeof WORKLOADS)[number];

/** The numbering: `--workload 3` is both halves of (3). */
export const WORKLOAD_NUMBERS: Record<string, Workload[]> = {
  "1": ["grpo_step"],
  "2": ["rollout"],
  "3": ["forward_1.5b", "decode_1.5b"],
  "4": ["grpo_update_1.5b"],
  "5": ["verifier"],
};

/** The workloads on the 1.5B-shaped model (minutes each). */
export const LARGE: ReadonlySet<Workload> = new Set([
  "forward_1.5b",
  "decode_1.5b",
  "grpo_update_1.5b",
]);

/** Qwen/Qwen2.5-Math-1.5B `config.json` (the keys we read; bench/peer_torch.py has the same). */
export const QWEN25_MATH_1_5B = {
  model_type: "qwen2",
  vocab_size: 151936,
  hidden_size: 1536,
  intermediate_size: 8960,
  num_hidden_layers: 28,
  num_attention_heads: 12,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  max_position_embeddings: 4096,
  tie_word_embeddings: true,
};

/** Shapes of workloads (3) and (4), as bench/peer_torch.py's. */
export const LARGE_BATCH = 4;
export const LARGE_SEQ = 256;
export const LARGE_DECODE_STEPS = 16;
export const UPDATE_PROMPT = 64;
export const UPDATE_COMPLETION = 64;

/** Callbacks for bench/profile_kernels.ts, which records kernels per run and phase. */
export interface Hooks {
  /** Before each run; negative runs are warm-up. */
  onRun?(run: number): void;
  /** When a run enters a phase ("idle" after it). */
  onPhase?(phase: string): void;
}

/** How many runs and which hooks. */
export interface RunOptions {
  repeats: number;
  warmup: number;
  hooks?: Hooks;
}

/** One JSON line (the peer's fields). */
export type Result = Record<string, unknown> & { workload: Workload; seconds: number };

/** Runs `warmup` untimed then `repeats` timed runs of `body`; returns the timed runs' values. */
async function runs<T>(
  options: RunOptions,
  body: (run: number) => Promise<T>,
): Promise<(T & { cpu: number })[]> {
  const out: (T & { cpu: number })[] = [];
  for (let run = -options.warmup; run < options.repeats; run++) {
    options.hooks?.onRun?.(run);
    const cpu0 = cpuSeconds();
    const value = await body(run);
    if (run >= 0) out.push({ ...value, cpu: cpuSeconds() - cpu0 });
  }
  return out;
}

function log(line: string): void {
  console.error(line);
}

// ---------------------------------------------------------------------------------------------
// (1), (2): the demo GRPO step

/**
 * Workloads (1) and (2): `trainStep` on configs/demo.yaml, as `deno task train` runs it.
 *
 * @returns The JSON lines of `want` (grpo_step, rollout).
 */
export async function demoWorkloads(
  want: Workload[],
  options: RunOptions & { threads: number },
): Promise<{ results: Result[]; backend: BackendInfo }> {
  const config = await loadConfig("configs/demo.yaml", {
    set: [`runtime.num_threads=${options.threads}`],
  });
  const backend = await setupBackend(config.runtime);
  const model = await loadModel(config.model.path);
  const tokenizer = await loadTokenizer(config.model.path);
  const adapter = createLora(model, config.lora, { seed: config.training.seed });
  const optimizer = new AdamW([...adapter.variables.values()], config.training);
  const ctx: TrainerContext = { config, model, tokenizer, adapter, optimizer };
  const train = (await loadDataset(config.data.train_file, { format: config.data.format }))
    .examples;
  resetPeakRss();
  const records = await runs(options, async (run) => {
    const step = run + options.warmup;
    const batch = promptsForStep(train, step, {
      perStep: promptsPerStep(config),
      seed: config.training.seed,
      shuffle: config.data.shuffle,
    });
    const { metrics, group } = await trainStep(ctx, batch.examples, { step });
    const tokens = group.completionIds.reduce((s, c) => s + c.length, 0);
    const r = {
      rollout: metrics.rollout_time,
      update: metrics.step_time - metrics.rollout_time,
      tokens,
      rows: group.completionIds.length,
    };
    log(
      `demo run ${run}: rollout ${r.rollout.toFixed(3)} s, update ${r.update.toFixed(3)} s, ` +
        `${tokens} completion tokens${run < 0 ? " [warm-up]" : ""}`,
    );
    return r;
  });
  const peak = peakRssBytes();
  adapter.dispose();
  optimizer.dispose();
  model.dispose();
  const perToken = (f: (r: (typeof records)[number]) => number) =>
    median(records.map((r) => f(r) / r.tokens));
  const rolloutResult: Result = {
    workload: "rollout",
    seconds: median(records.map((r) => r.rollout)),
    seconds_per_token: perToken((r) => r.rollout),
    tokens_per_second: median(records.map((r) => r.tokens / r.rollout)),
    completion_tokens: median(records.map((r) => r.tokens)),
    mean_length: median(records.map((r) => r.tokens / r.rows)),
    rows: records[0].rows,
    peak_rss_bytes: peak,
    runs_seconds: records.map((r) => r.rollout),
  };
  const results: Result[] = [];
  if (want.includes("grpo_step")) {
    results.push({
      workload: "grpo_step",
      seconds: median(records.map((r) => r.rollout + r.update)),
      seconds_per_token: perToken((r) => r.rollout + r.update),
      tokens_per_second: median(records.map((r) => r.tokens / (r.rollout + r.update))),
      rollout_seconds: rolloutResult.seconds,
      rollout_seconds_per_token: rolloutResult.seconds_per_token,
      update_seconds: median(records.map((r) => r.update)),
      update_seconds_per_token: perToken((r) => r.update),
      cpu_seconds: median(records.map((r) => r.cpu)),
      completion_tokens: rolloutResult.completion_tokens,
      mean_length: rolloutResult.mean_length,
      peak_rss_bytes: peak,
      runs_seconds: records.map((r) => r.rollout + r.update),
      config: "configs/demo.yaml: 8 prompts x 8, T 0.8, <= 96 new tokens, 4 micro-batches of 16, " +
        "dapo + 0.04 k3 KL, LoRA r16 a32 q/k/v/o, AdamW lr 1e-3",
    });
  }
  if (want.includes("rollout")) results.push(rolloutResult);
  return { results, backend };
}

// ---------------------------------------------------------------------------------------------
// (3), (4): the 1.5B-shaped model

/** Uniform values of std 0.02 from a 2^20 xorshift block, repeated (timings ignore the values). */
function fillRandom(data: Float32Array, seed: number): void {
  let x = seed >>> 0 || 1;
  const drawn = Math.min(data.length, 1 << 20);
  for (let i = 0; i < drawn; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data[i] = ((x >>> 0) / 4294967296 - 0.5) * 0.0693; // uniform on ±0.0346: std 0.02
  }
  for (let filled = drawn; filled < data.length; filled *= 2) data.copyWithin(filled, 0, filled);
}

/**
 * Sets up the backend for a Qwen2.5-Math-1.5B-shaped model cut to `layers` decoder layers, and
 * builds it with random weights (RMSNorm weights 1) where the backend keeps weights;
 * `torch_dtype: "auto"` stores its matrices as BF16, as a BF16 checkpoint would load.
 *
 * @returns The model (the caller disposes it) and the backend.
 */
export async function largeModel(
  options: {
    layers: number;
    threads: number;
    torch_dtype: "float32" | "auto";
    /** Default `auto` (wasm with BLAS here). */
    backend?: RuntimeOptions["backend"];
  },
): Promise<{ model: Qwen2Model; backend: BackendInfo }> {
  const config = parseQwen2Config(
    { ...QWEN25_MATH_1_5B, num_hidden_layers: options.layers },
    "Qwen2.5-Math-1.5B config.json",
  );
  const backend = await setupBackend(
    { backend: options.backend ?? "auto", blas: "auto", num_threads: options.threads },
    { weightBytes: weightBytes(config) },
  );
  const arrays = new Map<string, WeightArray>();
  let seed = 1;
  const bf16 = options.torch_dtype === "auto" && backend.weightStorage === "external";
  for (const [name, shape] of expectedWeightShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("norm.weight")) data.fill(1);
    else fillRandom(data, seed++);
    arrays.set(name, bf16 ? { shape, data: f32ToBf16(data), dtype: "BF16" } : { shape, data });
  }
  const model = modelFromArrays(config, arrays, { weightStorage: backend.weightStorage });
  return { model, backend };
}

/** Random prompt ids in [0, V) from a fixed LCG (the same every run). */
function randomIds(rows: number, cols: number, vocab: number, seed: number): number[][] {
  let x = seed;
  const next = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) % vocab;
  return Array.from({ length: rows }, () => Array.from({ length: cols }, next));
}

/** Workload (3a): forward of 4 × 256 tokens, logits of every position. */
export async function largeForward(model: Qwen2Model, options: RunOptions): Promise<Result> {
  const prompts = randomIds(LARGE_BATCH, LARGE_SEQ, model.config.vocab_size, 12345);
  resetPeakRss();
  const records = await runs(options, async (run) => {
    options.hooks?.onPhase?.(`forward ${LARGE_BATCH}x${LARGE_SEQ}`);
    const t0 = performance.now();
    const ids = tf.tensor2d(prompts, [LARGE_BATCH, LARGE_SEQ], "int32");
    const logits = forward(model, ids);
    await logits.data(); // sync point: waits for the whole forward
    const seconds = (performance.now() - t0) / 1000;
    tf.dispose([ids, logits]);
    options.hooks?.onPhase?.("idle");
    log(`forward_1.5b run ${run}: ${seconds.toFixed(2)} s${run < 0 ? " [warm-up]" : ""}`);
    return { seconds };
  });
  const times = records.map((r) => r.seconds);
  const n = LARGE_BATCH * LARGE_SEQ;
  return {
    workload: "forward_1.5b",
    seconds: median(times),
    seconds_per_token: median(times) / n,
    tokens_per_second: n / median(times),
    cpu_seconds: median(records.map((r) => r.cpu)),
    batch: LARGE_BATCH,
    seq: LARGE_SEQ,
    layers: model.config.num_hidden_layers,
    peak_rss_bytes: peakRssBytes(),
    runs_seconds: times,
  };
}

/** Workload (3b): prefill of 4 × 256, then 16 sampled decode steps × 4 rows (KV cache). */
export async function largeDecode(model: Qwen2Model, options: RunOptions): Promise<Result> {
  const prompts = randomIds(LARGE_BATCH, LARGE_SEQ, model.config.vocab_size, 12345);
  const stub = { decode: () => "", eosTokenIds: [] as number[], padTokenId: 0 };
  resetPeakRss();
  const records = await runs(options, async (run) => {
    let t1 = 0;
    let cpu1 = 0;
    options.hooks?.onPhase?.(`prefill ${LARGE_BATCH}x${LARGE_SEQ}`);
    const t0 = performance.now();
    await rollout(model, prompts, {
      tokenizer: stub,
      // Prefill and the first token, then 16 decode steps, each followed by sampling (the peer
      // samples before each of its 16 decode forwards).
      sampling: {
        max_new_tokens: LARGE_DECODE_STEPS + 1,
        temperature: 1,
        top_p: 1,
        top_k: 0,
        stop: [],
        seed: run,
      },
      onToken: (done) => {
        if (done !== 1) return;
        t1 = performance.now();
        cpu1 = cpuSeconds();
        options.hooks?.onPhase?.(`decode ${LARGE_DECODE_STEPS} steps x ${LARGE_BATCH} rows`);
      },
    });
    const t2 = performance.now();
    const decodeCpu = cpuSeconds() - cpu1;
    options.hooks?.onPhase?.("idle");
    const r = { prefill: (t1 - t0) / 1000, decode: (t2 - t1) / 1000, decodeCpu };
    log(
      `decode_1.5b run ${run}: prefill ${r.prefill.toFixed(2)} s, ${LARGE_DECODE_STEPS} decode ` +
        `steps ${r.decode.toFixed(2)} s${run < 0 ? " [warm-up]" : ""}`,
    );
    return r;
  });
  const decode = records.map((r) => r.decode);
  const n = LARGE_BATCH * LARGE_DECODE_STEPS;
  return {
    workload: "decode_1.5b",
    seconds: median(decode),
    seconds_per_token: median(decode) / n,
    seconds_per_step: median(decode) / LARGE_DECODE_STEPS,
    tokens_per_second: n / median(decode),
    prefill_seconds: median(records.map((r) => r.prefill)),
    cpu_seconds: median(records.map((r) => r.cpu)),
    // The decode steps' own CPU time (cpu_seconds has the prefill too): on a shared machine it
    // moves far less with the load than `seconds`.
    decode_cpu_seconds: median(records.map((r) => r.decodeCpu)),
    batch: LARGE_BATCH,
    prompt_tokens: LARGE_SEQ,
    decode_steps: LARGE_DECODE_STEPS,
    layers: model.config.num_hidden_layers,
    peak_rss_bytes: peakRssBytes(),
    runs_seconds: decode,
  };
}

/**
 * Workload (4): one GRPO update of LoRA r16 on q/k/v/o over 4 × (64 + 64) tokens with gradient
 * checkpointing: the reference log-probs (adapter off), then `updatePhase` (policy forward,
 * recompute and backward, clipping, AdamW), configs/demo.yaml's loss settings.
 */
export async function largeUpdate(model: Qwen2Model, options: RunOptions): Promise<Result> {
  const config = await loadConfig("configs/demo.yaml", {
    set: [
      `training.per_device_train_batch_size=${LARGE_BATCH}`,
      "training.gradient_accumulation_steps=1",
      "training.gradient_checkpointing=true",
      `grpo.num_return_sequences=${LARGE_BATCH}`,
    ],
  });
  const adapter = createLora(model, config.lora, { seed: 0 });
  const optimizer = new AdamW([...adapter.variables.values()], config.training);
  const stub = { decode: () => "", eosTokenIds: [] as number[], padTokenId: 0 };
  const ctx = {
    config,
    model,
    tokenizer: stub as unknown as TrainerContext["tokenizer"],
    adapter,
    optimizer,
  };
  const vocab = model.config.vocab_size;
  const rows = {
    promptIds: randomIds(LARGE_BATCH, UPDATE_PROMPT, vocab, 1),
    completionIds: randomIds(LARGE_BATCH, UPDATE_COMPLETION, vocab, 2),
    finishReasons: Array.from({ length: LARGE_BATCH }, () => "length" as const),
  };
  resetPeakRss();
  const records = await runs(options, async (run) => {
    options.hooks?.onPhase?.("ref (prepare)");
    const t0 = performance.now();
    const prepared = prepareMicroBatches(ctx, rows, [1, -1, 0.5, -0.5]);
    // NOTE: prepareMicroBatches queues the reference forward; the update's first read waits for
    // it, so the split below is approximate on async backends (exact on wasm and cpu).
    const t1 = performance.now();
    options.hooks?.onPhase?.("update");
    await updatePhase(ctx, prepared, { learningRate: 1e-3, dropoutSeed: run });
    const t2 = performance.now();
    options.hooks?.onPhase?.("idle");
    prepared.forEach(disposePrepared);
    const r = { ref: (t1 - t0) / 1000, policy: (t2 - t1) / 1000 };
    log(
      `grpo_update_1.5b run ${run}: ref ${r.ref.toFixed(2)} s, policy fwd+bwd+AdamW ` +
        `${r.policy.toFixed(2)} s, rss ${(Deno.memoryUsage().rss / 1e9).toFixed(2)} GB` +
        (run < 0 ? " [warm-up]" : ""),
    );
    return r;
  });
  const peak = peakRssBytes();
  const trainable = [...adapter.variables.values()].reduce((s, v) => s + v.size, 0);
  adapter.dispose();
  optimizer.dispose();
  const total = records.map((r) => r.ref + r.policy);
  const n = LARGE_BATCH * (UPDATE_PROMPT + UPDATE_COMPLETION);
  return {
    workload: "grpo_update_1.5b",
    seconds: median(total),
    seconds_per_token: median(total) / n,
    tokens_per_second: n / median(total),
    ref_seconds: median(records.map((r) => r.ref)),
    cpu_seconds: median(records.map((r) => r.cpu)),
    policy_seconds: median(records.map((r) => r.policy)),
    batch: LARGE_BATCH,
    prompt_tokens: UPDATE_PROMPT,
    completion_tokens: UPDATE_COMPLETION,
    layers: model.config.num_hidden_layers,
    gradient_checkpointing: true,
    trainable_params: trainable,
    peak_rss_bytes: peak,
    runs_seconds: total,
  };
}

// ---------------------------------------------------------------------------------------------
// (5): the verifier

/** Workload (5): `computeReward` throughput on MATH-500 solutions vs their answers. */
export function verifierWorkload(options: RunOptions & { seconds: number }): Result {
  const [name, pairs] = verifierSuites()[0];
  const rates = [];
  for (let run = -options.warmup; run < options.repeats; run++) {
    const { perSecond } = throughput(pairs, run < 0 ? 0.2 : options.seconds);
    if (run >= 0) rates.push(perSecond);
  }
  const rate = median(rates);
  return {
    workload: "verifier",
    seconds: 1 / rate,
    seconds_per_token: null,
    completions_per_second: rate,
    suite: name,
    pairs: pairs.length,
    runs_seconds: rates.map((r) => 1 / r),
  };
}

// ---------------------------------------------------------------------------------------------

/**
 * Parses a `--workload` list: names, the numbers 1-5, or `all`.
 *
 * @throws RangeError naming an unknown entry.
 */
export function parseWorkloads(text: string): Workload[] {
  const out: Workload[] = [];
  for (const part of text.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const names = part === "all" ? [...WORKLOADS] : WORKLOAD_NUMBERS[part] ??
      ((WORKLOADS as readonly string[]).includes(part) ? [part as Workload] : null);
    if (names === null) {
      throw new RangeError(
        `--workload: unknown workload ${part}; expected all, 1-5 or ${WORKLOADS.join(", ")}`,
      );
    }
    for (const n of names) if (!out.includes(n)) out.push(n);
  }
  return out;
}

function positiveInt(name: string, text: string, min = 1): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) {
    throw new RangeError(`--${name}: expected an integer >= ${min}, got ${text}`);
  }
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      workload: { type: "string", default: "1,2,5" },
      repeats: { type: "string", default: "5" },
      warmup: { type: "string", default: "1" },
      threads: { type: "string", default: "2" },
      layers: { type: "string", default: "28" },
      "torch-dtype": { type: "string", default: "float32" },
      seconds: { type: "string", default: "1" },
    },
  });
  const want = parseWorkloads(values.workload);
  const repeats = positiveInt("repeats", values.repeats);
  const warmup = positiveInt("warmup", values.warmup, 0);
  const threads = positiveInt("threads", values.threads);
  const layers = positiveInt("layers", values.layers);
  const torchDtype = values["torch-dtype"];
  if (torchDtype !== "float32" && torchDtype !== "auto") {
    throw new RangeError(`--torch-dtype: expected float32 or auto, got ${torchDtype}`);
  }
  const common = (backend: BackendInfo | null) => ({
    impl: "ours",
    device: deviceLine(),
    backend: backend === null ? "none (plain JS)" : describeBackend(backend),
    tfjs: tf.version.tfjs,
    threads,
    repeats,
    warmup,
  });
  const emit = (result: Result, backend: BackendInfo | null, extra = {}) =>
    console.log(
      JSON.stringify({ ...result, ...common(backend), ...extra, load_average: loadAverage() }),
    );
  log(`bench/workloads.ts: ${want.join(",")}, load ${loadAverage()?.toFixed(2)}`);

  const demo = want.filter((w) => w === "grpo_step" || w === "rollout");
  if (demo.length > 0) {
    const { results, backend } = await demoWorkloads(demo, { repeats, warmup, threads });
    for (const r of results) emit(r, backend);
  }
  const large = want.filter((w) => LARGE.has(w));
  if (large.length > 0) {
    const t0 = performance.now();
    const { model, backend } = await largeModel({ layers, threads, torch_dtype: torchDtype });
    log(
      `1.5B-shaped model, ${layers} layers: built in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s, rss ${(Deno.memoryUsage().rss / 1e9).toFixed(2)} GB; ${describeBackend(backend)}`,
    );
    const extra = { torch_dtype: torchDtype, weight_storage: backend.weightStorage };
    try {
      const options = { repeats, warmup };
      if (large.includes("forward_1.5b")) emit(await largeForward(model, options), backend, extra);
      if (large.includes("decode_1.5b")) emit(await largeDecode(model, options), backend, extra);
      if (large.includes("grpo_update_1.5b")) {
        emit(await largeUpdate(model, options), backend, extra);
      }
    } finally {
      model.dispose();
    }
  }
  if (want.includes("verifier")) {
    const seconds = Number(values.seconds);
    emit(verifierWorkload({ repeats, warmup, seconds }), null, { threads: 1 });
  }
}

if (import.meta.main) await main();
