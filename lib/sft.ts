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
import type { LoadedCheckpoint } from "./checkpoint.ts";
import { modelTensors } from "./checkpoint.ts";
import type { Example } from "./data.ts";
import { mulberry32, shuffle } from "./data.ts";
import { DataError } from "./errors.ts";
import type { EvalSummary, ProblemResult } from "./evaluate.ts";
import { evaluate } from "./evaluate.ts";
import type { Qwen2Model } from "./model.ts";
import { forward } from "./model.ts";
import { modelFromArrays } from "./model_loader.ts";
import { expectedWeightShapes, type Qwen2Config } from "./qwen2_config.ts";
import type { ScheduleOptions } from "./optim.ts";
import { AdamW, clipGradNorm, globalGradNorm, learningRateAt } from "./optim.ts";
import type { RunWriter } from "./run_writer.ts";
import { saveSafetensors } from "./safetensors.ts";
import { SYNTHETIC_CHARS } from "./synthetic.ts";
import type { Tokenizer, TokenizerFiles } from "./tokenizer.ts";
import { buildCharTokenizer, PLAIN_PROMPT_TEMPLATE, saveTokenizer } from "./tokenizer.ts";

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

// ---------------------------------------------------------------------------------------------
// The SFT run: stages, evaluation, the model directory

/**
 * The training rows of an SFT stage: `question` and the worked `solution` to fine-tune on.
 *
 * @param examples Loaded problems (the demo's data files carry a `solution`).
 * @param file The data file, for the error.
 * @returns One row per example.
 * @throws {DataError} When a row has no solution.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { sftRows } from "./sft.ts";
 * const rows = sftRows([{ id: "a", question: "1+1?", answer: "2", solution: "2", source: "f:1" }], "f");
 * assert.deepEqual(rows, [{ question: "1+1?", solution: "2" }]);
 * ```
 */
export function sftRows(
  examples: Example[],
  file: string,
): { question: string; solution: string }[] {
  return examples.map((e) => {
    if (e.solution === undefined) {
      throw new DataError(`Cannot train on ${e.source}: row has no "solution" to fine-tune on`, {
        file,
        line: Number(e.source.slice(e.source.lastIndexOf(":") + 1)),
      });
    }
    return { question: e.question, solution: e.solution };
  });
}

/** Where an SFT run is: the `trainer_state.json` of its checkpoints. */
export interface SftState {
  stage: 1 | 2;
  /** Steps done in `stage`. */
  step: number;
  /** Tokens trained on so far. */
  tokens: number;
  /** Seconds spent in training steps so far. */
  trainSeconds: number;
  /** The evaluation after stage 1, once it ran. */
  stage1Eval: SftEvalSummary | null;
}

/** What one logged SFT step reports to {@linkcode trainSftStage}'s `onStep`. */
export interface SftStepInfo {
  step: number;
  loss: number;
  grad_norm: number;
  learning_rate: number;
  /** Tokens per second since the last metrics record. */
  tokens_per_second: number;
}

/**
 * Trains one SFT stage from `state.step` to `steps`: batches from {@linkcode epochBatches} (a
 * function of seed and epoch, so a resumed run sees the same batches), {@linkcode sftStep} with
 * gradients clipped at norm 1, a metrics record every 10 steps and a checkpoint
 * (`checkpoint-<offset + step>`, only the newest kept) every `saveEvery` steps and at the end.
 *
 * @param policy The trainable model and its optimizer.
 * @param examples The stage's tokenized examples.
 * @param options The run state (advanced in place), schedule, batching and where records go.
 * @example Usage
 * ```ts ignore
 * await trainSftStage({ model, optimizer }, examples, { state, steps: 100, batchSize: 64, seed: 43,
 *   padId: tokenizer.padTokenId, schedule, saveEvery: 50, offset: 0, writer });
 * ```
 */
