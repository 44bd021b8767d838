/**
 * The "rollout" phase: batched sampling with the KV cache (HF `generate` with `do_sample`,
 * `temperature`, `top_p`, `top_k`), groups of `num_return_sequences` completions per prompt in
 * one batch, and the padded batch GRPO trains on (TRL: prompts left-padded, completions
 * right-padded, completion mask up to and including the first EOS).
 *
 * Sampling runs on the device; per token only the B sampled ids and their log-probs come back to
 * the CPU, in one read (the ids are needed to stop at EOS). Randomness comes from a seeded PRNG on the CPU (B uniforms per step),
 * so a run repeats exactly on any backend.
 *
 * @module
 */
import { tf } from "./tf.ts";
import type { Config } from "./config.ts";
import type { Example } from "./data.ts";
import { mulberry32 } from "./data.ts";
import type { LinearAdapter, Qwen2Model } from "./model.ts";
import { decodeStep, disposeCache, prefill } from "./model.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { createDecodeStream, formatPrompt } from "./tokenizer.ts";
import { fusedSampleTokens, hasFusedKernel, SAMPLE_TOKENS } from "./_kernels.ts";

/** Why a completion ended. */
export type FinishReason = "eos" | "length" | "stop";

/** Sampling settings: the `generation` section plus what the caller decides. */
export interface SamplingOptions
  extends
    Pick<Config["generation"], "max_new_tokens" | "temperature" | "top_p" | "top_k" | "stop"> {
  /** Argmax instead of sampling (temperature, top_p and top_k are then ignored). */
  greedy?: boolean;
  /** PRNG seed: the same seed, model and prompts give the same completions. */
  seed: number;
}

/** What {@linkcode rollout} returns: plain arrays, no tensors. */
export interface Rollout {
  /** Prompt ids per row (unpadded). Rows of one group are contiguous. */
  promptIds: number[][];
  /** Completion ids per row: up to and including the first EOS, or up to a stop string. */
  completionIds: number[][];
  /** Decoded completion text (special tokens skipped). */
  texts: string[];
  /** Why each row ended. */
  finishReasons: FinishReason[];
  /**
   * Per row, the log-probability of each completion token under the distribution it was
   * sampled from: after temperature, top_k and top_p (renormalised over the nucleus), as vLLM's
   * `processed_logprobs` that TRL reads for `sampling_per_token_logps`; 0 with greedy. With
   * top_p 1 and top_k 0 they equal the trainer's log-probs up to float noise.
   */
  samplingLogProbs: number[][];
  /** Generated tokens over all rows (for tokens/s). */
  numTokens: number;
}

/**
 * Picks one token per row from `logits` [B, V] on the device: HF's `TopKLogitsWarper` then
 * `TopPLogitsWarper` (keep the smallest set of most likely tokens whose probability reaches
 * `top_p`, always at least one), then inverse-CDF sampling with the given uniforms.
 *
 * @param logits [B, V] raw logits (temperature is applied here).
 * @param uniforms B numbers in [0, 1).
 * @param options temperature, top_p, top_k (0 = off), greedy.
 * @returns `ids` [B] int32 token ids, and `logps` [B] float32, the log-probability of each id
 *   under the distribution it was drawn from (the renormalised nucleus; 0 with greedy). The
 *   caller disposes both.
 * @example Usage
 * ```ts
 * import { tf } from "./tf.ts";
 * import { sampleTokens } from "./rollout.ts";
 * const logits = tf.tensor2d([[0, 5, 0]]);
 * const { ids, logps } = sampleTokens(logits, [0.5], { temperature: 1, top_p: 0.5, top_k: 0 });
 * console.assert(ids.dataSync()[0] === 1);
 * console.assert(logps.dataSync()[0] === 0); // the nucleus is token 1 alone
 * ```
 */
