/**
 * Qwen2 (HF transformers `models/qwen2/modeling_qwen2.py`, eager attention path) on TensorFlow.js.
 *
 * Weights keep their Hugging Face names and `[out_features, in_features]` layout, so a checkpoint
 * loads name by name: `model.layers.3.mlp.gate_proj.weight` is `weights.get(...)` here too. Every
 * linear goes through {@linkcode linear}, which adds an adapter's delta (LoRA) when one is given,
 * so the reference model is the same weights with `adapter: null`.
 *
 * Shape letters: `B` batch rows, `T` query tokens, `S` key tokens (cache + new), `H` hidden,
 * `V` vocab, `nH` query heads, `nKV` key/value heads, `hd` head_dim.
 *
 * @module
 */
import { tf } from "./tf.ts";
import { headDim, type Qwen2Config } from "./qwen2_config.ts";
import { gradientCheckpoint } from "./_gradient_checkpointing.ts";
import {
  ATTENTION,
  CACHED_ATTENTION,
  fusedAttention,
  fusedCachedAttention,
  fusedRmsNorm,
  fusedRope,
  hasFusedKernel,
  RMS_NORM,
  ROPE,
} from "./_kernels.ts";
import { externalGather, externalMatMul, type ExternalWeight } from "./_external_weights.ts";

/** A loaded model: config plus HF-named weight tensors (plain tensors, never variables). */
export interface Qwen2Model {
  config: Qwen2Config;
  /**
   * HF tensor name → tensor. Base weights are frozen: they are not `tf.Variable`s. With weight
   * storage "external" only the norms and biases are here; the matrices are in `external`.
   */
  weights: Map<string, tf.Tensor>;
  /**
   * HF tensor name → a frozen matrix kept outside tfjs (weight storage "external": models too
   * big for the wasm heap, read by BLAS in place; `lib/_external_weights.ts`). Empty otherwise.
   */
  external: Map<string, ExternalWeight>;
  /** The directory it came from, or null for a model built in memory. */
  dir: string | null;
  /** Frees every weight. */
  dispose(): void;
}

/**
 * Something that adds a trainable delta to a frozen linear layer (LoRA, see `lib/lora.ts`).
 * `name` is the module path without `.weight`, e.g. `model.layers.0.self_attn.q_proj`.
 */
export interface LinearAdapter {
  /**
   * The delta to add to `x @ W^T + b` for module `name`, or null when it has none.
   * `dropoutSeed` is the forward pass's {@linkcode ForwardOptions.dropoutSeed}; `rows`, when
   * given, says that x holds only the last positions of each batch row (dropout then draws the
   * masks a full pass draws for those positions).
   */
  delta(
    name: string,
    x: tf.Tensor2D,
    dropoutSeed?: number | null,
    rows?: RowSuffix | null,
  ): tf.Tensor2D | null;
}

/**
 * The rows a last decoder layer computes when only the last positions are kept
 * ({@linkcode ForwardOptions.keepLast}): positions [start, length) of each batch row of `length`
 * positions, flattened row by row.
 */
export interface RowSuffix {
  /** T, the positions of a full row. */
  length: number;
  /** The first position kept. */
  start: number;
}

/**
 * Per-layer keys and values (after RoPE) of the tokens seen so far. Owned by the caller.
 *
 * With the fused attention kernel (lib/_kernels.ts: wasm and cpu with a BLAS) the tensors have
 * room for more tokens than `length`, and {@linkcode decodeStep} appends to them in place, so
 * a decoding step copies only its new keys instead of the whole cache; elsewhere `capacity` is
 * `length` and each step concatenates.
 */
export interface KVCache {
  /** Per layer, [B, nKV, capacity, hd]; positions [0, length) hold keys. */
  keys: tf.Tensor4D[];
  /** Per layer, [B, nKV, capacity, hd]; positions [0, length) hold values. */
  values: tf.Tensor4D[];
  /** [B, capacity] 1 for real tokens, 0 for padding (positions past the prompt are 1). */
  attentionMask: tf.Tensor2D;
  /** [B] int32: the position id the next token of each row gets. */
  nextPositions: tf.Tensor1D;
  /** Positions filled. */
  length: number;
}

/** Options of {@linkcode forward} and {@linkcode hiddenStates}. */
export interface ForwardOptions {
  /** [B, T] 1 = token, 0 = padding. Default all ones. */
  attentionMask?: tf.Tensor2D;
  /**
   * [B, T] int32 RoPE positions. Default: from the mask as HF `generate` builds them
   * (`cumsum(mask) - 1`, pads set to 1), which is `0..T-1` when there is no padding.
   */
  positionIds?: tf.Tensor2D;
  /** LoRA or another adapter; null or absent = the base model. */
  adapter?: LinearAdapter | null;
  /**
   * Seed of the adapter's dropout masks (PEFT `lora_dropout`) in this pass: a training forward
   * passes one per micro-batch; null or absent = no dropout (sampling, reference, evaluation).
   */
  dropoutSeed?: number | null;
  /**
   * Recompute each decoder layer's activations in the backward pass instead of keeping them
   * (HF `gradient_checkpointing`). Only matters under a gradient tape.
   */
  gradientCheckpointing?: boolean;
  /**
   * {@linkcode hiddenStates} of the last `keepLast` positions only (HF `logits_to_keep`):
   * [B, keepLast, H]. With the fused kernels the last decoder layer then runs its queries, MLP
   * and the final norm on those positions alone (its keys and values still cover all); the values
   * are those of the full pass, and so are the LoRA dropout masks.
   */
  keepLast?: number;
}

