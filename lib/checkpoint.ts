/**
 * Checkpoints: one directory per saved step, `checkpoint-<step>/` (HF `Trainer`'s layout), with
 * what resuming needs — the trained tensors, the AdamW moments, the trainer state and the
 * effective config — written atomically: a checkpoint directory appears complete or not at all.
 * GRPO saves its LoRA adapter in PEFT format (`adapter_model.safetensors`,
 * `adapter_config.json`), so any checkpoint loads as an adapter; the demo SFT saves the whole
 * model (`model.safetensors`). The randomness of a step is a function of (seed, step), so the
 * state's step and seed are all a resumed run needs to draw what an uninterrupted one draws.
 *
 * @module
 */
import { tf } from "./tf.ts";
import type { Config } from "./config.ts";
import { COMMAND_LINE, formatConfig } from "./config.ts";
import { CheckpointError, ConfigError } from "./errors.ts";
import type { EvalSummary } from "./evaluate.ts";
import type { LoraAdapter } from "./lora.ts";
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
});

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
 * AdamW moments under torch's names (`exp_avg` / `exp_avg_sq`), `trainer_state.json` and the
 * config. Everything is written to `<dir>.tmp-<uuid>` first and renamed into place, replacing
 * an older `dir`.
 *
 * @param dir The checkpoint directory, e.g. {@linkcode checkpointDir}`(outputDir, step)`.
 * @param parts What to save.
 * @example Usage
 * ```ts ignore
 * await saveCheckpoint(checkpointDir(outputDir, 10), { state, adapter, optimizer, config });
 * ```
 */
export async function saveCheckpoint<S>(dir: string, parts: CheckpointParts<S>): Promise<void> {
  const trained = trainedTensors(parts);
  const tmp = `${dir}.tmp-${crypto.randomUUID()}`;
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
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.rename(tmp, dir);
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
 * @returns The saved state, and the moments (for a caller that builds its optimizer later).
 * @throws {CheckpointError} When a file, tensor or moment is missing or has another shape.
 * @example Usage
 * ```ts ignore
 * const { state } = await loadCheckpoint<TrainerState>(dir, { adapter, optimizer });
 * ```
 */
export async function loadCheckpoint<S>(
  dir: string,
  into: { adapter?: LoraAdapter; model?: Qwen2Model; optimizer?: AdamW | null },
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

/**
 * Where a training run writes and what it resumes from: `training.output_dir` (default
 * `results/rl_grpo_<timestamp>`), and for `--resume latest` the newest checkpoint there, for
 * `--resume DIR` that directory (whose parent is the output directory unless one is set).
 *
 * @param training `output_dir` of the `training` config section.
 * @param resume The `--resume` flag: a checkpoint directory, `latest`, or null.
 * @returns The output directory and the checkpoint to resume from (null: a fresh run).
 * @throws {ConfigError} For `--resume latest` without an output directory or checkpoint.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { resolveRun } from "./checkpoint.ts";
 * assert.deepEqual(await resolveRun({ output_dir: null }, "results/run/checkpoint-4/"), {
 *   outputDir: "results/run",
 *   resumeFrom: "results/run/checkpoint-4",
 * });
 * ```
 */
export async function resolveRun(
  training: Pick<Config["training"], "output_dir">,
  resume: string | null | undefined,
): Promise<{ outputDir: string; resumeFrom: string | null }> {
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "_").slice(0, 15);
  const outputDir = training.output_dir ?? `results/rl_grpo_${stamp}`;
  if (resume === "latest") {
    if (training.output_dir === null) {
      throw new ConfigError(
        `Cannot parse ${COMMAND_LINE}: --resume latest needs --output_dir (the run to continue)`,
        { file: COMMAND_LINE, key: "resume" },
      );
    }
    const resumeFrom = await latestCheckpoint(outputDir);
    if (!resumeFrom) {
      throw new ConfigError(
        `Cannot resume: no checkpoint-*/ directory in ${outputDir}`,
        { file: COMMAND_LINE, key: "resume" },
      );
    }
    return { outputDir, resumeFrom };
  }
  if (!resume) return { outputDir, resumeFrom: null };
  const resumeFrom = resume.replace(/\/$/, "");
  return {
    outputDir: training.output_dir ?? resumeFrom.replace(/\/[^/]*$/, ""),
    resumeFrom,
  };
}
