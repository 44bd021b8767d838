/**
 * Checkpoints: one directory per saved step, `checkpoint-<step>/` (HF `Trainer`'s layout), with
 * what resuming needs — the trained tensors, the AdamW moments, the trainer state and the
 * effective config — written atomically: a checkpoint directory appears complete or not at all.
 * GRPO saves its LoRA adapter in PEFT format (`adapter_model.safetensors`,
 * `adapter_config.json`), so any checkpoint loads as an adapter; the demo SFT saves the whole
 * model (`model.safetensors`). The randomness of a step is a function of (seed, step), so the
 * state's step and seed are all a resumed run needs to draw what an uninterrupted one draws.
 *
 * Each checkpoint also carries a `manifest.json` (every file's size and SHA-256), so a torn or
 * corrupt one is found before it is loaded, and a GRPO checkpoint's state records what it belongs
 * to ({@linkcode RunIdentity}: base model, LoRA settings, data file), so a resume on something
 * else is refused.
 *
 * @module
 */
import { dirname, resolve } from "node:path";
import { tf } from "./tf.ts";
import type { Config } from "./config.ts";
import { COMMAND_LINE, formatConfig } from "./config.ts";
import { CheckpointError, ConfigError, OutputError } from "./errors.ts";
import type { EvalSummary } from "./evaluate.ts";
import type { LoraAdapter, LoraOptions } from "./lora.ts";
import { isOsError, osReason, sha256Hex } from "./_fs.ts";
import { saveLora } from "./lora.ts";
import type { Qwen2Model } from "./model.ts";
import type { AdamW, AdamWState } from "./optim.ts";
import { loadSafetensors, saveSafetensors } from "./safetensors.ts";
import type { TensorData } from "./safetensors.ts";
import { externalValues } from "./_external_weights.ts";

/** The files of a checkpoint directory (besides the PEFT `adapter_config.json`). */
export const CHECKPOINT_FILES = Object.freeze({
  /** The LoRA adapter's tensors, PEFT names. */
  adapter: "adapter_model.safetensors",
  /** Every weight of a fully trained model, HF names. */
  model: "model.safetensors",
  /** AdamW moments `<tensor name>.exp_avg` / `.exp_avg_sq` (torch names); metadata `step`. */
  optimizer: "optimizer.safetensors",
  /** Where the run is (JSON). */
  state: "trainer_state.json",
  /** The effective config. */
  config: "config.yaml",
  /** Size and SHA-256 of every other file (JSON), written last. */
  manifest: "manifest.json",
});

/** `manifest.json`: what each file of a checkpoint holds, to tell a torn or corrupt one. */
export interface CheckpointManifest {
  /** File name → its size in bytes and SHA-256 (hex). */
  files: Record<string, { bytes: number; sha256: string }>;
}

/**
 * What a run's checkpoints belong to, recorded in `trainer_state.json` (`identity`) so that a
 * resume on another base model, LoRA shape or data file is refused instead of training on.
 * Weight files are identified cheaply (multi-GB files are not read whole): size, and the SHA-256
 * of their first and last MiB (the safetensors header with every tensor's name, dtype, shape and
 * offset, and data at both ends).
 */
export interface RunIdentity {
  /** The base model directory; null for a model built in memory. */
  base_model: {
    /** Where it was loaded from (informative; a moved model is the same model). */
    path: string;
    /** SHA-256 of `config.json`. */
    config_sha256: string;
    /** Each `*.safetensors` file (and the shard index) by name. */
    weights: Record<string, { bytes: number; head_tail_sha256: string }>;
  } | null;
  /** The LoRA settings the adapter has. */
  lora: LoraOptions;
  /** The training data file (`data.train_file`); null when it is not a file. */
  data: { train_file: string; bytes: number; sha256: string } | null;
}

/**
 * Byte sizes (files) or row counts (memory) of a run's record files when a checkpoint was saved;
 * a resume truncates the records to them, so each step is logged once.
 */
