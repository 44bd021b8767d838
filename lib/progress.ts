/**
 * A small progress bar for tasks: label, step/total, rate, ETA and metric fields. On a terminal it
 * redraws one line in place with `\r`; in a log file (not a TTY) it prints a plain line every 10%
 * and at the end, so CI logs stay short. {@linkcode formatProgress} is the pure formatter.
 *
 * @module
 */

/** Everything one progress line shows. Times are milliseconds (e.g. `performance.now()`). */
export interface ProgressState {
  /** What is running, e.g. "train" or "eval before". */
  label: string;
  /** Steps done so far. */
  step: number;
  /** Total steps, or null when unknown (no bar, no ETA). */
  total: number | null;
  /** When step 0 was, in the same clock as `now`. */
  startedAt: number;
  /** Extra values shown as `key=value`, e.g. `{ reward: 0.51, kl: 0.0012 }`. */
  fields?: Record<string, number | string>;
  /** Unit for the rate, default "it" (so "it/s"). */
  unit?: string;
  /** The step the bar started from (a resumed run); rate and ETA count only steps since. */
  initial?: number;
}

const BLOCKS = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];

/**
 * Formats seconds as `m:ss`, or `h:mm:ss` from one hour on.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatDuration } from "./progress.ts";
 * assert.equal(formatDuration(83.9), "1:23");
 * assert.equal(formatDuration(3723), "1:02:03");
 * ```
 */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/**
 * Formats a metric value: integers as they are, others to 4 significant digits.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatValue } from "./progress.ts";
 * assert.equal(formatValue(0.512345), "0.5123");
 * assert.equal(formatValue(12), "12");
 * assert.equal(formatValue(0.00123456), "0.001235");
 * ```
 */
export function formatValue(value: number | string): string {
  if (typeof value === "string") return value;
  if (Number.isInteger(value) || !Number.isFinite(value)) return String(value);
  return String(Number(value.toPrecision(4)));
}

function formatRate(stepsPerSecond: number, unit: string): string {
  if (!Number.isFinite(stepsPerSecond) || stepsPerSecond <= 0) return `? ${unit}/s`;
  // Slow loops (a GRPO step can take minutes) read better as seconds per step, like tqdm.
  if (stepsPerSecond < 0.1) return `${(1 / stepsPerSecond).toFixed(1)} s/${unit}`;
  const digits = stepsPerSecond >= 100 ? 0 : stepsPerSecond >= 10 ? 1 : 2;
  return `${stepsPerSecond.toFixed(digits)} ${unit}/s`;
}

function bar(fraction: number, width: number): string {
  const eighths = Math.round(Math.min(1, Math.max(0, fraction)) * width * 8);
  const full = Math.floor(eighths / 8);
  const partial = BLOCKS[eighths % 8];
  return ("█".repeat(full) + partial).padEnd(width, " ");
}

/**
 * One progress line, tqdm-like:
 * `train  40%|████████            | 4/10 [0:08<0:12, 0.50 it/s] reward=0.5123 kl=0.0012`.
 * Without a total: `generate 4 [0:08, 0.50 it/s]`.
 *
 * @param state Label, step, total, start time and fields.
 * @param now The current time in the clock of `state.startedAt` (milliseconds).
 * @param options `barWidth` in characters (default 20).
 * @returns The line, without `\r` or newline.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatProgress } from "./progress.ts";
 * const line = formatProgress(
 *   { label: "train", step: 4, total: 10, startedAt: 0, fields: { reward: 0.51234 } },
 *   8000,
 * );
 * assert.equal(line, "train  40%|████████            | 4/10 [0:08<0:12, 0.50 it/s] reward=0.5123");
 * ```
 */
export function formatProgress(
  state: ProgressState,
  now: number,
  options: { barWidth?: number } = {},
): string {
  const { label, step, total } = state;
  const unit = state.unit ?? "it";
  const elapsed = Math.max(0, (now - state.startedAt) / 1000);
  const rate = elapsed > 0 ? (step - (state.initial ?? 0)) / elapsed : NaN;
  const fields = Object.entries(state.fields ?? {})
    .map(([key, value]) => ` ${key}=${formatValue(value)}`)
    .join("");
  if (total === null || !(total > 0)) {
    return `${label} ${step} [${formatDuration(elapsed)}, ${formatRate(rate, unit)}]${fields}`;
  }
  const fraction = Math.min(1, step / total);
  const percent = `${Math.floor(fraction * 100)}`.padStart(3, " ");
  const eta = step >= total ? 0 : rate > 0 ? (total - step) / rate : NaN;
  return `${label} ${percent}%|${bar(fraction, options.barWidth ?? 20)}| ${step}/${total} ` +
    `[${formatDuration(elapsed)}<${formatDuration(eta)}, ${formatRate(rate, unit)}]${fields}`;
}

/** Where a bar writes: `Deno.stderr` fits (its `isTerminal()` picks the mode). */
export interface ProgressWriter {
  writeSync(bytes: Uint8Array): number;
  isTerminal?(): boolean;
}

