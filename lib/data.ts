/**
 * Dataset loading: the seed guide's JSON format, GSM8K JSONL and MATH (prm800k) JSONL, all mapped
 * to one record type, {@linkcode Example}. `parseDataset` is pure; `loadDataset` reads the file.
 *
 * Formats (field names are the upstream column names):
 * - `seed`: the seed guide's rows `{"question", "ground_truth", "predicted_answer"?, "correct"?, ...}`,
 *   usually a JSON array; an optional `solution` string is kept (our `data/demo/*.json` have one).
 * - `gsm8k`: openai/grade-school-math rows `{"question", "answer"}`; the final answer is the text
 *   after `####` on the last line, with thousands commas removed (`1,080` → `1080`).
 * - `math`: openai/prm800k `math_splits` rows `{"problem", "solution", "answer", "subject", "level",
 *   "unique_id"}`; `subject` and `level` are kept.
 *
 * Order of operations, as in TRL/HF `datasets` (`dataset.select(range(max_samples))`, then the
 * trainer's sampler shuffles): rows are read in file order, bad rows are rejected or skipped, the
 * first `max_samples` good rows are kept, and only then the kept rows are shuffled (if asked).
 *
 * @module
 */
import type { Config } from "./config.ts";
import { DataError } from "./errors.ts";
import { readText } from "./_fs.ts";

/** One problem, whatever file format it came from. */
export interface Example {
  /** `unique_id` (MATH) or `id` (seed) when the row has one, else `<file name>#<record index>`. */
  id: string;
  /** The problem text (`question`, or MATH `problem`), verbatim. */
  question: string;
  /** The final answer, trimmed (`ground_truth`, GSM8K text after `####`, MATH `answer`). */
  answer: string;
  /** A worked solution when the row has one (GSM8K: the text before the `####` line). */
  solution?: string;
  /** `file:line` where the row starts, 1-based. */
  source: string;
  /** MATH subject, e.g. "Precalculus". */
  subject?: string;
  /** MATH difficulty level, 1 (easiest) to 5. */
  level?: number;
}

/** A concrete row format; `"auto"` in {@linkcode DatasetOptions} picks one of these. */
export type DatasetFormat = "seed" | "gsm8k" | "math";

/** Options for {@linkcode parseDataset} and {@linkcode loadDataset}; the fields mirror `config.data`. */
export interface DatasetOptions {
  /** Row format, or `"auto"` (default): detected from the first row's fields. */
  format?: "auto" | DatasetFormat;
  /** Keep only the first N good rows in file order (before shuffling); null/undefined keeps all. */
  max_samples?: number | null;
  /** `"error"` (default): a bad row throws {@linkcode DataError}. `"skip"`: it is skipped and counted. */
  on_bad_row?: "error" | "skip";
  /** Shuffle the kept rows with {@linkcode shuffle} (default false). */
  shuffle?: boolean;
  /** PRNG seed for the shuffle (default 42, like `training.seed`). */
  seed?: number;
}

/** What {@linkcode parseDataset} and {@linkcode loadDataset} return. */
export interface LoadedDataset {
  /** The kept rows, in file order unless `shuffle` was set. */
  examples: Example[];
  /** How many bad rows were skipped (always 0 with `on_bad_row: "error"`). */
  skipped: number;
  /** Line and reason of each skipped row. */
  skippedRows: { line: number; reason: string }[];
  /** The format the rows were read as. */
  format: DatasetFormat;
}

/**
 * mulberry32, a 32-bit seeded PRNG (Tommy Ettinger's public-domain generator, as in
 * https://github.com/bryc/code/blob/master/jshash/PRNGs.md#mulberry32). Same seed, same stream.
 *
 * @param seed Any integer; only its low 32 bits are used.
 * @returns A function giving floats in [0, 1).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { mulberry32 } from "./data.ts";
 * const a = mulberry32(7), b = mulberry32(7);
 * assert.equal(a(), b());
 * ```
 */
