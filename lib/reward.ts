/**
 * Rule-based reward verifier for math answers: pull the last `\boxed{...}` out of a completion,
 * decide whether it is equivalent to the ground truth, and turn that into the seed's
 * +1 / -1 / -0.5 reward (seed `utils/reward_utils.py` `compute_reward`).
 *
 * Equivalence follows the ideas of Math-Verify, the Qwen2.5-Math grader and the PRM800K grader
 * (normalise LaTeX, then compare structure, then compare values) without their code:
 *
 * 1. Normalise both strings (`\dfrac` → `\frac`, drop `\left`/`\right`, `\!`, `\,`, `\$`, `\%`,
 *    `^\circ`, trailing `\text{units}`, thousands separators) and compare them as strings.
 * 2. Parse both into structure: text, number/expression, `x = ...`, equation, unordered list or
 *    set (`2, -3`, `\{...\}`, `a \pm b`), tuple or interval (ordered; brackets must match),
 *    union of intervals, matrix, base-n numeral (`204_5`).
 * 3. Compare expressions by evaluation with a hand-written evaluator of a LaTeX subset
 *    (lib/_reward_latex.ts): exact rational arithmetic while it stays rational, doubles once it
 *    involves `\pi`, roots of non-squares or functions. Free variables are substituted with three
 *    fixed rational points (polynomial identity testing), so `x^3+3x-6` equals `3x+x^3-6`.
 *
 * Tolerance (no false positives):
 * - If either side is an exact integer, equality is exact: 13535 never equals 13536, and 5 equals
 *   `5.00` or `\frac{10}{2}` but not `4.9999999`. Against an irrational value (`(\sqrt2)^2`), an
 *   integer n allows round-off only: |x - n| <= 1e-9 * max(1, |n|).
 * - Otherwise values are equal when |a - b| <= 1e-6 * max(|a|, |b|) (relative tolerance 1e-6).
 *
 * Why not `@cortex-js/compute-engine`: measured here (Deno 2.9.6), it costs ~300 ms to import and
 * construct and ~0.2 ms per warm comparison (2-17 ms for the first ones), cannot be interrupted,
 * and returned `undefined` for `(a+5)(b+2)` vs its expansion. Our evaluator is bounded by
 * construction (input length, parser depth, rational size caps) and keeps the verifier above
 * 5,000 completions/s on one core.
 *
 * @module
 */

import type { Config } from "./config.ts";
import {
  div,
  evaluate,
  exact,
  mul,
  type Node,
  numbersEqual,
  parseExpression,
  RELATIVE_TOLERANCE,
  toFloat,
  type Value,
} from "./_reward_latex.ts";

/**
 * Relative tolerance (1e-6) for comparing non-integer values; integers always compare exactly.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { isEquivalent, REWARD_RELATIVE_TOLERANCE } from "./reward.ts";
 * assert.equal(REWARD_RELATIVE_TOLERANCE, 1e-6);
 * assert.ok(isEquivalent("1.41421356", "\\sqrt2")); // off by 2e-9 relative
 * assert.ok(!isEquivalent("1.4142", "\\sqrt2")); // off by 1e-5 relative
 * ```
 */
export const REWARD_RELATIVE_TOLERANCE: number = RELATIVE_TOLERANCE;

/** Answers longer than this (after normalisation) are compared as strings only. */
const MAX_PARSE_CHARS = 1000;
/** Answers longer than this are not even normalised: compared verbatim (no real answer is). */
const MAX_RAW_CHARS = 4096;
/** At most this many `\pm` are expanded (2^n alternatives). */
const MAX_PM = 3;
/** At most this many items in a list, tuple, set or matrix. */
const MAX_ITEMS = 64;
/** Nesting of lists/tuples/sets/equations inside each other. */
const MAX_NESTING = 6;

// ---------------------------------------------------------------------------------------------
// Extraction

function matchBrace(text: string, open: number): number {
  // Linear scan; `\{` and `\}` are escaped braces and do not count.
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 92 /* \ */) i++;
    else if (c === 123 /* { */) depth++;
    else if (c === 125 /* } */ && --depth === 0) return i;
  }
  return -1;
}

interface BoxSpan {
  start: number; // index of the backslash of \boxed / \fbox
  content: string;
  end: number; // index just past the box
}

function lastBox(text: string): BoxSpan | null | "unclosed" {
  const boxed = text.lastIndexOf("\\boxed");
  const fbox = text.lastIndexOf("\\fbox");
  const start = Math.max(boxed, fbox);
  if (start < 0) return null;
  let i = start + (start === boxed ? 6 : 5);
  while (i < text.length && (text[i] === " " || text[i] === "\t")) i++;
  if (text[i] === "{") {
    const close = matchBrace(text, i);
    if (close < 0) return "unclosed";
    return { start, content: text.slice(i + 1, close), end: close + 1 };
  }
  // `\boxed 5`: the argument runs to the next whitespace or `$`.
  if (i === start + (start === boxed ? 6 : 5)) return null; // `\boxedfoo` is another command
  let j = i;
  while (j < text.length && !/[\s$]/.test(text[j])) j++;
  return { start, content: trimEnd(text.slice(i, j), ".,"), end: j };
}

