/**
 * The Qwen2 model config (HF transformers `models/qwen2/configuration_qwen2.py`): the
 * `config.json` fields we use, their checks and defaults, and what a config implies about the
 * checkpoint (tensor names and shapes, bytes). Pure: {@linkcode loadModelConfig} in
 * `lib/model_loader.ts` reads the file.
 *
 * @module
 */
import { CheckpointError } from "./errors.ts";

/** The `config.json` fields we use, spelled as HF spells them. */
export interface Qwen2Config {
  model_type: string;
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  rms_norm_eps: number;
  rope_theta: number;
  max_position_embeddings: number;
  tie_word_embeddings: boolean;
  hidden_act?: string;
  torch_dtype?: string;
  bos_token_id?: number | null;
  eos_token_id?: number | number[] | null;
  use_sliding_window?: boolean;
  rope_scaling?: unknown;
}

/** head_dim of a config: `hidden_size / num_attention_heads` (Qwen2 has no separate field). */
export function headDim(config: Qwen2Config): number {
  return config.hidden_size / config.num_attention_heads;
}

/**
 * Checks a parsed `config.json` and fills HF defaults (`tie_word_embeddings` false,
 * `rope_theta` 10000, `rms_norm_eps` 1e-6). Rejects what the forward pass does not implement:
 * `rope_scaling`, `use_sliding_window: true`, a `hidden_act` other than `silu`.
 *
 * @param raw The parsed JSON.
 * @param file Named in errors.
 * @returns A checked config.
 * @example Usage
 * ```ts
 * import { parseQwen2Config } from "./qwen2_config.ts";
 * const config = parseQwen2Config({
 *   model_type: "qwen2", vocab_size: 10, hidden_size: 8, intermediate_size: 16,
 *   num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1,
 * }, "config.json");
 * console.assert(config.rope_theta === 10000);
 * ```
 */
export function parseQwen2Config(raw: unknown, file: string): Qwen2Config {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new CheckpointError(`Cannot load ${file}: expected a JSON object`, { file });
  }
  const r = raw as Record<string, unknown>;
  if (r.model_type !== "qwen2") {
    throw new CheckpointError(
      `Cannot load ${file}: model_type: expected "qwen2", got ${JSON.stringify(r.model_type)}`,
      { file, key: "model_type" },
    );
  }
  const positive = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
  ];
  for (const key of positive) {
    const v = r[key];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      throw new CheckpointError(
        `Cannot load ${file}: ${key}: expected a positive integer, got ${JSON.stringify(v)}`,
        { file, key },
      );
    }
  }
  const config: Qwen2Config = {
    ...(r as unknown as Qwen2Config),
    rms_norm_eps: typeof r.rms_norm_eps === "number" ? r.rms_norm_eps : 1e-6,
    rope_theta: typeof r.rope_theta === "number" ? r.rope_theta : 10000,
    max_position_embeddings: typeof r.max_position_embeddings === "number"
      ? r.max_position_embeddings
      : 32768,
    tie_word_embeddings: r.tie_word_embeddings === true,
  };
  if (config.hidden_size % config.num_attention_heads !== 0) {
    throw new CheckpointError(
      `Cannot load ${file}: hidden_size ${config.hidden_size} is not a multiple of num_attention_heads ${config.num_attention_heads}`,
      { file, key: "hidden_size" },
    );
  }
  if (config.num_attention_heads % config.num_key_value_heads !== 0) {
    throw new CheckpointError(
      `Cannot load ${file}: num_attention_heads ${config.num_attention_heads} is not a multiple of num_key_value_heads ${config.num_key_value_heads}`,
      { file, key: "num_key_value_heads" },
    );
  }
  if (r.rope_scaling !== null && r.rope_scaling !== undefined) {
    throw new CheckpointError(
      `Cannot load ${file}: rope_scaling ${
        JSON.stringify(r.rope_scaling)
      } is not supported (only plain RoPE)`,
      { file, key: "rope_scaling" },
    );
  }
  if (r.use_sliding_window === true) {
    throw new CheckpointError(
      `Cannot load ${file}: use_sliding_window: true is not supported`,
      { file, key: "use_sliding_window" },
    );
  }
  // The MLP is SwiGLU with silu (HF Qwen2Config's default hidden_act); any other activation
  // would load and run, silently computing a different model.
  if (r.hidden_act !== undefined && r.hidden_act !== "silu") {
    throw new CheckpointError(
      `Cannot load ${file}: hidden_act: expected "silu" (the only activation implemented), got ${
        JSON.stringify(r.hidden_act)
      }`,
      { file, key: "hidden_act" },
    );
  }
  return config;
}

/**
 * The HF tensor names and shapes a Qwen2 checkpoint of this config holds.
 *
 * @param config The model config.
 * @returns name → shape, in HF's order.
 * @example Usage
 * ```ts
 * import { expectedWeightShapes, parseQwen2Config } from "./qwen2_config.ts";
 * const config = parseQwen2Config({
 *   model_type: "qwen2", vocab_size: 10, hidden_size: 8, intermediate_size: 16,
 *   num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1,
 * }, "config.json");
 * console.assert(expectedWeightShapes(config).get("lm_head.weight")![0] === 10);
 * ```
 */
export function expectedWeightShapes(config: Qwen2Config): Map<string, number[]> {
  const H = config.hidden_size;
  const I = config.intermediate_size;
  const kvDim = config.num_key_value_heads * headDim(config);
  const shapes = new Map<string, number[]>();
  shapes.set("model.embed_tokens.weight", [config.vocab_size, H]);
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    shapes.set(`${p}.input_layernorm.weight`, [H]);
    shapes.set(`${p}.self_attn.q_proj.weight`, [H, H]);
    shapes.set(`${p}.self_attn.q_proj.bias`, [H]);
    shapes.set(`${p}.self_attn.k_proj.weight`, [kvDim, H]);
    shapes.set(`${p}.self_attn.k_proj.bias`, [kvDim]);
    shapes.set(`${p}.self_attn.v_proj.weight`, [kvDim, H]);
    shapes.set(`${p}.self_attn.v_proj.bias`, [kvDim]);
    shapes.set(`${p}.self_attn.o_proj.weight`, [H, H]);
    shapes.set(`${p}.post_attention_layernorm.weight`, [H]);
    shapes.set(`${p}.mlp.gate_proj.weight`, [I, H]);
    shapes.set(`${p}.mlp.up_proj.weight`, [I, H]);
    shapes.set(`${p}.mlp.down_proj.weight`, [H, I]);
  }
  shapes.set("model.norm.weight", [H]);
  if (!config.tie_word_embeddings) shapes.set("lm_head.weight", [config.vocab_size, H]);
  return shapes;
}

/** Bytes of a config's weights as float32 (tied embeddings counted once). */
export function weightBytes(config: Qwen2Config): number {
  let n = 0;
  for (const shape of expectedWeightShapes(config).values()) n += shape.reduce((a, b) => a * b, 1);
  return 4 * n;
}