// NOTE: HF masks with finfo(float32).min, not -inf, so that a fully masked (pad) query row
// becomes a uniform softmax instead of NaN — NaN would leak into real rows through 0 * NaN in
// probs @ v. We use -1e9: on WebGPU, finfo.min plus a negative score overflows to -inf and brings
// the NaN back. exp(-1e9 - max) is exactly 0 in float32, so real rows are unchanged.
const MASK_VALUE = -1e9;

/** Most attention scores one {@linkcode prefill} chunk holds per layer (256 MiB of float32). */
const ATTENTION_CHUNK_FLOATS = 1 << 26;

/**
 * Room a fused-path cache gets past the prompt (tokens); it doubles when decoding fills it. 128
 * covers the demo's max_new_tokens (96) without a copy.
 */
const CACHE_HEADROOM = 128;

/** Counts the parameters of a model (tied embeddings counted once), as PEFT's "all params". */
export function countParameters(model: Pick<Qwen2Model, "weights" | "external">): number {
  let n = 0;
  for (const t of model.weights.values()) n += t.size;
  for (const w of model.external.values()) n += w.shape[0] * w.shape[1];
  return n;
}

/**
 * The shape of weight `name`, wherever it is stored (a tensor or an external matrix).
 *
 * @param model The model.
 * @param name HF tensor name, e.g. `model.layers.0.self_attn.q_proj.weight`.
 * @returns Its shape, e.g. `[out_features, in_features]`.
 * @throws RangeError when the model has no such weight.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { tf } from "./tf.ts";
 * import { weightShape } from "./model.ts";
 * const model = { weights: new Map([["w", tf.zeros([2, 3])]]), external: new Map() };
 * assert.deepEqual(weightShape(model, "w"), [2, 3]);
 * model.weights.get("w")!.dispose();
 * ```
 */
export function weightShape(
  model: Pick<Qwen2Model, "weights" | "external">,
  name: string,
): number[] {
  const shape = model.external.get(name)?.shape ?? model.weights.get(name)?.shape;
  if (!shape) throw new RangeError(`Model has no tensor ${name}`);
  return [...shape];
}

function weight(model: Qwen2Model, name: string): tf.Tensor {
  const t = model.weights.get(name);
  if (!t) throw new RangeError(`Model has no tensor ${name}`);
  return t;
}

/** `x @ W^T` for the HF weight `name` [out, in], a tensor or an external matrix. x: [N, in]. */
function matMulWeight(model: Qwen2Model, name: string, x: tf.Tensor2D): tf.Tensor2D {
  const external = model.external.get(name);
  if (external) return externalMatMul(x, external); // [N, out]
  return tf.matMul(x, weight(model, name) as tf.Tensor2D, false, true); // [N, out]
}

/** `x @ W^T (+ b) (+ adapter delta)` for HF module `name`, over the last axis of `x`. */
function linear(
  model: Qwen2Model,
  name: string,
  x: tf.Tensor,
  adapter: LinearAdapter | null | undefined,
  dropoutSeed: number | null | undefined,
  rows: RowSuffix | null = null,
): tf.Tensor {
  const bias = model.weights.get(`${name}.bias`);
  const lead = x.shape.slice(0, -1);
  const x2 = x.reshape([-1, x.shape[x.shape.length - 1]]) as tf.Tensor2D; // [N, in]
  let y = matMulWeight(model, `${name}.weight`, x2); // [N, out]
  if (bias) y = tf.add(y, bias);
  const delta = adapter?.delta(name, x2, dropoutSeed, rows);
  if (delta) y = tf.add(y, delta);
  return y.reshape([...lead, y.shape[1]]);
}

/** Embedding lookup: rows of `model.embed_tokens.weight` for ids [B, T] → [B, T, H]. */
function embedTokens(model: Qwen2Model, inputIds: tf.Tensor2D): tf.Tensor3D {
  const name = "model.embed_tokens.weight";
  const external = model.external.get(name);
  if (external) return externalGather(external, inputIds) as tf.Tensor3D;
  return tf.gather(weight(model, name), inputIds) as tf.Tensor3D;
}

/** RMSNorm: `w * x / sqrt(mean(x^2) + eps)` over the last axis (float32 throughout). */
function rmsNorm(x: tf.Tensor, w: tf.Tensor, eps: number): tf.Tensor {
  if (hasFusedKernel(RMS_NORM)) return fusedRmsNorm(x, w, eps);
  const variance = tf.mean(tf.square(x), -1, true);
  return tf.mul(w, tf.mul(x, tf.rsqrt(tf.add(variance, eps))));
}

/** cos and sin of RoPE for positions [B, T] → each [B, 1, T, hd] (half-split, HF layout). */
function ropeTables(config: Qwen2Config, positionIds: tf.Tensor2D): [tf.Tensor4D, tf.Tensor4D] {
  const hd = headDim(config);
  const invFreq = new Float32Array(hd / 2);
  for (let i = 0; i < hd / 2; i++) {
    // float32 like HF: 1 / theta ** (arange(0, d, 2) / d)
    invFreq[i] = Math.fround(1 / Math.pow(config.rope_theta, Math.fround((2 * i) / hd)));
  }
  const [B, T] = positionIds.shape;
  const freqs = tf.mul(
    tf.cast(positionIds, "float32").reshape([B, T, 1]),
    tf.tensor1d(invFreq).reshape([1, 1, hd / 2]),
  ); // [B, T, hd/2]
  const emb = tf.concat([freqs, freqs], -1).reshape([B, 1, T, hd]) as tf.Tensor4D;
  return [tf.cos(emb), tf.sin(emb)];
}

