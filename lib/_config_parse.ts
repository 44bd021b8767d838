/**
 * The machinery behind `parseConfig` (lib/config.ts), private to lib: flat seed keys and aliases
 * resolved to their sections, each value's file:line (or command-line flag) tracked for
 * messages, "did you mean" hints, and zod issues turned into one `ConfigError` listing every
 * problem. It knows the schema only through its argument, so config.ts keeps the schema and the
 * seed's key tables.
 *
 * @module
 */

import type { z } from "zod";
import { ConfigError } from "./errors.ts";
import { parseYamlTree, parseYamlValue, type YamlNode } from "./yaml.ts";

/** The file name used for values from flags and `--set`. */
export const COMMAND_LINE = "<command line>";

/**
 * A zod object of sections, each a strict object wrapped in `.prefault({})`: the shape of
 * `ConfigSchema`.
 */
export interface SectionedSchema<T> {
  /** Section name → the section's schema. */
  shape: Record<string, { unwrap(): { shape: Record<string, z.ZodType> } }>;
  /** Validates a `{ section: { key: value } }` object. */
  safeParse(data: unknown): z.ZodSafeParseResult<T>;
}

/** Command-line values applied over the file, in this order: `flags`, then `set`. */
export interface ConfigOverrides {
  /**
   * Flag values keyed by flat key, alias or dotted path (`{ model_path: "x", max_samples: "10" }`),
   * as `--<key> <value>`. Strings are read like `--set` values; other values are used as they are.
   * `undefined` values are skipped.
   */
  flags?: Record<string, unknown>;
  /** `section.key=value` strings from `--set` (a flat key works too), applied in order. */
  set?: string[];
}

/** Options of {@linkcode parseSectioned}. */
export interface ParseSectionedOptions<T> {
  /** The file name used in error messages. */
  file: string;
  /** The schema the result must satisfy. */
  schema: SectionedSchema<T>;
  /** Command-line values applied over the file. */
  overrides?: ConfigOverrides;
  /** Flat names that are not a key name → dotted path (`model_path` → `model.path`). */
  aliases: Readonly<Record<string, string>>;
  /** Where a flat key found in several sections goes (`max_new_tokens` → `generation`). */
  precedence: Readonly<Record<string, string>>;
  /** Upstream names we do not accept → our dotted path, for hints (`beta` → `grpo.kl_coef`). */
  upstreamNames: Readonly<Record<string, string>>;
}

/** Where a value came from, for messages. */
interface Source {
  /** `configs/x.yaml:12` or `<command line> --set grpo.kl_coef=abc`. */
  where: string;
  file: string;
  line?: number;
  column?: number;
  /** True for values from the YAML file (a second one is "set twice"). */
  fromFile: boolean;
}

interface Problem {
  source: Source;
  key: string;
  message: string;
}

/** A schema's sections and keys, with the flat names that lead to them. */
interface KeySpace {
  sections: string[];
  shape(section: string): Record<string, z.ZodType>;
  aliases: Readonly<Record<string, string>>;
  precedence: Readonly<Record<string, string>>;
  upstreamNames: Readonly<Record<string, string>>;
}

function keySpace<T>(options: ParseSectionedOptions<T>): KeySpace {
  const { schema, aliases, precedence, upstreamNames } = options;
  return {
    sections: Object.keys(schema.shape),
    shape: (section) => sectionShape(schema, section),
    aliases,
    precedence,
    upstreamNames,
  };
}

function sectionShape<T>(schema: SectionedSchema<T>, section: string): Record<string, z.ZodType> {
  return schema.shape[section].unwrap().shape;
}

/**
 * The keys of one section, in schema order.
 *
 * @param schema A sectioned schema (`ConfigSchema`).
 * @param section A section name.
 * @returns Its key names.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { ConfigSchema } from "./config.ts";
 * import { sectionKeys } from "./_config_parse.ts";
 * assert.deepEqual(sectionKeys(ConfigSchema, "model"), ["path", "adapter_path"]);
 * ```
 */