export function mulberry32(seed: number): () => number {
  if (!Number.isInteger(seed)) {
    throw new RangeError(`Expected seed to be an integer but found ${seed}`);
  }
  let state = seed >>> 0;
  return function next(): number {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A seeded Fisher-Yates shuffle driven by {@linkcode mulberry32}. Does not mutate `items`.
 *
 * @param items The values to shuffle.
 * @param seed PRNG seed; the same seed gives the same permutation.
 * @returns A new array holding a permutation of `items`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { shuffle } from "./data.ts";
 * assert.deepEqual(shuffle([1, 2, 3, 4], 1), shuffle([1, 2, 3, 4], 1));
 * assert.deepEqual(shuffle([1, 2, 3, 4], 1).sort(), [1, 2, 3, 4]);
 * ```
 */
export function shuffle<T>(items: readonly T[], seed: number): T[] {
  const random = mulberry32(seed);
  const out = items.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/**
 * A deterministic 32-bit seed of (base seed, parts...), so every step's randomness (prompt
 * order, sampling, LoRA dropout) is a function of the config's seed and the step: a resumed run
 * draws exactly what an uninterrupted one draws.
 *
 * @param seed The base seed (`training.seed`).
 * @param parts Integers that name the draw, e.g. (step, 1) for a step's rollout.
 * @returns An unsigned 32-bit integer.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { deriveSeed } from "./data.ts";
 * assert.equal(deriveSeed(42, 3, 1), deriveSeed(42, 3, 1));
 * assert.notEqual(deriveSeed(42, 3, 1), deriveSeed(42, 3, 2));
 * ```
 */
export function deriveSeed(seed: number, ...parts: number[]): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x85ebca6b) >>> 0;
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
    h = (h ^ (h >>> 16)) >>> 0;
  }
  return h;
}

/** A row's JSON value with the 1-based line it starts on. */
interface RawRow {
  line: number;
  /** Record index in the file (0-based), used for default ids. */
  index: number;
  value?: unknown;
  /** Set when the row is not valid JSON. */
  parseError?: string;
}

/**
 * Parses dataset text (a JSON array or JSON Lines) into {@linkcode Example}s. Pure: no file I/O.
 *
 * A JSON array is one record per element; anything else is JSON Lines (blank lines ignored).
 * `.jsonl` files are always read as JSON Lines. Errors name `file:line`, the line where the row
 * starts. Rows after the `max_samples` cut are not validated.
 *
 * @param text The file contents.
 * @param file The path, used in `source`, ids and error messages.
 * @param options Format, `max_samples`, `on_bad_row`, `shuffle`, `seed`.
 * @returns The kept examples, the skipped-row count and the detected format.
 * @throws {DataError} On a bad row (unless `on_bad_row: "skip"`), a file that is not JSON, an
 *   undetectable format, or when no rows are left.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseDataset } from "./data.ts";
 * const text = '{"question": "1+1?", "answer": "1 + 1 = 2\\n#### 2"}\n';
 * const { examples, format } = parseDataset(text, "mini.jsonl");
 * assert.equal(format, "gsm8k");
 * assert.deepEqual(examples[0], {
 *   id: "mini.jsonl#0", question: "1+1?", answer: "2", solution: "1 + 1 = 2", source: "mini.jsonl:1",
 * });
 * ```
 */
