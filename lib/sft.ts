/**
 * Supervised fine-tuning (SFT) of the small demo model: a seeded Qwen2 init, the char tokenizer,
 * prompt-masked causal-LM batches and one AdamW step. The demo's "SFT checkpoint"
 * (`data/demo/sft-model`, built by `deno task sft`) comes from these functions.
 *
 * Training text per example is the plain prompt plus the solution and EOS:
 * `Question: <q>\nAnswer:` + ` <solution><|im_end|>`; the loss covers the completion tokens only
 * (TRL `SFTTrainer` with `completion_only_loss`).
 *
 * @module
 */
import { tf } from "./tf.ts";
import { mulberry32, shuffle } from "./data.ts";
import type { Qwen2Model } from "./model.ts";
import { forward } from "./model.ts";
import { modelFromArrays } from "./model_loader.ts";
import { expectedWeightShapes, type Qwen2Config } from "./qwen2_config.ts";
import type { AdamW } from "./optim.ts";
import { clipGradNorm, globalGradNorm } from "./optim.ts";
import { SYNTHETIC_CHARS } from "./synthetic.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { buildCharTokenizer, PLAIN_PROMPT_TEMPLATE } from "./tokenizer.ts";

/** Special tokens of the demo tokenizer, ids after the characters in this order. */
export const SFT_SPECIAL_TOKENS: readonly string[] = Object.freeze([
  "<|endoftext|>",
  "<|im_start|>",
  "<|im_end|>",
]);

/** A minimal ChatML template (Qwen2's, without tools), for `prompt_format: chat`. */
export const SFT_CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/**
 * The demo tokenizer's characters: every character the synthetic generator emits plus those of
 * the plain prompt template (`Q`, `:` and the newline), sorted by code point.
 */
export const SFT_CHARS: string = [
  ...new Set([...SYNTHETIC_CHARS, ...PLAIN_PROMPT_TEMPLATE.replace("{question}", "")]),
].sort().join("");

/**
 * The demo char tokenizer's files (`tokenizer.json`, `tokenizer_config.json`): {@linkcode SFT_CHARS}
 * then {@linkcode SFT_SPECIAL_TOKENS}; eos `<|im_end|>`, pad `<|endoftext|>`, left padding.
 *
 * @returns The two JSON objects for `saveTokenizer`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { sftTokenizerFiles } from "./sft.ts";
 * const { tokenizerConfigJson } = sftTokenizerFiles();
 * assert.equal(tokenizerConfigJson.pad_token, "<|endoftext|>");
 * ```
 */
export function sftTokenizerFiles(): {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfigJson: Record<string, unknown>;
} {
  return buildCharTokenizer({
    chars: SFT_CHARS,
    specialTokens: [...SFT_SPECIAL_TOKENS],
    eosToken: "<|im_end|>",
    padToken: "<|endoftext|>",
    chatTemplate: SFT_CHAT_TEMPLATE,
    modelMaxLength: 512,
  });
}

/** Size knobs of {@linkcode demoModelConfig}; defaults give the ~565k-parameter demo model. */
export interface DemoModelSize {
  hidden_size?: number;
  intermediate_size?: number;
  num_hidden_layers?: number;
  num_attention_heads?: number;
  num_key_value_heads?: number;
}

/**
 * The demo model's `config.json` fields: Qwen2, hidden 128, 3 layers, 4 query / 2 KV heads
 * (head_dim 32), MLP 352, tied embeddings, RoPE theta 10000, 512 positions.
 *
 * @param vocabSize The tokenizer's vocabulary size (specials included).
 * @param tokenIds eos and pad ids (HF puts eos in `eos_token_id`, and `bos_token_id` null here).
 * @param size Optional smaller/larger sizes (tests use a tiny one).
 * @returns The config.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { demoModelConfig } from "./sft.ts";
 * const config = demoModelConfig(64, { eos: 63, pad: 61 });
 * assert.equal(config.hidden_size / config.num_attention_heads, 32);
 * ```
 */
export function demoModelConfig(
  vocabSize: number,
  tokenIds: { eos: number; pad: number },
  size: DemoModelSize = {},
): Qwen2Config & { pad_token_id: number; architectures: string[]; initializer_range: number } {
  return {
    architectures: ["Qwen2ForCausalLM"],
    model_type: "qwen2",
    vocab_size: vocabSize,
    hidden_size: size.hidden_size ?? 128,
    intermediate_size: size.intermediate_size ?? 352,
    num_hidden_layers: size.num_hidden_layers ?? 3,
    num_attention_heads: size.num_attention_heads ?? 4,
    num_key_value_heads: size.num_key_value_heads ?? 2,
    hidden_act: "silu",
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    max_position_embeddings: 512,
    tie_word_embeddings: true,
    use_sliding_window: false,
    torch_dtype: "float32",
    initializer_range: 0.02,
    bos_token_id: null,
    eos_token_id: tokenIds.eos,
    pad_token_id: tokenIds.pad,
  };
}