/**
 * The content of the last `\boxed{...}` (or `\fbox{...}`, or `\boxed 5`) in `text`, with nested
 * braces kept intact. Escaped braces `\{ \}` do not count as nesting.
 *
 * Runs in linear time on any input.
 *
 * @param text A model completion.
 * @returns The boxed content, trimmed; `null` when there is no box, the last box is empty, or its
 *   braces never close (a truncated completion).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { extractAnswer } from "./reward.ts";
 * assert.equal(extractAnswer("so \\boxed{1} or rather \\boxed{\\frac{1}{2}}."), "\\frac{1}{2}");
 * assert.equal(extractAnswer("no box here"), null);
 * assert.equal(extractAnswer("\\boxed{\\frac{1}{2}"), null);
 * ```
 */
export function extractAnswer(text: string): string | null {
  const box = lastBox(text);
  if (box === null || box === "unclosed") return null;
  const content = box.content.trim();
  return content === "" ? null : content;
}

// ---------------------------------------------------------------------------------------------
// Normalisation

interface Normalized {
  text: string;
  percent: boolean;
}

const UNICODE: [RegExp, string][] = [
  [/[\u2212\u2013\u2014]/g, "-"],
  [/\u00d7/g, "\\times "],
  [/[\u00b7\u22c5]/g, "\\cdot "],
  [/\u00f7/g, "\\div "],
  [/\u03c0/g, "\\pi "],
  [/\u221e/g, "\\infty "],
  [/\u221a/g, "\\sqrt"],
  [/\u00b0/g, ""],
  [/[\u00a0\u2009\u202f]/g, " "],
];

/**
 * Normalises a LaTeX answer: unicode math symbols, `\dfrac`/`\tfrac`, `\left`/`\right`, spacing
 * commands, `\$`, `\%` (remembered in `percent`), degrees, `\mbox`/`\textbf` → `\text`, and a
 * trailing full stop. Linear time.
 */
function normalize(raw: string): Normalized {
  let s = raw;
  for (const [pattern, replacement] of UNICODE) s = s.replace(pattern, replacement);
  s = s
    .replace(/\\[dtc]frac(?![a-zA-Z])/g, "\\frac")
    .replace(/\\[dt]binom(?![a-zA-Z])/g, "\\binom")
    .replace(/\\(?:left|right)(?:\.|(?![a-zA-Z]))/g, "")
    .replace(/\\[bB]igg?[lr]?(?![a-zA-Z])/g, "")
    .replace(/\\(?:displaystyle|textstyle|limits)(?![a-zA-Z])/g, "")
    .replace(/\{,\}/g, ",")
    .replace(/,\\!\s*/g, ",") // `10,\!080`: a thousands separator
    .replace(/(?<=\d)\\[,!]\s*(?=\d{3}(?!\d))/g, "") // `10\,080`, `1\!000`
    // subtle: keep `\\` (matrix row break) intact while dropping `\ ` and friends
    .replace(/\\\\|\\[!,;:> ]|\\q?quad(?![a-zA-Z])|~/g, (m) => (m === "\\\\" ? m : " "))
    .replace(/\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|\\circ(?![a-zA-Z])/g, "")
    .replace(/\^\s*\{\s*\\degree\s*\}|\^?\\degree(?![a-zA-Z])/g, "")
    .replace(
      /\\(?:mbox|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|text)\s*\{/g,
      "\\text{",
    )
    .replace(/\\text\{\s*(?:and|or)\s*\}/g, ",");
  let percent = false;
  if (s.includes("%")) {
    percent = true;
    s = s.replace(/\\?%/g, "");
  }
  s = s.replace(/\\\$|\$/g, "").replace(/\s+/g, " ").trim();
  // Sentence punctuation after the answer: `5.`, `\text{Evelyn}.`, and a stray `\\`.
  s = trimEnd(s, ".; ");
  if (s.endsWith("\\\\")) s = trimEnd(s.slice(0, -2), ".; ");
  return { text: s, percent };
}

// Drops trailing characters from `chars`. A loop, not /[.;]+$/: that regex is quadratic on a long
// run of dots followed by something else.
function trimEnd(s: string, chars: string): string {
  let end = s.length;
  while (end > 0 && chars.includes(s[end - 1])) end--;
  return s.slice(0, end);
}

function squash(s: string): string {
  return s.replace(/\s+/g, "");
}

// `\text{(C)}`, `(C)`, `C`, `\textbf{C}` all become "c"; words are lowercased.
function textKey(s: string): string {
  let t = s;
  for (let i = 0; i < 4 && t.includes("\\text{"); i++) t = t.replace(/\\text\{([^{}]*)\}/g, "$1");
  t = squash(t).toLowerCase();
  const choice = /^\(([a-z])\)$/.exec(t);
  return choice ? choice[1] : t;
}

// ---------------------------------------------------------------------------------------------
// Structure

type Answer =
  | { kind: "raw"; src: string }
  | { kind: "text"; src: string; value: string }
  | { kind: "expr"; src: string; node: Node; vars: Set<string> }
  | { kind: "base"; src: string; digits: string; base: string }
  | { kind: "assign"; src: string; value: Answer } // `x = 5`, `x \in [1, 2]`
  | { kind: "equation"; src: string; diff: Node; vars: Set<string> } // lhs - rhs = 0
  | { kind: "set"; src: string; items: Answer[]; plusMinus: boolean } // unordered
  | { kind: "tuple"; src: string; open: string; close: string; items: Answer[] } // ordered
  | { kind: "union"; src: string; items: Answer[] }
  | { kind: "matrix"; src: string; rows: Answer[][] };

// Splits at top-level occurrences of `sep` (outside (), [], {}); null if the brackets do not
// balance. `(3,4]` balances: bracket kinds are not paired here.
function splitTopLevel(s: string, sep: string): string[] | null {
  const parts: string[] = [];
  let depth = 0;
  let last = 0;
  for (let i = 0; i < s.length; i++) {
    let c = s[i];
    if (depth === 0 && s.startsWith(sep, i)) {
      const next = s[i + sep.length] ?? "";
      const command = sep[0] === "\\" && sep !== "\\\\";
      // `\in` must not match `\infty`, and `=` must not split `<=`.
      if (!(command && /[a-zA-Z]/.test(next)) && !(sep === "=" && /[<>!]/.test(s[i - 1] ?? ""))) {
        parts.push(s.slice(last, i));
        i += sep.length - 1;
        last = i + 1;
        continue;
      }
    }
    if (c === "\\") {
      const next = s[i + 1] ?? "";
      if (next !== "{" && next !== "}") {
        i++; // an escaped character (`\,`, `\\`) or the start of a command name
        continue;
      }
      c = next; // `\{ \}` are set brackets
      i++;
    }
    if (c === "(" || c === "[" || c === "{") depth++;
    else if ((c === ")" || c === "]" || c === "}") && --depth < 0) return null;
  }
  if (depth !== 0) return null;
  parts.push(s.slice(last));
  return parts;
}

// The bracket that opens at 0 closes at the end: `(1, 2)`, `[0, 1)`, but not `(a+5)(b+2)`.
function enclosed(s: string): boolean {
  let depth = 0;
  for (let i = 0; i < s.length; i++) {
    let c = s[i];
    if (c === "\\") {
      c = s[++i] ?? ""; // `\{ \}` count as brackets; other escapes and commands do not
      if (c !== "{" && c !== "}") continue;
    }
    if (c === "(" || c === "[" || c === "{") depth++;
    else if ((c === ")" || c === "]" || c === "}") && --depth === 0) return i === s.length - 1;
  }
  return false;
}

const THOUSANDS = /^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$/;
const SIMPLE_VARIABLE = /^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-zA-Z]\))?$/;
const BASE_NUMERAL = /^([0-9A-Za-z]+)_\{?(\d+)\}?$/;
const MATRIX = /^\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?([\s\S]*)\\end\{\1\}$/;