export function parseDataset(
  text: string,
  file: string,
  options: DatasetOptions = {},
): LoadedDataset {
  const {
    format = "auto",
    max_samples = null,
    on_bad_row = "error",
    shuffle: doShuffle = false,
    seed = 42,
  } = options;
  if (!["auto", "seed", "gsm8k", "math"].includes(format)) {
    throw new RangeError(`Expected format to be auto, seed, gsm8k or math but found ${format}`);
  }
  if (max_samples !== null && (!Number.isInteger(max_samples) || max_samples < 1)) {
    throw new RangeError(
      `Expected max_samples to be null or an integer >= 1 but found ${max_samples}`,
    );
  }
  if (on_bad_row !== "error" && on_bad_row !== "skip") {
    throw new RangeError(`Expected on_bad_row to be "error" or "skip" but found ${on_bad_row}`);
  }
  if (!Number.isInteger(seed)) {
    throw new RangeError(`Expected seed to be an integer but found ${seed}`);
  }

  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // UTF-8 BOM
  if (text.trim() === "") throw new DataError(`Cannot load ${file}: file is empty`, { file });
  const rows = isJsonArrayText(text, file) ? splitJsonArray(text, file) : splitJsonLines(text);
  if (rows.length === 0) {
    throw new DataError(`Cannot load ${file}: dataset is empty: no rows`, { file });
  }
  const rowFormat = format === "auto" ? detectFormat(rows, file) : format;
  const name = file.split(/[\\/]/).pop() ?? file;

  const examples: Example[] = [];
  const skippedRows: { line: number; reason: string }[] = [];
  for (const row of rows) {
    if (max_samples !== null && examples.length >= max_samples) break;
    const result = row.parseError !== undefined
      ? `not valid JSON (${row.parseError})`
      : toExample(row.value, rowFormat, `${file}:${row.line}`, `${name}#${row.index}`);
    if (typeof result !== "string") {
      examples.push(result);
    } else if (on_bad_row === "skip") {
      skippedRows.push({ line: row.line, reason: result });
    } else {
      throw new DataError(`Cannot load ${file}:${row.line}: ${result}`, { file, line: row.line });
    }
  }
  if (examples.length === 0) {
    const why = skippedRows.length > 0
      ? `all ${skippedRows.length} rows are bad (first, line ${skippedRows[0].line}: ${
        skippedRows[0].reason
      })`
      : "no rows";
    throw new DataError(`Cannot load ${file}: dataset is empty: ${why}`, { file });
  }
  return {
    examples: doShuffle ? shuffle(examples, seed) : examples,
    skipped: skippedRows.length,
    skippedRows,
    format: rowFormat,
  };
}

/**
 * Reads a dataset file and parses it with {@linkcode parseDataset}. The only function here that
 * touches the file system.
 *
 * @param path The data file (`.json` array or `.jsonl`).
 * @param options Format, `max_samples`, `on_bad_row`, `shuffle`, `seed`.
 * @returns The kept examples, the skipped-row count and the detected format.
 * @throws {DataError} When the file cannot be read, or as {@linkcode parseDataset}.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadDataset } from "./data.ts";
 * const { examples } = await loadDataset("data/math500/test.jsonl", { max_samples: 2 });
 * assert.equal(examples[0].id, "test/precalculus/807.json");
 * assert.equal(examples[0].level, 2);
 * ```
 */
export async function loadDataset(
  path: string,
  options: DatasetOptions = {},
): Promise<LoadedDataset> {
  const text = await readText(path, { error: DataError });
  return parseDataset(text, path, options);
}

/** True when the text is one JSON array (not JSON Lines). `.jsonl` files are always JSON Lines. */
function isJsonArrayText(text: string, file: string): boolean {
  if (file.toLowerCase().endsWith(".jsonl")) return false;
  return text.trimStart().startsWith("[");
}

/** One JSON value per non-blank line. */
function splitJsonLines(text: string): RawRow[] {
  const rows: RawRow[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, "");
    if (line.trim() === "") continue;
    try {
      rows.push({ line: i + 1, index: rows.length, value: JSON.parse(line) });
    } catch (error) {
      rows.push({ line: i + 1, index: rows.length, parseError: (error as Error).message });
    }
  }
  return rows;
}