/** `x * cos + rotate_half(x) * sin` with rotate_half(x) = cat(-x2, x1). x: [B, n, T, hd]. */
function applyRope(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D): tf.Tensor4D {
  const half = x.shape[3] / 2;
  const [x1, x2] = tf.split(x, [half, half], 3);
  const rotated = tf.concat([tf.neg(x2), x1], 3);
  return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
}

/**
 * Additive attention mask [B, 1, 1, T, S]: 0 where key s is real and s <= the query's index
 * (queries are the last T of S keys), MASK_VALUE elsewhere.
 */
function attentionBias(attentionMask: tf.Tensor2D, T: number): tf.Tensor {
  const [B, S] = attentionMask.shape;
  const queryIndex = tf.range(S - T, S, 1, "int32").reshape([T, 1]);
  const keyIndex = tf.range(0, S, 1, "int32").reshape([1, S]);
  const causal = tf.lessEqual(keyIndex, queryIndex).reshape([1, T, S]); // [1, T, S]
  const real = tf.cast(attentionMask, "bool").reshape([B, 1, S]); // [B, 1, S]
  const allowed = tf.logicalAnd(causal, real); // [B, T, S]
  return tf.where(allowed, tf.zeros([B, T, S]), tf.fill([B, T, S], MASK_VALUE))
    .reshape([B, 1, 1, T, S]);
}

/**
 * What attention needs besides q, k and v, built once per forward for every layer: the stock
 * path's RoPE tables and additive mask, or the fused kernels' position ids and padding mask.
 */
type AttentionInputs =
  | { kind: "stock"; cos: tf.Tensor4D; sin: tf.Tensor4D; bias: tf.Tensor }
  | { kind: "fused"; positions: tf.Tensor2D; mask: tf.Tensor2D };

/** One layer's cache: keys and values [B, nKV, capacity, hd], `length` positions filled. */
interface LayerPast {
  k: tf.Tensor4D;
  v: tf.Tensor4D;
  length: number;
}

/**
 * One decoder layer. `past` holds this layer's cached keys/values; returns the new hidden
 * state and this layer's keys/values (past + new). With `queryStart` > 0 (fused attention, no
 * cache) only positions [queryStart, T) are computed past the keys and values: the returned h
 * is [B, T - queryStart, H].
 */
function decoderLayer(
  model: Qwen2Model,
  layer: number,
  h: tf.Tensor3D,
  att: AttentionInputs,
  adapter: LinearAdapter | null | undefined,
  dropoutSeed: number | null | undefined,
  past: LayerPast | null,
  queryStart = 0,
): { h: tf.Tensor3D; k: tf.Tensor4D; v: tf.Tensor4D } {
  const c = model.config;
  const [B, T, H] = h.shape;
  const nH = c.num_attention_heads;
  const nKV = c.num_key_value_heads;
  const hd = headDim(c);
  const p = `model.layers.${layer}`;

  const x = rmsNorm(h, weight(model, `${p}.input_layernorm.weight`), c.rms_norm_eps);
  // Only the positions [queryStart, T) go on past the keys and values (logits_to_keep).
  const K = T - queryStart;
  const rows: RowSuffix | null = queryStart > 0 ? { length: T, start: queryStart } : null;
  const keep = (t: tf.Tensor3D) => rows ? t.slice([0, queryStart, 0], [B, K, H]) : t; // [B, K, H]
  const q = linear(
    model,
    `${p}.self_attn.q_proj`,
    keep(x as tf.Tensor3D),
    adapter,
    dropoutSeed,
    rows,
  )
    .reshape([B, K, nH, hd]) as tf.Tensor4D; // [B, K, nH, hd]
  const k = linear(model, `${p}.self_attn.k_proj`, x, adapter, dropoutSeed)
    .reshape([B, T, nKV, hd]) as tf.Tensor4D; // [B, T, nKV, hd]
  const v = linear(model, `${p}.self_attn.v_proj`, x, adapter, dropoutSeed)
    .reshape([B, T, nKV, hd]) as tf.Tensor4D; // [B, T, nKV, hd]
  let a: { attn: tf.Tensor4D; k: tf.Tensor4D; v: tf.Tensor4D };
  if (rows) {
    if (att.kind !== "fused" || past !== null) {
      throw new RangeError("decoderLayer: queryStart needs the fused attention and no cache");
    }
    a = lastQueriesAttention(c, q, k, v, att, queryStart);
  } else {
    a = att.kind === "fused"
      ? fusedSelfAttention(c, q, k, v, att, past)
      : stockSelfAttention(c, q, k, v, att, past);
  }
  const o = linear(
    model,
    `${p}.self_attn.o_proj`,
    a.attn.reshape([B, K, H]),
    adapter,
    dropoutSeed,
    rows,
  );
  const h1 = tf.add(keep(h), o) as tf.Tensor3D; // [B, K, H]

  const x2 = rmsNorm(h1, weight(model, `${p}.post_attention_layernorm.weight`), c.rms_norm_eps);
  const gate = linear(model, `${p}.mlp.gate_proj`, x2, adapter, dropoutSeed, rows);
  const up = linear(model, `${p}.mlp.up_proj`, x2, adapter, dropoutSeed, rows);
  // NOTE: no fused SwiGLU: wasm's Sigmoid (XNNPACK, SIMD) beats a JS loop over Math.exp 4-6x.
  const act = tf.mul(tf.mul(gate, tf.sigmoid(gate)), up);
  const mlp = linear(model, `${p}.mlp.down_proj`, act, adapter, dropoutSeed, rows);
  return { h: tf.add(h1, mlp) as tf.Tensor3D, k: a.k, v: a.v };
}