export function sectionKeys<T>(schema: SectionedSchema<T>, section: string): string[] {
  return Object.keys(sectionShape(schema, section));
}

/** Every dotted key path, in schema order. */
function allPaths(keys: KeySpace): string[] {
  return keys.sections.flatMap((section) =>
    Object.keys(keys.shape(section)).map((key) => `${section}.${key}`)
  );
}

/**
 * Parses YAML text into a sectioned schema's type: flat keys move to their sections, overrides
 * apply, and the schema validates the result (see `parseConfig`).
 *
 * @param text The YAML text (sections, flat keys, or both).
 * @param options The file name for messages, the schema, overrides and the flat-key tables.
 * @returns The validated value.
 * @throws {ConfigError} Listing every problem, one per line, each naming the file, the line and
 * the key path.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { ConfigSchema } from "./config.ts";
 * import { parseSectioned } from "./_config_parse.ts";
 * const tables = { aliases: {}, precedence: {}, upstreamNames: {} };
 * const config = parseSectioned("lora_r: 8\n", { file: "x.yaml", schema: ConfigSchema, ...tables });
 * assert.equal(config.lora.lora_r, 8);
 * ```
 */
export function parseSectioned<T>(text: string, options: ParseSectionedOptions<T>): T {
  const { file, schema } = options;
  const keys = keySpace(options);
  const raw: Record<string, Record<string, unknown>> = {};
  const sources = new Map<string, Source>();
  const problems: Problem[] = [];
  const fileSource = { where: file, file, fromFile: true };

  function set(path: string, value: unknown, source: Source): void {
    const [section, key] = path.split(".");
    const earlier = sources.get(path);
    if (source.fromFile && earlier?.fromFile) {
      problems.push({
        source,
        key: path,
        message: `set twice (also at line ${earlier.line})`,
      });
      return;
    }
    raw[section] ??= {};
    raw[section][key] = value;
    for (const known of [...sources.keys()]) {
      if (known.startsWith(`${path}.`)) sources.delete(known);
    }
    sources.set(path, source);
  }

  function at(node: { position: { line: number; column: number } }): Source {
    return { ...fileSource, where: `${file}:${node.position.line}`, ...node.position };
  }

  function setFromNode(path: string, node: YamlNode, keySource: Source): void {
    set(path, node.value, keySource);
    node.items?.forEach((item, i) => sources.set(`${path}.${i}`, at(item)));
  }

  const root = parseYamlTree(text, file);
  if (root.entries) {
    for (const entry of root.entries) {
      const keySource = at(entry);
      if (keys.sections.includes(entry.key)) {
        const section = entry.key;
        if (entry.node.value === null) continue; // `lora:` with nothing under it
        if (!entry.node.entries) {
          problems.push({
            source: keySource,
            key: section,
            message: `expected a mapping of ${section} keys, got ${
              describeValue(entry.node.value)
            }`,
          });
          continue;
        }
        const shape = keys.shape(section);
        for (const inner of entry.node.entries) {
          const path = `${section}.${inner.key}`;
          if (Object.hasOwn(shape, inner.key)) setFromNode(path, inner.node, at(inner));
          else {
            problems.push({
              source: at(inner),
              key: path,
              message: unknownKeyMessage(inner.key, section, keys),
            });
          }
        }
        continue;
      }
      const resolved = resolveKey(entry.key, keys);
      if (typeof resolved === "string") setFromNode(resolved, entry.node, keySource);
      else problems.push({ source: keySource, key: entry.key, message: resolved.message });
    }
  } else if (root.value !== null) {
    problems.push({
      source: at(root),
      key: "",
      message: `expected a mapping of sections or seed keys, got ${describeValue(root.value)}`,
    });
  }

  // A command-line value: strings are read as YAML typed by the schema, other values used as is.
  function override(name: string, value: unknown, source: Source): void {
    const resolved = resolveKey(name, keys);
    if (typeof resolved !== "string") {
      problems.push({ source, key: name, message: resolved.message });
      return;
    }
    try {
      set(
        resolved,
        typeof value === "string" ? readCommandLineValue(resolved, value, keys) : value,
        source,
      );
    } catch (error) {
      problems.push({
        source,
        key: resolved,
        message: `invalid YAML value: ${(error as Error).message}`,
      });
    }
  }

  for (const [name, value] of Object.entries(options.overrides?.flags ?? {})) {
    if (value === undefined) continue;
    override(
      name,
      value,
      commandLineSource(`--${name} ${typeof value === "string" ? value : JSON.stringify(value)}`),
    );
  }

  for (const assignment of options.overrides?.set ?? []) {
    const source = commandLineSource(`--set ${assignment}`);
    const eq = assignment.indexOf("=");
    if (eq <= 0) {
      problems.push({ source, key: "", message: "expected section.key=value" });
      continue;
    }
    override(assignment.slice(0, eq).trim(), assignment.slice(eq + 1), source);
  }

  const result = schema.safeParse(raw);
  if (result.success && problems.length === 0) return result.data;
  for (const issue of result.error?.issues ?? []) {
    const path = issue.path.map(String);
    if (issue.code === "unrecognized_keys") {
      // Unknown keys are reported above, with hints; the schema sees only known ones.
      continue;
    }
    const key = path.join(".");
    problems.push({
      source: sourceOf(path, sources, fileSource),
      key,
      message: issueMessage(issue, valueAt(raw, path)),
    });
  }
  throw configError(problems, file);
}