/** Elements of a top-level JSON array, each with the line its first character is on. */
function splitJsonArray(text: string, file: string): RawRow[] {
  let values: unknown;
  try {
    values = JSON.parse(text);
  } catch (error) {
    const message = (error as Error).message;
    const position = /at position (\d+)/.exec(message);
    // NOTE: V8 reports "Unexpected end of JSON input" without a position; blame the last line.
    const offset = position ? Number(position[1]) : text.trimEnd().length;
    const line = lineAt(text, offset);
    throw new DataError(`Cannot load ${file}:${line}: not valid JSON (${message})`, {
      file,
      line,
      cause: error,
    });
  }
  if (!Array.isArray(values)) {
    throw new DataError(`Cannot load ${file}: expected a JSON array of rows`, { file });
  }
  const lines = arrayElementLines(text);
  return values.map((value, index) => ({ line: lines[index], index, value }));
}

/** 1-based line of character `offset`. */
function lineAt(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text[i] === "\n") line++;
  return line;
}

/**
 * The starting line of each element of the top-level array in `text`, which must be valid JSON
 * (so raw newlines never occur inside strings).
 */
function arrayElementLines(text: string): number[] {
  const lines: number[] = [];
  let depth = 0;
  let line = 1;
  let inString = false;
  let expectElement = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === "\n") line++;
    if (inString) {
      if (ch === "\\") i++; // skip the escaped character
      else if (ch === '"') inString = false;
      continue;
    }
    if (expectElement && ch !== " " && ch !== "\t" && ch !== "\n" && ch !== "\r") {
      if (ch !== "]") lines.push(line);
      expectElement = false;
    }
    if (ch === '"') inString = true;
    else if (ch === "[" || ch === "{") {
      depth++;
      if (depth === 1) expectElement = true;
    } else if (ch === "]" || ch === "}") depth--;
    else if (ch === "," && depth === 1) expectElement = true;
  }
  return lines;
}

