/**
 * Private helpers of lib/reward.ts: finding `\boxed{...}` / `\fbox{...}` answers in a completion.
 * Every scan here is linear in the length of the text.
 *
 * @module
 */

import { trimEnd } from "./_reward_answers.ts";

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

/** A box in a completion. */
export interface BoxSpan {
  start: number; // index of the backslash of \boxed / \fbox
  content: string;
  end: number; // index just past the box
}

/** At most this many boxes form one answer list; a longer run counts as its last box. */
const MAX_BOXES = 64;
/** Boxes further apart than this are separate answers: the last one counts. */
const MAX_GAP_CHARS = 80;
/** At most this many words (besides `and`, `or` and labels) between two boxes of one list. */
const MAX_GAP_WORDS = 2;
/** A box of a list starts at most this far before the next box (its content is shorter). */
const MAX_LOOKBACK_CHARS = 300;

const ARGUMENT_END = /[\s$]/g;

// The box whose command starts at `start` (`\boxed{...}`, `\fbox{...}` or `\boxed 5`).
function boxAt(text: string, start: number): BoxSpan | null | "unclosed" {
  const command = text.startsWith("\\boxed", start) ? 6 : 5;
  let i = start + command;
  while (i < text.length && (text[i] === " " || text[i] === "\t")) i++;
  if (text[i] === "{") {
    const close = matchBrace(text, i);
    if (close < 0) return "unclosed";
    return { start, content: text.slice(i + 1, close), end: close + 1 };
  }
  // `\boxed 5`: the argument runs to the next whitespace or `$`.
  if (i === start + command) return null; // `\boxedfoo` is another command
  ARGUMENT_END.lastIndex = i;
  const j = ARGUMENT_END.exec(text)?.index ?? text.length;
  return { start, content: trimEnd(text.slice(i, j), ".,"), end: j };
}

// The start of the last `\boxed` or `\fbox` in `text`, or -1. One backward scan for "box" (not one
// per command), which usually stops at the last box, near the end.
function lastBoxStart(text: string): number {
  for (let i = text.lastIndexOf("box"); i > 0; i = text.lastIndexOf("box", i - 1)) {
    if (text.startsWith("\\boxed", i - 1)) return i - 1;
    if (i >= 2 && text.startsWith("\\fbox", i - 2)) return i - 2;
  }
  return -1;
}

/** The last box of `text`: null when there is none, "unclosed" when its braces never close. */
export function lastBox(text: string): BoxSpan | null | "unclosed" {
  const start = lastBoxStart(text);
  return start < 0 ? null : boxAt(text, start);
}

// The start of the last box command in the MAX_LOOKBACK_CHARS before `before`, or -1. Bounded, so
// that a completion with one box is not scanned again from its end to its start.
function previousBoxStart(text: string, before: number): number {
  const from = Math.max(0, before - MAX_LOOKBACK_CHARS);
  const start = lastBoxStart(text.slice(from, before));
  return start < 0 ? -1 : from + start;
}

// Words that revise or conclude rather than continue a list: `\boxed{3}, finally \boxed{4}` and
// `\boxed{1} or rather \boxed{2}` answer with their last box.
const REVISION_WORDS = new Set([
  "actually",
  "again",
  "answer",
  "but",
  "check",
  "correct",
  "corrected",
  "correction",
  "final",
  "finally",
  "gives",
  "hence",
  "instead",
  "is",
  "mistake",
  "no",
  "not",
  "oops",
  "rather",
  "so",
  "sorry",
  "then",
  "therefore",
  "thus",
  "wait",
  "was",
  "wrong",
]);

// A label for the next box at the end of the text between two boxes: `y_2 =`, `(x, y) =`.
const LABEL = /(?:[a-zA-Z](?:_\{?[a-zA-Z0-9]{1,4}\}?)?|\([a-zA-Z, ]{1,20}\))\s*=\s*$/;

// Whether the text between two boxes joins them into one answer list: at least one connector
// (`,`, `;`, `and`, `or`), besides which only math delimiters, spacing, `\text{...}` wrappers, a
// label for the next box (`y_2 =`, `(b)`) and at most MAX_GAP_WORDS other words (`papers`, `for
// part (a)`), none of them a revision. A blank line, a full stop, a digit or an operator separates
// the boxes, and so does a clause (`\boxed{16} eggs, and she sells \boxed{9}`).
function joinsBoxes(gap: string): boolean {
  if (gap.includes("\n\n")) return false;
  const words = gap
    .replace(/\\(?:text|textbf|textit|textrm|mathrm|mbox)\s*\{([^{}]*)\}/g, " $1 ")
    .replace(/\\[()[\]]|\$|\\q?quad(?![a-zA-Z])|\\[,;:! ]|~/g, " ")
    .replace(LABEL, " ")
    .replace(/\([a-zA-Z]{1,4}\)/g, " ");
  if (/[^a-zA-Z\s,;()]/.test(words)) return false;
  let connectors = 0, others = 0;
  for (const token of words.match(/[a-zA-Z]+|[,;]/g) ?? []) {
    const word = token.toLowerCase();
    if (word === "," || word === ";" || word === "and" || word === "or") connectors++;
    else if (REVISION_WORDS.has(word) || ++others > MAX_GAP_WORDS) return false;
  }
  return connectors > 0;
}

/**
 * The boxes of the completion's final answer: the last box, and the boxes before it that
 * {@linkcode joinsBoxes} joins to it within MAX_GAP_CHARS (`\boxed{1} and \boxed{2}`,
 * `\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}`), in order. Null when there is no box,
 * "unclosed" when the last box never closes. Linear time: after finding the last box, each of at
 * most MAX_BOXES + 1 steps scans back at most MAX_LOOKBACK_CHARS.
 */
export function finalBoxes(text: string): BoxSpan[] | null | "unclosed" {
  const last = lastBox(text);
  if (last === null || last === "unclosed") return last;
  const boxes = [last];
  for (let next = last; boxes.length <= MAX_BOXES;) {
    const start = previousBoxStart(text, next.start);
    if (start < 0) break;
    const box = boxAt(text, start);
    if (box === null || box === "unclosed" || box.end > next.start) break;
    if (next.start - box.end > MAX_GAP_CHARS) break;
    if (!joinsBoxes(text.slice(box.end, next.start))) break;
    boxes.push(box);
    next = box;
  }
  return boxes.length > MAX_BOXES ? [last] : boxes.reverse();
}