/**
 * Attention through lib/_kernels.ts: RoPE on the token-major projections, then one kernel per
 * layer (no transposes, no mask tensor). With a cache, the kernel appends the new keys and
 * values to it in place and the layer's keys/values are the cache's own tensors.
 */
function fusedSelfAttention(
  c: Qwen2Config,
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  att: { positions: tf.Tensor2D; mask: tf.Tensor2D },
  past: LayerPast | null,
): { attn: tf.Tensor4D; k: tf.Tensor4D; v: tf.Tensor4D } {
  const scale = 1 / Math.sqrt(headDim(c));
  const qr = fusedRope(q, att.positions, c.rope_theta);
  const kr = fusedRope(k, att.positions, c.rope_theta);
  if (past === null) return { attn: fusedAttention(qr, kr, v, att.mask, scale), k: kr, v };
  const cache = { keys: past.k, values: past.v, mask: att.mask, length: past.length };
  return { attn: fusedCachedAttention(qr, kr, v, cache, scale), k: past.k, v: past.v };
}

/**
 * {@linkcode fusedSelfAttention} of the queries from `queryStart` on (q [B, K, nH, hd]) against
 * every key (k, v [B, T, nKV, hd]), without a cache.
 */
function lastQueriesAttention(
  c: Qwen2Config,
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  att: { positions: tf.Tensor2D; mask: tf.Tensor2D },
  queryStart: number,
): { attn: tf.Tensor4D; k: tf.Tensor4D; v: tf.Tensor4D } {
  const [B, K] = q.shape;
  const positions = att.positions.slice([0, queryStart], [B, K]) as tf.Tensor2D; // [B, K]
  const qr = fusedRope(q, positions, c.rope_theta);
  const kr = fusedRope(k, att.positions, c.rope_theta);
  return { attn: fusedAttention(qr, kr, v, att.mask, 1 / Math.sqrt(headDim(c))), k: kr, v };
}

/** Attention as HF's eager path composes it, in stock tfjs ops (webgpu, stock cpu). */
function stockSelfAttention(
  c: Qwen2Config,
  q: tf.Tensor4D,
  kNew: tf.Tensor4D,
  vNew: tf.Tensor4D,
  att: { cos: tf.Tensor4D; sin: tf.Tensor4D; bias: tf.Tensor },
  past: LayerPast | null,
): { attn: tf.Tensor4D; k: tf.Tensor4D; v: tf.Tensor4D } {
  const [B, T, nH, hd] = q.shape;
  const nKV = c.num_key_value_heads;
  const nRep = nH / nKV;
  const qr = applyRope(q.transpose([0, 2, 1, 3]), att.cos, att.sin); // [B, nH, T, hd]
  let k = applyRope(kNew.transpose([0, 2, 1, 3]), att.cos, att.sin); // [B, nKV, T, hd]
  let v = vNew.transpose([0, 2, 1, 3]) as tf.Tensor4D; // [B, nKV, T, hd]
  if (past) {
    // A cache with spare room (built by the fused path) holds keys only up to `length`.
    const filled = (t: tf.Tensor4D) =>
      t.shape[2] === past.length ? t : t.slice([0, 0, 0, 0], [-1, -1, past.length, -1]);
    k = tf.concat([filled(past.k), k], 2); // [B, nKV, S, hd]
    v = tf.concat([filled(past.v), v], 2); // [B, nKV, S, hd]
  }
  const S = k.shape[2];
  // GQA without repeat_kv: query heads j*nRep .. j*nRep+nRep-1 share kv head j (HF repeat_kv
  // repeats each kv head nRep times consecutively), so group the queries by kv head instead.
  const qg = qr.reshape([B, nKV, nRep * T, hd]); // [B, nKV, nRep*T, hd]
  const scores = tf.mul(tf.matMul(qg, k, false, true), 1 / Math.sqrt(hd)) // [B, nKV, nRep*T, S]
    .reshape([B, nKV, nRep, T, S]);
  const probs = tf.softmax(tf.add(scores, att.bias), -1).reshape([B, nKV, nRep * T, S]);
  const attn = tf.matMul(probs, v) // [B, nKV, nRep*T, hd]
    .reshape([B, nH, T, hd]).transpose([0, 2, 1, 3]) as tf.Tensor4D; // [B, T, nH, hd]
  return { attn, k, v };
}

/**
 * Position ids as HF `generate` builds them: `cumsum(mask) - 1`, masked positions set to 1.
 *
 * @param attentionMask [B, T] of 0/1.
 * @returns [B, T] int32. The caller disposes it.
 * @example Usage
 * ```ts
 * import { tf } from "./tf.ts";
 * import { positionIdsFromMask } from "./model.ts";
 * const mask = tf.tensor2d([[0, 1, 1]], [1, 3], "int32");
 * console.assert(positionIdsFromMask(mask).arraySync()[0].join() === "1,0,1");
 * ```
 */
export function positionIdsFromMask(attentionMask: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const m = tf.cast(attentionMask, "int32");
    const pos = tf.sub(tf.cumsum(m, 1), 1);
    return tf.where(tf.cast(m, "bool"), pos, tf.onesLike(pos)) as tf.Tensor2D;
  });
}