/**
 * Seeded weights as HF `Qwen2PreTrainedModel._init_weights` makes them: linear and embedding
 * weights ~ N(0, 0.02²), biases 0, RMSNorm weights 1 (Box-Muller over {@linkcode mulberry32}).
 *
 * @param config The model config.
 * @param options `seed` and `std` (default 0.02, HF `initializer_range`).
 * @returns HF name → { shape, data }, for `modelFromArrays`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { demoModelConfig, initWeights } from "./sft.ts";
 * const arrays = initWeights(demoModelConfig(8, { eos: 7, pad: 6 }), { seed: 1 });
 * assert.equal(arrays.get("model.norm.weight")!.data[0], 1);
 * ```
 */
export function initWeights(
  config: Qwen2Config,
  options: { seed: number; std?: number },
): Map<string, { shape: number[]; data: Float32Array }> {
  const std = options.std ?? 0.02;
  const random = mulberry32(options.seed);
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of expectedWeightShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("norm.weight")) data.fill(1);
    else if (!name.endsWith(".bias")) {
      for (let i = 0; i < data.length; i += 2) {
        // Box-Muller: two independent normals per pair of uniforms; 1 - u keeps log() finite.
        const r = Math.sqrt(-2 * Math.log(1 - random())) * std;
        const theta = 2 * Math.PI * random();
        data[i] = r * Math.cos(theta);
        if (i + 1 < data.length) data[i + 1] = r * Math.sin(theta);
      }
    }
    out.set(name, { shape, data });
  }
  return out;
}

/**
 * A model whose weights are `tf.Variable`s named by their HF keys, for full fine-tuning.
 * NOTE: tfjs variable names are global; dispose one trainable model before making another.
 *
 * @param config The model config.
 * @param arrays HF name → { shape, data } (e.g. {@linkcode initWeights} or a checkpoint).
 * @returns The model (its `weights` are the variables) and the variable list for the optimizer.
 *   The caller disposes the model.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { demoModelConfig, initWeights, trainableModel } from "./sft.ts";
 * const config = demoModelConfig(8, { eos: 7, pad: 6 }, { hidden_size: 8, intermediate_size: 8,
 *   num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1 });
 * const { model, variables } = trainableModel(config, initWeights(config, { seed: 1 }));
 * assert.equal(variables[0].name, "model.embed_tokens.weight");
 * model.dispose();
 * ```
 */
export function trainableModel(
  config: Qwen2Config,
  arrays: Map<string, { shape: number[]; data: Float32Array | Int32Array | Uint8Array }>,
): { model: Qwen2Model; variables: tf.Variable[] } {
  const base = modelFromArrays(config, arrays);
  const variables: tf.Variable[] = [];
  for (const [name, t] of [...base.weights]) {
    const v = tf.variable(t, true, name);
    t.dispose();
    base.weights.set(name, v);
    variables.push(v);
  }
  return { model: base, variables };
}

/** One tokenized SFT example. */
export interface SftExample {
  /** Prompt then completion ids (the completion ends with EOS). */
  ids: number[];
  /** How many leading ids are prompt (no loss on them). */
  promptLength: number;
}

/**
 * Tokenizes `Question: <q>\nAnswer:` + ` <solution>` + EOS.
 *
 * @param tokenizer The tokenizer (its first `eosTokenIds` entry ends the completion).
 * @param example `question` and `solution`.
 * @returns The ids and the prompt length.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildSftExample } from "./sft.ts";
 * const tokenizer = { encode: (s: string) => [...s].map((c) => c.charCodeAt(0)), eosTokenIds: [0] };
 * const ex = buildSftExample(tokenizer, { question: "1+1?", solution: "2" });
 * assert.equal(ex.promptLength, "Question: 1+1?\nAnswer:".length);
 * assert.deepEqual(ex.ids.slice(ex.promptLength), [32, 50, 0]);
 * ```
 */
export function buildSftExample(
  tokenizer: Pick<Tokenizer, "encode" | "eosTokenIds">,
  example: { question: string; solution: string },
): SftExample {
  const prompt = tokenizer.encode(
    PLAIN_PROMPT_TEMPLATE.replace("{question}", () => example.question),
  );
  const completion = tokenizer.encode(` ${example.solution}`);
  return { ids: [...prompt, ...completion, tokenizer.eosTokenIds[0]], promptLength: prompt.length };
}