function splitItems(s: string, sep: string): string[] | null {
  const parts = splitTopLevel(s, sep);
  if (parts === null || parts.length < 2 || parts.length > MAX_ITEMS) return null;
  return parts.map((p) => p.trim());
}

// Drops trailing units: `5 \text{ cm}^2`, `18 dollars`, `5.4 \text{cents}`.
function stripUnits(s: string): string {
  for (let k = 0; k < 3; k++) {
    const unit = /\\text\{[^{}]*\}\s*(?:\^\s*\{?\d\}?)?$/.exec(s);
    if (unit === null || unit.index === 0) break;
    s = s.slice(0, unit.index).trim();
  }
  const words = s.split(" ");
  let end = words.length;
  while (end > 1 && /^[a-zA-Z]{2,}(?:\^\{?\d\}?)?$/.test(words[end - 1])) end--;
  if (end < words.length && !/[a-zA-Z]/.test(words.slice(0, end).join(""))) {
    s = words.slice(0, end).join(" ");
  }
  return s;
}

function parseAnswer(s: string, nesting: number): Answer {
  s = s.trim();
  const raw: Answer = { kind: "raw", src: s };
  if (nesting > MAX_NESTING || s === "") return raw;
  if (s[0] === "{" && enclosed(s)) return parseAnswer(s.slice(1, -1), nesting + 1); // `{{1,000}}`
  const compact = squash(s);
  if (THOUSANDS.test(compact)) return parseLeaf(compact.replace(/,/g, ""));

  const commas = splitItems(s, ",");
  if (commas !== null) return makeSet(s, commas.map((p) => parseAnswer(p, nesting + 1)));

  const cups = splitItems(s, "\\cup");
  if (cups !== null) {
    return {
      kind: "union",
      src: s,
      items: cups.map((p) => parseAnswer(p, nesting + 1)),
    };
  }

  const membership = splitTopLevel(s, "\\in");
  if (membership !== null && membership.length === 2) {
    return { kind: "assign", src: s, value: parseAnswer(membership[1], nesting + 1) };
  }
  const sides = splitTopLevel(s, "=");
  if (sides !== null && sides.length >= 2) {
    if (SIMPLE_VARIABLE.test(sides[0].trim())) {
      return { kind: "assign", src: s, value: parseAnswer(sides[sides.length - 1], nesting + 1) };
    }
    return equationOf(s, sides) ?? raw;
  }

  const matrix = MATRIX.exec(s);
  if (matrix !== null) {
    const rowStrings = (splitTopLevel(matrix[2], "\\\\") ?? [])
      .map((r) => r.trim())
      .filter((r) => r !== "");
    if (rowStrings.length === 0 || rowStrings.length > MAX_ITEMS) return raw;
    const rows: Answer[][] = [];
    for (const row of rowStrings) {
      const cells = splitTopLevel(row, "&");
      if (cells === null || cells.length > MAX_ITEMS) return raw;
      rows.push(cells.map((c) => parseAnswer(c, nesting + 1)));
    }
    return { kind: "matrix", src: s, rows };
  }

  if (s.startsWith("\\{") && s.endsWith("\\}") && enclosed(s)) {
    const inner = s.slice(2, -2).trim();
    const items = splitItems(inner, ",") ?? [inner];
    return makeSet(s, items.map((p) => parseAnswer(p, nesting + 1)));
  }

  if ((s[0] === "(" || s[0] === "[") && (s.endsWith(")") || s.endsWith("]")) && enclosed(s)) {
    const items = splitItems(s.slice(1, -1), ",");
    if (items !== null) {
      return {
        kind: "tuple",
        src: s,
        open: s[0],
        close: s[s.length - 1],
        items: items.map((p) => parseAnswer(p, nesting + 1)),
      };
    }
  }

  const pm = s.search(/\\(?:pm|mp)(?![a-zA-Z])/);
  if (pm >= 0) {
    if ((s.match(/\\(?:pm|mp)(?![a-zA-Z])/g)?.length ?? 0) > MAX_PM) return raw;
    const first = s.startsWith("\\pm", pm) ? "+" : "-";
    const second = first === "+" ? "-" : "+";
    const rest = s.slice(pm + 3);
    return makeSet(s, [
      parseAnswer(s.slice(0, pm) + first + rest, nesting + 1),
      parseAnswer(s.slice(0, pm) + second + rest, nesting + 1),
    ], true);
  }

  const text = /^\\text\{([^{}]*)\}$/.exec(s);
  if (text !== null) {
    // `\text{5}` and `\text{18 dollars}` are numbers; `\text{Evelyn}` and `\text{(C)}` are text.
    const number = stripUnits(text[1].trim());
    if (!/[a-zA-Z]/.test(number)) return parseAnswer(number, nesting + 1);
    return { kind: "text", src: s, value: textKey(s) };
  }
  return parseLeaf(stripUnits(s));
}