export async function trainSftStage(
  policy: { model: Qwen2Model; optimizer: AdamW },
  examples: SftExample[],
  options: {
    state: SftState;
    steps: number;
    batchSize: number;
    seed: number;
    padId: number;
    schedule: ScheduleOptions;
    saveEvery: number;
    /** Steps of the stages before this one, so checkpoint names keep increasing. */
    offset: number;
    writer: RunWriter;
    onStep?: (info: SftStepInfo) => void;
  },
): Promise<void> {
  const { model, optimizer } = policy;
  const { state } = options;
  const lengths = examples.map((e) => e.ids.length);
  const perEpoch = Math.ceil(examples.length / options.batchSize);
  let epoch = -1;
  let order: number[][] = [];
  let windowTokens = 0;
  let windowStart = performance.now();
  while (state.step < options.steps) {
    const e = Math.floor(state.step / perEpoch);
    if (e !== epoch) {
      epoch = e;
      order = epochBatches(lengths, { batchSize: options.batchSize, seed: options.seed, epoch });
    }
    const batch = collateSft(order[state.step % perEpoch].map((i) => examples[i]), options.padId);
    const lr = learningRateAt(state.step, options.schedule);
    const t0 = performance.now();
    const { loss, gradNorm } = sftStep(model, batch, { optimizer, lr, maxGradNorm: 1.0 });
    // sync point: one read-back of two scalars per step (the wasm backend is synchronous anyway)
    const [lossValue, normValue] = [(await loss.data())[0], (await gradNorm.data())[0]];
    tf.dispose([loss, gradNorm]);
    state.trainSeconds += (performance.now() - t0) / 1000;
    state.tokens += batch.numTokens;
    windowTokens += batch.numTokens;
    state.step += 1;
    const info: SftStepInfo = {
      step: state.step,
      loss: lossValue,
      grad_norm: normValue,
      learning_rate: lr,
      tokens_per_second: windowTokens / ((performance.now() - windowStart) / 1000),
    };
    options.onStep?.(info);
    if (state.step % 10 === 0 || state.step === options.steps) {
      await options.writer.metrics({
        stage: state.stage,
        step: state.step,
        epoch: state.step / perEpoch,
        loss: info.loss,
        grad_norm: info.grad_norm,
        learning_rate: info.learning_rate,
        tokens_per_second: info.tokens_per_second,
        tokens: state.tokens,
      });
      windowTokens = 0;
      windowStart = performance.now();
    }
    if (state.step % options.saveEvery === 0 || state.step === options.steps) {
      await options.writer.checkpoint(options.offset + state.step, {
        state,
        model,
        optimizer,
      }, { save_total_limit: 1 });
    }
  }
}

/** The settings of a demo SFT run, named as `deno task sft`'s flags. */
export interface SftRunOptions {
  /** Stage-1 steps (SFT on the solutions). */
  steps: number;
  /** Stage-2 steps (the format defect). */
  stage2_steps: number;
  batch_size: number;
  /** Stage 1's peak learning rate: warmup, then cosine to 0. */
  lr: number;
  /** Stage 2's learning rate: warmup, then constant. */
  stage2_lr: number;
  /** Warmup steps of each stage (at most a fifth of the stage). */
  warmup_steps: number;
  weight_decay: number;
  /** Share of stage-2 solutions whose box is removed. */
  drop_box_fraction: number;
  seed: number;
  save_every: number;
}

/**
 * The demo SFT run: stage 1 fine-tunes on the solutions (cosine schedule), stage 2 on the same
 * problems with a seeded share of boxes removed (constant schedule), each stage with fresh AdamW
 * moments and followed by an evaluation. After stage 1 a checkpoint without moments marks the
 * stage done, and `stage1.safetensors` keeps its weights apart, so stage 2 can be redone.
 * With `stage2_steps` 0 there is no stage 2 (and no second evaluation).
 *
 * @param policy The trainable model ({@linkcode trainableModel}), its variables and tokenizer.
 * @param data Stage-1 rows ({@linkcode sftRows}) and held-out problems.
 * @param options The settings; the writer (checkpoints, metrics); the checkpoint to resume from
 *   (its weights already restored into the model); `evaluate` after each stage (default
 *   {@linkcode evaluateSft}); `onStage1Done` with the state once stage 1 is evaluated (the model
 *   then holds stage 1's weights; called before stage 1's end checkpoint, so a run that stops
 *   in between calls it again on resume); `onStage` / `onStep` to show progress.
 * @returns The final state (with stage 1's evaluation) and stage 2's evaluation (null without
 *   stage 2).
 * @example Usage
 * ```ts ignore
 * const { state, stage2Eval } = await runSft({ model, variables, tokenizer }, { rows, test },
 *   { ...settings, writer: fileRunWriter("results/sft-work"), resumed: null });
 * ```
 */