export function sampleTokens(
  logits: tf.Tensor2D,
  uniforms: number[],
  options: Pick<SamplingOptions, "temperature" | "top_p" | "top_k" | "greedy">,
): { ids: tf.Tensor1D; logps: tf.Tensor1D } {
  return tf.tidy(() => {
    if (options.greedy) {
      const ids = tf.cast(tf.argMax(logits, 1), "int32") as tf.Tensor1D;
      return { ids, logps: tf.zeros([logits.shape[0]]) as tf.Tensor1D };
    }
    const [B, V] = logits.shape;
    if ((options.top_k <= 0 || options.top_k >= V) && options.top_p >= 1) {
      return sampleUnsorted(logits, uniforms, options.temperature);
    }
    const k = options.top_k > 0 ? Math.min(options.top_k, V) : V;
    const { values, indices } = tf.topk(tf.div(logits, options.temperature), k); // [B, k] desc
    const probs = tf.softmax(values, -1); // [B, k]
    // Keep token i while the mass before it is < top_p: the first token is always kept.
    const before = tf.cumsum(probs, 1, true); // exclusive cumsum, [B, k]
    const kept = tf.where(tf.less(before, options.top_p), probs, tf.zerosLike(probs));
    const cdf = tf.cumsum(kept, 1); // [B, k]
    const total = cdf.slice([0, k - 1], [B, 1]); // [B, 1]
    const u = tf.mul(tf.tensor2d(uniforms, [B, 1]), total); // [B, 1]
    // index = number of cdf entries <= u, clipped to the kept range.
    let pick = tf.sum(tf.cast(tf.lessEqual(cdf, u), "int32"), 1); // [B]
    const lastKept = tf.sub(
      tf.sum(tf.cast(tf.greater(kept, 0), "int32"), 1),
      tf.scalar(1, "int32"),
    );
    // NOTE: non-finite logits (a diverged policy) make every probability NaN: nothing counts as
    // kept and lastKept is -1. Index 0 then stays in range, and its log-prob reads back as NaN,
    // which the update phase sees as a non-finite loss and skips.
    pick = tf.maximum(tf.minimum(pick, lastKept), tf.scalar(0, "int32"));
    const flat = tf.add(tf.mul(tf.range(0, B, 1, "int32"), tf.scalar(k, "int32")), pick);
    // log p(pick) in the nucleus: log_softmax over the top k, minus the log of the kept mass.
    const logps = tf.sub(
      tf.gather(tf.logSoftmax(values, -1).reshape([B * k]), flat),
      tf.log(total.reshape([B])),
    ) as tf.Tensor1D; // [B]
    return { ids: tf.gather(indices.reshape([B * k]), flat) as tf.Tensor1D, logps }; // [B] each
  });
}

/**
 * Inverse-CDF sampling from the whole softmax(logits / temperature), in vocabulary order: with
 * top_k 0 and top_p 1 no token is cut, so no sort is needed (bench/PROFILE.md §3: sorting a
 * 151,936-token vocabulary is 23% of a 1.5B decode step on wasm). One fused kernel where the
 * backend has it (lib/_kernels.ts).
 */
function sampleUnsorted(
  logits: tf.Tensor2D,
  uniforms: number[],
  temperature: number,
): { ids: tf.Tensor1D; logps: tf.Tensor1D } {
  const [B, V] = logits.shape;
  if (hasFusedKernel(SAMPLE_TOKENS)) {
    return fusedSampleTokens(logits, tf.tensor1d(uniforms), temperature);
  }
  const z = tf.div(logits, temperature); // [B, V]
  const probs = tf.softmax(z, -1); // [B, V]
  const cdf = tf.cumsum(probs, 1); // [B, V]
  const u = tf.mul(tf.tensor2d(uniforms, [B, 1]), cdf.slice([0, V - 1], [B, 1])); // [B, 1]
  // index = number of cdf entries <= u (the first token whose cdf passes u), clipped to the
  // last token with any mass.
  const positive = tf.cast(tf.greater(probs, 0), "int32"); // [B, V]
  const lastKept = tf.sub( // [B]
    tf.max(tf.mul(positive, tf.range(1, V + 1, 1, "int32")), 1),
    tf.scalar(1, "int32"),
  );
  const pick = tf.minimum(tf.sum(tf.cast(tf.lessEqual(cdf, u), "int32"), 1), lastKept); // [B]
  const flat = tf.add(tf.mul(tf.range(0, B, 1, "int32"), tf.scalar(V, "int32")), pick); // [B]
  const logps = tf.gather(tf.logSoftmax(z, -1).reshape([B * V]), flat) as tf.Tensor1D; // [B]
  return { ids: tf.cast(pick, "int32") as tf.Tensor1D, logps };
}