export type RunMark = Record<string, number>;

/** Where a GRPO run is: `trainer_state.json` (TRL's names where TRL has them). */
export interface TrainerState {
  /** Optimizer steps done. */
  global_step: number;
  /** Completed epochs as a fraction (TRL `epoch`). */
  epoch: number;
  /** Steps the run will take. */
  max_steps: number;
  /** The base seed. */
  seed: number;
  /** Logged records so far (TRL `log_history`). */
  log_history: Record<string, number>[];
  /** The evaluation before training, kept so a resumed run can still report before/after. */
  before?: EvalSummary | null;
  /** Seconds of training so far, over every segment of a resumed run (summary.json's `seconds`). */
  seconds?: number;
  /** What the run trains: a resume with another base model, LoRA shape or data is refused. */
  identity?: RunIdentity;
  /** The run's record files at the save ({@linkcode RunMark}). */
  records?: RunMark;
}

/** What {@linkcode saveCheckpoint} writes: the state, and whichever of the rest is given. */
export interface CheckpointParts<S> {
  /** `trainer_state.json`. */
  state: S;
  /** A trained LoRA adapter: `adapter_model.safetensors` + `adapter_config.json` (PEFT). */
  adapter?: LoraAdapter;
  /** The base model directory recorded in `adapter_config.json`. */
  baseModel?: string | null;
  /** A fully trained model (weights are variables): `model.safetensors`. */
  model?: Qwen2Model;
  /** The optimizer over the adapter's or the model's variables: `optimizer.safetensors`. */
  optimizer?: AdamW | null;
  /** The effective config: `config.yaml`. */
  config?: Config;
}

/** What {@linkcode loadCheckpoint} read besides the tensors it restored. */
export interface LoadedCheckpoint<S> {
  state: S;
  /** The AdamW moments by variable name, or null when the checkpoint has none. */
  moments: AdamWState | null;
}

/**
 * The directory of the checkpoint at `step` (HF `Trainer`'s `checkpoint-<step>`).
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkpointDir } from "./checkpoint.ts";
 * assert.equal(checkpointDir("results/run", 40), "results/run/checkpoint-40");
 * ```
 */
export function checkpointDir(outputDir: string, step: number): string {
  return `${outputDir}/checkpoint-${step}`;
}

/** The trained tensors by checkpoint name: the adapter's PEFT keys, or the model's HF names. */
function trainedTensors(
  parts: { adapter?: LoraAdapter; model?: Qwen2Model },
): Map<string, tf.Tensor> {
  if (parts.adapter && parts.model) {
    throw new TypeError("A checkpoint holds an adapter or a whole model, not both");
  }
  return parts.adapter?.variables ?? parts.model?.weights ?? new Map();
}

/**
 * Every weight of a model as float32 arrays (a read-back: call it only when saving).
 *
 * @returns HF name → `{ dtype, shape, data }`, for `saveSafetensors`.
 * @example Usage
 * ```ts ignore
 * await saveSafetensors("model.safetensors", await modelTensors(model));
 * ```
 */
export async function modelTensors(
  model: Pick<Qwen2Model, "weights" | "external">,
): Promise<Map<string, TensorData>> {
  const out = new Map<string, TensorData>();
  for (const [name, t] of model.weights) {
    // Copy: the cpu backend hands back its own storage.
    out.set(name, { dtype: "F32", shape: t.shape, data: new Float32Array(await t.data()) });
  }
  for (const [name, w] of model.external) {
    out.set(name, { dtype: "F32", shape: [...w.shape], data: externalValues(w) });
  }
  return out;
}

