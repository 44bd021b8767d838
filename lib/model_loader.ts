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
import { loadCheckpointTensors } from "./safetensors.ts";

/** The HF files a model directory needs; named in the error when one is missing (seed "Issue 4"). */
export const MODEL_FILES = [
  "config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "model.safetensors (or model.safetensors.index.json with its shards)",
] as const;

/**
 * Builds a model from a config and HF-named float32 arrays, checking every name and shape.
 *
 * @param config The model config.
 * @param arrays name → { shape, data }; `lm_head.weight` is ignored when embeddings are tied.
 * @param options `dir` (recorded), `file` (named in errors).
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
  arrays: Map<string, { shape: number[]; data: Float32Array | Int32Array | Uint8Array }>,
  options: { dir?: string | null; file?: string } = {},
): Qwen2Model {
  const file = options.file ?? "<memory>";
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
    if (!(got.data instanceof Float32Array)) {
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
  for (const [name, shape] of expected) {
    weights.set(name, tf.tensor(arrays.get(name)!.data as Float32Array, shape, "float32"));
  }
  return {
    config,
    weights,
    dir: options.dir ?? null,
    dispose() {
      for (const t of weights.values()) t.dispose();
      weights.clear();
    },
  };
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

/**
 * Loads an HF Qwen2 directory: `config.json` and `model.safetensors` (or a sharded
 * `model.safetensors.index.json`); F16/BF16 weights are widened to float32.
 *
 * @param dir The model directory.
 * @returns The model. The caller disposes it.
 * @example Usage
 * ```ts ignore
 * import { loadModel } from "./model_loader.ts";
 * const model = await loadModel("tests/fixtures/qwen2-tiny");
 * model.dispose();
 * ```
 */
export async function loadModel(dir: string): Promise<Qwen2Model> {
  const config = await loadModelConfig(dir);
  const file = await loadCheckpointTensors(dir);
  const arrays = new Map<
    string,
    { shape: number[]; data: Float32Array | Int32Array | Uint8Array }
  >();
  for (const [name, t] of file.tensors) arrays.set(name, t);
  return modelFromArrays(config, arrays, { dir, file: `${dir} weights` });
}