/** Whether the active backend runs attention through lib/_kernels.ts (wasm, cpu with BLAS). */
function fusedAttentionAvailable(): boolean {
  return hasFusedKernel(ATTENTION) && hasFusedKernel(CACHED_ATTENTION) && hasFusedKernel(ROPE);
}

/** The first `length` columns of a cache mask that may have spare room. */
function filledMask(cache: KVCache): tf.Tensor2D {
  const mask = tf.cast(cache.attentionMask, "int32") as tf.Tensor2D;
  return mask.shape[1] === cache.length ? mask : mask.slice([0, 0], [-1, cache.length]);
}

/**
 * Embeddings → decoder layers → final norm. `cache` extends a KV cache (decoding); `withCache`
 * returns every layer's keys/values (prefill and decoding need them; a training or scoring
 * forward does not, and then each layer's tidy frees them at once).
 */
function layerStack(
  model: Qwen2Model,
  inputIds: tf.Tensor2D,
  options: ForwardOptions,
  cache: KVCache | null,
  withCache = cache !== null,
  headroom = CACHE_HEADROOM,
): { h: tf.Tensor3D; keys: tf.Tensor4D[]; values: tf.Tensor4D[]; mask: tf.Tensor2D } {
  const [B, T] = inputIds.shape;
  const { adapter, dropoutSeed } = options;
  const c = model.config;
  const newMask = options.attentionMask ?? tf.ones([B, T], "int32");
  const positions = options.positionIds ??
    (cache
      ? tf.add(cache.nextPositions.reshape([B, 1]), tf.range(0, T, 1, "int32").reshape([1, T]))
      : positionIdsFromMask(newMask)) as tf.Tensor2D;
  let att: AttentionInputs;
  let mask: tf.Tensor2D;
  let pasts: (LayerPast | null)[] = [];
  if (fusedAttentionAvailable()) {
    if (cache) {
      // decodeStep made room; positions past the prompt are already 1 in the mask.
      mask = cache.attentionMask;
      pasts = cache.keys.map((k, i) => ({ k, v: cache.values[i], length: cache.length }));
    } else if (withCache) {
      // prefill: an empty cache with room for `headroom` new tokens.
      const shape: [number, number, number, number] = [
        B,
        c.num_key_value_heads,
        T + headroom,
        headDim(c),
      ];
      mask = tf.concat([tf.cast(newMask, "int32"), tf.ones([B, headroom], "int32")], 1);
      for (let i = 0; i < c.num_hidden_layers; i++) {
        pasts.push({
          k: tf.zeros(shape) as tf.Tensor4D,
          v: tf.zeros(shape) as tf.Tensor4D,
          length: 0,
        });
      }
    } else mask = newMask;
    att = { kind: "fused", positions, mask };
  } else {
    mask = cache
      ? tf.concat([filledMask(cache), tf.cast(newMask, "int32")], 1) as tf.Tensor2D
      : newMask;
    if (cache) pasts = cache.keys.map((k, i) => ({ k, v: cache.values[i], length: cache.length }));
    const [cos, sin] = ropeTables(c, positions);
    att = { kind: "stock", cos, sin, bias: attentionBias(mask, T) };
  }
  let h = embedTokens(model, inputIds); // [B, T, H]
  const keys: tf.Tensor4D[] = [];
  const values: tf.Tensor4D[] = [];
  const keep = Math.min(options.keepLast ?? T, T);
  if (!(Number.isInteger(keep) && keep >= 1)) {
    throw new RangeError(`Expected keepLast to be an integer >= 1, got ${options.keepLast}`);
  }
  // HF logits_to_keep: the last layer computes past its keys and values only the kept positions
  // (the fused attention takes queries of a suffix; the stock path slices at the end).
  const lastStart = keep < T && att.kind === "fused" && !withCache ? T - keep : 0;
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const past = pasts[i] ?? null;
    const queryStart = i === c.num_hidden_layers - 1 ? lastStart : 0;
    if (options.gradientCheckpointing && !withCache) {
      h = checkpointedLayer(model, i, h, att, adapter, dropoutSeed, queryStart);
      continue;
    }
    // A tidy per layer frees its intermediates as soon as the layer is done (under a gradient
    // tape, tfjs keeps what the backward pass needs regardless).
    const hIn = h;
    const out = tf.tidy(() => {
      const o = decoderLayer(model, i, hIn, att, adapter, dropoutSeed, past, queryStart);
      return withCache ? o : { h: o.h };
    }) as { h: tf.Tensor3D; k?: tf.Tensor4D; v?: tf.Tensor4D };
    h = out.h;
    if (out.k && out.v) {
      keys.push(out.k);
      values.push(out.v);
    }
  }
  if (h.shape[1] > keep) h = h.slice([0, T - keep, 0], [B, keep, -1]); // [B, keep, H]
  const normed = rmsNorm(h, weight(model, "model.norm.weight"), c.rms_norm_eps);
  return { h: normed as tf.Tensor3D, keys, values, mask };
}

/**
 * Gradient checkpointing of one layer: the forward keeps only the layer input; the backward
 * recomputes the layer (HF `gradient_checkpointing_enable`, torch `checkpoint`). Adapter
 * variables are passed as explicit inputs so they get gradients.
 */