export async function runSft(
  policy: { model: Qwen2Model; variables: tf.Variable[]; tokenizer: Tokenizer },
  data: { rows: { question: string; solution: string }[]; test: Example[] },
  options: SftRunOptions & {
    writer: RunWriter;
    resumed: Pick<LoadedCheckpoint<SftState>, "state" | "moments"> | null;
    evaluate?: (stage: 1 | 2) => Promise<SftEvalSummary>;
    onStage1Done?: (state: SftState) => Promise<void>;
    onStage?: (stage: 1 | 2, from: number, steps: number) => void;
    onStep?: (info: SftStepInfo) => void;
  },
): Promise<{ state: SftState; stage2Eval: SftEvalSummary | null }> {
  const { model, tokenizer } = policy;
  const o = options;
  const evaluateStage = o.evaluate ??
    (async () => (await evaluateSft(policy, data.test)).summary);
  const stages = [
    { stage: 1 as const, steps: o.steps, rows: data.rows, lr: o.lr, schedule: "cosine" as const },
    {
      stage: 2 as const,
      steps: o.stage2_steps,
      rows: formatDefectExamples(data.rows, { fraction: o.drop_box_fraction, seed: o.seed + 2 }),
      lr: o.stage2_lr,
      schedule: "constant" as const,
    },
  ];
  let state: SftState = o.resumed?.state ??
    { stage: 1, step: 0, tokens: 0, trainSeconds: 0, stage1Eval: null };
  let moments = o.resumed?.moments ?? null;
  let stage2Eval: SftEvalSummary | null = null;
  for (const s of stages) {
    if (s.stage < state.stage) continue;
    if (s.stage === 2 && s.steps === 0) break;
    const examples = s.rows.map((r) => buildSftExample(tokenizer, r));
    const optimizer = new AdamW(policy.variables, {
      adam_beta1: 0.9,
      adam_beta2: 0.999,
      adam_epsilon: 1e-8,
      weight_decay: o.weight_decay,
    });
    // Stage 1's end checkpoint has no moments: a resumed stage 2 starts with fresh ones.
    if (moments && state.stage === s.stage) optimizer.loadState(moments);
    moments = null;
    if (state.stage !== s.stage) state = { ...state, stage: s.stage, step: 0 };
    o.onStage?.(s.stage, state.step, s.steps);
    await trainSftStage({ model, optimizer }, examples, {
      state,
      steps: s.steps,
      batchSize: o.batch_size,
      seed: o.seed + s.stage,
      padId: tokenizer.padTokenId,
      schedule: {
        learning_rate: s.lr,
        lr_scheduler_type: s.schedule,
        warmup_steps: Math.min(o.warmup_steps, Math.floor(s.steps / 5)),
        warmup_ratio: 0,
        totalSteps: Math.max(1, s.steps),
      },
      saveEvery: o.save_every,
      offset: s.stage === 1 ? 0 : o.steps,
      writer: o.writer,
      onStep: o.onStep,
    });
    optimizer.dispose();
    const summary = await evaluateStage(s.stage);
    if (s.stage === 2) stage2Eval = summary;
    else {
      state = { ...state, stage: 2, step: 0, stage1Eval: summary };
      await o.onStage1Done?.(state);
      await o.writer.checkpoint(o.steps, { state, model }, { save_total_limit: 1 });
      if (o.writer.dir !== null) {
        await saveSafetensors(`${o.writer.dir}/stage1.safetensors`, await modelTensors(model));
      }
    }
  }
  return { state, stage2Eval };
}

/** An SFT evaluation summary: the usual one plus the share of completions without a box. */
export type SftEvalSummary = EvalSummary & { no_box_rate: number };

/**
 * Greedy accuracy of the SFT model on held-out problems with the demo's settings (plain
 * prompt, 96 new tokens, the seed's rewards), plus the share of completions without a box.
 *
 * @param policy The model and its tokenizer.
 * @param examples Held-out problems.
 * @param options `onProgress` after each batch.
 * @returns The summary (with `no_box_rate`) and the per-problem results.
 * @example Usage
 * ```ts ignore
 * const { summary } = await evaluateSft({ model, tokenizer }, test);
 * ```
 */
