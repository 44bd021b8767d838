/**
 * LoRA (Hu et al., arXiv:2106.09685) as PEFT implements it (`peft/tuners/lora/layer.py`,
 * `Linear.forward`): `y = base(x) + lora_B(lora_A(dropout(x))) * (lora_alpha / r)`.
 *
 * Only `lora_A` / `lora_B` are `tf.Variable`s, each named by its PEFT key
 * (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so an adapter saves as a
 * plain safetensors dump that PEFT and vLLM load. The reference model of GRPO is the same base
 * weights with the adapter off (`forward(model, ids, { adapter: null })`): no second copy.
 *
 * @module
 */
import { tf } from "./tf.ts";
import type { Config } from "./config.ts";
import { CheckpointError } from "./errors.ts";
import { isFile, readJson } from "./_fs.ts";
import { DROPOUT_MASK, dropoutMask, hasFusedKernel, LORA_DELTA, loraDelta } from "./_kernels.ts";
import type { CheckpointableAdapter, LinearAdapter, Qwen2Model, RowSuffix } from "./model.ts";
import { countParameters, weightShape } from "./model.ts";
import { externalValues } from "./_external_weights.ts";
import { expectedWeightShapes } from "./qwen2_config.ts";
import { mulberry32 } from "./data.ts";
import { loadSafetensors, saveSafetensors } from "./safetensors.ts";
import type { TensorData } from "./safetensors.ts";

/** The LoRA settings we use: the `lora` section of {@linkcode Config} (seed key names). */
export type LoraOptions = Pick<
  Config["lora"],
  "lora_r" | "lora_alpha" | "lora_dropout" | "target_modules"
>;

/** A LoRA adapter over a model's linear layers. */
export interface LoraAdapter extends CheckpointableAdapter {
  /** r, lora_alpha, lora_dropout, target_modules. */
  options: LoraOptions;
  /** lora_alpha / r. */
  scaling: number;
  /** PEFT key → variable, sorted by key. */
  variables: Map<string, tf.Variable>;
  /** HF module names that carry an adapter, e.g. `model.layers.0.self_attn.q_proj`. */
  modules: string[];
  /** Frees the variables. */
  dispose(): void;
}

/** PEFT key of a module's A or B matrix. */
export function peftKey(module: string, which: "A" | "B"): string {
  return `base_model.model.${module}.lora_${which}.weight`;
}

/**
 * A tf.Variable named by its PEFT key. tfjs variable names are global, so a second adapter
 * alive at the same time gets `<key>:<n>`; the adapter's map is always keyed by the PEFT key.
 */
function namedVariable(initial: tf.Tensor, key: string): tf.Variable {
  const registered = tf.engine().registeredVariables;
  let name = key;
  for (let n = 1; name in registered; n++) name = `${key}:${n}`;
  const v = tf.variable(initial, true, name);
  initial.dispose(); // the variable holds its own reference to the data
  return v;
}