/** Left-pads rows to one length: ids with `pad`, mask with 0. */
export function leftPad(rows: number[][], pad: number): { ids: number[][]; mask: number[][] } {
  const T = Math.max(...rows.map((r) => r.length));
  return {
    ids: rows.map((r) => [...new Array(T - r.length).fill(pad), ...r]),
    mask: rows.map((r) => [...new Array(T - r.length).fill(0), ...new Array(r.length).fill(1)]),
  };
}

/**
 * Samples completions for a batch of prompts (each row one completion; repeat a prompt G times
 * for a group, see {@linkcode repeatGroups}).
 *
 * @param model The model.
 * @param prompts Prompt ids per row.
 * @param options Sampling settings, the tokenizer (EOS/pad ids, decoding) and the adapter.
 * @returns Completions, texts and finish reasons.
 * @example Usage
 * ```ts ignore
 * const out = await rollout(model, repeatGroups(promptIds, 8), {
 *   tokenizer, adapter: lora, sampling: { ...config.generation, seed: 1 } });
 * ```
 */
export async function rollout(
  model: Qwen2Model,
  prompts: number[][],
  options: {
    tokenizer: Pick<Tokenizer, "decode" | "eosTokenIds" | "padTokenId">;
    sampling: SamplingOptions;
    adapter?: LinearAdapter | null;
    /** Called after every token with (tokens done, max_new_tokens). */
    onToken?: (step: number, total: number) => void;
  },
): Promise<Rollout> {
  const { tokenizer, sampling } = options;
  if (prompts.length === 0) throw new RangeError("Expected at least one prompt");
  if (prompts.some((p) => p.length === 0)) throw new RangeError("Expected non-empty prompts");
  if (!sampling.greedy && !(sampling.temperature > 0)) {
    throw new RangeError(`Expected temperature > 0, got ${sampling.temperature}`);
  }
  const B = prompts.length;
  const eos = new Set(tokenizer.eosTokenIds);
  const random = mulberry32(sampling.seed >>> 0);
  const { ids, mask } = leftPad(prompts, tokenizer.padTokenId);
  const idsT = tf.tensor2d(ids, [B, ids[0].length], "int32");
  const maskT = tf.tensor2d(mask, [B, ids[0].length], "int32");
  let { logits, cache } = prefill(model, idsT, {
    attentionMask: maskT,
    adapter: options.adapter,
  });
  tf.dispose([idsT, maskT]);
  const completions: number[][] = prompts.map(() => []);
  const samplingLogProbs: number[][] = prompts.map(() => []);
  const finish: (FinishReason | null)[] = prompts.map(() => null);
  const stops = sampling.stop.filter((s) => s.length > 0);
  // Incremental decoding keeps stop-string checks O(1) per token instead of re-decoding.
  const streams = stops.length > 0
    ? prompts.map(() => createDecodeStream(tokenizer, { skipSpecialTokens: true }))
    : [];
  let numTokens = 0;
  try {
    for (let step = 0; step < sampling.max_new_tokens; step++) {
      const uniforms = Array.from({ length: B }, () => random());
      const next = sampleTokens(logits, uniforms, sampling);
      logits.dispose();
      // Ids (exact in float32 below 2^24) and log-probs travel in one read.
      const packed = tf.tidy(() => tf.concat([tf.cast(next.ids, "float32"), next.logps]));
      tf.dispose([next.ids, next.logps]);
      const read = await packed.data(); // sync point: B ids and B log-probs per token
      packed.dispose();
      const feed: number[] = [];
      for (let b = 0; b < B; b++) {
        if (finish[b] !== null) {
          feed.push(tokenizer.padTokenId);
          continue;
        }
        const id = read[b];
        completions[b].push(id);
        samplingLogProbs[b].push(read[B + b]);
        numTokens++;
        feed.push(id);
        if (eos.has(id)) finish[b] = "eos";
        else if (stops.length > 0) {
          streams[b].step(id);
          if (stops.some((stop) => streams[b].text.includes(stop))) finish[b] = "stop";
        }
      }
      options.onToken?.(step + 1, sampling.max_new_tokens);
      if (finish.every((f) => f !== null) || step === sampling.max_new_tokens - 1) {
        logits = tf.zeros([0, 0]);
        break;
      }
      const feedT = tf.tensor1d(feed, "int32");
      ({ logits, cache } = decodeStep(model, cache, feedT, { adapter: options.adapter }));
      feedT.dispose();
    }
  } finally {
    logits.dispose();
    disposeCache(cache);
  }
  return {
    promptIds: prompts.map((p) => [...p]),
    completionIds: completions,
    texts: completions.map((c) => tokenizer.decode(c, { skipSpecialTokens: true })),
    finishReasons: finish.map((f) => f ?? "length"),
    samplingLogProbs,
    numTokens,
  };
}