export async function evaluateSft(
  policy: { model: Qwen2Model; tokenizer: Tokenizer },
  examples: Example[],
  options: { onProgress?: (done: number, total: number) => void } = {},
): Promise<{ summary: SftEvalSummary; results: ProblemResult[] }> {
  const { results, summary } = await evaluate(policy.model, policy.tokenizer, examples, {
    generation: {
      max_new_tokens: 96, // solutions are at most ~75 characters (1 token each)
      temperature: 1,
      top_p: 1,
      top_k: 0,
      stop: [],
      prompt_format: "plain",
      system_prompt: "",
    },
    reward: { reward_correct: 1, reward_wrong: -1, reward_no_answer: -0.5 },
    batchSize: 100,
    onProgress: options.onProgress,
  });
  const noBox = results.filter((r) => !r.completion.includes("\\boxed{")).length / results.length;
  return { summary: { ...summary, no_box_rate: noBox }, results };
}

/**
 * The `sft_summary.json` of a model the demo SFT wrote: which stage's weights it holds (2 when
 * stage 2 ran and was evaluated, else 1), each stage's evaluation (null for a stage that did
 * not run) and steps, and how it was built.
 *
 * @param state The run state when the model was written.
 * @param options Stage 2's evaluation (null: these are stage 1's weights), the run's settings
 *   and its command-line arguments.
 * @returns The JSON object.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { sftSummary } from "./sft.ts";
 * const state = { stage: 2 as const, step: 0, tokens: 10, trainSeconds: 2, stage1Eval: null };
 * const settings = { steps: 5, stage2_steps: 3, batch_size: 2, seed: 1 };
 * const summary = sftSummary(state, { stage2Eval: null, settings, args: {} });
 * assert.deepEqual([summary.stage, summary.stage2, summary.steps], [1, null, { stage1: 5, stage2: 0 }]);
 * ```
 */
export function sftSummary(
  state: SftState,
  options: {
    stage2Eval: SftEvalSummary | null;
    settings: Pick<SftRunOptions, "steps" | "stage2_steps" | "batch_size" | "seed">;
    args: Record<string, unknown>;
  },
): Record<string, unknown> {
  const { stage2Eval, settings } = options;
  const stage = stage2Eval === null ? 1 : 2;
  return {
    stage,
    stage1: state.stage1Eval,
    stage2: stage2Eval,
    steps: { stage1: settings.steps, stage2: stage === 2 ? settings.stage2_steps : 0 },
    batch_size: settings.batch_size,
    seed: settings.seed,
    train_tokens: state.tokens,
    train_seconds: Math.round(state.trainSeconds),
    tokens_per_second: Math.round(state.tokens / Math.max(1e-9, state.trainSeconds)),
    args: options.args,
  };
}

/**
 * Writes the SFT model as a Hugging Face directory: `config.json`, `model.safetensors`, the
 * tokenizer files, `generation_config.json` and `sft_summary.json`.
 *
 * @param dir The output directory (created).
 * @param model The trained model.
 * @param options Its `config.json` fields, tokenizer files and the run summary.
 * @example Usage
 * ```ts ignore
 * await saveSftModel("data/demo/sft-model", model, { config, tokenizerFiles, summary });
 * ```
 */
export async function saveSftModel(
  dir: string,
  model: Qwen2Model,
  options: {
    config: ReturnType<typeof demoModelConfig>;
    tokenizerFiles: TokenizerFiles;
    summary: Record<string, unknown>;
  },
): Promise<void> {
  const { config } = options;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config, null, 2) + "\n");
  await saveSafetensors(`${dir}/model.safetensors`, await modelTensors(model));
  await saveTokenizer(dir, options.tokenizerFiles);
  const generation = {
    bos_token_id: null,
    eos_token_id: config.eos_token_id,
    pad_token_id: config.pad_token_id,
  };
  await Deno.writeTextFile(
    `${dir}/generation_config.json`,
    JSON.stringify(generation, null, 2) + "\n",
  );
  await Deno.writeTextFile(
    `${dir}/sft_summary.json`,
    JSON.stringify(options.summary, null, 2) + "\n",
  );
}