/**
 * Saves a checkpoint directory: the trained tensors (a PEFT adapter or a whole model), the
 * AdamW moments under torch's names (`exp_avg` / `exp_avg_sq`), `trainer_state.json`, the
 * config and `manifest.json`. Everything is written to `<dir>.tmp-<uuid>` first and renamed into
 * place, replacing an older `dir`; on a failure (a full disk) the temporary directory is removed
 * and the checkpoints saved before are untouched.
 *
 * @param dir The checkpoint directory, e.g. {@linkcode checkpointDir}`(outputDir, step)`.
 * @param parts What to save.
 * @throws {OutputError} When a file cannot be written (no space, read-only file system).
 * @example Usage
 * ```ts ignore
 * await saveCheckpoint(checkpointDir(outputDir, 10), { state, adapter, optimizer, config });
 * ```
 */
export async function saveCheckpoint<S>(dir: string, parts: CheckpointParts<S>): Promise<void> {
  const trained = trainedTensors(parts);
  const tmp = `${dir}.tmp-${crypto.randomUUID()}`;
  try {
    await Deno.mkdir(tmp, { recursive: true });
    if (parts.adapter) await saveLora(parts.adapter, tmp, { baseModel: parts.baseModel ?? null });
    if (parts.model) {
      await saveSafetensors(`${tmp}/${CHECKPOINT_FILES.model}`, await modelTensors(parts.model));
    }
    if (parts.optimizer) {
      const opt = await parts.optimizer.state();
      const tensors: Record<string, TensorData> = {};
      for (const [key, v] of trained) {
        const shape = v.shape;
        tensors[`${key}.exp_avg`] = { dtype: "F32", shape, data: opt.exp_avg[optimizerName(v)] };
        tensors[`${key}.exp_avg_sq`] = {
          dtype: "F32",
          shape,
          data: opt.exp_avg_sq[optimizerName(v)],
        };
      }
      await saveSafetensors(`${tmp}/${CHECKPOINT_FILES.optimizer}`, tensors, {
        format: "pt",
        step: String(opt.step),
      });
    }
    await Deno.writeTextFile(
      `${tmp}/${CHECKPOINT_FILES.state}`,
      JSON.stringify(parts.state, null, 2) + "\n",
    );
    if (parts.config) {
      await Deno.writeTextFile(`${tmp}/${CHECKPOINT_FILES.config}`, formatConfig(parts.config));
    }
    await saveManifest(tmp);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.rename(tmp, dir);
  } catch (error) {
    // The original error is the one to report; a failed cleanup must not mask it.
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (!isOsError(error)) throw error;
    throw new OutputError(
      `Cannot save ${dir}: ${osReason(error)}; the checkpoints saved before it are intact`,
      { file: dir, cause: error },
    );
  }
}

/** Writes `manifest.json` of the checkpoint directory `dir`: every file's size and SHA-256. */
async function saveManifest(dir: string): Promise<void> {
  const manifest: CheckpointManifest = { files: {} };
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.isFile) names.push(e.name);
  for (const name of names.sort()) {
    const bytes = await Deno.readFile(`${dir}/${name}`);
    manifest.files[name] = { bytes: bytes.byteLength, sha256: await sha256Hex(bytes) };
  }
  await Deno.writeTextFile(
    `${dir}/${CHECKPOINT_FILES.manifest}`,
    JSON.stringify(manifest, null, 2) + "\n",
  );
}

/**
 * What is wrong with a checkpoint directory, checked against its `manifest.json`: a missing file,
 * another size or another SHA-256 (a torn write, a truncated copy, bit rot). A checkpoint without
 * a manifest (written before manifests existed) is only checked for its `trainer_state.json`.
 *
 * @param dir The checkpoint directory.
 * @returns null when it is whole, else the problem in words (for a warning or an error).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { readCheckpointDamage } from "./checkpoint.ts";
 * assert.equal(await readCheckpointDamage("no/such/checkpoint-1"), "trainer_state.json is missing");
 * ```
 */
