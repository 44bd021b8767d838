/**
 * The run report: one self-contained HTML page (inline SVG charts, inline CSS, no network) built
 * from a run directory's files. {@linkcode loadRun} reads the directory, {@linkcode buildReport}
 * is pure, {@linkcode saveReport} writes the page.
 *
 * Files read from `<run_dir>`, all optional but the directory itself:
 * - `metrics.jsonl`: trainer log lines, `{step, reward, kl, ...}` and `{step, "eval/accuracy", ...}`
 * - `summary.json`: `{before: {accuracy, no_answer_rate, mean_reward, n}, after: {...}, kl, steps, seconds}`
 * - `config.yaml`: the effective config, shown verbatim
 * - `completions.jsonl`: `{step, prompt, completion, answer, predicted, reward, status}` per line
 *
 * @module
 */

import { join } from "node:path";
import { DataError } from "./errors.ts";
import { readTextIfExists } from "./_fs.ts";
import {
  beforeAfterChart,
  type Chart,
  evalCurves,
  type EvalScores,
  type MetricsRow,
  trainingCurves,
} from "./plot.ts";
import type { RunSummary } from "./run_writer.ts";

/** One logged completion (completions.jsonl). */
export interface CompletionRecord {
  step: number;
  prompt: string;
  completion: string;
  answer: string;
  predicted: string | null;
  reward: number | null;
  status: string;
}

/**
 * summary.json: the trainer's {@linkcode RunSummary}, every field optional here. `before` /
 * `after` are null when the run had no eval file.
 */
export type RunSummaryFile = Partial<Omit<RunSummary, "before" | "after">> & {
  before?: EvalScores | null;
  after?: EvalScores | null;
};

/** What {@linkcode loadRun} found in a run directory; `null` marks a missing file. */
export interface RunData {
  /** The run directory as given. */
  dir: string;
  metrics: MetricsRow[] | null;
  summary: RunSummaryFile | null;
  /** config.yaml verbatim. */
  config: string | null;
  completions: CompletionRecord[] | null;
}

/** The optional files of a run directory, in report order. */
export const RUN_FILES = {
  metrics: "metrics.jsonl",
  summary: "summary.json",
  config: "config.yaml",
  completions: "completions.jsonl",
} as const;

function parseJsonLines(text: string, file: string): Record<string, unknown>[] {
  const rows: Record<string, unknown>[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch (error) {
      throw new DataError(`Cannot parse ${file}:${i + 1}: ${(error as Error).message}`, {
        file,
        line: i + 1,
        cause: error,
      });
    }
    if (typeof row !== "object" || row === null || Array.isArray(row)) {
      throw new DataError(`Cannot use ${file}:${i + 1}: expected a JSON object per line`, {
        file,
        line: i + 1,
      });
    }
    if (typeof (row as { step?: unknown }).step !== "number") {
      throw new DataError(`Cannot use ${file}:${i + 1}: "step" must be a number`, {
        file,
        line: i + 1,
      });
    }
    rows.push(row as Record<string, unknown>);
  }
  return rows;
}

function toCompletion(row: Record<string, unknown>): CompletionRecord {
  const text = (
    value: unknown,
  ) => (typeof value === "string" ? value : JSON.stringify(value ?? ""));
  return {
    step: row.step as number,
    prompt: text(row.prompt),
    completion: text(row.completion),
    answer: text(row.answer),
    predicted: row.predicted === null || row.predicted === undefined ? null : text(row.predicted),
    reward: typeof row.reward === "number" ? row.reward : null,
    status: text(row.status ?? ""),
  };
}

/**
 * Reads a run directory. Missing optional files come back as `null`.
 *
 * @param dir The run directory (e.g. `results/rl_grpo_20250101_120000`).
 * @returns The parsed files.
 * @throws {DataError} When `dir` is not a directory, or a file is not valid JSON / JSONL.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadRun } from "./report.ts";
 * const run = await loadRun("tests/fixtures/run");
 * assert.equal(run.summary?.steps, 30);
 * ```
 */