/** Options for {@linkcode ProgressBar}. */
export interface ProgressOptions {
  /** Shown first on the line. */
  label: string;
  /** Total steps, or null when unknown. */
  total: number | null;
  /** Usually `Deno.stderr`. */
  writer: ProgressWriter;
  /** Overrides `writer.isTerminal()`. */
  isTerminal?: boolean;
  /** Clock in milliseconds; default `performance.now`. */
  now?: () => number;
  /** Unit for the rate (default "it"). */
  unit?: string;
  /** Start at this step (a resumed run): rate and ETA count only the steps done since. */
  initial?: number;
  /** On a terminal, redraw at most this often (default 100 ms); `done()` always draws. */
  redrawMs?: number;
  /** Not on a terminal and total unknown: print at most this often (default 30 s). */
  plainEveryMs?: number;
  /** Terminal width; longer lines are cut to fit so `\r` redraws one line (default: no cut). */
  columns?: number;
}

/**
 * A progress bar over {@linkcode formatProgress}. On a TTY it redraws in place (`\r` + clear to
 * end of line); otherwise it prints a plain line at each 10% of `total` (every `plainEveryMs`
 * when the total is unknown) and always at `done()`.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { ProgressBar } from "./progress.ts";
 * const chunks: string[] = [];
 * const writer = {
 *   writeSync(bytes: Uint8Array) {
 *     chunks.push(new TextDecoder().decode(bytes));
 *     return bytes.length;
 *   },
 * };
 * let t = 0;
 * const bar = new ProgressBar({ label: "eval", total: 2, writer, isTerminal: false, now: () => t });
 * t = 1000;
 * bar.update(1);
 * t = 2000;
 * bar.done({ accuracy: 0.5 });
 * assert.equal(chunks.length, 2); // 50% and the end: a plain line each
 * ```
 */
export class ProgressBar {
  #options: Required<Omit<ProgressOptions, "columns" | "isTerminal" | "initial">> & {
    columns?: number;
  };
  #tty: boolean;
  #state: ProgressState;
  #lastDraw = -Infinity;
  #lastDecile = 0;
  #drawn = false;
  #dirty = false;
  #finished = false;
  #encoder = new TextEncoder();

  constructor(options: ProgressOptions) {
    if (options.total !== null && !(Number.isInteger(options.total) && options.total >= 0)) {
      throw new RangeError(
        `Expected total to be a non-negative integer or null but found ${options.total}`,
      );
    }
    this.#options = {
      now: () => performance.now(),
      unit: "it",
      redrawMs: 100,
      plainEveryMs: 30_000,
      ...options,
    };
    this.#tty = options.isTerminal ?? options.writer.isTerminal?.() ?? false;
    this.#state = {
      label: options.label,
      step: options.initial ?? 0,
      total: options.total,
      startedAt: this.#options.now(),
      unit: this.#options.unit,
      initial: options.initial ?? 0,
    };
    if (!this.#tty) this.#lastDraw = this.#state.startedAt;
  }

  /** A copy of the current state. */
  get state(): ProgressState {
    return { ...this.#state, fields: { ...this.#state.fields } };
  }

  /** Sets the step (and replaces the fields when given), then draws if it is time to. */
  update(step: number, fields?: Record<string, number | string>): void {
    if (this.#finished) throw new Error(`Progress bar "${this.#state.label}" is already done`);
    this.#state.step = step;
    if (fields !== undefined) this.#state.fields = fields;
    this.#dirty = true;
    const now = this.#options.now();
    if (this.#tty) {
      if (now - this.#lastDraw >= this.#options.redrawMs) this.#draw(now);
      return;
    }
    const total = this.#state.total;
    if (total !== null && total > 0) {
      const decile = Math.floor((10 * Math.min(step, total)) / total);
      if (decile > this.#lastDecile && step < total) {
        this.#lastDecile = decile;
        this.#draw(now);
      }
    } else if (now - this.#lastDraw >= this.#options.plainEveryMs) {
      this.#draw(now);
    }
  }

  /** Adds `by` steps (default 1). */
  increment(by = 1, fields?: Record<string, number | string>): void {
    this.update(this.#state.step + by, fields);
  }

  /** Prints a line of its own without garbling the bar (the bar is redrawn below it on a TTY). */
  log(line: string): void {
    if (this.#tty && this.#drawn) {
      this.#write(`\r\x1b[K${line}\n`);
      this.#draw(this.#options.now());
    } else {
      this.#write(`${line}\n`);
    }
  }

  /**
   * Draws the final line (elapsed time is measured now) and ends it with a newline; `fields`
   * replaces the fields when given. Call `update(total)` first to show 100%.
   */
  done(fields?: Record<string, number | string>): void {
    if (this.#finished) return;
    if (fields !== undefined) this.#state.fields = fields;
    // A TTY line already showing the final state is only ended, not drawn twice.
    if (!this.#tty || this.#dirty || fields !== undefined || !this.#drawn) {
      this.#draw(this.#options.now());
    }
    if (this.#tty) this.#write("\n");
    this.#finished = true;
  }

  #draw(now: number): void {
    let line = formatProgress(this.#state, now);
    const columns = this.#options.columns;
    if (columns !== undefined && line.length > columns - 1) line = line.slice(0, columns - 1);
    // A TTY line is redrawn in place (done() ends it); a plain line is a log line of its own.
    this.#write(this.#tty ? `\r\x1b[K${line}` : `${line}\n`);
    this.#lastDraw = now;
    this.#drawn = true;
    this.#dirty = false;
  }

  #write(text: string): void {
    const bytes = this.#encoder.encode(text);
    let written = 0;
    while (written < bytes.length) {
      written += this.#options.writer.writeSync(bytes.subarray(written));
    }
  }
}
