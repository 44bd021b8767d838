/**
 * The one module that imports `npm:yaml`: parse a YAML file into a tree that keeps the line and
 * column of every key and item (for error messages), parse one `--set` value, and dump a config.
 * Moving to `@std/yaml` later touches this file only.
 *
 * NOTE: `npm:yaml` reads YAML 1.2 (core schema), so `learning_rate: 5e-6` is the number 5e-6. PyYAML,
 * which the seed's Python scripts used, reads YAML 1.1 and gives the string "5e-6" there.
 *
 * @module
 */

import {
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  type Node as YamlAstNode,
  parse,
  parseDocument,
  stringify,
} from "yaml";
import { ConfigError } from "./errors.ts";

/** A 1-based position in a text file. */
export interface Position {
  /** 1-based line. */
  line: number;
  /** 1-based column. */
  column: number;
}

/** One `key: value` entry of a YAML mapping. */
export interface YamlEntry {
  /** The key as written (scalar keys only). */
  key: string;
  /** Where the key starts. */
  position: Position;
  /** The value. */
  node: YamlNode;
}

/**
 * A parsed YAML value with its position. `value` is the plain JavaScript value of the whole
 * subtree; `entries` (mappings) and `items` (sequences) give the children with theirs.
 */
export interface YamlNode {
  /** The plain JavaScript value (`null` for an empty value). */
  value: unknown;
  /** Where the value starts (for an empty value: where it would be). */
  position: Position;
  /** Set for a mapping: its entries in file order. */
  entries?: YamlEntry[];
  /** Set for a sequence: its items in file order. */
  items?: YamlNode[];
}

/**
 * Parses a YAML document and keeps the position of every key and item. An empty document gives
 * `{ value: null }`.
 *
 * @param text The YAML text.
 * @param file The file name used in error messages.
 * @returns The root node.
 * @throws {ConfigError} On YAML syntax errors (duplicate keys included), all of them, one per
 * line, each as `Cannot load <file>:<line>:<column>: invalid YAML: <reason>`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseYamlTree } from "./yaml.ts";
 * const root = parseYamlTree("lora:\n  lora_r: 8\n", "x.yaml");
 * assert.deepEqual(root.value, { lora: { lora_r: 8 } });
 * assert.deepEqual(root.entries![0].node.entries![0].position, { line: 2, column: 3 });
 * ```
 */
export function parseYamlTree(text: string, file: string): YamlNode {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const lines = doc.errors.map((error) => {
      const at = error.linePos?.[0] ?? { line: 1, col: 1 };
      return {
        line: at.line,
        column: at.col,
        text: `Cannot load ${file}:${at.line}:${at.col}: invalid YAML: ${
          yamlReason(error.message)
        }`,
      };
    });
    throw new ConfigError(lines.map((l) => l.text).join("\n"), {
      file,
      line: lines[0].line,
      column: lines[0].column,
      cause: doc.errors[0],
    });
  }
  function positionOf(offset: number | undefined): Position {
    const at = lineCounter.linePos(offset ?? text.length);
    return { line: at.line, column: at.col };
  }
  function toNode(node: unknown, fallbackOffset: number): YamlNode {
    if (node === null || node === undefined) {
      return { value: null, position: positionOf(fallbackOffset) };
    }
    const ast = node as YamlAstNode;
    const position = positionOf(ast.range?.[0] ?? fallbackOffset);
    let value: unknown;
    try {
      value = isAlias(ast) ? ast.resolve(doc)?.toJS(doc) : ast.toJS(doc);
    } catch (error) {
      throw new ConfigError(
        `Cannot load ${file}:${position.line}:${position.column}: invalid YAML: ${
          yamlReason(String((error as Error).message))
        }`,
        { file, line: position.line, column: position.column, cause: error },
      );
    }
    if (isMap(ast)) {
      const entries: YamlEntry[] = [];
      for (const pair of ast.items) {
        const keyNode = pair.key as YamlAstNode | null;
        const keyOffset = keyNode?.range?.[0] ?? ast.range?.[0] ?? fallbackOffset;
        const keyPosition = positionOf(keyOffset);
        if (!isScalar(keyNode)) {
          throw new ConfigError(
            `Cannot load ${file}:${keyPosition.line}:${keyPosition.column}: invalid YAML: ` +
              "expected a plain key",
            { file, line: keyPosition.line, column: keyPosition.column },
          );
        }
        const valueOffset = keyNode.range?.[2] ?? keyOffset;
        entries.push({
          key: String(keyNode.value),
          position: keyPosition,
          node: toNode(pair.value, valueOffset),
        });
      }
      return { value, position, entries };
    }
    if (isSeq(ast)) {
      const items = ast.items.map((item) => toNode(item, ast.range?.[0] ?? fallbackOffset));
      return { value, position, items };
    }
    return { value, position };
  }
  return toNode(doc.contents, 0);
}

/**
 * Parses one value written on the command line (`--set grpo.kl_coef=0.04`) as a YAML scalar or
 * flow collection: `0.04` → 0.04, `null` → null, `[q_proj, v_proj]` → an array, `''` → "".
 *
 * @param text The value after `=`.
 * @returns The parsed value.
 * @throws {SyntaxError} When `text` is not valid YAML; the message is the reason alone.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseYamlValue } from "./yaml.ts";
 * assert.equal(parseYamlValue("5e-6"), 5e-6);
 * assert.deepEqual(parseYamlValue("[q_proj, v_proj]"), ["q_proj", "v_proj"]);
 * ```
 */
export function parseYamlValue(text: string): unknown {
  try {
    return parse(text);
  } catch (error) {
    throw new SyntaxError(yamlReason(String((error as Error).message)), { cause: error });
  }
}

/**
 * Dumps a plain value as block YAML (keys in insertion order).
 *
 * @param value A JSON-like value.
 * @returns The YAML text, ending with a newline.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { stringifyYaml } from "./yaml.ts";
 * assert.equal(stringifyYaml({ lora: { lora_r: 16 } }), "lora:\n  lora_r: 16\n");
 * ```
 */
export function stringifyYaml(value: unknown): string {
  return stringify(value, { lineWidth: 0 });
}

/** `npm:yaml` messages end with " at line L, column C:" and a code excerpt; keep the reason. */
function yamlReason(message: string): string {
  return message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "").replace(/:$/, "");
}