export async function loadRun(dir: string): Promise<RunData> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new DataError(`Cannot read run directory ${dir}: it does not exist`, { file: dir });
    }
    throw error;
  }
  if (!info.isDirectory) {
    throw new DataError(`Cannot read run directory ${dir}: it is not a directory`, { file: dir });
  }
  const metricsPath = join(dir, RUN_FILES.metrics);
  const summaryPath = join(dir, RUN_FILES.summary);
  const completionsPath = join(dir, RUN_FILES.completions);
  const [metricsText, summaryText, config, completionsText] = await Promise.all([
    readTextIfExists(metricsPath),
    readTextIfExists(summaryPath),
    readTextIfExists(join(dir, RUN_FILES.config)),
    readTextIfExists(completionsPath),
  ]);
  let summary: RunSummaryFile | null = null;
  if (summaryText !== null) {
    try {
      summary = JSON.parse(summaryText);
    } catch (error) {
      throw new DataError(`Cannot parse ${summaryPath}: ${(error as Error).message}`, {
        file: summaryPath,
        cause: error,
      });
    }
    if (typeof summary !== "object" || summary === null || Array.isArray(summary)) {
      throw new DataError(`Cannot use ${summaryPath}: expected a JSON object`, {
        file: summaryPath,
      });
    }
  }
  return {
    dir,
    metrics: metricsText === null ? null : parseJsonLines(metricsText, metricsPath) as MetricsRow[],
    summary,
    config,
    completions: completionsText === null
      ? null
      : parseJsonLines(completionsText, completionsPath).map(toCompletion),
  };
}

/**
 * Picks up to `n` records evenly spaced over the run (sorted by step, stable), so the first and
 * last logged steps are both shown.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { sampleCompletions } from "./report.ts";
 * const rows = [0, 1, 2, 3, 4].map((step) => ({ step }));
 * assert.deepEqual(sampleCompletions(rows, 3).map((r) => r.step), [0, 2, 4]);
 * ```
 */
export function sampleCompletions<T extends { step: number }>(
  records: readonly T[],
  n: number,
): T[] {
  if (!Number.isInteger(n) || n < 0) {
    throw new RangeError(`Expected n to be a non-negative integer but found ${n}`);
  }
  const sorted = records.map((r, i) => ({ r, i })).sort((a, b) => a.r.step - b.r.step || a.i - b.i)
    .map(({ r }) => r);
  if (sorted.length <= n) return sorted;
  if (n === 1) return [sorted[sorted.length - 1]];
  return Array.from(
    { length: n },
    (_, k) => sorted[Math.round((k * (sorted.length - 1)) / (n - 1))],
  );
}

// ---------------------------------------------------------------------------------------------
// HTML

/** Escapes text for HTML element content and double-quoted attributes. */
export function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

function fmt(value: unknown, kind: "percent" | "number" | "int" | "seconds" = "number"): string {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  switch (kind) {
    case "percent":
      return `${(value * 100).toFixed(1)}%`;
    case "int":
      return String(Math.round(value));
    case "seconds": {
      const s = Math.round(value);
      const h = Math.floor(s / 3600);
      const m = Math.floor((s % 3600) / 60);
      return h > 0 ? `${h}h ${m}m ${s % 60}s` : m > 0 ? `${m}m ${s % 60}s` : `${s}s`;
    }
    default:
      return String(Number(value.toPrecision(4)));
  }
}

function signed(delta: number, kind: "percent" | "number"): string {
  if (!Number.isFinite(delta)) return "–";
  const text = kind === "percent" ? `${(delta * 100).toFixed(1)} pp` : fmt(delta);
  return delta > 0 ? `+${text}` : text;
}

/** Metrics in the second curves chart, when present. */
const EXTRA_CURVE_METRICS = [
  "reward_std",
  "no_answer_rate",
  "frac_reward_zero_std",
  "grad_norm",
  "learning_rate",
  "clip_ratio/region_mean",
  "completions/clipped_ratio",
  "tokens_per_second",
  "entropy",
  "num_gen_batches",
  "dynamic_sampling/groups_dropped",
  "prompt_order/skipped",
];

function figure(chart: Chart): string {
  // The chart draws its own title; the figure's aria-label repeats it for screen readers.
  return `<figure aria-label="${escapeHtml(chart.title)}">${chart.svg}</figure>`;
}