// `\{1 \pm \sqrt5, -2\}` has three elements: sets made by expanding `\pm` are flattened.
// lhs = rhs as `lhs - rhs`, when both sides are expressions.
function equationOf(src: string, sides: string[]): (Answer & { kind: "equation" }) | null {
  if (sides.length !== 2) return null;
  const left = parseExpression(stripUnits(sides[0].trim()));
  const right = parseExpression(stripUnits(sides[1].trim()));
  if (left === null || right === null) return null;
  return {
    kind: "equation",
    src,
    diff: { t: "sub", a: left.node, b: right.node },
    vars: new Set([...left.vars, ...right.vars]),
  };
}

function makeSet(src: string, items: Answer[], plusMinus = false): Answer {
  const flat = items.flatMap((x) => (x.kind === "set" && x.plusMinus ? x.items : [x]));
  return flat.length === 1 ? flat[0] : { kind: "set", src, items: flat, plusMinus };
}

function parseLeaf(s: string): Answer {
  const base = BASE_NUMERAL.exec(s);
  if (base !== null && /\d/.test(base[1])) {
    return { kind: "base", src: s, digits: base[1].toLowerCase(), base: base[2] };
  }
  const parsed = parseExpression(s);
  if (parsed === null) return { kind: "raw", src: s };
  return { kind: "expr", src: s, node: parsed.node, vars: parsed.vars };
}

// ---------------------------------------------------------------------------------------------
// Comparison

