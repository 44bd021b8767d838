/**
 * Loading a Hugging Face Qwen2 directory (HF `PreTrainedModel.from_pretrained`): `config.json`,
 * then the safetensors weights, each tensor checked by name and shape against the config.
 *
 * @module
 */
import { tf } from "./tf.ts";
import { CheckpointError } from "./errors.ts";
import { isFile, readJson } from "./_fs.ts";
import type { Qwen2Model } from "./model.ts";
import { expectedWeightShapes, parseQwen2Config, type Qwen2Config } from "./qwen2_config.ts";
import { bf16ToF32, f16ToF32, loadCheckpointTensors } from "./safetensors.ts";
import { type ExternalWeight, externalWeight, releaseExternalWeight } from "./_external_weights.ts";

/** The HF files a model directory needs; named in the error when one is missing (seed "Issue 4"). */
export const MODEL_FILES = [
  "config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "model.safetensors (or model.safetensors.index.json with its shards)",
] as const;

/**
 * Where a model's frozen base weights live. `tensors`: every weight is a tfjs tensor (in the wasm
 * heap on wasm). `external`: the 2-D matrices stay in ordinary process memory, outside tfjs, and
 * the wasm and cpu backends read them in place through BLAS (`lib/_external_weights.ts`), so a
 * model bigger than the 4 GiB wasm heap runs on wasm; norms and biases stay tensors. External
 * weights cannot be trained (full fine-tuning needs `tensors`).
 */
export type WeightStorage = "tensors" | "external";

/** One HF tensor as {@linkcode modelFromArrays} takes it. */
export interface WeightArray {
  shape: number[];
  /** float32 values, or a BF16/F16 checkpoint's 16-bit patterns (then `dtype` says which). */
  data: Float32Array | Int32Array | Uint8Array | Uint16Array;
  /** safetensors dtype; needed only for 16-bit `data`. */
  dtype?: string;
}

/** Options of {@linkcode modelFromArrays}. */
export interface ModelFromArraysOptions {
  /** Recorded as `model.dir`. */
  dir?: string | null;
  /** Named in errors. */
  file?: string;
  /** Default `tensors`. */
  weightStorage?: WeightStorage;
}

/**
 * Builds a model from a config and HF-named arrays, checking every name and shape. 16-bit
 * arrays stay 16-bit when `weightStorage` is `external` (widened inside the matMul); otherwise
 * they are widened to float32 here. External float32 arrays are kept, not copied.
 *
 * @param config The model config.
 * @param arrays name → { shape, data }; `lm_head.weight` is ignored when embeddings are tied.
 * @param options `dir` (recorded), `file` (named in errors), `weightStorage`.
 * @returns The model; its `dispose()` frees the weights.
 * @example Usage
 * ```ts
 * import { expectedWeightShapes, parseQwen2Config } from "./qwen2_config.ts";
 * import { modelFromArrays } from "./model_loader.ts";
 * const config = parseQwen2Config({
 *   model_type: "qwen2", vocab_size: 10, hidden_size: 8, intermediate_size: 16,
 *   num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1,
 * }, "config.json");
 * const arrays = new Map([...expectedWeightShapes(config)].map(([name, shape]) =>
 *   [name, { shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) }]));
 * const model = modelFromArrays(config, arrays);
 * model.dispose();
 * ```
 */