function evalSection(summary: RunSummaryFile): string {
  const { before, after } = summary;
  const k = after?.k ?? before?.k ?? 1;
  const sampled = [before, after].some((s) => typeof s?.pass_at_k === "number");
  const rows: [string, keyof EvalScores, "percent" | "number" | "int"][] = [
    ["accuracy", "accuracy", "percent"],
    ["no-answer rate", "no_answer_rate", "percent"],
    ...([before, after].some((s) => typeof s?.accuracy_boxed === "number")
      ? [["accuracy among boxed answers", "accuracy_boxed", "percent"]] as [
        string,
        keyof EvalScores,
        "percent",
      ][]
      : []),
    ["mean reward", "mean_reward", "number"],
    ...(sampled
      ? [
        [`pass@${k}`, "pass_at_k", "percent"],
        [`maj@${k}`, "maj_at_k", "percent"],
        [`pass@1 (${k} samples)`, "pass_at_1", "percent"],
      ] as [string, keyof EvalScores, "percent"][]
      : []),
    ["examples (n)", "n", "int"],
  ];
  const parts: string[] = [];
  if (before != null || after != null) {
    const body = rows.map(([name, key, kind]) => {
      const b = before?.[key];
      const a = after?.[key];
      const delta = kind === "int" || typeof a !== "number" || typeof b !== "number"
        ? "–"
        : signed(a - b, kind);
      return `<tr><th>${name}</th><td>${fmt(b, kind)}</td><td>${
        fmt(a, kind)
      }</td><td>${delta}</td></tr>`;
    }).join("");
    parts.push(
      `<table class="eval"><thead><tr><th></th><th>before</th><th>after</th><th>change</th></tr></thead><tbody>${body}</tbody></table>`,
    );
  }
  parts.push(
    `<table class="facts"><tbody><tr><th>steps</th><td>${fmt(summary.steps, "int")}</td></tr>` +
      `<tr><th>final KL</th><td>${fmt(summary.kl)}</td></tr>` +
      `<tr><th>training time</th><td>${fmt(summary.seconds, "seconds")}</td></tr></tbody></table>`,
  );
  if (before != null && after != null) {
    try {
      parts.push(figure(beforeAfterChart(before, after)));
    } catch (error) {
      parts.push(note(`Before/after chart skipped: ${(error as Error).message}`));
    }
  }
  return parts.join("\n");
}

function note(text: string): string {
  return `<p class="note">${escapeHtml(text)}</p>`;
}

function completionsSection(records: CompletionRecord[], max: number): string {
  const sample = sampleCompletions(records, max);
  const items = sample.map((r) => {
    const status = escapeHtml(r.status || "unknown");
    const cls = r.status === "correct" ? "good" : r.status === "wrong" ? "bad" : "meh";
    return `<details class="completion"><summary><span class="tag ${cls}">${status}</span> ` +
      `step ${r.step} · reward ${fmt(r.reward)} · answer <code>${escapeHtml(r.answer)}</code>` +
      ` · predicted <code>${
        r.predicted === null ? "none" : escapeHtml(r.predicted)
      }</code></summary>` +
      `<h4>prompt</h4><pre>${escapeHtml(r.prompt)}</pre>` +
      `<h4>completion</h4><pre>${escapeHtml(r.completion)}</pre></details>`;
  });
  return `<p>${sample.length} of ${records.length} logged completions, evenly spaced over the run.</p>\n${
    items.join("\n")
  }`;
}

const CSS = `
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; padding: 0 1rem;
  color: #1f2328; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #d0d7de;
  padding-bottom: 0.3rem; margin-top: 2rem; } h4 { margin: 0.6rem 0 0.2rem; }
.meta { color: #59636e; margin-top: 0; }
.note { background: #fff8c5; border: 1px solid #d4a72c66; padding: 0.4rem 0.7rem; border-radius: 6px; }
table { border-collapse: collapse; margin: 0.8rem 0; display: inline-table; vertical-align: top;
  margin-right: 2rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.8rem; text-align: right; }
th { background: #f6f8fa; text-align: left; }
figure { margin: 1rem 0; overflow-x: auto; }
pre { background: #f6f8fa; padding: 0.7rem; border-radius: 6px; overflow-x: auto;
  white-space: pre-wrap; word-break: break-word; font-size: 0.85rem; }
details.completion { border: 1px solid #d0d7de; border-radius: 6px; padding: 0.4rem 0.7rem;
  margin: 0.4rem 0; } summary { cursor: pointer; }
.tag { display: inline-block; padding: 0 0.4rem; border-radius: 4px; font-size: 0.8rem; color: #fff; }
.good { background: #1a7f37; } .bad { background: #cf222e; } .meh { background: #9a6700; }
`;