/** Picks the format from the first row whose fields identify one. */
function detectFormat(rows: RawRow[], file: string): DatasetFormat {
  for (const row of rows) {
    const value = row.value;
    if (!isRecord(value)) continue;
    if ("problem" in value) return "math";
    if ("ground_truth" in value) return "seed";
    if ("question" in value && "answer" in value) return "gsm8k";
  }
  throw new DataError(
    `Cannot load ${file}: cannot detect the format: no row has "ground_truth" (seed), ` +
      `"question" and "answer" (gsm8k) or "problem" (math); set data.format`,
    { file },
  );
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/** A required non-empty string field, or the reason it is bad. */
function requireText(row: Record<string, unknown>, key: string): string | { bad: string } {
  if (!(key in row)) return { bad: `missing field "${key}"` };
  const value = row[key];
  if (typeof value !== "string") {
    return { bad: `field "${key}" must be a string, got ${typeName(value)}` };
  }
  if (value.trim() === "") return { bad: `field "${key}" is empty` };
  return value;
}

/** A final answer: a non-empty string, or a finite number (written back as a string). */
function requireAnswer(row: Record<string, unknown>, key: string): string | { bad: string } {
  const value = row[key];
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  const text = requireText(row, key);
  if (typeof text !== "string") {
    if (key in row && typeof value !== "string") {
      return { bad: `field "${key}" must be a string or a number, got ${typeName(value)}` };
    }
    return text;
  }
  return text.trim();
}

/** An optional field of the given type; undefined when absent (or null), or the reason it is bad. */
function optional<T>(
  row: Record<string, unknown>,
  key: string,
  check: (value: unknown) => value is T,
  expected: string,
): T | undefined | { bad: string } {
  const value = row[key];
  if (value === undefined || value === null) return undefined;
  if (!check(value)) return { bad: `field "${key}" must be ${expected}, got ${typeName(value)}` };
  return value;
}

function isString(value: unknown): value is string {
  return typeof value === "string";
}

function isLevel(value: unknown): value is number {
  return Number.isInteger(value);
}

function isBad(value: unknown): value is { bad: string } {
  return isRecord(value) && typeof value.bad === "string";
}

/** GSM8K: the final answer is on the last line, after `####`; thousands commas are removed. */
function splitGsm8kAnswer(answer: string): { solution: string; answer: string } | { bad: string } {
  const at = answer.lastIndexOf("####");
  if (at < 0) return { bad: `field "answer" has no "#### <final answer>" line` };
  const final = answer.slice(at + 4).trim().replace(/(\d),(?=\d{3}(?!\d))/g, "$1");
  if (final === "") return { bad: `field "answer" has an empty final answer after "####"` };
  return { solution: answer.slice(0, at).trim(), answer: final };
}

/** Maps one parsed row to an Example, or returns the reason it is bad. */
function toExample(
  value: unknown,
  format: DatasetFormat,
  source: string,
  defaultId: string,
): Example | string {
  if (!isRecord(value)) return `row must be a JSON object, got ${typeName(value)}`;
  if (format === "seed") {
    const question = requireText(value, "question");
    if (isBad(question)) return question.bad;
    const answer = requireAnswer(value, "ground_truth");
    if (isBad(answer)) return answer.bad;
    const solution = optional(value, "solution", isString, "a string");
    if (isBad(solution)) return solution.bad;
    const id = typeof value.id === "string" || typeof value.id === "number"
      ? String(value.id)
      : defaultId;
    return withOptional({ id, question, answer, source }, { solution });
  }
  if (format === "gsm8k") {
    const question = requireText(value, "question");
    if (isBad(question)) return question.bad;
    const answerText = requireText(value, "answer");
    if (isBad(answerText)) return answerText.bad;
    const split = splitGsm8kAnswer(answerText);
    if (isBad(split)) return split.bad;
    return withOptional({ id: defaultId, question, answer: split.answer, source }, {
      solution: split.solution === "" ? undefined : split.solution,
    });
  }
  const question = requireText(value, "problem");
  if (isBad(question)) return question.bad;
  const answer = requireAnswer(value, "answer");
  if (isBad(answer)) return answer.bad;
  const solution = optional(value, "solution", isString, "a string");
  if (isBad(solution)) return solution.bad;
  const subject = optional(value, "subject", isString, "a string");
  if (isBad(subject)) return subject.bad;
  const level = optional(value, "level", isLevel, "an integer");
  if (isBad(level)) return level.bad;
  const uniqueId = optional(value, "unique_id", isString, "a string");
  if (isBad(uniqueId)) return uniqueId.bad;
  return withOptional({ id: uniqueId ?? defaultId, question, answer, source }, {
    solution,
    subject,
    level,
  });
}

/** Adds the optional fields that are defined, so absent ones are absent (not `undefined`). */
function withOptional(
  base: Pick<Example, "id" | "question" | "answer" | "source">,
  extra: Pick<Example, "solution" | "subject" | "level">,
): Example {
  const example: Example = { ...base };
  if (extra.solution !== undefined) example.solution = extra.solution;
  if (extra.subject !== undefined) example.subject = extra.subject;
  if (extra.level !== undefined) example.level = extra.level;
  return example;
}

// ---------------------------------------------------------------------------------------------
// The trainer's sampler: which prompts each optimizer step sees

/**
 * Prompts per optimizer step. As in TRL (and the seed's arithmetic: 18,946 prompts × 2
 * generations / 16 = ~2,370 steps per epoch), per_device_train_batch_size counts completions:
 * a step sees per_device_train_batch_size × gradient_accumulation_steps completions, that is
 * that many / num_return_sequences prompts.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { defaultConfig } from "./config.ts";
 * import { promptsPerStep } from "./data.ts";
 * const config = defaultConfig();
 * config.training.per_device_train_batch_size = 16;
 * config.training.gradient_accumulation_steps = 4;
 * config.grpo.num_return_sequences = 8;
 * assert.equal(promptsPerStep(config), 8);
 * ```
 */
export function promptsPerStep(
  config: { training: Config["training"]; grpo: Pick<Config["grpo"], "num_return_sequences"> },
): number {
  const completions = config.training.per_device_train_batch_size *
    config.training.gradient_accumulation_steps;
  const g = config.grpo.num_return_sequences;
  if (completions % g !== 0) {
    throw new RangeError(
      `per_device_train_batch_size * gradient_accumulation_steps (${completions}) must be a ` +
        `multiple of num_return_sequences (${g})`,
    );
  }
  return completions / g;
}

/** Total optimizer steps of a run on `n` prompts. */
export function totalSteps(
  n: number,
  config: { training: Config["training"]; grpo: Pick<Config["grpo"], "num_return_sequences"> },
): number {
  if (config.training.max_steps > 0) return config.training.max_steps;
  return Math.ceil(n / promptsPerStep(config)) * config.training.num_epochs;
}

/**
 * Where the trainer is in its prompt order; saved in `trainer_state.json` so that a resumed run
 * draws what an uninterrupted one draws, however many prompts each step took.
 */
export interface PromptOrderState {
  /** Prompts taken from the order so far, skipped ones included. */
  position: number;
  /**
   * With a difficulty-aware order: the prompts whose last group was all correct (`easy`) or had
   * no correct completion (`hard`), by {@linkcode Example.id}; others are absent.
   */
  outcomes: Record<string, "easy" | "hard">;
}

/** How {@linkcode nextPrompts} walks the data. */
export interface PromptOrderOptions {
  /** Prompts per draw; each epoch is topped up from its own start to a multiple of it. */
  batchSize: number;
  /** The base seed (`training.seed`). */
  seed: number;
  /** Walk a seeded shuffle, reshuffled each epoch (`data.shuffle`). */
  shuffle: boolean;
  /** Probability of skipping an `easy` prompt when the order reaches it (`data.skip_easy_prob`). */
  skipEasy?: number;
  /** Probability of skipping a `hard` prompt when the order reaches it (`data.skip_hard_prob`). */
  skipHard?: number;
}

/**
 * The next `batchSize` prompts of the training order from `state.position`. The order walks
 * epochs of a seeded shuffle (reshuffled each epoch), each topped up from its own start to a
 * multiple of `batchSize`, so a run that draws one batch per step sees what
 * {@linkcode promptsForStep} gives. With `skipEasy` / `skipHard`, a prompt whose last group was
 * all correct / all wrong is passed over with that probability (a seeded draw per position),
 * in the spirit of GRESO's pre-rollout skipping of prompts whose recent groups had zero reward
 * variance (arXiv:2506.02177 §4; differs: fixed probabilities, the last group only). Pure: the
 * returned state is new; `outcomes` is shared, not copied.
 *
 * @param examples The training prompts.
 * @param state Where the order is.
 * @param options Batch size, seed, shuffle and skip probabilities (each < 1).
 * @returns The prompts, the state after them, how many prompts were skipped, and the epoch
 *   reached (completed epochs as a fraction).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { nextPrompts } from "./data.ts";
 * const rows = ["a", "b", "c"].map((q) => ({ id: q, question: q, answer: "1", source: q }));
 * const options = { batchSize: 2, seed: 0, shuffle: false, skipEasy: 0.99 };
 * const first = nextPrompts(rows, { position: 0, outcomes: { b: "easy" } }, options);
 * assert.deepEqual(first.examples.map((e) => e.id), ["a", "c"]); // "b" was very likely skipped
 * assert.equal(first.state.position, 3);
 * ```
 */
export function nextPrompts(
  examples: readonly Example[],
  state: PromptOrderState,
  options: PromptOrderOptions,
): { examples: Example[]; state: PromptOrderState; skipped: number; epoch: number } {
  const { batchSize: per, seed } = options;
  if (!Number.isInteger(per) || per < 1) {
    throw new RangeError(`Expected batchSize to be an integer >= 1 but found ${per}`);
  }
  if (examples.length === 0) throw new RangeError("Cannot draw prompts from an empty dataset");
  const skip = { easy: options.skipEasy ?? 0, hard: options.skipHard ?? 0 };
  for (const [kind, p] of Object.entries(skip)) {
    if (!(p >= 0 && p < 1)) {
      throw new RangeError(`Expected the ${kind} skip probability in [0, 1) but found ${p}`);
    }
  }
  const n = examples.length;
  const epochLength = Math.ceil(n / per) * per;
  let epoch = -1;
  let order: readonly Example[] = examples;
  let position = state.position;
  let skipped = 0;
  const out: Example[] = [];
  while (out.length < per) {
    const e = Math.floor(position / epochLength);
    if (e !== epoch) {
      epoch = e;
      order = options.shuffle ? shuffle(examples, deriveSeed(seed, e)) : examples;
    }
    const example = order[(position % epochLength) % n];
    const outcome = state.outcomes[example.id];
    // One uniform per position (not a stream), so any position can be recomputed on resume.
    const u = outcome === undefined ? 1 : deriveSeed(seed, 5, position) / 4294967296;
    position++;
    if (u < (outcome === undefined ? 0 : skip[outcome])) skipped++;
    else out.push(example);
  }
  return {
    examples: out,
    state: { position, outcomes: state.outcomes },
    skipped,
    // As steps / steps per epoch, so that one batch per step gives promptsForStep's epoch exactly.
    epoch: position / per / (epochLength / per),
  };
}

/**
 * Records each drawn prompt's outcome for the difficulty-aware order: `easy` when all of its
 * group was correct, `hard` when none was, else forgotten. Pure: returns a new state.
 *
 * @param state The order state.
 * @param groups Each drawn prompt's id with its correct and total completions.
 * @returns The state with the new outcomes.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { recordOutcomes } from "./data.ts";
 * const state = recordOutcomes({ position: 4, outcomes: { a: "hard" } }, [
 *   { id: "a", correct: 1, total: 4 },
 *   { id: "b", correct: 4, total: 4 },
 * ]);
 * assert.deepEqual(state.outcomes, { b: "easy" });
 * ```
 */
export function recordOutcomes(
  state: PromptOrderState,
  groups: readonly { id: string; correct: number; total: number }[],
): PromptOrderState {
  const outcomes = { ...state.outcomes };
  for (const g of groups) {
    if (g.correct === g.total) outcomes[g.id] = "easy";
    else if (g.correct === 0) outcomes[g.id] = "hard";
    else delete outcomes[g.id];
  }
  return { position: state.position, outcomes };
}

/**
 * The prompts of optimizer step `step` (0-based) when every step draws one batch: epochs walk
 * a seeded shuffle of the data (reshuffled each epoch), wrapping at the end, so any step can be
 * recomputed on resume. {@linkcode nextPrompts} from position `step × perStep`.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { promptsForStep } from "./data.ts";
 * const rows = ["a", "b", "c"].map((q) => ({ id: q, question: q, answer: "1", source: q }));
 * const step1 = promptsForStep(rows, 1, { perStep: 2, seed: 0, shuffle: false });
 * assert.deepEqual(step1.examples.map((e) => e.id), ["c", "a"]); // topped up from the start
 * ```
 */
export function promptsForStep(
  examples: Example[],
  step: number,
  options: { perStep: number; seed: number; shuffle: boolean },
): { examples: Example[]; epoch: number } {
  const drawn = nextPrompts(examples, { position: step * options.perStep, outcomes: {} }, {
    batchSize: options.perStep,
    seed: options.seed,
    shuffle: options.shuffle,
  });
  return { examples: drawn.examples, epoch: drawn.epoch };
}
