/**
 * Private helpers of lib/reward.ts: normalise an answer string, parse it into structure (numbers,
 * lists, tuples, equations, ...), and decide whether two parsed answers are equivalent.
 * Expressions are evaluated with lib/_reward_latex.ts.
 *
 * @module
 */

import {
  add,
  div,
  evaluate,
  exact,
  mul,
  neg,
  type Node,
  numbersEqual,
  parseExpression,
  toFloat,
  type Value,
} from "./_reward_latex.ts";

/** At most this many `\pm` are expanded (2^n alternatives). */
const MAX_PM = 3;
/** At most this many items in a list, tuple, set or matrix. */
const MAX_ITEMS = 64;
/** Nesting of lists/tuples/sets/equations inside each other. */
const MAX_NESTING = 6;

// ---------------------------------------------------------------------------------------------
// Normalisation

/** A normalised answer string; `percent` when it carried a `%`. */
export interface Normalized {
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
  [/[\u2264\u2a7d]/g, "\\le "],
  [/[\u2265\u2a7e]/g, "\\ge "],
  [/\u2260/g, "\\ne "],
  [/\u00b0/g, ""],
  [/[\u00a0\u2009\u202f]/g, " "],
];

/**
 * Normalises a LaTeX answer: unicode math symbols, `\dfrac`/`\tfrac`, `\left`/`\right`, spacing
 * commands, `\$`, `\%` (remembered in `percent`), degrees, `\mbox`/`\textbf` → `\text`, and a
 * trailing full stop. Linear time.
 */