/** A right-padded SFT batch as plain arrays. */
export interface SftBatch {
  /** [B, T] token ids, right-padded with the pad id. */
  inputIds: number[][];
  /** [B, T] 1 = token, 0 = padding. */
  attentionMask: number[][];
  /** [B, T - 1] 1 where target `inputIds[b][t + 1]` is a completion token (gets loss). */
  lossMask: number[][];
  /** Completion (loss) tokens in the batch. */
  numLossTokens: number;
  /** Real (non-pad) tokens in the batch. */
  numTokens: number;
}

/**
 * Right-pads examples into one batch and marks the completion targets.
 *
 * @param examples Tokenized examples.
 * @param padId The pad token id.
 * @returns The batch.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { collateSft } from "./sft.ts";
 * const batch = collateSft([{ ids: [5, 6, 7], promptLength: 2 }, { ids: [5, 7], promptLength: 1 }], 0);
 * assert.deepEqual(batch.inputIds, [[5, 6, 7], [5, 7, 0]]);
 * assert.deepEqual(batch.lossMask, [[0, 1], [1, 0]]);
 * ```
 */
export function collateSft(examples: SftExample[], padId: number): SftBatch {
  if (examples.length === 0) throw new RangeError("Cannot collate an empty batch");
  const T = Math.max(...examples.map((e) => e.ids.length));
  if (T < 2) throw new RangeError(`Expected sequences of at least 2 tokens, got ${T}`);
  const inputIds: number[][] = [];
  const attentionMask: number[][] = [];
  const lossMask: number[][] = [];
  let numLossTokens = 0;
  let numTokens = 0;
  for (const { ids, promptLength } of examples) {
    if (!(promptLength >= 1 && promptLength < ids.length)) {
      throw new RangeError(
        `Expected 1 <= promptLength < ${ids.length} (sequence length), got ${promptLength}`,
      );
    }
    const pad = T - ids.length;
    inputIds.push([...ids, ...new Array(pad).fill(padId)]);
    attentionMask.push([...new Array(ids.length).fill(1), ...new Array(pad).fill(0)]);
    // Target t + 1 is a completion token when t + 1 >= promptLength and t + 1 < ids.length.
    const row = new Array(T - 1).fill(0);
    for (let t = promptLength - 1; t < ids.length - 1; t++) row[t] = 1;
    lossMask.push(row);
    numLossTokens += ids.length - promptLength;
    numTokens += ids.length;
  }
  return { inputIds, attentionMask, lossMask, numLossTokens, numTokens };
}

/**
 * Mean causal-LM cross-entropy over the completion tokens of a batch (prompt and padding
 * masked out), as HF `ForCausalLMLoss` with labels -100 outside the completion: the sum of
 * `-log p(target)` over loss tokens divided by their count.
 *
 * @param model The model.
 * @param batch From {@linkcode collateSft}.
 * @returns A scalar. The caller disposes it.
 * @example Usage
 * ```ts ignore
 * const loss = sftLoss(model, collateSft(examples, tokenizer.padTokenId));
 * ```
 */
export function sftLoss(model: Qwen2Model, batch: SftBatch): tf.Scalar {
  const B = batch.inputIds.length;
  const T = batch.inputIds[0].length;
  if (batch.numLossTokens < 1) throw new RangeError("Expected at least one completion token");
  return tf.tidy(() => {
    const ids = tf.tensor2d(batch.inputIds, [B, T], "int32");
    const mask = tf.tensor2d(batch.attentionMask, [B, T], "int32");
    const logits = forward(model, ids, { attentionMask: mask }); // [B, T, V]
    const V = logits.shape[2];
    const predicting = logits.slice([0, 0, 0], [B, T - 1, V]); // [B, T-1, V]
    const targets = ids.slice([0, 1], [B, T - 1]); // [B, T-1]
    const logProbs = tf.logSoftmax(predicting, -1); // [B, T-1, V]
    const picked = tf.sum(tf.mul(logProbs, tf.oneHot(targets, V)), -1); // [B, T-1]
    const lossMask = tf.tensor2d(batch.lossMask, [B, T - 1], "float32");
    return tf.div(tf.neg(tf.sum(tf.mul(picked, lossMask))), batch.numLossTokens) as tf.Scalar;
  });
}