/**
 * The dotted path a flat key (or alias, or dotted path) names, or why it names none.
 *
 * @param name A flat key (`lora_r`), an alias (`model_path`) or a dotted path (`lora.lora_r`).
 * @param keys The schema's sections and keys, aliases and flat-key precedence.
 * @returns The dotted path, or `{ message }` for an unknown or ambiguous key.
 */
function resolveKey(name: string, keys: KeySpace): string | { message: string } {
  if (name.includes(".")) {
    const [section, key, ...rest] = name.split(".");
    if (!keys.sections.includes(section)) {
      return { message: unknownKeyMessage(name, null, keys) };
    }
    if (key === undefined || key === "" || rest.length > 0) {
      return { message: `expected section.key with a key of ${section}` };
    }
    if (!Object.hasOwn(keys.shape(section), key)) {
      return { message: unknownKeyMessage(key, section, keys) };
    }
    return name;
  }
  if (Object.hasOwn(keys.aliases, name)) return keys.aliases[name];
  const homes = keys.sections.filter((section) => Object.hasOwn(keys.shape(section), name));
  if (homes.length === 1) return `${homes[0]}.${name}`;
  if (homes.length > 1) {
    if (Object.hasOwn(keys.precedence, name) && homes.includes(keys.precedence[name])) {
      return `${keys.precedence[name]}.${name}`;
    }
    return {
      message: `ambiguous flat key: it could be ${
        homes.map((s) => `${s}.${name}`).join(" or ")
      }; ` +
        "put it under its section",
    };
  }
  if (keys.sections.includes(name)) {
    return { message: `expected a mapping of ${name} keys` };
  }
  return { message: unknownKeyMessage(name, null, keys) };
}

/** "unknown key" with a did-you-mean hint (edit distance, or the key's real section). */
function unknownKeyMessage(key: string, section: string | null, keys: KeySpace): string {
  const hint = suggestKey(key, section, keys);
  return hint ? `unknown key (did you mean ${hint}?)` : "unknown key";
}

function suggestKey(key: string, section: string | null, keys: KeySpace): string | null {
  if (Object.hasOwn(keys.upstreamNames, key)) return keys.upstreamNames[key];
  const paths = allPaths(keys);
  if (section !== null) {
    // Right key, wrong section: `lora: { kl_coef: 0.1 }`.
    const elsewhere = paths.find((p) => p.endsWith(`.${key}`));
    if (elsewhere) return elsewhere;
    const inSection = nearest(key, Object.keys(keys.shape(section)));
    if (inSection) return `${section}.${inSection}`;
    const anywhere = nearest(key, paths.map((p) => p.split(".")[1]));
    return anywhere === null ? null : paths.find((p) => p.endsWith(`.${anywhere}`)) ?? null;
  }
  if (key.includes(".")) return nearest(key, paths);
  const flatNames = [
    ...keys.sections,
    ...Object.keys(keys.aliases),
    ...paths.map((p) => p.split(".")[1]),
  ];
  return nearest(key, flatNames);
}