function checkpointedLayer(
  model: Qwen2Model,
  layer: number,
  h: tf.Tensor3D,
  att: AttentionInputs,
  adapter: LinearAdapter | null | undefined,
  dropoutSeed: number | null | undefined,
  queryStart: number,
): tf.Tensor3D {
  const vars = adapterVariablesOfLayer(adapter, layer);
  const names = vars.map((v) => v.name);
  const constants = att.kind === "stock" ? [att.bias, att.cos, att.sin] : [att.positions, att.mask];
  // The adapter reads these variables by name; during recomputation we swap in the tensors
  // tf.grads differentiates (same values), so the gradient flows to them. The dropout seed is a
  // closure capture: the recomputation draws the same LoRA dropout masks as the forward pass.
  return gradientCheckpoint(([hIn, ...vs], cs) => {
    const override = overrideAdapter(adapter, names, vs);
    const a: AttentionInputs = att.kind === "stock"
      ? { kind: "stock", bias: cs[0], cos: cs[1] as tf.Tensor4D, sin: cs[2] as tf.Tensor4D }
      : { kind: "fused", positions: cs[0] as tf.Tensor2D, mask: cs[1] as tf.Tensor2D };
    return decoderLayer(
      model,
      layer,
      hIn as tf.Tensor3D,
      a,
      override,
      dropoutSeed,
      null,
      queryStart,
    )
      .h;
  }, { inputs: [h, ...vars.map((v) => v.value)], constants }) as tf.Tensor3D;
}

/** An adapter that also exposes the variables it uses per layer (LoRA does). */
export interface CheckpointableAdapter extends LinearAdapter {
  /** The named trainable tensors that modules of decoder layer `layer` read. */
  variablesOfLayer(layer: number): { name: string; value: tf.Tensor }[];
  /** The same adapter reading `replacements` (name → tensor) instead of its own variables. */
  withTensors(replacements: Map<string, tf.Tensor>): LinearAdapter;
}

function isCheckpointable(a: LinearAdapter | null | undefined): a is CheckpointableAdapter {
  return !!a && typeof (a as CheckpointableAdapter).variablesOfLayer === "function";
}

function adapterVariablesOfLayer(
  adapter: LinearAdapter | null | undefined,
  layer: number,
): { name: string; value: tf.Tensor }[] {
  if (!adapter) return [];
  if (!isCheckpointable(adapter)) {
    throw new TypeError(
      "gradientCheckpointing needs an adapter with variablesOfLayer() and withTensors() (lib/lora.ts has them)",
    );
  }
  return adapter.variablesOfLayer(layer);
}

function overrideAdapter(
  adapter: LinearAdapter | null | undefined,
  names: string[],
  tensors: tf.Tensor[],
): LinearAdapter | null | undefined {
  if (!adapter || names.length === 0) return adapter;
  return (adapter as CheckpointableAdapter).withTensors(
    new Map(names.map((n, i) => [n, tensors[i]])),
  );
}

/** The LM head's weight: `lm_head.weight`, or `model.embed_tokens.weight` when tied. [V, H]. */
function lmHeadName(model: Qwen2Model): string {
  return model.config.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
}

/**
 * The two products with the LM head's weight W [V, H] that a fused head needs to form its
 * gradient without the logits' tape (`lib/grpo.ts`): `dLogits @ W` ([N, V] → [N, H]) and W's
 * rows at `ids` ([N] → [N, H]).
 *
 * @param model The model.
 * @param dLogits [N, V], or null to skip.
 * @param ids [N] int32, or null to skip.
 * @returns `{ dHidden, rows }`, each null when skipped. The caller disposes them.
 * @example Usage
 * ```ts ignore
 * const { dHidden } = lmHeadProducts(model, dLogits, null); // [N, H]
 * ```
 */
export function lmHeadProducts(
  model: Qwen2Model,
  dLogits: tf.Tensor2D | null,
  ids: tf.Tensor1D | null,
): { dHidden: tf.Tensor2D | null; rows: tf.Tensor2D | null } {
  const name = lmHeadName(model);
  const external = model.external.get(name);
  return tf.tidy(() => {
    let dHidden: tf.Tensor2D | null = null;
    let rows: tf.Tensor2D | null = null;
    if (dLogits) {
      dHidden = external
        ? externalMatMul(dLogits, external, { transposeB: false })
        : tf.matMul(dLogits, weight(model, name) as tf.Tensor2D); // [N, H]
    }
    if (ids) {
      rows = (external
        ? externalGather(external, ids)
        : tf.gather(weight(model, name), ids)) as tf.Tensor2D; // [N, H]
    }
    return { dHidden, rows } as { dHidden: tf.Tensor2D; rows: tf.Tensor2D };
  });
}

/** Logits of final hidden states: `h @ lm_head^T` (embed_tokens when tied). [..., H] → [..., V]. */
export function lmHead(model: Qwen2Model, hidden: tf.Tensor): tf.Tensor {
  const name = lmHeadName(model);
  return tf.tidy(() => {
    const lead = hidden.shape.slice(0, -1);
    const h2 = hidden.reshape([-1, hidden.shape[hidden.shape.length - 1]]) as tf.Tensor2D;
    const logits = matMulWeight(model, name, h2); // [N, V]
    return logits.reshape([...lead, logits.shape[1]]);
  });
}

/**
 * Final (normed) hidden states of a batch, without the LM head.
 *
 * @param model The model.
 * @param inputIds [B, T] int32.
 * @param options Mask, positions, adapter, checkpointing, `keepLast`.
 * @returns [B, T, H], or [B, keepLast, H]. The caller disposes it.
 * @example Usage
 * ```ts ignore
 * const h = hiddenStates(model, tf.tensor2d([[1, 2, 3]], [1, 3], "int32"));
 * ```
 */
export function hiddenStates(
  model: Qwen2Model,
  inputIds: tf.Tensor2D,
  options: ForwardOptions = {},
): tf.Tensor3D {
  return tf.tidy(() => layerStack(model, inputIds, options, null).h);
}