/**
 * One SFT optimizer step: loss and gradients of every trainable weight, global-norm clipping,
 * then AdamW at learning rate `lr`.
 *
 * @param model A model from {@linkcode trainableModel}.
 * @param batch From {@linkcode collateSft}.
 * @param options The optimizer (over the model's variables), `lr`, `maxGradNorm` (0 = no clip).
 * @returns The loss and the gradient norm before clipping (scalars; the caller disposes them).
 * @example Usage
 * ```ts ignore
 * const { loss, gradNorm } = sftStep(model, batch, { optimizer, lr: 1e-3, maxGradNorm: 1 });
 * ```
 */
export function sftStep(
  model: Qwen2Model,
  batch: SftBatch,
  options: { optimizer: AdamW; lr: number; maxGradNorm: number },
): { loss: tf.Scalar; gradNorm: tf.Scalar } {
  const variables = options.optimizer.variables as tf.Variable[];
  const { value: loss, grads } = tf.variableGrads(() => sftLoss(model, batch), variables);
  let gradNorm: tf.Scalar;
  if (options.maxGradNorm > 0) {
    const clipped = clipGradNorm(grads, options.maxGradNorm);
    options.optimizer.step(clipped.grads, options.lr);
    tf.dispose(Object.values(clipped.grads));
    gradNorm = clipped.norm;
  } else {
    gradNorm = globalGradNorm(grads);
    options.optimizer.step(grads, options.lr);
  }
  tf.dispose(Object.values(grads));
  return { loss, gradNorm };
}

/**
 * The batches of one epoch as index lists: a seeded shuffle, then, within windows of
 * `64 × batchSize` examples, sorting by length so each batch pads little, then a shuffle of
 * the batches. Deterministic in (`seed`, `epoch`), so a resumed run continues the same order.
 *
 * @param lengths Sequence length of each example.
 * @param options `batchSize`, `seed`, `epoch`.
 * @returns `ceil(n / batchSize)` batches of example indices.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { epochBatches } from "./sft.ts";
 * const batches = epochBatches([3, 1, 2, 5, 4], { batchSize: 2, seed: 0, epoch: 0 });
 * assert.equal(batches.length, 3);
 * assert.deepEqual(batches.flat().sort(), [0, 1, 2, 3, 4]);
 * ```
 */
export function epochBatches(
  lengths: number[],
  options: { batchSize: number; seed: number; epoch: number },
): number[][] {
  const { batchSize, seed, epoch } = options;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`Expected batchSize to be an integer >= 1 but found ${batchSize}`);
  }
  const order = shuffle(lengths.map((_, i) => i), seed * 1000 + epoch);
  const window = 64 * batchSize;
  const batches: number[][] = [];
  for (let start = 0; start < order.length; start += window) {
    const chunk = order.slice(start, start + window).sort((a, b) => lengths[a] - lengths[b]);
    for (let i = 0; i < chunk.length; i += batchSize) batches.push(chunk.slice(i, i + batchSize));
  }
  return shuffle(batches, seed * 1000 + epoch + 7919);
}

/**
 * Removes the box from a solution's last sentence: `The answer is \boxed{19}.` becomes
 * `The answer is 19.` (the "format defect" of the second SFT stage, which GRPO then fixes).
 *
 * @param solution A solution ending in `\boxed{...}`.
 * @returns The unboxed solution (unchanged when it has no box).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { unboxSolution } from "./sft.ts";
 * assert.equal(unboxSolution("2 + 3 = 5. The answer is \\boxed{5}."), "2 + 3 = 5. The answer is 5.");
 * ```
 */
export function unboxSolution(solution: string): string {
  return solution.replace(/\\boxed\{([^{}]*)\}/g, "$1");
}

/**
 * The stage-2 data: the same problems with the box removed from a seeded `fraction` of them.
 *
 * @param examples Problems with `solution`.
 * @param options `fraction` in [0, 1] and `seed`.
 * @returns New rows (the input is not modified).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatDefectExamples } from "./sft.ts";
 * const rows = formatDefectExamples([{ question: "q", solution: "The answer is \\boxed{1}." }],
 *   { fraction: 1, seed: 0 });
 * assert.equal(rows[0].solution, "The answer is 1.");
 * ```
 */
export function formatDefectExamples<T extends { question: string; solution: string }>(
  examples: T[],
  options: { fraction: number; seed: number },
): T[] {
  if (!(options.fraction >= 0 && options.fraction <= 1)) {
    throw new RangeError(`Expected fraction in [0, 1] but found ${options.fraction}`);
  }
  const random = mulberry32(options.seed);
  return examples.map((e) =>
    random() < options.fraction ? { ...e, solution: unboxSolution(e.solution) } : { ...e }
  );
}