export async function readCheckpointDamage(dir: string): Promise<string | null> {
  let manifest: CheckpointManifest;
  try {
    manifest = JSON.parse(await Deno.readTextFile(`${dir}/${CHECKPOINT_FILES.manifest}`));
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      return `${CHECKPOINT_FILES.manifest} cannot be read (${(error as Error).message})`;
    }
    try {
      await Deno.stat(`${dir}/${CHECKPOINT_FILES.state}`);
      return null;
    } catch {
      return `${CHECKPOINT_FILES.state} is missing`;
    }
  }
  for (const [name, want] of Object.entries(manifest.files ?? {})) {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(`${dir}/${name}`);
    } catch {
      return `${name} is missing`;
    }
    if (bytes.byteLength !== want.bytes) {
      return `${name} has ${bytes.byteLength} bytes, its manifest says ${want.bytes}`;
    }
    if (await sha256Hex(bytes) !== want.sha256) {
      return `${name} does not match the SHA-256 in its manifest`;
    }
  }
  return null;
}

/** AdamW keys its moments by tf variable name (a second live adapter's is `<key>:<n>`). */
function optimizerName(t: tf.Tensor): string {
  if (!(t instanceof tf.Variable)) {
    throw new TypeError(`Expected trained tensors to be tf.Variables, got a ${t.constructor.name}`);
  }
  return t.name;
}

/**
 * Restores a checkpoint into live objects: the adapter's or the model's variables, and the
 * optimizer's moments and step when `into.optimizer` is given.
 *
 * @param dir The checkpoint directory.
 * @param into The adapter (GRPO) or the trainable model (SFT) to restore, and the optimizer.
 * @param options `identity`: what this run trains; a checkpoint whose state records another
 *   ({@linkcode RunIdentity}) is refused before anything is restored.
 * @returns The saved state, and the moments (for a caller that builds its optimizer later).
 * @throws {CheckpointError} When a file, tensor or moment is missing or has another shape, or
 *   the checkpoint belongs to another base model, LoRA shape or data file.
 * @example Usage
 * ```ts ignore
 * const { state } = await loadCheckpoint<TrainerState>(dir, { adapter, optimizer });
 * ```
 */
export async function loadCheckpoint<S>(
  dir: string,
  into: { adapter?: LoraAdapter; model?: Qwen2Model; optimizer?: AdamW | null },
  options: { identity?: RunIdentity | null } = {},
): Promise<LoadedCheckpoint<S>> {
  const statePath = `${dir}/${CHECKPOINT_FILES.state}`;
  let state: S;
  try {
    state = JSON.parse(await Deno.readTextFile(statePath));
  } catch (error) {
    throw new CheckpointError(
      `Cannot resume from ${dir}: ${statePath} is missing or not JSON (${
        (error as Error).message
      }). A checkpoint directory holds ${CHECKPOINT_FILES.adapter} (or ${CHECKPOINT_FILES.model}), ` +
        `${CHECKPOINT_FILES.optimizer} and ${CHECKPOINT_FILES.state}`,
      { file: statePath, cause: error },
    );
  }
  const saved = (state as { identity?: RunIdentity } | null)?.identity;
  const mismatch = saved && options.identity ? identityMismatch(saved, options.identity) : null;
  if (mismatch) {
    throw new CheckpointError(`Cannot resume from ${dir}: ${mismatch}`, {
      file: statePath,
      key: "identity",
    });
  }
  const trained = trainedTensors(into);
  if (trained.size > 0) {
    const path = `${dir}/${into.adapter ? CHECKPOINT_FILES.adapter : CHECKPOINT_FILES.model}`;
    const file = await loadSafetensors(path);
    for (const [key, v] of trained) {
      const saved = file.tensors.get(key);
      checkSaved(saved, v, { path, key, what: "tensor" });
      const t = tf.tensor(saved!.data as Float32Array, v.shape, "float32");
      (v as tf.Variable).assign(t);
      t.dispose();
    }
  }
  const moments = await loadMoments(`${dir}/${CHECKPOINT_FILES.optimizer}`, trained);
  if (into.optimizer) {
    if (moments === null) {
      throw new CheckpointError(
        `Cannot resume from ${dir}: it has no ${CHECKPOINT_FILES.optimizer}`,
        { file: `${dir}/${CHECKPOINT_FILES.optimizer}` },
      );
    }
    into.optimizer.loadState(moments);
  }
  return { state, moments };
}