/**
 * The candidate closest to `word` by edit distance (adjacent swaps cost 1), when at most
 * max(1, floor(word.length / 3)) edits away: the "did you mean" of keys and flags.
 *
 * @param word The unknown name.
 * @param candidates The known names.
 * @returns The closest known name, or null when none is close.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { nearest } from "./_config_parse.ts";
 * assert.equal(nearest("lora_aplha", ["lora_r", "lora_alpha"]), "lora_alpha");
 * assert.equal(nearest("xyz", ["lora_r"]), null);
 * ```
 */
export function nearest(word: string, candidates: string[]): string | null {
  let best: string | null = null;
  let bestDistance = Math.max(1, Math.floor(word.length / 3)) + 1;
  for (const candidate of candidates) {
    const d = editDistance(word, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

/** Levenshtein distance where swapping two adjacent letters costs 1 (`lora_aplha`). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/**
 * A command-line value typed by the schema: read as YAML (`0.04`, `null`, `[a, b]`), except that a
 * string key keeps the raw text when the YAML reading does not fit it (`--model_path 123`).
 */
function readCommandLineValue(path: string, text: string, keys: KeySpace): unknown {
  const [section, key] = path.split(".");
  const leaf = keys.shape(section)[key];
  let value: unknown;
  try {
    value = parseYamlValue(text);
  } catch (error) {
    if (leaf.safeParse(text).success) return text;
    throw error;
  }
  if (typeof value !== "string" && !leaf.safeParse(value).success && leaf.safeParse(text).success) {
    return text;
  }
  return value;
}

function commandLineSource(where: string): Source {
  return { where: `${COMMAND_LINE} ${where}`, file: COMMAND_LINE, fromFile: false };
}

/** The source of the longest recorded prefix of `path` (a list item, else its key, else the file). */
function sourceOf(path: string[], sources: Map<string, Source>, fallback: Source): Source {
  for (let n = path.length; n > 0; n--) {
    const source = sources.get(path.slice(0, n).join("."));
    if (source) return source;
  }
  return fallback;
}

function valueAt(raw: unknown, path: string[]): unknown {
  let value = raw;
  for (const part of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<string, unknown>)[part];
  }
  return value;
}

function issueMessage(issue: z.core.$ZodIssue, value: unknown): string {
  if (issue.code === "invalid_type" && issue.expected === "object") {
    return `expected a mapping, got ${describeValue(value)}`;
  }
  // Cross-field messages name the other field; a one-field refine shows the value.
  if (issue.code === "custom" && issue.params?.showValue !== true) return issue.message;
  return `${issue.message}, got ${describeValue(value)}`;
}

/** A value as the user wrote it: 1, "abc", null, [1, 2]. */
function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    return `a mapping (${JSON.stringify(value)})`;
  }
  return JSON.stringify(value) ?? String(value);
}

function configError(problems: Problem[], file: string): ConfigError {
  // File problems in line order, then command-line ones in the order given.
  const ordered = problems
    .map((problem, index) => ({ problem, index }))
    .sort((a, b) =>
      Number(b.problem.source.fromFile) - Number(a.problem.source.fromFile) ||
      (a.problem.source.line ?? 0) - (b.problem.source.line ?? 0) || a.index - b.index
    )
    .map(({ problem }) => problem);
  const message = ordered
    .map(({ source, key, message }) =>
      `Cannot load ${source.where}: ${key ? `${key}: ` : ""}${message}`
    )
    .join("\n");
  const first = ordered[0];
  return new ConfigError(message, {
    file: first?.source.file ?? file,
    key: first?.key,
    line: first?.source.line,
    column: first?.source.column,
  });
}