function hashString(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** The HF linear modules of `model` whose last name part is in `targetModules`. */
export function targetModuleNames(
  model: Pick<Qwen2Model, "config">,
  targetModules: string[],
): string[] {
  const all = [...expectedWeightShapes(model.config).keys()]
    .filter((n) => n.endsWith(".weight") && n.includes(".layers."))
    .map((n) => n.slice(0, -".weight".length))
    .filter((n) => !n.endsWith("layernorm"));
  const known = new Set(all.map((n) => n.split(".").pop()!));
  for (const t of targetModules) {
    if (!known.has(t)) {
      throw new RangeError(
        `Unknown LoRA target module "${t}": a Qwen2 model has ${[...known].join(", ")}`,
      );
    }
  }
  return all.filter((n) => targetModules.includes(n.split(".").pop()!));
}

function checkOptions(options: LoraOptions): void {
  if (!Number.isInteger(options.lora_r) || options.lora_r < 1) {
    throw new RangeError(`lora_r should be a positive integer, got ${options.lora_r}`);
  }
  if (!(options.lora_dropout >= 0 && options.lora_dropout < 1)) {
    throw new RangeError(`lora_dropout should be in [0, 1), got ${options.lora_dropout}`);
  }
}

function makeAdapter(
  options: LoraOptions,
  modules: string[],
  variables: Map<string, tf.Variable>,
): LoraAdapter {
  const scaling = options.lora_alpha / options.lora_r;
  const byLayer = new Map<number, { name: string; value: tf.Tensor }[]>();
  for (const [name, v] of variables) {
    const layer = Number(/\.layers\.(\d+)\./.exec(name)![1]);
    if (!byLayer.has(layer)) byLayer.set(layer, []);
    byLayer.get(layer)!.push({ name, value: v });
  }
  const moduleSet = new Set(modules);
  // Dropout only when the forward pass gives a seed (a training micro-batch). Each module derives
  // its mask from (seed, module name), so a recomputation (gradient checkpointing) draws the
  // same mask.
  function deltaWith(
    read: (key: string) => tf.Tensor,
    name: string,
    x: tf.Tensor2D,
    dropoutSeed: number | null | undefined,
    rows: RowSuffix | null | undefined,
  ): tf.Tensor2D | null {
    if (!moduleSet.has(name)) return null;
    const a = read(peftKey(name, "A")) as tf.Tensor2D; // [r, in]
    const b = read(peftKey(name, "B")) as tf.Tensor2D; // [out, r]
    // PEFT: lora_B(lora_A(dropout(x))) * scaling.
    const product = (input: tf.Tensor2D) => {
      const low = tf.matMul(input, a, false, true); // [N, r]
      return tf.mul(tf.matMul(low, b, false, true), scaling) as tf.Tensor2D; // [N, out]
    };
    let mask: tf.Tensor | null = null; // the dropout multiplier, [N, in]
    if (dropoutSeed !== null && dropoutSeed !== undefined && options.lora_dropout > 0) {
      const seed = (dropoutSeed * 1000003 + hashString(name)) % 2147483647;
      if (rows) {
        // x holds the last positions of each row only: draw the whole batch's mask and keep
        // their rows, so that each position gets the mask a full pass gives it.
        const [n, width] = x.shape;
        const kept = rows.length - rows.start;
        const batch = n / kept;
        const full = [batch * rows.length, width];
        mask = (hasFusedKernel(DROPOUT_MASK)
          ? dropoutMask(full, options.lora_dropout, seed)
          : tf.dropout(tf.ones(full), options.lora_dropout, undefined, seed))
          .reshape([batch, rows.length, width]) // [B, T, in]
          .slice([0, rows.start, 0], [batch, kept, width]).reshape([n, width]); // [N, in]
      } else if (hasFusedKernel(DROPOUT_MASK)) {
        // The same mask as tf.dropout, drawn without its per-value closure (lib/_kernels.ts).
        mask = dropoutMask(x.shape, options.lora_dropout, seed);
      } else {
        return product(tf.dropout(x, options.lora_dropout, undefined, seed) as tf.Tensor2D);
      }
    }
    const input = mask === null ? x : tf.mul(x, mask) as tf.Tensor2D; // [N, in]
    // One kernel forward and one backward where there is a BLAS (lib/_kernels.ts).
    return hasFusedKernel(LORA_DELTA) ? loraDelta(input, a, b, scaling) : product(input);
  }
  const adapter: LoraAdapter = {
    options,
    scaling,
    variables,
    modules,
    delta(name, x, dropoutSeed, rows) {
      return deltaWith((k) => variables.get(k)!, name, x, dropoutSeed, rows);
    },
    variablesOfLayer(layer) {
      return byLayer.get(layer) ?? [];
    },
    withTensors(replacements): LinearAdapter {
      return {
        delta: (name, x, dropoutSeed, rows) =>
          deltaWith((k) => replacements.get(k) ?? variables.get(k)!, name, x, dropoutSeed, rows),
      };
    },
    dispose() {
      for (const v of variables.values()) v.dispose();
      variables.clear();
    },
  };
  return adapter;
}

/**
 * Adds a fresh LoRA adapter: A Kaiming-uniform (`a = sqrt(5)`, so bound `1/sqrt(in)`, as
 * `nn.Linear` and PEFT's `reset_lora_parameters`), B zero, so the adapted model starts equal
 * to the base.
 *
 * @param model The base model (not modified).
 * @param options r, lora_alpha, lora_dropout, target_modules.
 * @param init `seed` of the initialisation.
 * @returns The adapter. The caller disposes it.
 * @example Usage
 * ```ts ignore
 * const lora = createLora(model, config.lora, { seed: 42 });
 * ```
 */
export function createLora(
  model: Qwen2Model,
  options: LoraOptions,
  init: { seed: number } = { seed: 0 },
): LoraAdapter {
  checkOptions(options);
  const modules = targetModuleNames(model, options.target_modules);
  const random = mulberry32(init.seed);
  const variables = new Map<string, tf.Variable>();
  const r = options.lora_r;
  for (const m of [...modules].sort()) {
    const [out, inp] = weightShape(model, `${m}.weight`);
    const bound = 1 / Math.sqrt(inp);
    const a = new Float32Array(r * inp);
    for (let i = 0; i < a.length; i++) a[i] = (2 * random() - 1) * bound;
    variables.set(peftKey(m, "A"), namedVariable(tf.tensor2d(a, [r, inp]), peftKey(m, "A")));
    variables.set(
      peftKey(m, "B"),
      namedVariable(tf.zeros([out, r]), peftKey(m, "B")),
    );
  }
  return makeAdapter(options, modules, sortMap(variables));
}

function sortMap<V>(m: Map<string, V>): Map<string, V> {
  return new Map([...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * PEFT's `print_trainable_parameters` line (PEFT >= 0.11 format).
 *
 * @example Usage
 * ```ts
 * import { trainableParametersLine } from "./lora.ts";
 * console.assert(trainableParametersLine(1792, 42528) ===
 *   "trainable params: 1,792 || all params: 42,528 || trainable%: 4.2137");
 * ```
 */
export function trainableParametersLine(trainable: number, all: number): string {
  const fmt = (n: number) => n.toLocaleString("en-US");
  return `trainable params: ${fmt(trainable)} || all params: ${fmt(all)} || trainable%: ${
    (100 * trainable / all).toFixed(4)
  }`;
}

/** Trainable (adapter) and all (base + adapter) parameter counts, as PEFT counts them. */
export function parameterCounts(
  model: Pick<Qwen2Model, "weights" | "external">,
  adapter: Pick<LoraAdapter, "variables">,
): { trainable: number; all: number } {
  let trainable = 0;
  for (const v of adapter.variables.values()) trainable += v.size;
  return { trainable, all: countParameters(model) + trainable };
}

/**
 * Parameter counts of a LoRA on a config, without building anything (for models too big to
 * load, e.g. Qwen2.5-Math-1.5B: 4,358,144 trainable of 1,548,072,448 with r 16 on q/k/v/o).
 *
 * @example Usage
 * ```ts
 * import { parseQwen2Config } from "./qwen2_config.ts";
 * import { countLoraParameters } from "./lora.ts";
 * const config = parseQwen2Config({
 *   model_type: "qwen2", vocab_size: 10, hidden_size: 8, intermediate_size: 16,
 *   num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1,
 * }, "config.json");
 * const counts = countLoraParameters(config, { lora_r: 2, target_modules: ["q_proj"] });
 * console.assert(counts.trainable === 2 * 8 + 8 * 2);
 * ```
 */
export function countLoraParameters(
  config: Qwen2Model["config"],
  options: Pick<LoraOptions, "lora_r" | "target_modules">,
): { trainable: number; all: number } {
  const shapes = expectedWeightShapes(config);
  let base = 0;
  for (const shape of shapes.values()) base += shape.reduce((a, b) => a * b, 1);
  let trainable = 0;
  for (const m of targetModuleNames({ config }, options.target_modules)) {
    const [out, inp] = shapes.get(`${m}.weight`)!;
    trainable += options.lora_r * (out + inp);
  }
  return { trainable, all: base + trainable };
}

/** The `adapter_config.json` PEFT writes for these options. */
export function adapterConfigJson(
  options: LoraOptions,
  baseModel: string | null,
): Record<string, unknown> {
  return {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: baseModel,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: options.lora_alpha,
    lora_dropout: options.lora_dropout,
    megatron_config: null,
    megatron_core: "megatron.core",
    modules_to_save: null,
    peft_type: "LORA",
    r: options.lora_r,
    rank_pattern: {},
    revision: null,
    target_modules: options.target_modules,
    task_type: "CAUSAL_LM",
    use_dora: false,
    use_rslora: false,
  };
}

/**
 * Saves an adapter in PEFT format: `adapter_config.json` and `adapter_model.safetensors`
 * (atomic writes).
 *
 * @example Usage
 * ```ts ignore
 * await saveLora(lora, "results/run/checkpoint-10", { baseModel: "data/demo/sft-model" });
 * ```
 */
export async function saveLora(
  adapter: LoraAdapter,
  dir: string,
  options: { baseModel?: string | null } = {},
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const tensors: Record<string, TensorData> = {};
  for (const [name, v] of adapter.variables) {
    tensors[name] = { dtype: "F32", shape: v.shape, data: await v.data() as Float32Array };
  }
  await saveSafetensors(`${dir}/adapter_model.safetensors`, tensors);
  const json = JSON.stringify(
    adapterConfigJson(adapter.options, options.baseModel ?? null),
    null,
    2,
  );
  const tmp = `${dir}/adapter_config.json.tmp-${crypto.randomUUID()}`;
  await Deno.writeTextFile(tmp, json + "\n");
  await Deno.rename(tmp, `${dir}/adapter_config.json`);
}

/**
 * Loads a PEFT LoRA adapter directory onto `model` (its tensors become variables). What PEFT
 * would read differently from us is refused, not ignored: DoRA, rsLoRA, `fan_in_fan_out`,
 * per-module `alpha_pattern` / `rank_pattern`, a missing `r` or `lora_alpha` (the scaling
 * `lora_alpha / r` would be NaN), and tensors of modules that `target_modules` does not list
 * (they would be dropped silently).
 *
 * @param model The base model.
 * @param dir The adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
 * @returns The adapter. The caller disposes it.
 * @throws {CheckpointError} A missing file, a setting above, or a tensor missing or of another
 *   shape; the message names the file and key.
 * @example Usage
 * ```ts ignore
 * const lora = await loadLora(model, "tests/fixtures/qwen2-tiny/adapter");
 * ```
 */
export async function loadLora(model: Qwen2Model, dir: string): Promise<LoraAdapter> {
  const configPath = `${dir}/adapter_config.json`;
  const raw = await readJson(configPath, {
    error: CheckpointError,
    notFound: "file not found. An adapter directory holds adapter_config.json and " +
      "adapter_model.safetensors (PEFT format)",
  }) as Record<string, unknown>;
  const refuse = (key: string, problem: string) =>
    new CheckpointError(`Cannot load ${configPath}: ${key}: ${problem}`, { file: configPath, key });
  if (raw.peft_type !== "LORA") throw refuse("peft_type", `expected "LORA"`);
  for (const key of ["use_dora", "use_rslora", "fan_in_fan_out"]) {
    if (raw[key] === true) throw refuse(key, "true is not supported");
  }
  for (const key of ["alpha_pattern", "rank_pattern"]) {
    const pattern = raw[key];
    if (pattern != null && (typeof pattern !== "object" || Object.keys(pattern).length > 0)) {
      throw refuse(
        key,
        `per-module ranks and alphas are not supported, got ${JSON.stringify(pattern)} ` +
          `(every module must use r and lora_alpha)`,
      );
    }
  }
  if (!Number.isInteger(raw.r) || (raw.r as number) < 1) {
    throw refuse("r", `expected a positive integer, got ${JSON.stringify(raw.r)}`);
  }
  if (typeof raw.lora_alpha !== "number" || !Number.isFinite(raw.lora_alpha)) {
    throw refuse(
      "lora_alpha",
      `expected a number (the scaling is lora_alpha / r), got ${JSON.stringify(raw.lora_alpha)}`,
    );
  }
  const targets = Array.isArray(raw.target_modules)
    ? raw.target_modules as string[]
    : String(raw.target_modules).split(",");
  const options: LoraOptions = {
    lora_r: raw.r as number,
    lora_alpha: raw.lora_alpha,
    lora_dropout: Number(raw.lora_dropout ?? 0),
    target_modules: targets,
  };
  let modules: string[];
  try {
    checkOptions(options);
    modules = targetModuleNames(model, targets);
  } catch (error) {
    throw new CheckpointError(`Cannot load ${configPath}: ${(error as Error).message}`, {
      file: configPath,
      cause: error,
    });
  }
  const weightsPath = `${dir}/adapter_model.safetensors`;
  const file = await loadSafetensors(weightsPath);
  const unlisted = [...file.tensors.keys()].filter((key) =>
    !modules.some((m) => key === peftKey(m, "A") || key === peftKey(m, "B"))
  );
  if (unlisted.length > 0) {
    // e.g. base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight → gate_proj
    const names = [...new Set(unlisted.map((key) => key.split(".").at(-3)))];
    throw new CheckpointError(
      `Cannot load ${weightsPath}: it holds ${unlisted.length} tensors of modules that ` +
        `${configPath}'s target_modules [${targets.join(", ")}] does not list: ` +
        `${names.join(", ")} (e.g. ${unlisted[0]}); add them to target_modules or remove them`,
      { file: weightsPath, key: unlisted[0] },
    );
  }
  const variables = new Map<string, tf.Variable>();
  try {
    for (const m of modules) {
      const [out, inp] = weightShape(model, `${m}.weight`);
      for (
        const [which, shape] of [["A", [options.lora_r, inp]], ["B", [
          out,
          options.lora_r,
        ]]] as const
      ) {
        const key = peftKey(m, which);
        const t = file.tensors.get(key);
        if (!t) {
          throw new CheckpointError(`Cannot load ${weightsPath}: tensor ${key} is missing`, {
            file: weightsPath,
            key,
          });
        }
        if (t.shape.join() !== shape.join()) {
          throw new CheckpointError(
            `Cannot load ${weightsPath}: tensor ${key} has shape [${t.shape}], expected [${shape}]`,
            { file: weightsPath, key },
          );
        }
        variables.set(key, namedVariable(tf.tensor(t.data as Float32Array, [...shape]), key));
      }
    }
  } catch (error) {
    for (const v of variables.values()) v.dispose();
    throw error;
  }
  return makeAdapter(options, modules, sortMap(variables));
}

/**
 * Merged weights `W + scaling * B @ A` for every adapted module, with the other base weights
 * (PEFT `merge_and_unload`). Returned as new float32 arrays; the model is not modified.
 *
 * @example Usage
 * ```ts ignore
 * const merged = await mergedWeights(model, lora);
 * ```
 */
export async function mergedWeights(
  model: Qwen2Model,
  adapter: LoraAdapter,
): Promise<Map<string, { dtype: "F32"; shape: number[]; data: Float32Array }>> {
  const out = new Map<string, { dtype: "F32"; shape: number[]; data: Float32Array }>();
  // Checkpoint order: tensors and external matrices interleave by name as the config lists them.
  const names = [...expectedWeightShapes(model.config).keys()];
  for (const name of names) {
    const module = name.endsWith(".weight") ? name.slice(0, -".weight".length) : null;
    const delta = module && adapter.modules.includes(module)
      ? tf.tidy(() =>
        tf.mul(
          tf.matMul(
            adapter.variables.get(peftKey(module, "B"))!,
            adapter.variables.get(peftKey(module, "A"))!,
          ),
          adapter.scaling,
        )
      ) // [out, in]
      : null;
    const external = model.external.get(name);
    let data: Float32Array;
    if (external) {
      data = externalValues(external); // a copy, widened when 16-bit
      if (delta) {
        const d = await delta.data() as Float32Array;
        for (let i = 0; i < data.length; i++) data[i] += d[i];
      }
    } else {
      const w = model.weights.get(name)!;
      const t = delta ? tf.add(w, delta) : w;
      data = await t.data() as Float32Array;
      if (t !== w) t.dispose();
    }
    delta?.dispose();
    out.set(name, { dtype: "F32", shape: weightShape(model, name), data });
  }
  return out;
}

/**
 * Writes a full HF checkpoint with the adapter merged in: `config.json`, `model.safetensors`,
 * and the tokenizer/generation files copied from the base directory when present.
 *
 * @example Usage
 * ```ts ignore
 * await saveMerged(model, lora, "results/run/merged");
 * ```
 */
export async function saveMerged(
  model: Qwen2Model,
  adapter: LoraAdapter,
  dir: string,
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const weights = await mergedWeights(model, adapter);
  await saveSafetensors(`${dir}/model.safetensors`, weights, { format: "pt" });
  const config = { ...model.config, torch_dtype: "float32" };
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config, null, 2) + "\n");
  if (model.dir) {
    for (
      const f of [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
      ]
    ) {
      if (await isFile(`${model.dir}/${f}`)) {
        await Deno.copyFile(`${model.dir}/${f}`, `${dir}/${f}`);
      }
    }
  }
}