function checkSaved(
  saved: TensorData | undefined,
  v: tf.Tensor,
  where: { path: string; key: string; what: string },
): void {
  const { path, key, what } = where;
  if (!saved) {
    throw new CheckpointError(`Cannot resume from ${path}: no ${what} ${key}`, { file: path, key });
  }
  if (saved.shape.join() !== v.shape.join()) {
    throw new CheckpointError(
      `Cannot resume from ${path}: ${what} ${key} has shape [${saved.shape}], expected [${v.shape}]`,
      { file: path, key },
    );
  }
}

/** The AdamW state in `path`, keyed for the optimizer over `trained`; null without the file. */
async function loadMoments(
  path: string,
  trained: Map<string, tf.Tensor>,
): Promise<AdamWState | null> {
  let file;
  try {
    file = await loadSafetensors(path);
  } catch (error) {
    if (error instanceof CheckpointError && error.cause instanceof Deno.errors.NotFound) {
      return null;
    }
    throw error;
  }
  const exp_avg: Record<string, Float32Array> = {};
  const exp_avg_sq: Record<string, Float32Array> = {};
  for (const [key, v] of trained) {
    const m = file.tensors.get(`${key}.exp_avg`);
    const s = file.tensors.get(`${key}.exp_avg_sq`);
    checkSaved(m, v, { path, key: `${key}.exp_avg`, what: "moment" });
    checkSaved(s, v, { path, key: `${key}.exp_avg_sq`, what: "moment" });
    exp_avg[optimizerName(v)] = m!.data as Float32Array;
    exp_avg_sq[optimizerName(v)] = s!.data as Float32Array;
  }
  return { step: Number(file.metadata.step ?? 0), exp_avg, exp_avg_sq };
}

/**
 * Steps of the `checkpoint-<step>` directories under `outputDir`, ascending (none when the
 * directory does not exist).
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { readCheckpointSteps } from "./checkpoint.ts";
 * assert.deepEqual(await readCheckpointSteps("no/such/run"), []);
 * ```
 */