// FNV-1a, so that each variable name gets its own sample values (x and y never share one).
function nameHash(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

const SAMPLE_POINTS = 3;

// Rational sample values in (1, 2): positive so roots and logs are defined, near 1 so that high
// powers stay finite. Exact, so polynomial identities compare exactly.
function sampleEnv(vars: Set<string>, point: number): Map<string, Value> {
  const env = new Map<string, Value>();
  for (const name of vars) {
    const k = (nameHash(name) + 7919 * point) % 997;
    env.set(name, exact(BigInt(1009 + k + 1), 1009n));
  }
  return env;
}

function isFinite(v: Value): boolean {
  return typeof v !== "number" || Number.isFinite(v);
}

// A sample point is conclusive when both sides evaluate to finite numbers there.
function expressionsEqual(
  a: { node: Node; vars: Set<string> },
  b: { node: Node; vars: Set<string> },
): boolean {
  const vars = new Set([...a.vars, ...b.vars]);
  if (vars.size === 0) {
    return numbersEqual(evaluate(a.node, new Map()), evaluate(b.node, new Map()));
  }
  let conclusive = 0;
  for (let point = 0; point < SAMPLE_POINTS; point++) {
    const env = sampleEnv(vars, point);
    const x = evaluate(a.node, env), y = evaluate(b.node, env);
    if (!isFinite(x) || !isFinite(y)) continue;
    if (!numbersEqual(x, y)) return false;
    conclusive++;
  }
  return conclusive > 0;
}

// Equations are equal when lhs - rhs agree up to a non-zero constant: `2x = 4` and `x - 2 = 0`.
function equationsEqual(
  a: { diff: Node; vars: Set<string> },
  b: { diff: Node; vars: Set<string> },
): boolean {
  const vars = new Set([...a.vars, ...b.vars]);
  let ratio: Value | null = null;
  let conclusive = 0;
  for (let point = 0; point < (vars.size === 0 ? 1 : SAMPLE_POINTS); point++) {
    const env = sampleEnv(vars, point);
    const x = evaluate(a.diff, env), y = evaluate(b.diff, env);
    if (!isFinite(x) || !isFinite(y) || Number.isNaN(toFloat(x)) || Number.isNaN(toFloat(y))) {
      continue;
    }
    conclusive++;
    const zeroX = numbersEqual(x, exact(0n)), zeroY = numbersEqual(y, exact(0n));
    if (zeroX || zeroY) {
      if (zeroX !== zeroY) return false;
      continue;
    }
    if (ratio === null) ratio = div(x, y);
    else if (!numbersEqual(x, mul(ratio, y))) return false;
  }
  return conclusive > 0;
}

// Greedy multiset matching; items are few (<= MAX_ITEMS).
function unorderedEqual(a: Answer[], b: Answer[]): boolean {
  if (a.length !== b.length) return false;
  const used = new Array<boolean>(b.length).fill(false);
  for (const x of a) {
    const j = b.findIndex((y, k) => !used[k] && answersEqual(x, y));
    if (j < 0) return false;
    used[j] = true;
  }
  return true;
}

function orderedEqual(a: Answer[], b: Answer[]): boolean {
  return a.length === b.length && a.every((x, i) => answersEqual(x, b[i]));
}

// A one-row or one-column matrix against a tuple `(1, 2, 3)` with round brackets.
function vectorItems(m: Answer & { kind: "matrix" }): Answer[] | null {
  if (m.rows.length === 1) return m.rows[0];
  if (m.rows.every((r) => r.length === 1)) return m.rows.map((r) => r[0]);
  return null;
}

// `y = 2x + 3` against `2x - y + 3 = 0`: compare as equations.
function assignmentMatches(
  a: Answer & { kind: "assign" },
  b: Answer & { kind: "equation" },
): boolean {
  const sides = splitTopLevel(a.src, "=");
  const e = sides === null ? null : equationOf(a.src, [sides[0], sides[sides.length - 1]]);
  return e !== null && equationsEqual(e, b);
}

function answersEqual(a: Answer, b: Answer): boolean {
  if (squash(a.src) === squash(b.src)) return true;
  if (a.kind === "text" || b.kind === "text") return textKey(a.src) === textKey(b.src);
  if (a.kind === "assign" && b.kind === "equation") return assignmentMatches(a, b);
  if (b.kind === "assign" && a.kind === "equation") return assignmentMatches(b, a);
  if (a.kind === "assign" && b.kind === "assign") return answersEqual(a.value, b.value);
  if (a.kind === "assign" && b.kind !== "equation") return answersEqual(a.value, b);
  if (b.kind === "assign" && a.kind !== "equation") return answersEqual(a, b.value);
  switch (a.kind) {
    case "expr":
      if (b.kind === "base") return answersEqual(b, a);
      return b.kind === "expr" && expressionsEqual(a, b);
    case "equation":
      return b.kind === "equation" && equationsEqual(a, b);
    case "base":
      if (b.kind === "base") return a.digits === b.digits && a.base === b.base;
      return b.kind === "expr" && squash(b.src) === a.digits; // `204` for `204_5`
    case "set":
      return b.kind === "set" && unorderedEqual(a.items, b.items);
    case "union":
      return b.kind === "union" && unorderedEqual(a.items, b.items);
    case "tuple":
      if (b.kind === "tuple") {
        return a.open === b.open && a.close === b.close && orderedEqual(a.items, b.items);
      }
      if (b.kind === "matrix" && a.open === "(" && a.close === ")") {
        const v = vectorItems(b);
        return v !== null && orderedEqual(a.items, v);
      }
      return false;
    case "matrix":
      if (b.kind === "matrix") {
        return a.rows.length === b.rows.length &&
          a.rows.every((row, i) => orderedEqual(row, b.rows[i]));
      }
      return b.kind === "tuple" && answersEqual(b, a);
    case "assign":
    case "raw":
      if (b.kind === "base") return answersEqual(b, a);
      return false;
  }
  return false;
}

function percentOf(a: Answer): Answer | null {
  if (a.kind !== "expr") return null;
  return {
    kind: "expr",
    src: `(${a.src})/100`,
    node: { t: "div", a: a.node, b: { t: "num", v: exact(100n), literal: true } },
    vars: a.vars,
  };
}

function groundTruthAnswer(groundTruth: string): string {
  // Accept a raw GSM8K `answer` field (`... #### 18`) or a MATH solution with a box.
  const hashes = groundTruth.lastIndexOf("####");
  if (hashes >= 0) return groundTruth.slice(hashes + 4).trim();
  if (groundTruth.includes("\\boxed") || groundTruth.includes("\\fbox")) {
    return extractAnswer(groundTruth) ?? groundTruth;
  }
  return groundTruth;
}

/**
 * Whether a predicted answer is mathematically equivalent to the ground truth.
 *
 * Handles GSM8K numbers (`1,234`, `\$18.00`, `18 dollars`), units and `\text{...}` words, `\%`,
 * degrees, decimals vs fractions (`0.5`, `1/2`, `\frac12`, `\dfrac{1}{2}`), mixed numbers
 * (`1\frac{4}{5}`), roots, `\pi`, scientific notation, `x = 5` vs `5`, tuples and intervals
 * (ordered, brackets must match), unordered lists and sets (`2, -3` vs `-3, 2`, `1 \pm \sqrt2`),
 * unions of intervals, matrices, base-n numerals, multiple-choice letters (`\text{(C)}` vs `C`)
 * and plain text (case-insensitive). Expressions with variables are compared at three exact
 * rational sample points.
 *
 * Numeric tolerance: exact when either side is an exact integer (13535 ≠ 13536); an integer
 * against an irrational value allows |x - n| <= 1e-9 * max(1, |n|); otherwise relative tolerance
 * 1e-6 ({@linkcode REWARD_RELATIVE_TOLERANCE}): |a - b| <= 1e-6 * max(|a|, |b|). A percent answer
 * also matches its value divided by 100 (`50\%` vs `0.5`).
 *
 * Never throws; time is bounded: answers over 1,000 characters after normalisation compare as
 * strings only, and over 4,096 characters verbatim.
 *
 * @param predicted The extracted answer (see {@linkcode extractAnswer}).
 * @param truth The reference answer.
 * @returns true when equivalent.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { isEquivalent } from "./reward.ts";
 * assert.ok(isEquivalent("\\frac{\\sqrt{3}}{2}", "\\sqrt3/2"));
 * assert.ok(isEquivalent("-3, 2", "2,-3"));
 * assert.ok(!isEquivalent("13535", "13536"));
 * assert.ok(!isEquivalent("(2, 1)", "(1, 2)"));
 * ```
 */
export function isEquivalent(predicted: string, truth: string): boolean {
  if (predicted.length > MAX_RAW_CHARS || truth.length > MAX_RAW_CHARS) {
    return predicted.trim() === truth.trim() && predicted.trim() !== "";
  }
  const p = normalize(predicted), t = normalize(truth);
  if (p.text === "" || t.text === "") return false;
  if (squash(p.text) === squash(t.text)) return true;
  if (p.text.length > MAX_PARSE_CHARS || t.text.length > MAX_PARSE_CHARS) return false;
  const pa = parseAnswer(p.text, 0), ta = parseAnswer(t.text, 0);
  if (answersEqual(pa, ta)) return true;
  const pp = p.percent ? percentOf(pa) : null;
  if (pp !== null && answersEqual(pp, ta)) return true;
  const tp = t.percent ? percentOf(ta) : null;
  return tp !== null && answersEqual(pa, tp);
}

// ---------------------------------------------------------------------------------------------
// Rewards

/** Reward values for the three outcomes under the config's keys (the `reward` section). */
export type RewardConfig = Pick<
  Config["reward"],
  "reward_correct" | "reward_wrong" | "reward_no_answer"
>;

/** Reward values for the three outcomes, short names (same as {@linkcode RewardConfig}'s). */
export interface RewardValues {
  /** Reward when the boxed answer is equivalent to the ground truth (seed default 1.0). */
  correct: number;
  /** Reward when the boxed answer is wrong (seed default -1.0). */
  wrong: number;
  /** Reward when there is no closed `\boxed{}` (seed default -0.5). */
  noAnswer: number;
}

/**
 * The seed's default rewards: +1 correct, -1 wrong, -0.5 no answer.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { DEFAULT_REWARDS } from "./reward.ts";
 * assert.deepEqual(DEFAULT_REWARDS, { correct: 1, wrong: -1, noAnswer: -0.5 });
 * ```
 */
export const DEFAULT_REWARDS: Readonly<RewardValues> = Object.freeze({
  correct: 1.0,
  wrong: -1.0,
  noAnswer: -0.5,
});

/** Outcome of {@linkcode computeReward}. */
export interface RewardResult {
  reward: number;
  /** The extracted answer, or null when there was none. */
  predicted: string | null;
  correct: boolean;
  status: "correct" | "wrong" | "no_answer";
}

/**
 * Rewards per outcome as a caller gives them: the config's keys (`config.reward` itself) or
 * the short names of {@linkcode RewardValues}; missing ones default to {@linkcode DEFAULT_REWARDS}.
 */
export type RewardOptions = Partial<RewardConfig> | Partial<RewardValues>;

function checkRewards(options: RewardOptions): RewardValues {
  const given = options as Partial<RewardConfig & RewardValues>;
  const values: RewardValues = {
    correct: given.reward_correct ?? given.correct ?? DEFAULT_REWARDS.correct,
    wrong: given.reward_wrong ?? given.wrong ?? DEFAULT_REWARDS.wrong,
    noAnswer: given.reward_no_answer ?? given.noAnswer ?? DEFAULT_REWARDS.noAnswer,
  };
  const keys = { correct: "reward_correct", wrong: "reward_wrong", noAnswer: "reward_no_answer" };
  for (const key of ["correct", "wrong", "noAnswer"] as const) {
    if (!Number.isFinite(values[key])) {
      throw new RangeError(`Expected ${keys[key]} to be a finite number but found ${values[key]}`);
    }
  }
  return values;
}

/**
 * Scores one completion against its ground truth, like the seed's `compute_reward`: extract the
 * last `\boxed{}`, compare with {@linkcode isEquivalent}, and map the outcome to a reward.
 *
 * `groundTruth` may be a bare answer, a GSM8K `answer` field (the text after the last `####` is
 * used) or a solution containing `\boxed{}` (its last box is used).
 *
 * @param generated The model completion.
 * @param groundTruth The reference answer.
 * @param options Rewards per outcome ({@linkcode RewardOptions}, e.g. `config.reward`); defaults
 *   {@linkcode DEFAULT_REWARDS}.
 * @returns reward, extracted answer, correctness and status.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { computeReward } from "./reward.ts";
 * assert.deepEqual(computeReward("The answer is \\boxed{42}", "42"), {
 *   reward: 1, predicted: "42", correct: true, status: "correct",
 * });
 * assert.equal(computeReward("I think 42", "42").status, "no_answer");
 * assert.equal(computeReward("\\boxed{41}", "42", { reward_wrong: 0 }).reward, 0);
 * ```
 */
export function computeReward(
  generated: string,
  groundTruth: string,
  options: RewardOptions = {},
): RewardResult {
  const rewards = checkRewards(options);
  const predicted = extractAnswer(generated);
  if (predicted === null) {
    return { reward: rewards.noAnswer, predicted: null, correct: false, status: "no_answer" };
  }
  const correct = isEquivalent(predicted, groundTruthAnswer(groundTruth));
  return correct
    ? { reward: rewards.correct, predicted, correct, status: "correct" }
    : { reward: rewards.wrong, predicted, correct, status: "wrong" };
}

/**
 * Accuracy reward function for the trainer (TRL's reward-function idea, no tensors): one reward
 * per completion, {@linkcode computeReward} against the answer at the same index.
 *
 * @param completions Generated texts, `[B * G]`.
 * @param answers Ground truths aligned with `completions` (repeat each prompt's answer G times).
 * @param options Rewards per outcome ({@linkcode RewardOptions}, e.g. `config.reward`); defaults
 *   {@linkcode DEFAULT_REWARDS}.
 * @returns `[B * G]` rewards.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { accuracyReward } from "./reward.ts";
 * const rewards = accuracyReward(["\\boxed{4}", "\\boxed{5}", "no idea"], ["4", "4", "4"]);
 * assert.deepEqual(rewards, [1, -1, -0.5]);
 * ```
 */
export function accuracyReward(
  completions: string[],
  answers: string[],
  options: RewardOptions = {},
): number[] {
  if (completions.length !== answers.length) {
    throw new RangeError(
      `Expected one answer per completion but found ${answers.length} answers for ${completions.length} completions`,
    );
  }
  const rewards = checkRewards(options);
  return completions.map((c, i) => computeReward(c, answers[i], rewards).reward);
}

/**
 * Format reward function for the trainer: 1 when the completion contains exactly one box
 * (`\boxed{...}` or `\fbox{...}`), it closes, and only whitespace, punctuation (`. , ; : ! ?`),
 * `$` or a display-math closer (`\]`, `\)`) follow it; else 0. Linear time.
 *
 * @param completions Generated texts.
 * @returns One reward in {0, 1} per completion.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatReward } from "./reward.ts";
 * assert.deepEqual(
 *   formatReward(["so $\\boxed{4}$.", "\\boxed{4} because", "\\boxed{1} \\boxed{4}", "4"]),
 *   [1, 0, 0, 0],
 * );
 * ```
 */
export function formatReward(completions: string[]): number[] {
  return completions.map((text) => {
    let count = 0;
    for (const command of ["\\boxed", "\\fbox"]) {
      for (let i = text.indexOf(command); i >= 0; i = text.indexOf(command, i + 1)) {
        if (++count > 1) return 0;
      }
    }
    const box = lastBox(text);
    if (box === null || box === "unclosed" || text[box.end - 1] !== "}") return 0;
    return /^(?:[\s.,;:!?$]|\\\]|\\\))*$/.test(text.slice(box.end)) ? 1 : 0;
  });
}

