/**
 * Everything a training run loads before its first step, in one call: the backend, the model
 * and its tokenizer, the LoRA policy (fresh, or `model.adapter_path`), AdamW over it, and the
 * training and held-out problems. `deno task train` and the notebooks start with
 * {@linkcode loadContext}.
 *
 * @module
 */
import type { BackendInfo } from "./backend.ts";
import { describeBackend, setupBackend } from "./backend.ts";
import type { Config } from "./config.ts";
import { grpoConfigWarnings } from "./config.ts";
import type { Example } from "./data.ts";
import { loadDataset } from "./data.ts";
import { BackendError } from "./errors.ts";
import type { LoraAdapter } from "./lora.ts";
import { createLora, loadLora, parameterCounts, trainableParametersLine } from "./lora.ts";
import type { Qwen2Model } from "./model.ts";
import { loadModel, loadModelConfig } from "./model_loader.ts";
import { weightBytes } from "./qwen2_config.ts";
import { AdamW } from "./optim.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { loadTokenizer } from "./tokenizer.ts";

/** What `train` and `trainStep` work on: the config, the model, its tokenizer, the policy. */
export interface TrainerContext {
  config: Config;
  model: Qwen2Model;
  tokenizer: Tokenizer;
  adapter: LoraAdapter;
  optimizer: AdamW;
}

/** A {@linkcode TrainerContext} with the backend and the data, as {@linkcode loadContext} returns it. */
export interface LoadedContext extends TrainerContext {
  backend: BackendInfo;
  /** Training problems (`data.train_file`) and held-out ones (`eval.eval_file`, or none). */
  data: { train: Example[]; eval: Example[] };
  /** Bad training rows dropped under `data.on_bad_row: skip`. */
  skipped: number;
  /** What loading changed in the config, as lines to print (e.g. the adapter's r adopted). */
  notes: string[];
  /** Frees the adapter, the optimizer's moments and the model. */
  dispose(): void;
}

/**
 * Loads what a run needs from its config: sets up `runtime.backend` (sized by the model's
 * weights, so a model too big for the wasm heap keeps its base weights outside it), then the model,
 * tokenizer, LoRA adapter (`model.adapter_path`, else fresh with `training.seed`), AdamW and the
 * data. An adapter from `model.adapter_path` keeps its own `r`, `lora_alpha`, `lora_dropout` and
 * `target_modules`: the returned config's `lora` section is set to them (so the run's
 * `config.yaml` and checkpoints say what was trained), with a line in `notes` when they differ
 * from the config's.
 *
 * @param config The resolved config.
 * @returns The context. The caller disposes it.
 * @throws {BackendError} When `training.fp16` / `bf16` cannot be honoured on the backend.
 * @example Usage
 * ```ts ignore
 * const run = await loadContext(await loadConfig("configs/demo.yaml"));
 * console.log(describeContext(run).join("\n"));
 * run.dispose();
 * ```
 */
export async function loadContext(config: Config): Promise<LoadedContext> {
  const modelConfig = await loadModelConfig(config.model.path);
  const backend = await setupBackend(config.runtime, { weightBytes: weightBytes(modelConfig) });
  if (config.training.fp16 || config.training.bf16) {
    const which = config.training.fp16 ? "fp16" : "bf16";
    throw new BackendError(
      `training.${which}: true cannot be honoured on the ${backend.name} backend (TensorFlow.js ` +
        `computes in float32 there); set training.${which}: false`,
    );
  }
  const data = config.data;
  const trainSet = await loadDataset(data.train_file, {
    format: data.format,
    max_samples: data.max_samples,
    on_bad_row: data.on_bad_row,
  });
  const evalSet = config.eval.eval_file
    ? (await loadDataset(config.eval.eval_file, {
      format: data.format,
      max_samples: config.eval.eval_max_samples,
      on_bad_row: data.on_bad_row,
    })).examples
    : [];
  // The tokenizer first: it is checked against config.json before gigabytes of weights load.
  const tokenizer = await loadTokenizer(config.model.path, { vocabSize: modelConfig.vocab_size });
  const model = await loadModel(config.model.path, {
    weightStorage: backend.weightStorage,
    torch_dtype: config.model.torch_dtype,
  });
  const adapter = config.model.adapter_path
    ? await loadLora(model, config.model.adapter_path)
    : createLora(model, config.lora, { seed: config.training.seed });
  const notes: string[] = [];
  const adopted = { ...config.lora, ...adapter.options };
  if (JSON.stringify(adopted) !== JSON.stringify(config.lora)) {
    const differs = (Object.keys(adapter.options) as (keyof typeof adapter.options)[])
      .filter((key) => JSON.stringify(adapter.options[key]) !== JSON.stringify(config.lora[key]));
    const show = (lora: typeof adopted) =>
      differs.map((key) => `${key} ${JSON.stringify(lora[key])}`).join(", ");
    notes.push(
      `model.adapter_path ${config.model.adapter_path} has ${show(adopted)}: the run uses them ` +
        `(the config said ${show(config.lora)}; config.yaml records the adapter's)`,
    );
    config = { ...config, lora: adopted };
  }
  const optimizer = new AdamW([...adapter.variables.values()], config.training);
  return {
    config,
    backend,
    model,
    tokenizer,
    adapter,
    optimizer,
    data: { train: trainSet.examples, eval: evalSet },
    skipped: trainSet.skipped,
    notes,
    dispose() {
      adapter.dispose();
      optimizer.dispose();
      model.dispose();
    },
  };
}

/**
 * Warnings about a config that runs but may not do what the user wants.
 *
 * @example Usage
 * ```ts
 * import { defaultConfig } from "./config.ts";
 * import { configWarnings } from "./context.ts";
 * console.assert(configWarnings(defaultConfig()).length === 1); // -0.5 > -1
 * ```
 */
export function configWarnings(config: Config): string[] {
  const out: string[] = [];
  const r = config.reward;
  if (r.reward_functions.includes("accuracy") && r.reward_no_answer > r.reward_wrong) {
    out.push(
      `reward.reward_no_answer (${r.reward_no_answer}) > reward.reward_wrong (${r.reward_wrong}): ` +
        `inside a group a missing \\boxed{} then beats a wrong answer, so the policy can learn to ` +
        `drop the box. Set reward_no_answer: ${r.reward_wrong} to prevent it (see README, "Model not learning").`,
    );
  }
  out.push(...grpoConfigWarnings(config.grpo));
  return out;
}

/**
 * What a loaded context holds, as lines to print: backend (and its notes), trainable
 * parameters, problems.
 *
 * @example Usage
 * ```ts ignore
 * for (const line of describeContext(run)) console.error(line);
 * ```
 */
export function describeContext(
  run:
    & Pick<LoadedContext, "config" | "backend" | "model" | "adapter" | "data" | "skipped">
    & Partial<Pick<LoadedContext, "notes">>,
): string[] {
  const counts = parameterCounts(run.model, run.adapter);
  const { config } = run;
  return [
    describeBackend(run.backend),
    ...run.backend.notes.map((note) => `  ${note}`),
    ...(run.notes ?? []),
    trainableParametersLine(counts.trainable, counts.all),
    ...(run.skipped > 0 ? [`skipped ${run.skipped} bad rows of ${config.data.train_file}`] : []),
    `${run.data.train.length} training problems in ${config.data.train_file}, ` +
    `${run.data.eval.length} held-out` +
    (config.eval.eval_file ? ` from ${config.eval.eval_file}` : ""),
  ];
}