export function modelFromArrays(
  config: Qwen2Config,
  arrays: Map<string, WeightArray>,
  options: ModelFromArraysOptions = {},
): Qwen2Model {
  const file = options.file ?? "<memory>";
  const storage = options.weightStorage ?? "tensors";
  const expected = expectedWeightShapes(config);
  for (const [name, shape] of expected) {
    const got = arrays.get(name);
    if (!got) {
      throw new CheckpointError(`Cannot load ${file}: tensor ${name} is missing`, {
        file,
        key: name,
      });
    }
    if (got.shape.length !== shape.length || got.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(
        `Cannot load ${file}: tensor ${name} has shape [${got.shape}], config.json implies [${shape}]`,
        { file, key: name },
      );
    }
    const is16bit = got.data instanceof Uint16Array &&
      (got.dtype === "BF16" || got.dtype === "F16");
    if (!(got.data instanceof Float32Array) && !is16bit) {
      throw new CheckpointError(`Cannot load ${file}: tensor ${name} is not a float tensor`, {
        file,
        key: name,
      });
    }
  }
  for (const name of arrays.keys()) {
    if (!expected.has(name) && !(name === "lm_head.weight" && config.tie_word_embeddings)) {
      throw new CheckpointError(
        `Cannot load ${file}: unexpected tensor ${name} for a qwen2 model with this config.json`,
        { file, key: name },
      );
    }
  }
  const weights = new Map<string, tf.Tensor>();
  const external = new Map<string, ExternalWeight>();
  for (const [name, shape] of expected) {
    const { data, dtype } = arrays.get(name)!;
    if (storage === "external" && shape.length === 2) {
      const kind = data instanceof Uint16Array ? dtype as "BF16" | "F16" : "F32";
      external.set(
        name,
        externalWeight(name, [shape[0], shape[1]], kind, data as Float32Array | Uint16Array),
      );
    } else {
      weights.set(name, tf.tensor(float32(data, dtype), shape, "float32"));
    }
  }
  return {
    config,
    weights,
    external,
    dir: options.dir ?? null,
    dispose() {
      for (const t of weights.values()) t.dispose();
      for (const w of external.values()) releaseExternalWeight(w);
      weights.clear();
      external.clear();
    },
  };
}

/** float32 values of a checked weight array (16-bit patterns widened). */
function float32(data: WeightArray["data"], dtype: string | undefined): Float32Array {
  if (!(data instanceof Uint16Array)) return data as Float32Array;
  const out = new Float32Array(data.length);
  (dtype === "BF16" ? bf16ToF32 : f16ToF32)(data, out, 0);
  return out;
}

/**
 * Reads and checks a model directory's `config.json` (without loading weights), e.g. to size the
 * model before choosing a backend.
 *
 * @param dir The model directory.
 * @returns The checked config.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadModelConfig } from "./model_loader.ts";
 * const config = await loadModelConfig("tests/fixtures/qwen2-tiny");
 * assert.equal(config.model_type, "qwen2");
 * ```
 */
export async function loadModelConfig(dir: string): Promise<Qwen2Config> {
  const configPath = `${dir}/config.json`;
  if (!(await isFile(configPath))) {
    throw new CheckpointError(
      `Cannot load model from ${dir}: ${configPath} not found. A model directory holds the Hugging ` +
        `Face files ${MODEL_FILES.join(", ")}`,
      { file: configPath },
    );
  }
  return parseQwen2Config(await readJson(configPath, { error: CheckpointError }), configPath);
}

/** Options of {@linkcode loadModel}. */
export interface LoadModelOptions {
  /** Default `tensors`; `setupBackend` says which the backend wants (`BackendInfo.weightStorage`). */
  weightStorage?: WeightStorage;
  /**
   * HF `from_pretrained(torch_dtype=...)`: `float32` (default) widens F16/BF16 checkpoints on
   * load; `auto` keeps them in their 16-bit dtype in memory, half the bytes, where the weights are
   * `external` (widened block by block inside each matMul); tensors are always float32.
   */
  torch_dtype?: "float32" | "auto";
}

/**
 * Loads an HF Qwen2 directory: `config.json` and `model.safetensors` (or a sharded
 * `model.safetensors.index.json`); F16/BF16 weights are widened to float32 unless
 * `torch_dtype: "auto"` keeps them 16-bit outside the heap.
 *
 * @param dir The model directory.
 * @param options `weightStorage`, `torch_dtype`.
 * @returns The model. The caller disposes it.
 * @example Usage
 * ```ts ignore
 * import { loadModel } from "./model_loader.ts";
 * const model = await loadModel("tests/fixtures/qwen2-tiny");
 * model.dispose();
 * ```
 */
export async function loadModel(dir: string, options: LoadModelOptions = {}): Promise<Qwen2Model> {
  const config = await loadModelConfig(dir);
  const weightStorage = options.weightStorage ?? "tensors";
  const keep16bit = options.torch_dtype === "auto" && weightStorage === "external";
  const file = await loadCheckpointTensors(dir, { keep16bit });
  return modelFromArrays(config, file.tensors, { dir, file: `${dir} weights`, weightStorage });
}