/** One case of the reward self-test (seed `utils/reward_utils.py` `__main__`). */
export interface RewardSelfTestCase {
  generated: string;
  truth: string;
  /** Expected reward with {@linkcode DEFAULT_REWARDS}. */
  expected: number;
}

/**
 * The self-test cases shared by `deno task reward:selftest` and tests/reward_test.ts.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { computeReward, REWARD_SELF_TEST_CASES } from "./reward.ts";
 * for (const c of REWARD_SELF_TEST_CASES) {
 *   assert.equal(computeReward(c.generated, c.truth).reward, c.expected);
 * }
 * ```
 */
export const REWARD_SELF_TEST_CASES: readonly RewardSelfTestCase[] = Object.freeze([
  { generated: "The answer is \\boxed{42}", truth: "42", expected: 1.0 },
  { generated: "The answer is \\boxed{41}", truth: "42", expected: -1.0 },
  { generated: "The answer is 42", truth: "42", expected: -0.5 },
  { generated: "So the result is \\boxed{\\frac{1}{2}}", truth: "\\frac{1}{2}", expected: 1.0 },
  { generated: "We get \\boxed{{1,000}} apples", truth: "1000", expected: 1.0 },
  { generated: "Total: \\boxed{1,000}", truth: "1000", expected: 1.0 },
  { generated: "Half is \\boxed{0.5}", truth: "\\frac{1}{2}", expected: 1.0 },
  { generated: "\\boxed{\\dfrac{1}{2}}", truth: "0.5", expected: 1.0 },
  { generated: "\\boxed{0.33}", truth: "\\frac{1}{3}", expected: -1.0 },
  { generated: "It costs \\boxed{\\$18.00}", truth: "18", expected: 1.0 },
  { generated: "Truncated \\boxed{\\frac{1}{2}", truth: "\\frac{1}{2}", expected: -0.5 },
  { generated: "First \\boxed{3}, finally \\boxed{4}", truth: "4", expected: 1.0 },
  { generated: "\\boxed{2\\sqrt{2}}", truth: "\\sqrt{8}", expected: 1.0 },
]);