/**
 * {@linkcode hiddenStates} of positions P - 1 .. T - 1 of a batch whose rows share prompts (GRPO's
 * groups of completions), computing each distinct prompt once: the prompts go through the model
 * as a prefill into a KV cache, which each row's completion tokens then attend to. Inference only
 * (no gradient, no dropout), and only with the fused attention kernels: elsewhere it is
 * `hiddenStates` with `keepLast: T - P + 1`. The values are those of the full pass at every
 * real position (right padding after a completion may differ: its outputs are never read).
 *
 * @param model The model.
 * @param inputIds [B, T] int32: left-padded prompts of width P, then the completions.
 * @param options `attentionMask` [B, T], `adapter`, `promptLength` P, and `promptOf`: for each
 *   row, the index of a row with the same prompt (rows with equal entries share one prefill).
 * @returns [B, T - P + 1, H]. The caller disposes it.
 * @example Usage
 * ```ts ignore
 * const h = sharedPromptHiddenStates(model, ids, { attentionMask, adapter: null, promptLength: 5, promptOf: [0, 0, 2, 2] });
 * ```
 */
export function sharedPromptHiddenStates(
  model: Qwen2Model,
  inputIds: tf.Tensor2D,
  options: {
    attentionMask: tf.Tensor2D;
    adapter?: LinearAdapter | null;
    promptLength: number;
    promptOf: number[];
  },
): tf.Tensor3D {
  const [B, T] = inputIds.shape;
  const { attentionMask, adapter, promptLength: P, promptOf } = options;
  if (!Number.isInteger(P) || P < 1 || P >= T) {
    throw new RangeError(`Expected promptLength in [1, ${T - 1}], got ${P}`);
  }
  if (promptOf.length !== B || promptOf.some((u) => !(u >= 0 && u < B))) {
    throw new RangeError(`Expected promptOf to hold ${B} row indices, got [${promptOf}]`);
  }
  if (!fusedAttentionAvailable()) {
    return hiddenStates(model, inputIds, { attentionMask, adapter, keepLast: T - P + 1 });
  }
  const unique = [...new Set(promptOf)];
  const C = T - P;
  return tf.tidy(() => {
    const pick = tf.tensor1d(unique, "int32"); // [U]
    const expand = tf.tensor1d(promptOf.map((u) => unique.indexOf(u)), "int32"); // [B]
    const promptIds = tf.gather(inputIds.slice([0, 0], [B, P]), pick) as tf.Tensor2D; // [U, P]
    const promptMask = tf.gather(attentionMask.slice([0, 0], [B, P]), pick) as tf.Tensor2D;
    const pre = layerStack(model, promptIds, { attentionMask: promptMask, adapter }, null, true, C);
    const cache: KVCache = {
      keys: pre.keys.map((k) => tf.gather(k, expand) as tf.Tensor4D), // [B, nKV, P + C, hd]
      values: pre.values.map((v) => tf.gather(v, expand) as tf.Tensor4D),
      attentionMask: tf.gather(tf.cast(pre.mask, "int32"), expand) as tf.Tensor2D, // [B, P + C]
      nextPositions: tf.gather(tf.sum(tf.cast(promptMask, "int32"), 1), expand) as tf.Tensor1D,
      length: P,
    };
    const completion = inputIds.slice([0, P], [B, C]) as tf.Tensor2D; // [B, C]
    const h = layerStack(model, completion, { adapter }, cache).h; // [B, C, H]
    const last = tf.gather(pre.h.slice([0, P - 1, 0], [-1, 1, -1]), expand); // [B, 1, H]
    return tf.concat([last, h], 1) as tf.Tensor3D; // [B, C + 1, H]
  });
}

/**
 * Full forward pass: logits of every position (`Qwen2ForCausalLM.forward`).
 *
 * @param model The model.
 * @param inputIds [B, T] int32.
 * @param options Mask (left padding), positions, adapter.
 * @returns [B, T, V] logits. The caller disposes it.
 * @example Usage
 * ```ts ignore
 * const logits = forward(model, tf.tensor2d([[256, 72, 105]], [1, 3], "int32"));
 * ```
 */
export function forward(
  model: Qwen2Model,
  inputIds: tf.Tensor2D,
  options: ForwardOptions = {},
): tf.Tensor3D {
  return tf.tidy(() => lmHead(model, layerStack(model, inputIds, options, null).h) as tf.Tensor3D);
}

/**
 * Runs the prompt through the model and returns the last position's logits and a KV cache.
 *
 * @param model The model.
 * @param inputIds [B, T] int32, left-padded.
 * @param options `attentionMask` [B, T] and `adapter`.
 * @returns `logits` [B, V] of the last position, and the cache. The caller disposes both
 *   (`disposeCache`).
 * @example Usage
 * ```ts ignore
 * const { logits, cache } = prefill(model, ids, { attentionMask });
 * ```
 */