export async function readCheckpointSteps(outputDir: string): Promise<number[]> {
  const steps: number[] = [];
  try {
    for await (const e of Deno.readDir(outputDir)) {
      const m = /^checkpoint-(\d+)$/.exec(e.name);
      if (e.isDirectory && m) steps.push(Number(m[1]));
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return steps.sort((a, b) => a - b);
}

/**
 * The checkpoint directory with the highest step under `outputDir`, or null.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { latestCheckpoint } from "./checkpoint.ts";
 * assert.equal(await latestCheckpoint("no/such/run"), null);
 * ```
 */
export async function latestCheckpoint(outputDir: string): Promise<string | null> {
  const steps = await readCheckpointSteps(outputDir);
  return steps.length > 0 ? checkpointDir(outputDir, steps[steps.length - 1]) : null;
}

/** Bytes read from each end of a weight file for its {@linkcode RunIdentity} hash. */
const HEAD_TAIL_BYTES = 1 << 20;

/** SHA-256 of the first and last `HEAD_TAIL_BYTES` of a file (all of it when smaller). */
async function readHeadTailSha256(path: string): Promise<{ bytes: number; sha256: string }> {
  const f = await Deno.open(path, { read: true });
  try {
    const size = (await f.stat()).size;
    const ranges = size <= 2 * HEAD_TAIL_BYTES
      ? [[0, size]]
      : [[0, HEAD_TAIL_BYTES], [size - HEAD_TAIL_BYTES, HEAD_TAIL_BYTES]];
    const buffer = new Uint8Array(ranges.reduce((n, [, length]) => n + length, 0));
    let at = 0;
    for (const [start, length] of ranges) {
      await f.seek(start, Deno.SeekMode.Start);
      for (let done = 0; done < length;) {
        const got = await f.read(buffer.subarray(at + done, at + length));
        if (got === null) {
          throw new CheckpointError(`Cannot read ${path}: it shrank`, { file: path });
        }
        done += got;
      }
      at += length;
    }
    return { bytes: size, sha256: await sha256Hex(buffer) };
  } finally {
    f.close();
  }
}

/**
 * Reads what a run trains ({@linkcode RunIdentity}): the base model's `config.json` and weight
 * files (sizes and head/tail hashes, cheap for multi-GB files), the LoRA settings and the
 * training data file (hashed whole).
 *
 * @param source `modelDir` (null: a model built in memory), the adapter's `lora` options and
 *   the `trainFile` (null, or a missing file: no data identity).
 * @returns The identity, for `trainer_state.json` and {@linkcode loadCheckpoint}.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { readRunIdentity } from "./checkpoint.ts";
 * const lora = { lora_r: 4, lora_alpha: 8, lora_dropout: 0, target_modules: ["q_proj"] };
 * const identity = await readRunIdentity({
 *   modelDir: "tests/fixtures/qwen2-tiny", lora, trainFile: "data/gsm8k/test.jsonl" });
 * assert.deepEqual(Object.keys(identity.base_model!.weights), ["model.safetensors"]);
 * ```
 */
export async function readRunIdentity(
  source: { modelDir: string | null; lora: LoraOptions; trainFile: string | null },
): Promise<RunIdentity> {
  let base_model: RunIdentity["base_model"] = null;
  if (source.modelDir !== null) {
    const dir = source.modelDir;
    const names: string[] = [];
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && /\.safetensors(\.index\.json)?$/.test(e.name)) names.push(e.name);
    }
    const weights: Record<string, { bytes: number; head_tail_sha256: string }> = {};
    for (const name of names.sort()) {
      const { bytes, sha256 } = await readHeadTailSha256(`${dir}/${name}`);
      weights[name] = { bytes, head_tail_sha256: sha256 };
    }
    base_model = {
      path: dir,
      config_sha256: await sha256Hex(await Deno.readFile(`${dir}/config.json`)),
      weights,
    };
  }
  let data: RunIdentity["data"] = null;
  if (source.trainFile !== null) {
    try {
      const bytes = await Deno.readFile(source.trainFile);
      data = {
        train_file: source.trainFile,
        bytes: bytes.byteLength,
        sha256: await sha256Hex(bytes),
      };
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  const { lora_r, lora_alpha, lora_dropout, target_modules } = source.lora;
  return { base_model, lora: { lora_r, lora_alpha, lora_dropout, target_modules }, data };
}

/**
 * Why a checkpoint of `saved` cannot be resumed by a run of `current`, or null when it can.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { identityMismatch } from "./checkpoint.ts";
 * const lora = { lora_r: 4, lora_alpha: 8, lora_dropout: 0, target_modules: ["q_proj"] };
 * const run = { base_model: null, lora, data: null };
 * assert.equal(identityMismatch(run, run), null);
 * assert.match(identityMismatch(run, { ...run, lora: { ...lora, lora_r: 16 } })!, /lora_r 4/);
 * ```
 */
export function identityMismatch(saved: RunIdentity, current: RunIdentity): string | null {
  const a = saved.base_model;
  const b = current.base_model;
  if (a && b) {
    const names = [...new Set([...Object.keys(a.weights), ...Object.keys(b.weights)])].sort();
    const differs = a.config_sha256 !== b.config_sha256
      ? "config.json"
      : names.find((n) => JSON.stringify(a.weights[n]) !== JSON.stringify(b.weights[n]));
    if (differs) {
      return `it was trained on another base model (${a.path}; this run loads ${b.path}, whose ` +
        `${differs} differs). Resume with the model it was trained on, or start a new run`;
    }
  }
  for (const key of ["lora_r", "lora_alpha", "target_modules", "lora_dropout"] as const) {
    const [was, is] = [JSON.stringify(saved.lora[key]), JSON.stringify(current.lora[key])];
    if (was !== is) {
      return `it was trained with ${key} ${was}, this run has ${key} ${is}. Set lora.${key}: ` +
        `${was} to resume it, or start a new run`;
    }
  }
  if (saved.data && current.data && saved.data.sha256 !== current.data.sha256) {
    return `it was trained on ${saved.data.train_file} (${saved.data.bytes} bytes), this run ` +
      `reads ${current.data.train_file} (${current.data.bytes} bytes) with other contents. ` +
      `Resume with the same data.train_file, or start a new run`;
  }
  return null;
}

/**
 * What is at a run's output directory: nothing, a file, or a directory and its entries.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { readOutputDir } from "./checkpoint.ts";
 * assert.deepEqual(await readOutputDir("no/such/run"), { kind: "missing", entries: [] });
 * assert.equal((await readOutputDir("deno.json")).kind, "file");
 * ```
 */
export async function readOutputDir(
  dir: string,
): Promise<{ kind: "missing" | "file" | "directory"; entries: string[] }> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (error) {
    // A file on the way (`a.txt/run`): missing here; writeProbe names the file.
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory) {
      return { kind: "missing", entries: [] };
    }
    throw error;
  }
  if (!info.isDirectory) return { kind: "file", entries: [] };
  const entries: string[] = [];
  for await (const e of Deno.readDir(dir)) entries.push(e.name);
  return { kind: "directory", entries: entries.sort(naturalOrder) };
}