export function normalize(raw: string): Normalized {
  let s = raw;
  if (/[\u0080-\uffff]/.test(s)) {
    for (const [pattern, replacement] of UNICODE) s = s.replace(pattern, replacement);
  }
  s = s
    .replace(/\\[dtc]frac(?![a-zA-Z])/g, "\\frac")
    .replace(/\\[dt]binom(?![a-zA-Z])/g, "\\binom")
    .replace(/\\(?:left|right)(?:\.|(?![a-zA-Z]))/g, "")
    .replace(/\\[bB]igg?[lr]?(?![a-zA-Z])/g, "")
    .replace(/\\(?:displaystyle|textstyle|limits)(?![a-zA-Z])/g, "")
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
  if (s.includes("{,}")) {
    // `{,}` is number syntax, never a list separator: before exactly three digits it groups
    // thousands (`1{,}000`), otherwise it is a decimal comma (`3{,}5`, `1000{,}99`).
    s = s.replace(/(?<=\d)\{,\}(?=\d)(?!\d{3}(?!\d))/g, ".").replace(/\{,\}/g, ",");
  }
  if (/\\[lgn][etq]|[<>!]=/.test(s)) {
    // one spelling per relation: `\leq`, `\leqslant`, `<=` are `\le`; `\lt` is `<`
    s = s
      .replace(/\\(?:leqslant|leqq|leq|le)(?![a-zA-Z])|<=/g, "\\le ")
      .replace(/\\(?:geqslant|geqq|geq|ge)(?![a-zA-Z])|>=/g, "\\ge ")
      .replace(/\\(?:neq|ne)(?![a-zA-Z])|!=/g, "\\ne ")
      .replace(/\\([lg])t(?![a-zA-Z])/g, (_m, c) => (c === "l" ? "<" : ">"));
  }
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
export function trimEnd(s: string, chars: string): string {
  let end = s.length;
  while (end > 0 && chars.includes(s[end - 1])) end--;
  return s.slice(0, end);
}

/**
 * `s` without whitespace, except that a comma followed by whitespace and a digit keeps one space:
 * `32,349` is a number with a thousands separator, `32, 349` a list of two numbers.
 */
export function squash(s: string): string {
  if (!s.includes(",")) return s.replace(/\s+/g, "");
  return s.replace(/(,)\s+(?=\d)|\s+/g, (_match, comma) => (comma === undefined ? "" : ", "));
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

/** A parsed answer. */
export type Answer =
  | { kind: "raw"; src: string }
  | { kind: "text"; src: string; value: string }
  | { kind: "expr"; src: string; node: Node; vars: Set<string> }
  | { kind: "base"; src: string; digits: string; base: string }
  // `x = 5`, `(p, q) = (3, 2)`, `x \in [1, 2]`; `names` are the keys of the named quantities on the
  // left (null for `\in`), one per item of `value` when there are several
  | { kind: "assign"; src: string; names: string[] | null; value: Answer }
  | { kind: "equation"; src: string; diff: Node; vars: Set<string> } // lhs - rhs = 0
  // unordered; `flatten` when it is only a way of writing several items (`a \pm b`, `1, 2`), so
  // that it merges into a list around it; `\{1, 2\}` written as a set does not
  | { kind: "set"; src: string; items: Answer[]; flatten: boolean }
  // ordered; `relation` when it is the interval an inequality describes (`-2 \le x \le 7`)
  | {
    kind: "tuple";
    src: string;
    open: string;
    close: string;
    items: Answer[];
    relation?: boolean;
  }
  // an inequality that is not an interval of one variable (`x + y \le 5`): `diff op 0`
  | { kind: "relation"; src: string; op: "<" | "\\le" | "\\ne"; diff: Node; vars: Set<string> }
  | { kind: "union"; src: string; items: Answer[] }
  | { kind: "ratio"; src: string; items: Answer[] } // `11:21`
  | { kind: "matrix"; src: string; rows: Answer[][] };

// Splits `s` at the separators `separatorAt` finds (it returns the length of the separator that
// starts at i, or 0) outside (), [], {}; null if the brackets do not balance. `(3,4]` balances:
// bracket kinds are not paired here.
function splitOutside(
  s: string,
  separatorAt: (i: number) => number,
): { parts: string[]; separators: string[] } | null {
  const parts: string[] = [];
  const separators: string[] = [];
  let depth = 0;
  let last = 0;
  for (let i = 0; i < s.length; i++) {
    let c = s[i];
    if (depth === 0) {
      const n = separatorAt(i);
      if (n > 0) {
        parts.push(s.slice(last, i));
        separators.push(s.slice(i, i + n));
        i += n - 1;
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
  return { parts, separators };
}

// Splits at top-level occurrences of `sep`. A word separator (`and`) splits only where it stands
// alone: not in `band`, `\land` or `\text{...}`.
function splitTopLevel(s: string, sep: string): string[] | null {
  const command = sep[0] === "\\" && sep !== "\\\\";
  const word = /^[a-z]+$/.test(sep);
  return splitOutside(s, (i) => {
    if (!s.startsWith(sep, i)) return 0;
    const next = s[i + sep.length] ?? "";
    // `\in` must not match `\infty`, and `=` must not split `<=`.
    if ((command || word) && /[a-zA-Z]/.test(next)) return 0;
    if (word && /[a-zA-Z\\]/.test(s[i - 1] ?? "")) return 0;
    if (sep === "=" && /[<>!]/.test(s[i - 1] ?? "")) return 0;
    return sep.length;
  })?.parts ?? null;
}

// A relation operator at i (normalised: `<`, `>`, `\le`, `\ge`, `\ne`): its length, or 0.
function relationAt(s: string, i: number): number {
  const c = s[i];
  if (c === "<" || c === ">") return 1;
  if (c !== "\\" || !"lgn".includes(s[i + 1]) || s[i + 2] !== "e") return 0;
  return /[a-zA-Z]/.test(s[i + 3] ?? "") ? 0 : 3;
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

// Named quantities: a left-hand side made only of these is a name, and `name = value` is the
// answer `value` (issue 13). A variable (`x`, `a_{37}`, `\alpha`, `f(x)`, `f'(2)`), points
// (`AB`, `A_1B_1`), a figure (`\angle ABC`, `\overline{AB}`, `|AB|`, `[ABC]`), or `\text{words}`;
// then a ratio of those (`V_1:V_2`), a quotient (`\frac{NO}{BO}`), or a tuple (`(p, q)`). Not
// an expression: `xy`, `2x`, `|x|` and `x^2` stay sides of an equation.
const VARIABLE = String.raw`(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_(?:\{[^{}]{1,12}\}|[a-zA-Z0-9]))?'*` +
  String.raw`(?:\([a-zA-Z0-9, ]{1,12}\))?`;
const POINTS = String.raw`(?:[A-Z](?:_\{?\d{1,2}\}?)?'*){2,6}`;
const FIGURE = String.raw`(?:m ?)?\\(?:angle|measuredangle|triangle) ?(?:${POINTS}|[A-Z])|` +
  String.raw`\\(?:overline|overrightarrow|vec|widehat) ?\{[A-Z]{1,6}\}`;
const QUANTITY = String.raw`(?:${VARIABLE}|${POINTS}|${FIGURE}|\|(?:${POINTS}|${FIGURE})\||` +
  String.raw`\[${POINTS}\]|\\text\{[a-zA-Z ]{1,24}\})`;
const NAME = new RegExp(
  String.raw`^(?:${QUANTITY}(?: ?: ?${QUANTITY})*|\\frac\{${QUANTITY}\}\{${QUANTITY}\}|` +
    String.raw`${QUANTITY} ?/ ?${QUANTITY})$`,
);
const NAME_TUPLE = new RegExp(String.raw`^\(${QUANTITY}(?: ?, ?${QUANTITY})+\)$`);
/** Longer left-hand sides are never names (and the regexes above never see them). */
const MAX_NAME_CHARS = 80;

// The keys of the named quantities in `lhs` (several for a tuple `(p, q)`), or null when `lhs` is
// not a name. Keys ignore spaces and braces: `a_{3}` and `a_3` are one name.
function nameKeys(lhs: string): string[] | null {
  if (lhs.length > MAX_NAME_CHARS) return null;
  const key = (name: string) => name.replace(/[\s{}]/g, "");
  if (NAME.test(lhs)) return [key(lhs)];
  if (NAME_TUPLE.test(lhs)) return lhs.slice(1, -1).split(",").map(key);
  return null;
}

const BASE_NUMERAL = /^([0-9A-Za-z]+)_\{?(\d+)\}?$/;
const MATRIX = /^\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?([\s\S]*)\\end\{\1\}$/;

// List separators, the one that binds least first: `p=5, q=2; p=7, q=2`, `21, 16 or 11`,
// `1 and 2 and 3`, `(11,7) or (7,11)`.
const LIST_SEPARATORS = [";", ",", "and", "or"];

function splitList(s: string): { sep: string; items: string[] } | null {
  for (const sep of LIST_SEPARATORS) {
    if (!s.includes(sep)) continue;
    const items = splitItems(s, sep);
    if (items !== null) return { sep, items };
  }
  return null;
}

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

/** Parses a normalised answer into structure; `nesting` is 0 at the top. */
export function parseAnswer(s: string, nesting: number): Answer {
  s = s.trim();
  const raw: Answer = { kind: "raw", src: s };
  if (nesting > MAX_NESTING || s === "") return raw;
  if (s[0] === "{" && enclosed(s)) return parseAnswer(s.slice(1, -1), nesting + 1); // `{{1,000}}`
  const compact = squash(s);
  if (THOUSANDS.test(compact)) return parseLeaf(compact.replace(/,/g, ""));

  const list = splitList(s);
  if (list !== null) {
    const items = list.items.map((p) => parseAnswer(p, nesting + 1));
    // `x < -1 or x > 2` is a union of intervals
    if (items.every((x) => x.kind === "tuple" && x.relation)) {
      return { kind: "union", src: s, items };
    }
    // `p=5, q=2; p=7, q=2` is two solutions: a `;` list keeps its named tuples whole.
    return makeSet(s, list.sep === ";" ? items.map(keepNamedTuple) : items, true);
  }

  const cups = splitItems(s, "\\cup");
  if (cups !== null) {
    return {
      kind: "union",
      src: s,
      items: cups.map((p) => parseAnswer(p, nesting + 1)),
    };
  }

  if (/[<>]|\\[lgn]e(?![a-zA-Z])/.test(s)) {
    const relation = splitOutside(s, (i) => relationAt(s, i));
    if (relation !== null && relation.parts.length > 1) {
      return relationOf(s, relation.parts, relation.separators) ?? raw;
    }
  }

  const membership = splitTopLevel(s, "\\in");
  if (membership !== null && membership.length === 2) {
    return { kind: "assign", src: s, names: null, value: parseAnswer(membership[1], nesting + 1) };
  }
  const sides = splitTopLevel(s, "=");
  if (sides !== null && sides.length >= 2) {
    const names = nameKeys(sides[0].trim());
    if (names !== null) {
      const value = parseAnswer(sides[sides.length - 1], nesting + 1);
      return { kind: "assign", src: s, names, value };
    }
    return equationOf(s, sides) ?? raw;
  }

  const ratio = s.includes(":") ? splitItems(s, ":") : null;
  if (ratio !== null && ratio.every((p) => p !== "")) {
    return { kind: "ratio", src: s, items: ratio.map((p) => parseAnswer(p, nesting + 1)) };
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
    const items = splitItems(inner, ",") ?? splitItems(inner, ";") ?? [inner];
    return makeSet(s, items.map((p) => parseAnswer(p, nesting + 1)), false);
  }

  if ((s[0] === "(" || s[0] === "[") && (s.endsWith(")") || s.endsWith("]")) && enclosed(s)) {
    const inner = s.slice(1, -1);
    const items = splitItems(inner, ",") ?? splitItems(inner, ";"); // `(0;-2;6)`
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

// ---------------------------------------------------------------------------------------------
// Relations: `x \le 5`, `-x > -1`, `-2 \le x \le 7`, `0 < f(x) < 1` are intervals of one
// quantity; other inequalities compare as `lhs - rhs` against 0.

/** One side of an interval: `quantity < end` (upper) or `quantity > end` (lower). */
interface Bound {
  key: string; // the quantity (a name or the only variable)
  side: "lower" | "upper";
  end: Answer;
  strict: boolean;
}

// Rational points to test that `lhs - rhs` is a line in its variable. Not integers: `\lfloor x
// \rfloor` is linear on them.
const LINE_POINTS: Value[] = [exact(1n, 3n), exact(5n, 4n), exact(11n, 5n), exact(-7n, 2n)];

// `lhs - rhs = slope * (v - root)`, or null when it is not a line in `v` with a non-zero slope.
function lineOf(diff: Node, v: string): { slope: Value; root: Value } | null {
  const d = LINE_POINTS.map((p) => evaluate(diff, new Map([[v, p]])));
  if (!d.every((x) => isFinite(x) && !Number.isNaN(toFloat(x)))) return null;
  const slopes = [1, 2, 3].map((k) =>
    div(add(d[k], neg(d[0])), add(LINE_POINTS[k], neg(LINE_POINTS[0])))
  );
  const slope = slopes[0];
  if (!numbersEqual(slope, slopes[1]) || !numbersEqual(slope, slopes[2])) return null;
  if (!(toFloat(slope) !== 0)) return null;
  return { slope, root: add(LINE_POINTS[0], neg(div(d[0], slope))) };
}

function constant(v: Value): Answer {
  const src = typeof v === "number"
    ? (Number.isFinite(v) ? String(v) : v > 0 ? "\\infty" : "-\\infty")
    : v.d === 1n
    ? String(v.n)
    : `${v.n}/${v.d}`;
  return { kind: "expr", src, node: { t: "num", v, literal: false }, vars: new Set() };
}

// `left op right` as a bound on one quantity: a name against a constant (`x \le 5`,
// `0 < f(x)`), or a line in one variable (`-x > -1` is `x < 1`).
function boundOf(left: string, op: string, right: string): Bound | null {
  const below = op === "<" || op === "\\le"; // left is below right
  const strict = op === "<" || op === ">";
  const sides: [string, string, "lower" | "upper"][] = [
    [left, right, below ? "upper" : "lower"],
    [right, left, below ? "lower" : "upper"],
  ];
  for (const [name, other, side] of sides) {
    const keys = nameKeys(name.trim());
    const end = keys?.length === 1 ? parseExpression(other.trim()) : null;
    if (keys !== null && end !== null && end.vars.size === 0) {
      return { key: keys[0], side, strict, end: { kind: "expr", src: other.trim(), ...end } };
    }
  }
  const l = parseExpression(left.trim()), r = parseExpression(right.trim());
  if (l === null || r === null) return null;
  const vars = new Set([...l.vars, ...r.vars]);
  if (vars.size !== 1) return null;
  const [v] = vars;
  const line = lineOf({ t: "sub", a: l.node, b: r.node }, v);
  if (line === null) return null;
  const side = (toFloat(line.slope) > 0) === below ? "upper" : "lower";
  return { key: v, side, strict, end: constant(line.root) };
}

function relationOf(src: string, parts: string[], ops: string[]): Answer | null {
  const bounds: Bound[] = [];
  for (let i = 0; i < ops.length && ops[i] !== "\\ne"; i++) {
    const bound = boundOf(parts[i], ops[i], parts[i + 1]);
    if (bound === null) break;
    bounds.push(bound);
  }
  if (bounds.length === ops.length && bounds.length <= 2) {
    const lower = bounds.find((b) => b.side === "lower") ?? null;
    const upper = bounds.find((b) => b.side === "upper") ?? null;
    // `a < x < b` bounds one quantity from both sides; `x > 1 > y` is not an interval
    if (bounds.length === 1 || (lower !== null && upper !== null && lower.key === upper.key)) {
      return {
        kind: "tuple",
        src,
        open: lower === null || lower.strict ? "(" : "[",
        close: upper === null || upper.strict ? ")" : "]",
        items: [lower?.end ?? constant(-Infinity), upper?.end ?? constant(Infinity)],
        relation: true,
      };
    }
  }
  if (ops.length !== 1) return null;
  const l = parseExpression(stripUnits(parts[0].trim()));
  const r = parseExpression(stripUnits(parts[1].trim()));
  if (l === null || r === null) return null;
  // `a > b` is `b < a`
  const [a, b] = ops[0] === ">" || ops[0] === "\\ge" ? [r, l] : [l, r];
  return {
    kind: "relation",
    src,
    op: ops[0] === "\\ne" ? "\\ne" : ops[0] === "<" || ops[0] === ">" ? "<" : "\\le",
    diff: { t: "sub", a: a.node, b: b.node },
    vars: new Set([...l.vars, ...r.vars]),
  };
}

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

// `\{1 \pm \sqrt5, -2\}` has three elements and `21, 16 or 11` three: items that are only a way of
// writing several items (`flatten`) merge into the list.
function makeSet(src: string, items: Answer[], flatten: boolean): Answer {
  const flat = items.flatMap((x) => (x.kind === "set" && x.flatten ? x.items : [x]));
  return flat.length === 1 ? flat[0] : { kind: "set", src, items: flat, flatten };
}

// The values of `p = 5, q = 2` in order, when every item names one distinct quantity; else null.
function namedTupleValues(a: Answer): Answer[] | null {
  if (a.kind !== "set") return null;
  const seen = new Set<string>();
  for (const item of a.items) {
    if (item.kind !== "assign" || item.names?.length !== 1 || seen.has(item.names[0])) return null;
    seen.add(item.names[0]);
  }
  return a.items.map((item) => (item as Answer & { kind: "assign" }).value);
}

function keepNamedTuple(a: Answer): Answer {
  return a.kind === "set" && a.flatten && namedTupleValues(a) !== null
    ? { ...a, flatten: false }
    : a;
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
// Inequalities (`diff < 0`) need a positive constant: `2x < 4` is `x - 2 < 0`, not `2 - x < 0`.
function equationsEqual(
  a: { diff: Node; vars: Set<string> },
  b: { diff: Node; vars: Set<string> },
  positive = false,
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
    if (ratio === null) {
      ratio = div(x, y);
      if (positive && !(toFloat(ratio) > 0)) return false;
    } else if (!numbersEqual(x, mul(ratio, y))) return false;
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

// (name, value) pairs of an answer that names every value: `k = 45, n = 2`, `(p, q) = (3, 2)`,
// `x = 1 \pm \sqrt2` (two pairs); else null.
function namedPairs(a: Answer): [string, Answer][] | null {
  if (a.kind === "set") {
    const pairs: [string, Answer][] = [];
    for (const item of a.items) {
      const p = namedPairs(item);
      if (p === null) return null;
      pairs.push(...p);
    }
    return pairs;
  }
  if (a.kind !== "assign" || a.names === null) return null;
  const { names, value } = a;
  if (names.length === 1) {
    const values = value.kind === "set" && value.flatten ? value.items : [value];
    return values.map((v) => [names[0], v]);
  }
  if (value.kind !== "tuple" || value.items.length !== names.length) return null;
  return names.map((name, i) => [name, value.items[i]]);
}

// The names of `pairs` as compared: `x_1, x_2, ...` numbered from 1 label interchangeable roots,
// so they are all `x`. Other indexed names keep their index (`a_3` is the third term, `y_1` the
// first of two functions).
function pairNames(pairs: [string, Answer][]): string[] {
  const numbers = pairs.map(([name]) => (/^x_\d+$/.test(name) ? Number(name.slice(2)) : NaN));
  const roots = numbers.sort((p, q) => p - q).every((k, i) => k === i + 1);
  return pairs.map(([name]) => (roots ? "x" : name));
}

// Both sides name several quantities: the names must agree, and values pair by name, so
// `k = 2, n = 45` is not `k = 45, n = 2` and `a_{38} = 19` is not `a_{37} = 19`.
function pairsEqual(a: [string, Answer][], b: [string, Answer][]): boolean {
  if (a.length !== b.length) return false;
  const namesA = pairNames(a), namesB = pairNames(b);
  const used = new Array<boolean>(b.length).fill(false);
  for (let i = 0; i < a.length; i++) {
    const j = b.findIndex((y, k) =>
      !used[k] && namesB[k] === namesA[i] && answersEqual(a[i][1], y[1])
    );
    if (j < 0) return false;
    used[j] = true;
  }
  return true;
}

function severalNames(pairs: [string, Answer][]): boolean {
  return new Set(pairNames(pairs)).size > 1;
}

// `11:21` against `22:42` (proportional) or against `\frac{11}{21}`.
function ratioValues(a: Answer & { kind: "ratio" }): Value[] | null {
  const values: Value[] = [];
  for (const item of a.items) {
    if (item.kind !== "expr" || item.vars.size !== 0) return null;
    values.push(evaluate(item.node, new Map()));
  }
  return values;
}

function ratiosEqual(a: Answer & { kind: "ratio" }, b: Answer): boolean {
  const x = ratioValues(a);
  if (b.kind === "expr" && b.vars.size === 0) {
    return x !== null && x.length === 2 &&
      numbersEqual(div(x[0], x[1]), evaluate(b.node, new Map()));
  }
  if (b.kind !== "ratio" || b.items.length !== a.items.length) return false;
  const y = ratioValues(b);
  if (x === null || y === null) return orderedEqual(a.items, b.items);
  const zero = exact(0n);
  if (numbersEqual(x[0], zero) || numbersEqual(y[0], zero)) return orderedEqual(a.items, b.items);
  return x.every((xi, i) => numbersEqual(mul(xi, y[0]), mul(y[i], x[0])));
}

function restatedEqual(list: Answer & { kind: "set" }, b: Answer): boolean {
  const [first, ...rest] = list.items;
  if (rest.every((x) => answersEqual(first, x))) return answersEqual(first, b);
  if (b.kind !== "tuple" || b.open !== "(" || b.close !== ")") return false;
  const values = namedTupleValues(list); // `p = 3, q = 2` is the ordered pair `(3, 2)`
  return values !== null && orderedEqual(values, b.items);
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

/** Whether two parsed answers are equivalent. */
export function answersEqual(a: Answer, b: Answer): boolean {
  if (squash(a.src) === squash(b.src)) return true;
  if (a.kind === "text" || b.kind === "text") return textKey(a.src) === textKey(b.src);
  const pairsA = namedPairs(a), pairsB = pairsA === null ? null : namedPairs(b);
  if (pairsA !== null && pairsB !== null && (severalNames(pairsA) || severalNames(pairsB))) {
    return pairsEqual(pairsA, pairsB);
  }
  // Otherwise a name is dropped: `(p, q) = (3, 2)` is `(3, 2)`, `x = 5` is `5`, and one named
  // quantity against another compares values (`x = 5` is `y = 5`).
  if (a.kind === "assign" && b.kind === "equation") return assignmentMatches(a, b);
  if (b.kind === "assign" && a.kind === "equation") return assignmentMatches(b, a);
  if (a.kind === "assign" && b.kind === "assign") return answersEqual(a.value, b.value);
  if (a.kind === "assign" && b.kind !== "equation") return answersEqual(a.value, b);
  if (b.kind === "assign" && a.kind !== "equation") return answersEqual(a, b.value);
  // A list that only restates one answer is that answer: `\boxed{15\frac{39}{40}}, or
  // \boxed{\frac{639}{40}}` (and `1, 1` is 1). A list of different answers is never one of them.
  if (a.kind === "set" && b.kind !== "set" && b.kind !== "union") return restatedEqual(a, b);
  if (b.kind === "set" && a.kind !== "set" && a.kind !== "union") return restatedEqual(b, a);
  switch (a.kind) {
    case "expr":
      if (b.kind === "base" || b.kind === "ratio") return answersEqual(b, a);
      return b.kind === "expr" && expressionsEqual(a, b);
    case "equation":
      return b.kind === "equation" && equationsEqual(a, b);
    case "relation":
      return b.kind === "relation" && a.op === b.op && equationsEqual(a, b, a.op !== "\\ne");
    case "base":
      if (b.kind === "base") return a.digits === b.digits && a.base === b.base;
      return b.kind === "expr" && squash(b.src) === a.digits; // `204` for `204_5`
    case "set":
      return b.kind === "set" && unorderedEqual(a.items, b.items);
    case "ratio":
      return ratiosEqual(a, b);
    case "union":
      return b.kind === "union" && unorderedEqual(a.items, b.items);
    case "tuple":
      if (b.kind === "ratio") return answersEqual(b, a);
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

/** `a` divided by 100, for a `%` answer; null when `a` is not an expression. */
export function percentOf(a: Answer): Answer | null {
  if (a.kind !== "expr") return null;
  return {
    kind: "expr",
    src: `(${a.src})/100`,
    node: { t: "div", a: a.node, b: { t: "num", v: exact(100n), literal: true } },
    vars: a.vars,
  };
}