/** Repeats each prompt `g` times, contiguously (TRL's `RepeatSampler` order). */
export function repeatGroups<T>(items: T[], g: number): T[] {
  if (!Number.isInteger(g) || g < 1) throw new RangeError(`Expected a group size >= 1, got ${g}`);
  return items.flatMap((item) => new Array(g).fill(item));
}

/** The padded tensors of a rollout that the GRPO update consumes. */
export interface TrainingBatch {
  /** [B, P+C] int32: prompt left-padded, completion right-padded. */
  inputIds: tf.Tensor2D;
  /** [B, P+C] int32. */
  attentionMask: tf.Tensor2D;
  /** [B, C] float32: 1 up to and including the first EOS. */
  completionMask: tf.Tensor2D;
  /** C: the padded completion width. */
  completionLength: number;
  /** Ones in `completionMask` (counted here, so nobody reads the mask back from the device). */
  numTokens: number;
  /**
   * [B, C] float32 the rollout's `samplingLogProbs`, 0 on padding (TRL
   * `sampling_per_token_logps`); null when the rollout passed none.
   */
  samplingPerTokenLogps: tf.Tensor2D | null;
}

/**
 * Builds the padded batch TRL builds in `_generate_and_score_completions`.
 *
 * @param rollout Prompt and completion ids per row, and optionally the sampler's log-probs.
 * @param padTokenId Pad id.
 * @param options `maskTruncated`: zero the mask of rows that did not end with EOS
 *   (TRL `mask_truncated_completions`).
 * @returns Tensors; the caller disposes them (`disposeBatch`).
 * @example Usage
 * ```ts
 * import { toTrainingBatch, disposeBatch } from "./rollout.ts";
 * const batch = toTrainingBatch({ promptIds: [[1, 2], [3]], completionIds: [[4], [5, 6]],
 *   finishReasons: ["eos", "length"] }, 0);
 * console.assert(batch.completionLength === 2);
 * disposeBatch(batch);
 * ```
 */