/** `checkpoint-2` before `checkpoint-10`. */
function naturalOrder(a: string, b: string): number {
  return a.localeCompare(b, "en", { numeric: true });
}

/**
 * Checks that a run can write into `dir` (or, when it does not exist yet, create it) by creating
 * and removing a probe file there, so a read-only or full output directory fails before a model
 * loads.
 *
 * @throws {OutputError} When it cannot, with the system's reason.
 * @example Usage
 * ```ts
 * import { writeProbe } from "./checkpoint.ts";
 * await writeProbe(await Deno.makeTempDir());
 * ```
 */
export async function writeProbe(dir: string): Promise<void> {
  // The nearest existing directory is where the first mkdir or write will happen.
  let at = dir;
  while (true) {
    try {
      if (!(await Deno.stat(at)).isDirectory) {
        throw new OutputError(`Cannot write to ${dir}: ${at} is a file, not a directory`, {
          file: at,
        });
      }
      break;
    } catch (error) {
      const missing = error instanceof Deno.errors.NotFound ||
        error instanceof Deno.errors.NotADirectory;
      if (!missing || dirname(at) === at) throw error;
      at = dirname(at);
    }
  }
  try {
    const probe = await Deno.makeTempFile({ dir: at, prefix: ".write-probe-" });
    await Deno.remove(probe);
  } catch (error) {
    if (!isOsError(error)) throw error;
    throw new OutputError(
      `Cannot write to ${dir}: ${osReason(error)}; choose another --output_dir`,
      { file: dir, cause: error },
    );
  }
}

/** What {@linkcode resolveRun} decided. */
export interface ResolvedRun {
  /** The run directory. */
  outputDir: string;
  /** The checkpoint to resume from, or null for a fresh run. */
  resumeFrom: string | null;
  /** Things to tell the user, e.g. a damaged newest checkpoint that `latest` skipped. */
  warnings: string[];
}

