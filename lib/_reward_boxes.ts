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

/** The last box of `text`: null when there is none, "unclosed" when its braces never close. */
export function lastBox(text: string): BoxSpan | null | "unclosed" {
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