export function toTrainingBatch(
  rollout:
    & Pick<Rollout, "promptIds" | "completionIds" | "finishReasons">
    & Partial<Pick<Rollout, "samplingLogProbs">>,
  padTokenId: number,
  options: { maskTruncated?: boolean } = {},
): TrainingBatch {
  const { ids: p, mask: pm } = leftPad(rollout.promptIds, padTokenId);
  const C = Math.max(1, ...rollout.completionIds.map((c) => c.length));
  const B = p.length;
  const ids: number[][] = [];
  const am: number[][] = [];
  const cm: number[][] = [];
  let numTokens = 0;
  for (let b = 0; b < B; b++) {
    const c = rollout.completionIds[b];
    const truncated = options.maskTruncated && rollout.finishReasons[b] !== "eos";
    if (!truncated) numTokens += c.length;
    ids.push([...p[b], ...c, ...new Array(C - c.length).fill(padTokenId)]);
    am.push([...pm[b], ...new Array(c.length).fill(1), ...new Array(C - c.length).fill(0)]);
    cm.push(
      [...new Array(c.length).fill(truncated ? 0 : 1), ...new Array(C - c.length).fill(0)],
    );
  }
  const T = ids[0].length;
  const sampling = rollout.samplingLogProbs?.map((r) => [...r, ...new Array(C - r.length).fill(0)]);
  return {
    inputIds: tf.tensor2d(ids, [B, T], "int32"),
    attentionMask: tf.tensor2d(am, [B, T], "int32"),
    completionMask: tf.tensor2d(cm, [B, C], "float32"),
    completionLength: C,
    numTokens,
    samplingPerTokenLogps: sampling ? tf.tensor2d(sampling, [B, C], "float32") : null,
  };
}

/** Frees a {@linkcode TrainingBatch}. */
export function disposeBatch(batch: TrainingBatch): void {
  tf.dispose([batch.inputIds, batch.attentionMask, batch.completionMask]);
  batch.samplingPerTokenLogps?.dispose();
}

/** A rollout of G completions for each of a set of prompts. */
export interface GroupRollout extends Rollout {
  /** One per prompt. */
  examples: Example[];
  /** Ground truth per row (each prompt's answer repeated G times). */
  answers: string[];
}

/** The `generation` keys that sampling from formatted prompts reads (training and evaluation). */
export type GenerationOptions = Pick<
  Config["generation"],
  "max_new_tokens" | "temperature" | "top_p" | "top_k" | "stop" | "prompt_format" | "system_prompt"
>;

/** What {@linkcode generatePhase} samples with: the policy and the config slices it reads. */
export interface GenerateInputs {
  model: Qwen2Model;
  tokenizer: Pick<
    Tokenizer,
    "encode" | "decode" | "eosTokenIds" | "padTokenId" | "applyChatTemplate"
  >;
  /** The policy's adapter; null samples from the base model. */
  adapter: LinearAdapter | null;
  config: {
    generation: GenerationOptions;
    grpo: Pick<Config["grpo"], "num_return_sequences">;
  };
}

/**
 * Rollout phase: formats and tokenizes the prompts, then samples `num_return_sequences`
 * completions for each with the policy, in one batch (TRL's generation batch). No LoRA dropout:
 * sampling passes no dropout seed.
 *
 * @param policy Model, tokenizer, adapter and the `generation` / `grpo` config sections.
 * @param examples The prompts.
 * @param options `seed` of the sampler; `onToken` after every token.
 * @returns The completions with their prompts' examples and answers.
 * @example Usage
 * ```ts ignore
 * const groups = await generatePhase({ model, tokenizer, adapter, config }, examples, { seed: 1 });
 * ```
 */
export async function generatePhase(
  policy: GenerateInputs,
  examples: Example[],
  options: { seed: number; onToken?: (done: number, total: number) => void },
): Promise<GroupRollout> {
  const { tokenizer, config } = policy;
  const g = config.grpo.num_return_sequences;
  const prompts = examples.map((ex) =>
    tokenizer.encode(formatPrompt(tokenizer, ex.question, config.generation))
  );
  const out = await rollout(policy.model, repeatGroups(prompts, g), {
    tokenizer,
    adapter: policy.adapter,
    sampling: { ...config.generation, seed: options.seed },
    onToken: options.onToken,
  });
  return { ...out, examples, answers: repeatGroups(examples.map((ex) => ex.answer), g) };
}