/**
 * Where a training run writes and what it resumes from: `training.output_dir` (default
 * `results/rl_grpo_<timestamp>`), and for `--resume latest` the newest whole checkpoint there
 * (a torn or corrupt newer one is skipped with a warning), for `--resume DIR` that directory
 * (whose parent is the output directory unless one is set). A fresh run needs an empty or new
 * output directory, unless `overwrite` (the run then clears it); every case checks that the
 * directory can be written.
 *
 * @param training `output_dir` of the `training` config section.
 * @param options `resume`: the `--resume` flag (a checkpoint directory, `latest`, or null);
 *   `overwrite`: the `--overwrite` flag.
 * @returns The output directory, the checkpoint to resume from and warnings.
 * @throws {ConfigError} For an output directory that is a file or holds another run, or
 *   `--resume latest` without an output directory or a whole checkpoint.
 * @throws {CheckpointError} For `--resume DIR` naming a damaged checkpoint.
 * @throws {OutputError} When the output directory cannot be written.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { resolveRun } from "./checkpoint.ts";
 * const dir = await Deno.makeTempDir();
 * assert.deepEqual(await resolveRun({ output_dir: `${dir}/run` }, {}), {
 *   outputDir: `${dir}/run`,
 *   resumeFrom: null,
 *   warnings: [],
 * });
 * ```
 */
export async function resolveRun(
  training: Pick<Config["training"], "output_dir">,
  options: { resume?: string | null; overwrite?: boolean },
): Promise<ResolvedRun> {
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "_").slice(0, 15);
  const { resume, overwrite = false } = options;
  const flagError = (message: string, key: string) =>
    new ConfigError(`Cannot parse ${COMMAND_LINE}: ${message}`, { file: COMMAND_LINE, key });
  if (resume && overwrite) {
    throw flagError(
      "--overwrite replaces a run, --resume continues it: give one of them",
      "resume",
    );
  }
  const warnings: string[] = [];
  const named = resume && resume !== "latest" ? resume.replace(/\/+$/, "") : null;
  const outputDir = training.output_dir ??
    (named !== null ? dirname(named) : `results/rl_grpo_${stamp}`);
  if ((await readOutputDir(outputDir)).kind === "file") {
    throw flagError(`--output_dir ${outputDir} is a file, not a directory`, "output_dir");
  }
  await writeProbe(outputDir);
  let resumeFrom: string | null = named;
  if (named !== null) {
    const damage = await readCheckpointDamage(named);
    if (damage !== null) {
      throw new CheckpointError(`Cannot resume from ${named}: ${damage}`, { file: named });
    }
  } else if (resume === "latest") {
    if (training.output_dir === null) {
      throw flagError("--resume latest needs --output_dir (the run to continue)", "resume");
    }
    const steps = await readCheckpointSteps(outputDir);
    if (steps.length === 0) {
      const started = (await readOutputDir(outputDir)).entries.length > 0;
      throw new ConfigError(
        `Cannot resume: no checkpoint-*/ directory in ${outputDir}` +
          (started
            ? " (it stopped before its first checkpoint; start it again with --overwrite)"
            : ""),
        { file: COMMAND_LINE, key: "resume" },
      );
    }
    for (const step of steps.toReversed()) {
      const dir = checkpointDir(outputDir, step);
      const damage = await readCheckpointDamage(dir);
      if (damage === null) {
        resumeFrom = dir;
        break;
      }
      warnings.push(`${dir} is damaged (${damage}); skipping it`);
    }
    if (resumeFrom === null) {
      throw new ConfigError(
        `Cannot resume: every checkpoint in ${outputDir} is damaged (${warnings.join("; ")})`,
        { file: COMMAND_LINE, key: "resume" },
      );
    }
  }
  const found = await readOutputDir(outputDir);
  // A checkpoint of this run continues it; one from elsewhere starts a new run here.
  const continues = resumeFrom !== null && resolve(dirname(resumeFrom)) === resolve(outputDir);
  if (!continues && !overwrite && found.entries.length > 0) {
    const shown = found.entries.slice(0, 4).join(", ") +
      (found.entries.length > 4 ? `, ... (${found.entries.length} entries)` : "");
    throw new ConfigError(
      `Cannot start a run in ${outputDir}: it already holds ${shown}. Continue that run with ` +
        `--resume latest, replace it with --overwrite, or choose a new --output_dir`,
      { file: COMMAND_LINE, key: "output_dir" },
    );
  }
  return { outputDir, resumeFrom, warnings };
}