// Runs on load in a browser: counts charts that laid out with a non-empty box and marks, so a
// headless `--dump-dom` shows whether the SVG really rendered (tests/report_test.ts).
const RENDER_CHECK = `
(function () {
  var charts = document.querySelectorAll("svg.chart");
  var rendered = 0;
  for (var i = 0; i < charts.length; i++) {
    var box = charts[i].getBBox();
    var marks = charts[i].querySelectorAll("path, circle, rect, line").length;
    if (box.width > 0 && box.height > 0 && marks > 0) rendered++;
  }
  document.body.setAttribute("data-charts", String(charts.length));
  document.body.setAttribute("data-rendered", String(rendered));
})();
`;

/**
 * Builds the report page. Pure: everything comes from `run`.
 *
 * @param run What {@linkcode loadRun} returned (or a literal).
 * @param options `title` (default from the directory name), `maxCompletions` shown (default
 *   12), `generatedAt` text for the header (default none, so output is reproducible).
 * @returns A complete HTML document with inline SVG and CSS and no external resources.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildReport } from "./report.ts";
 * const html = buildReport({
 *   dir: "results/x",
 *   metrics: [{ step: 1, reward: 0 }, { step: 2, reward: 1 }],
 *   summary: null,
 *   config: null,
 *   completions: null,
 * });
 * assert.match(html, /<svg xmlns=/);
 * assert.match(html, /summary\.json is missing/);
 * ```
 */
export function buildReport(
  run: RunData,
  options: { title?: string; maxCompletions?: number; generatedAt?: string } = {},
): string {
  const name = run.dir.replace(/\/+$/, "").split("/").pop() || run.dir;
  const title = options.title ?? `GRPO run report: ${name}`;
  const missing = (file: string) =>
    note(`${file} is missing from ${run.dir}, so this section is skipped.`);
  const sections: string[] = [];

  let summaryHtml: string;
  if (run.summary === null) summaryHtml = missing(RUN_FILES.summary);
  else summaryHtml = evalSection(run.summary);
  sections.push(`<section id="evaluation"><h2>Evaluation</h2>\n${summaryHtml}</section>`);

  const curves: string[] = [];
  const metrics = run.metrics;
  if (metrics === null) curves.push(missing(RUN_FILES.metrics));
  else {
    curves.push(`<p>${metrics.length} lines in ${RUN_FILES.metrics}.</p>`);
    try {
      curves.push(figure(trainingCurves(metrics)));
    } catch (error) {
      curves.push(note(`No training curves: ${(error as Error).message}.`));
    }
    if (metrics.some((r) => typeof r["eval/accuracy"] === "number")) {
      curves.push(figure(evalCurves(metrics)));
    }
    const extra = EXTRA_CURVE_METRICS.filter((m) =>
      metrics.some((r) => typeof r[m] === "number" && Number.isFinite(r[m]))
    );
    if (extra.length > 0) {
      curves.push(
        figure(trainingCurves(metrics, { metrics: extra, columns: 3, title: "Diagnostics" })),
      );
    }
  }
  sections.push(`<section id="curves"><h2>Training curves</h2>\n${curves.join("\n")}</section>`);

  sections.push(
    `<section id="config"><h2>Effective config</h2>\n${
      run.config === null ? missing(RUN_FILES.config) : `<pre>${escapeHtml(run.config)}</pre>`
    }</section>`,
  );

  sections.push(
    `<section id="completions"><h2>Sample completions</h2>\n${
      run.completions === null
        ? missing(RUN_FILES.completions)
        : completionsSection(run.completions, options.maxCompletions ?? 12)
    }</section>`,
  );

  const meta = `<p class="meta">Run directory <code>${escapeHtml(run.dir)}</code>${
    options.generatedAt ? ` · generated ${escapeHtml(options.generatedAt)}` : ""
  }</p>`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>${CSS}</style>
</head>
<body>
<h1>${escapeHtml(title)}</h1>
${meta}
${sections.join("\n")}
<script>${RENDER_CHECK}</script>
</body>
</html>
`;
}

/**
 * Writes the page to `path` (conventionally `<run_dir>/report.html`).
 *
 * @example Usage
 * ```ts
 * import { saveReport } from "./report.ts";
 * const path = await Deno.makeTempFile({ suffix: ".html" });
 * await saveReport(path, "<!DOCTYPE html><title>x</title>");
 * await Deno.remove(path);
 * ```
 */
export async function saveReport(path: string, html: string): Promise<void> {
  await Deno.writeTextFile(path, html);
}