export function prefill(
  model: Qwen2Model,
  inputIds: tf.Tensor2D,
  options: Pick<ForwardOptions, "attentionMask" | "adapter"> & {
    /** Most attention scores per layer in one row chunk; default 2^26 (256 MiB). */
    maxAttentionFloats?: number;
  } = {},
): { logits: tf.Tensor2D; cache: KVCache } {
  const [B, T] = inputIds.shape;
  const budget = options.maxAttentionFloats ?? ATTENTION_CHUNK_FLOATS;
  // Long prompts: the attention scores of a layer are [B, nH, T, T]; run the prompt in row chunks
  // of at most `budget` scores and join the caches (MATH-500 prompts reach ~1,000
  // tokens on a character-level tokenizer).
  const rows = Math.max(
    1,
    Math.floor(budget / (model.config.num_attention_heads * T * T)),
  );
  if (rows < B) {
    const parts: { logits: tf.Tensor2D; cache: KVCache }[] = [];
    for (let b = 0; b < B; b += rows) {
      const n = Math.min(rows, B - b);
      const ids = inputIds.slice([b, 0], [n, T]);
      const mask = options.attentionMask?.slice([b, 0], [n, T]);
      parts.push(
        prefill(model, ids, { ...options, attentionMask: mask, maxAttentionFloats: Infinity }),
      );
      tf.dispose([ids, ...(mask ? [mask] : [])]);
    }
    const layers = model.config.num_hidden_layers;
    const joined = {
      logits: tf.concat(parts.map((p) => p.logits), 0) as tf.Tensor2D,
      cache: {
        keys: Array.from(
          { length: layers },
          (_, i) => tf.concat(parts.map((p) => p.cache.keys[i]), 0),
        ),
        values: Array.from(
          { length: layers },
          (_, i) => tf.concat(parts.map((p) => p.cache.values[i]), 0),
        ),
        attentionMask: tf.concat(parts.map((p) => p.cache.attentionMask), 0) as tf.Tensor2D,
        nextPositions: tf.concat(parts.map((p) => p.cache.nextPositions), 0) as tf.Tensor1D,
        length: T,
      },
    };
    for (const p of parts) {
      p.logits.dispose();
      disposeCache(p.cache);
    }
    return joined;
  }
  const out = tf.tidy(() => {
    const mask = options.attentionMask ?? tf.ones([B, T], "int32");
    const s = layerStack(
      model,
      inputIds,
      { attentionMask: mask, adapter: options.adapter },
      null,
      true,
    );
    const last = s.h.slice([0, T - 1, 0], [B, 1, -1]).reshape([B, -1]);
    const nextPositions = tf.sum(tf.cast(mask, "int32"), 1) as tf.Tensor1D; // [B]
    return {
      logits: lmHead(model, last) as tf.Tensor2D,
      keys: s.keys,
      values: s.values,
      attentionMask: tf.cast(s.mask, "int32") as tf.Tensor2D,
      nextPositions,
    };
  });
  return {
    logits: out.logits,
    cache: {
      keys: out.keys,
      values: out.values,
      attentionMask: out.attentionMask,
      nextPositions: out.nextPositions,
      length: T,
    },
  };
}

/**
 * The same cache with room for `needed` positions (doubling), for the fused path that appends in
 * place. The old tensors are disposed.
 */
function withRoom(cache: KVCache, needed: number): KVCache {
  const [B, nKV, capacity, hd] = cache.keys[0].shape;
  if (needed <= capacity) return cache;
  const extra = Math.max(needed, 2 * capacity) - capacity;
  const grown = tf.tidy(() => ({
    keys: cache.keys.map((k) => tf.concat([k, tf.zeros([B, nKV, extra, hd])], 2) as tf.Tensor4D),
    values: cache.values.map((v) =>
      tf.concat([v, tf.zeros([B, nKV, extra, hd])], 2) as tf.Tensor4D
    ),
    attentionMask: tf.concat([
      tf.cast(cache.attentionMask, "int32"),
      tf.ones([B, extra], "int32"),
    ], 1) as tf.Tensor2D,
  }));
  tf.dispose([...cache.keys, ...cache.values, cache.attentionMask]);
  return { ...cache, ...grown };
}

/**
 * Feeds one new token per row, extending the cache. The old cache is disposed.
 *
 * @param model The model.
 * @param cache From {@linkcode prefill} or a previous step; disposed here.
 * @param tokenIds [B] int32 tokens to append.
 * @param options `adapter`.
 * @returns `logits` [B, V] for the next token and the new cache. The caller disposes both.
 * @example Usage
 * ```ts ignore
 * ({ logits, cache } = decodeStep(model, cache, nextIds));
 * ```
 */
export function decodeStep(
  model: Qwen2Model,
  cache: KVCache,
  tokenIds: tf.Tensor1D,
  options: Pick<ForwardOptions, "adapter"> = {},
): { logits: tf.Tensor2D; cache: KVCache } {
  const B = tokenIds.shape[0];
  const fused = fusedAttentionAvailable();
  // The fused path appends to the cache's own tensors in place (making room first); the stock
  // path builds new ones by concatenation.
  const past = fused ? withRoom(cache, cache.length + 1) : cache;
  const out = tf.tidy(() => {
    const ids = tokenIds.reshape([B, 1]) as tf.Tensor2D;
    const s = layerStack(model, ids, { adapter: options.adapter }, past);
    return {
      logits: lmHead(model, s.h.reshape([B, -1])) as tf.Tensor2D,
      keys: s.keys,
      values: s.values,
      attentionMask: s.mask,
      nextPositions: tf.add(past.nextPositions, 1) as tf.Tensor1D,
    };
  });
  if (fused) past.nextPositions.dispose();
  else disposeCache(past);
  return {
    logits: out.logits,
    cache: {
      keys: out.keys,
      values: out.values,
      attentionMask: out.attentionMask,
      nextPositions: out.nextPositions,
      length: past.length + 1,
    },
  };
}

/** Frees a KV cache. */
export function disposeCache(cache: KVCache): void {
  tf.dispose([...cache.keys, ...cache.values, cache.attentionMask, cache.nextPositions]);
}