// ---------------------------------------------------------------------------------------------
// The score phase

/** Rewards of a rollout, one entry per completion. */
export interface Scores {
  /** Weighted sum of the reward functions (TRL `reward_weights`). */
  rewards: number[];
  /** Each reward function's raw values (logged as `rewards/<fn>/mean`). */
  perFunction: Record<string, number[]>;
  /** The verifier's verdict. */
  status: RewardResult["status"][];
  /** The extracted answer, or null. */
  predicted: (string | null)[];
}

/** What {@linkcode scorePhase} reads: the `reward` config section, and optionally a verifier. */
export type ScoreOptions =
  & Pick<
    Config["reward"],
    "reward_functions" | "reward_weights" | "reward_correct" | "reward_wrong" | "reward_no_answer"
  >
  & {
    /** The verifier, called once per completion; default {@linkcode computeReward}. */
    verify?: (completion: string, answer: string, rewards: RewardConfig) => RewardResult;
  };

/**
 * Score phase: the configured reward functions, weighted (TRL `reward_funcs` and
 * `reward_weights`). "accuracy" is the seed's verifier reward (`reward_correct`, `reward_wrong`,
 * `reward_no_answer`); "format" is 1 for exactly one `\boxed{}` at the end. The verifier runs
 * once per completion: its verdict gives the accuracy reward, the status and the answer.
 *
 * @param group `texts` (completions) and `answers` (ground truth per completion), e.g. the
 *   rollout phase's output.
 * @param reward The `reward` config section.
 * @returns Rewards, per-function values, verdicts and extracted answers.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { defaultConfig } from "./config.ts";
 * import { scorePhase } from "./reward.ts";
 * const s = scorePhase({ texts: ["\\boxed{4}", "no idea"], answers: ["4", "4"] }, defaultConfig().reward);
 * assert.deepEqual(s.rewards, [1, -0.5]);
 * assert.deepEqual(s.status, ["correct", "no_answer"]);
 * ```
 */
export function scorePhase(
  group: { texts: readonly string[]; answers: readonly string[] },
  reward: ScoreOptions,
): Scores {
  const { texts, answers } = group;
  if (texts.length !== answers.length) {
    throw new RangeError(
      `Expected one answer per completion but found ${answers.length} answers for ${texts.length} completions`,
    );
  }
  const verify = reward.verify ?? computeReward;
  const verdicts = texts.map((text, i) => verify(text, answers[i], reward));
  const perFunction: Record<string, number[]> = {};
  for (const fn of reward.reward_functions) {
    perFunction[fn] = fn === "accuracy" ? verdicts.map((v) => v.reward) : formatReward([...texts]);
  }
  const weights = reward.reward_weights ?? reward.reward_functions.map(() => 1);
  const rewards = texts.map((_, i) =>
    reward.reward_functions.reduce((s, fn, j) => s + weights[j] * perFunction[fn][i], 0)
  );
  return {
    rewards,
    perFunction,
    status: verdicts.map((v) => v.status),
    predicted: verdicts.map((v) => v.predicted),
  };
}
