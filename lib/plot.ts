/**
 * Charts for notebooks, reports and files: Observable Plot rendered to SVG strings on a `linkedom`
 * document, so they work outside a browser. Each function takes plain records (no tensors) and
 * returns a {@linkcode Chart}, which a Deno Jupyter cell displays inline and {@linkcode saveChart}
 * writes to a `.svg` file.
 *
 * @module
 */

import * as Plot from "@observablehq/plot";
import { parseHTML } from "linkedom";
import type { EvalSummary } from "./evaluate.ts";

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * The method name Deno's Jupyter kernel calls to get a value's mime bundle
 * (`Symbol.for("Jupyter.display")`), typed as a unique symbol so `chart[jupyterDisplay]()` checks.
 */
export const jupyterDisplay: unique symbol = Symbol.for("Jupyter.display") as never;

/**
 * A rendered chart: a standalone SVG document string. Deno's Jupyter kernel calls the
 * `Symbol.for("Jupyter.display")` method and shows the SVG inline.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { Chart, jupyterDisplay } from "./plot.ts";
 * const chart = new Chart('<svg xmlns="http://www.w3.org/2000/svg"></svg>', "empty");
 * assert.deepEqual(Object.keys(chart[jupyterDisplay]()), ["image/svg+xml"]);
 * ```
 */
export class Chart {
  /** The SVG markup, with `xmlns` set so it is valid as a file or `image/svg+xml`. */
  readonly svg: string;
  /** A one-line description, used as the SVG's `<title>` and as alt text in reports. */
  readonly title: string;

  constructor(svg: string, title: string) {
    this.svg = svg;
    this.title = title;
  }

  /** The mime bundle a Deno Jupyter cell displays. */
  [jupyterDisplay](): Record<string, string> {
    return { "image/svg+xml": this.svg };
  }

  /** The SVG markup, so a chart interpolates into HTML as itself. */
  toString(): string {
    return this.svg;
  }
}

/**
 * Writes `chart.svg` to `path` (conventionally `*.svg`).
 *
 * @example Usage
 * ```ts
 * import { advantageHistogram, saveChart } from "./plot.ts";
 * const path = await Deno.makeTempFile({ suffix: ".svg" });
 * await saveChart(path, advantageHistogram([-0.7, 0.7, 0, 0]));
 * await Deno.remove(path);
 * ```
 */
export async function saveChart(path: string, chart: Chart): Promise<void> {
  await Deno.writeTextFile(path, `<?xml version="1.0" encoding="UTF-8"?>\n${chart.svg}\n`);
}

// ---------------------------------------------------------------------------------------------
// rendering helpers

interface Rendered {
  svg: string;
  width: number;
  height: number;
}

/** The part of a DOM element we read back (Deno has no DOM types; linkedom implements it). */
interface RenderedElement {
  tagName: string;
  outerHTML: string;
  getAttribute(name: string): string | null;
}

type PlotDocument = NonNullable<Plot.PlotOptions["document"]>;

function newDocument(): PlotDocument {
  // linkedom's document is not typed as a DOM Document, but implements what Plot uses.
  return (parseHTML("<html><body></body></html>") as unknown as { document: PlotDocument })
    .document;
}

/** Renders one Plot spec to an `<svg>` string with its size (Plot's default is 640 × 400). */
function render(options: Plot.PlotOptions): Rendered {
  const document = newDocument();
  const element = Plot.plot({ ...options, document }) as unknown as RenderedElement;
  if (element.tagName.toLowerCase() !== "svg") {
    // NOTE: Plot wraps the svg in a <figure> when it adds a legend, title or caption; we never
    // ask for those here so every chart stays a single svg.
    throw new Error(`Plot returned <${element.tagName}> instead of <svg>`);
  }
  return {
    svg: element.outerHTML,
    width: Number(element.getAttribute("width")),
    height: Number(element.getAttribute("height")),
  };
}

/**
 * A continuous colour legend drawn as a row of rects with an x axis. (Plot.legend draws ramps
 * on a canvas, which linkedom lacks.)
 */
function renderColorRamp(color: Plot.ScaleOptions, domain: [number, number], label: string) {
  const steps = 32;
  const [lo, hi] = domain;
  const tiles = Array.from({ length: steps }, (_, i) => ({
    x1: lo + (i / steps) * (hi - lo),
    x2: lo + ((i + 1) / steps) * (hi - lo),
    value: lo + ((i + 0.5) / steps) * (hi - lo),
  }));
  return render({
    width: 320,
    height: 46,
    marginTop: 18,
    marginBottom: 16,
    marginLeft: 16,
    marginRight: 16,
    x: { domain, label: null, ticks: 5 },
    y: { axis: null },
    color,
    marks: [
      Plot.rectX(tiles, { x1: "x1", x2: "x2", fill: "value" }),
      Plot.text([label], { frameAnchor: "top-left", dy: -12, textAnchor: "start" }),
    ],
  });
}

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

const TITLE_HEIGHT = 24;

/**
 * Places rendered parts in a grid of `columns` inside one outer svg with a title line. Nested
 * `<svg x= y=>` elements keep each part's own viewBox and styles.
 */
function compose(parts: Rendered[], title: string, columns = 1): Chart {
  const cols = Math.max(1, Math.min(columns, parts.length));
  const colWidths = Array.from(
    { length: cols },
    (_, c) => Math.max(0, ...parts.filter((_, i) => i % cols === c).map((p) => p.width)),
  );
  const rowCount = Math.ceil(parts.length / cols);
  const rowHeights = Array.from(
    { length: rowCount },
    (_, r) => Math.max(0, ...parts.slice(r * cols, r * cols + cols).map((p) => p.height)),
  );
  const width = Math.max(colWidths.reduce((a, b) => a + b, 0), 200);
  const height = TITLE_HEIGHT + rowHeights.reduce((a, b) => a + b, 0);
  const body: string[] = [];
  let y = TITLE_HEIGHT;
  for (let r = 0; r < rowCount; r++) {
    let x = 0;
    for (let c = 0; c < cols; c++) {
      const part = parts[r * cols + c];
      if (part === undefined) break;
      body.push(part.svg.replace(/^<svg /, `<svg x="${x}" y="${y}" `));
      x += colWidths[c];
    }
    y += rowHeights[r];
  }
  const svg = `<svg xmlns="${SVG_NS}" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" class="chart">` +
    `<title>${escapeXml(title)}</title>` +
    `<rect width="${width}" height="${height}" fill="white" class="chart-background"/>` +
    `<text x="8" y="16" font-size="13" font-weight="bold" fill="currentColor">${
      escapeXml(title)
    }</text>` +
    body.join("") + `</svg>`;
  return new Chart(svg, title);
}

function isFiniteNumber(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value);
}

function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

// ---------------------------------------------------------------------------------------------
// reward per group

/**
 * Each completion's reward as a dot, one column per prompt group, with a tick at the group mean.
 * GRPO learns only from groups whose rewards differ, so flat columns show wasted prompts.
 *
 * @param rewards Flat rewards, `num_return_sequences` contiguous per prompt (the rollout order).
 *   `null` (unscorable) completions are left out of the dots and the mean.
 * @param options `num_return_sequences` (the group size G) and an optional `title`.
 * @returns One dot per non-null reward and one mean tick per group with any reward.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { rewardGroupsChart } from "./plot.ts";
 * const chart = rewardGroupsChart([1, -1, 1, 1], { num_return_sequences: 2 });
 * assert.equal(chart.svg.match(/<circle/g)?.length, 4);
 * ```
 */
export function rewardGroupsChart(
  rewards: readonly (number | null)[],
  options: { num_return_sequences: number; title?: string },
): Chart {
  const g = options.num_return_sequences;
  if (!Number.isInteger(g) || g < 1 || rewards.length % g !== 0) {
    throw new RangeError(
      `Cannot group ${rewards.length} rewards by num_return_sequences=${g}: need a positive integer that divides ${rewards.length}`,
    );
  }
  const dots: { group: number; reward: number }[] = [];
  const means: { group: number; reward: number; tip: string }[] = [];
  for (let group = 0; group < rewards.length / g; group++) {
    const scored = rewards.slice(group * g, group * g + g).filter(isFiniteNumber);
    for (const reward of scored) dots.push({ group, reward });
    if (scored.length > 0) {
      const m = mean(scored);
      means.push({
        group,
        reward: m,
        tip: `group ${group}: mean ${m.toFixed(3)} (${scored.length} scored)`,
      });
    }
  }
  const groups = Array.from({ length: rewards.length / g }, (_, i) => i);
  const title = options.title ?? `Reward per prompt group (G=${g})`;
  const part = render({
    width: Math.min(Math.max(320, 40 * groups.length + 80), 1600),
    height: 280,
    marginLeft: 50,
    x: { type: "band", domain: groups, label: "prompt group", padding: 0.2 },
    y: { label: "reward", grid: true },
    marks: [
      Plot.dot(dots, { x: "group", y: "reward", r: 4, fill: "steelblue", fillOpacity: 0.6 }),
      Plot.tickY(means, {
        x: "group",
        y: "reward",
        stroke: "darkorange",
        strokeWidth: 2,
        title: "tip",
      }),
    ],
  });
  return compose([part], title);
}

// ---------------------------------------------------------------------------------------------
// advantage histogram

/** One histogram bin: values in `[x0, x1)` (the last bin also holds `x1`). */
export interface Bin {
  x0: number;
  x1: number;
  count: number;
}

/**
 * Equal-width bins over the finite values (NaN and ±Infinity are dropped).
 *
 * @param values The samples.
 * @param bins Number of bins (a positive integer).
 * @returns `bins` bins spanning [min, max]; a single bin of width 1 around the value when all
 *   values are equal; `[]` when there is no finite value.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { histogramBins } from "./plot.ts";
 * assert.deepEqual(histogramBins([0, 1, 1, 2], 2).map((b) => b.count), [1, 3]);
 * ```
 */
export function histogramBins(values: readonly number[], bins: number): Bin[] {
  if (!Number.isInteger(bins) || bins < 1) {
    throw new RangeError(`Expected bins to be a positive integer but found ${bins}`);
  }
  const finite = values.filter(isFiniteNumber);
  if (finite.length === 0) return [];
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  if (lo === hi) return [{ x0: lo - 0.5, x1: hi + 0.5, count: finite.length }];
  const width = (hi - lo) / bins;
  const out: Bin[] = Array.from({ length: bins }, (_, i) => ({
    x0: lo + i * width,
    x1: i === bins - 1 ? hi : lo + (i + 1) * width,
    count: 0,
  }));
  for (const v of finite) out[Math.min(bins - 1, Math.floor((v - lo) / width))].count++;
  return out;
}

/**
 * Histogram of advantages. With `scale_rewards: "group"` most mass sits near ±1/√2 for G=2;
 * a spike at 0 means groups with identical rewards (no learning signal).
 *
 * @param advantages One advantage per completion.
 * @param options `bins` (default 20) and an optional `title`.
 * @returns One `<rect>` per bin.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { advantageHistogram } from "./plot.ts";
 * const chart = advantageHistogram([-0.7, 0.7, 0, 0], { bins: 4 });
 * assert.equal(chart.svg.match(/<rect/g)?.length, 1 + 4); // background + bins
 * ```
 */
export function advantageHistogram(
  advantages: readonly number[],
  options: { bins?: number; title?: string } = {},
): Chart {
  const bins = histogramBins(advantages, options.bins ?? 20);
  const n = bins.reduce((a, b) => a + b.count, 0);
  const title = options.title ?? `Advantage distribution (n=${n})`;
  const part = render({
    width: 480,
    height: 280,
    marginLeft: 50,
    x: { label: "advantage" },
    y: { label: "completions", grid: true },
    marks: [
      Plot.rectY(bins, {
        x1: "x0",
        x2: "x1",
        y: "count",
        fill: "steelblue",
        insetLeft: 0.5,
        insetRight: 0.5,
      }),
      Plot.ruleY([0]),
    ],
  });
  return compose([part], title);
}

// ---------------------------------------------------------------------------------------------
// per-token strip

/** One completion token and a per-token value (log-prob, KL, advantage...). */
export interface TokenValue {
  /** The decoded token text. */
  token: string;
  /** The value shown as the cell colour; non-finite values are drawn grey. */
  value: number;
}

/**
 * A completion laid out as text in rows of `columns` tokens, each cell coloured by its value,
 * like a highlighted transcript. Use it for per-token log-probs (`per_token_logps`) or KL.
 *
 * @param tokens The completion's tokens in order, with their values.
 * @param options `label` names the value (default "value"), `columns` tokens per row (default
 *   16), `scheme` an Observable Plot colour scheme (default "viridis"), optional `title`.
 * @returns One `<rect>` cell and one `<text>` label per token, plus a colour legend.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { tokenStripChart } from "./plot.ts";
 * const chart = tokenStripChart([{ token: "2", value: -0.1 }, { token: "+2", value: -2.3 }], {
 *   label: "log-prob",
 * });
 * assert.match(chart.svg, /log-prob/);
 * ```
 */
export function tokenStripChart(
  tokens: readonly TokenValue[],
  options: { label?: string; columns?: number; scheme?: Plot.ColorScheme; title?: string } = {},
): Chart {
  const columns = options.columns ?? 16;
  if (!Number.isInteger(columns) || columns < 1) {
    throw new RangeError(`Expected columns to be a positive integer but found ${columns}`);
  }
  const label = options.label ?? "value";
  const cells = tokens.map((t, i) => ({
    column: i % columns,
    row: Math.floor(i / columns),
    // Make whitespace visible: a newline token would otherwise be an empty cell.
    text: t.token.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/ /g, "·"),
    value: isFiniteNumber(t.value) ? t.value : null,
    tip: `${JSON.stringify(t.token)}: ${label} ${
      isFiniteNumber(t.value) ? t.value.toPrecision(4) : "n/a"
    }`,
  }));
  const rows = Math.max(1, Math.ceil(tokens.length / columns));
  const finite = cells.map((c) => c.value).filter(isFiniteNumber);
  const domain: [number, number] = finite.length > 0
    ? [Math.min(...finite), Math.max(...finite)]
    : [0, 1];
  if (domain[0] === domain[1]) domain[1] = domain[0] + 1;
  const color: Plot.ScaleOptions = {
    type: "linear",
    scheme: options.scheme ?? "viridis",
    domain,
    label,
    unknown: "#ddd",
  };
  const cellWidth = 56;
  const cellHeight = 22;
  const part = render({
    width: columns * cellWidth + 20,
    height: rows * cellHeight + 20,
    margin: 10,
    x: { type: "band", domain: Array.from({ length: columns }, (_, i) => i), axis: null },
    y: { type: "band", domain: Array.from({ length: rows }, (_, i) => i), axis: null },
    color,
    marks: [
      Plot.cell(cells, { x: "column", y: "row", fill: "value", inset: 0.5, title: "tip" }),
      Plot.text(cells, {
        x: "column",
        y: "row",
        text: "text",
        fill: "black",
        stroke: "white",
        strokeWidth: 3,
        paintOrder: "stroke",
        fontSize: 11,
        lineWidth: 5, // ems; long tokens are clipped to about one cell
        textOverflow: "ellipsis",
      }),
    ],
  });
  const legend = renderColorRamp(color, domain, label);
  const title = options.title ?? `Per-token ${label} (${tokens.length} tokens)`;
  return compose([legend, part], title);
}

// ---------------------------------------------------------------------------------------------
// training curves

/**
 * One metrics.jsonl line: `step` plus any numeric fields (`reward`, `kl`, `eval/accuracy`...).
 * Fields that are absent, null or non-finite are skipped.
 */
export type MetricsRow = { step: number } & Record<string, unknown>;

/** Metrics drawn by default by {@linkcode trainingCurves}, in panel order. */
export const DEFAULT_CURVE_METRICS: readonly string[] = [
  "reward",
  "accuracy",
  "kl",
  "loss",
  "completions/mean_length",
];

/**
 * Training curves from metrics.jsonl rows: one small panel per metric, each with its own y
 * scale, in a grid. When `eval/<metric>` values exist (evaluation lines) they are drawn as
 * orange dots on the `<metric>` panel.
 *
 * @param rows Parsed metrics.jsonl lines.
 * @param options `metrics` to draw (default {@linkcode DEFAULT_CURVE_METRICS}), `columns` of
 *   panels (default 2), optional `title`.
 * @returns One line path per metric that has at least one finite value.
 * @throws {RangeError} When no requested metric has a finite value.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { trainingCurves } from "./plot.ts";
 * const rows = [{ step: 1, reward: 0.1, kl: 0 }, { step: 2, reward: 0.4, kl: 0.01 }];
 * const chart = trainingCurves(rows);
 * assert.match(chart.svg, /↑ kl</);
 * ```
 */
export function trainingCurves(
  rows: readonly MetricsRow[],
  options: { metrics?: readonly string[]; columns?: number; title?: string } = {},
): Chart {
  const metrics = options.metrics ?? DEFAULT_CURVE_METRICS;
  const parts: Rendered[] = [];
  const drawn: string[] = [];
  for (const metric of metrics) {
    const points = rows
      .filter((r) => isFiniteNumber(r.step) && isFiniteNumber(r[metric]))
      .map((r) => ({ step: r.step, value: r[metric] as number }));
    const evalPoints = rows
      .filter((r) => isFiniteNumber(r.step) && isFiniteNumber(r[`eval/${metric}`]))
      .map((r) => ({ step: r.step, value: r[`eval/${metric}`] as number }));
    if (points.length === 0 && evalPoints.length === 0) continue;
    drawn.push(metric);
    parts.push(render({
      width: 360,
      height: 200,
      marginLeft: 56,
      marginTop: 24,
      x: { label: "step" },
      y: { label: metric, grid: true, labelAnchor: "top" },
      marks: [
        Plot.line(points, { x: "step", y: "value", stroke: "steelblue", strokeWidth: 1.5 }),
        Plot.dot(evalPoints, { x: "step", y: "value", fill: "darkorange", r: 3.5 }),
      ],
    }));
  }
  if (parts.length === 0) {
    throw new RangeError(
      `Cannot plot training curves: none of ${
        metrics.join(", ")
      } has a finite value in ${rows.length} rows`,
    );
  }
  const title = options.title ?? `Training curves (${drawn.join(", ")})`;
  return compose(parts, title, options.columns ?? 2);
}

/**
 * The evaluation curves of a run: greedy accuracy, accuracy among boxed answers and, when the
 * run sampled k completions per problem (`eval.num_samples`), pass@k, maj@k and pass@1, one
 * line each over the eval steps, labelled at their last point. Shows whether the greedy answer
 * catches up with what the policy could sample.
 *
 * @param rows Parsed metrics.jsonl lines (the `eval/*` ones are used).
 * @param options Optional `title`.
 * @returns One line per series that has a finite value.
 * @throws {RangeError} When no row has an `eval/*` series.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { evalCurves } from "./plot.ts";
 * const chart = evalCurves([
 *   { step: 0, "eval/accuracy": 0.2, "eval/pass@8": 0.4 },
 *   { step: 50, "eval/accuracy": 0.3, "eval/pass@8": 0.5 },
 * ]);
 * assert.match(chart.svg, /pass@8/);
 * ```
 */
export function evalCurves(rows: readonly MetricsRow[], options: { title?: string } = {}): Chart {
  const keys = new Set(rows.flatMap((r) => Object.keys(r)));
  const k = [...keys].map((key) => key.match(/^eval\/pass@(\d+)$/)?.[1])
    .find((x) => x !== undefined && x !== "1");
  const series: [string, string][] = [
    ["eval/accuracy", "greedy"],
    ["eval/accuracy_boxed", "greedy, among boxed"],
    ...(k === undefined ? [] : [
      [`eval/pass@${k}`, `pass@${k}`],
      [`eval/maj@${k}`, `maj@${k}`],
      ["eval/pass@1", "pass@1 (sampled)"],
    ] as [string, string][]),
  ];
  const points = series.flatMap(([key, name]) =>
    rows.filter((r) => isFiniteNumber(r.step) && isFiniteNumber(r[key]))
      .map((r) => ({ step: r.step, value: r[key] as number, series: name }))
  );
  if (points.length === 0) {
    throw new RangeError(`Cannot plot evaluation curves: no eval/* values in ${rows.length} rows`);
  }
  const names = series.map(([, name]) => name).filter((n) => points.some((p) => p.series === n));
  const top = Math.max(...points.map((p) => p.value));
  const yTop = Math.min(1, Math.ceil(top * 10 + 0.5) / 10); // from 0: gains at true scale
  const last = spreadLabels(
    names.map((n) => points.filter((p) => p.series === n).at(-1)!),
    yTop * LABEL_GAP,
  );
  const part = render({
    width: 640,
    height: 320,
    marginLeft: 56,
    marginRight: 150,
    marginTop: 24,
    x: { label: "step" },
    y: {
      label: "held-out",
      grid: true,
      tickFormat: ".0%",
      labelAnchor: "top",
      domain: [0, yTop],
    },
    color: { domain: names, scheme: "tableau10" },
    marks: [
      Plot.line(points, { x: "step", y: "value", stroke: "series", strokeWidth: 1.5 }),
      Plot.dot(points, { x: "step", y: "value", fill: "series", r: 2.5 }),
      Plot.text(last, {
        x: "step",
        y: "labelValue",
        text: (d: { series: string; value: number }) =>
          `${d.series} ${(100 * d.value).toFixed(1)}%`,
        fill: "series",
        textAnchor: "start",
        dx: 6,
      }),
    ],
  });
  return compose([part], options.title ?? "Held-out evaluation: greedy vs sampled");
}

/** The smallest vertical distance between two end labels, as a share of the y domain. */
const LABEL_GAP = 0.045;

/**
 * End-of-line labels moved apart so that none is nearer than `gap` (in y units) to the next:
 * each keeps its value and gets a `labelValue` where it is drawn, pushed down from the one above.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { spreadLabels } from "./plot.ts";
 * const placed = spreadLabels([{ value: 0.3 }, { value: 0.29 }], 0.05);
 * assert.deepEqual(placed.map((l) => l.labelValue), [0.3, 0.25]);
 * ```
 */
export function spreadLabels<T extends { value: number }>(
  labels: readonly T[],
  gap: number,
): (T & { labelValue: number })[] {
  const placed = labels.map((l) => ({ ...l, labelValue: l.value }));
  const byValue = [...placed].sort((a, b) => b.value - a.value);
  for (let i = 1; i < byValue.length; i++) {
    byValue[i].labelValue = Math.min(byValue[i].labelValue, byValue[i - 1].labelValue - gap);
  }
  return placed;
}

// ---------------------------------------------------------------------------------------------
// before / after

/**
 * The part of an {@linkcode EvalSummary} (summary.json's `before` / `after`) that charts and
 * reports read; `mean_reward` is optional here.
 */
export type EvalScores =
  & Pick<EvalSummary, "accuracy" | "no_answer_rate" | "n">
  & Partial<
    Pick<
      EvalSummary,
      "mean_reward" | "accuracy_boxed" | "pass_at_k" | "maj_at_k" | "pass_at_1" | "k"
    >
  >;

/**
 * Bars comparing accuracy and no-answer rate before and after training, labelled with values.
 *
 * @param before Evaluation of the starting model.
 * @param after Evaluation of the trained model.
 * @param options Optional `title`.
 * @returns Four bars: accuracy and no_answer_rate, each before and after.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { beforeAfterChart } from "./plot.ts";
 * const chart = beforeAfterChart(
 *   { accuracy: 0.3, no_answer_rate: 0.2, n: 50 },
 *   { accuracy: 0.5, no_answer_rate: 0.05, n: 50 },
 * );
 * assert.match(chart.svg, /50\.0%/);
 * ```
 */
export function beforeAfterChart(
  before: EvalScores,
  after: EvalScores,
  options: { title?: string } = {},
): Chart {
  const metrics = ["accuracy", "no_answer_rate"] as const;
  const bars = metrics.flatMap((metric) =>
    [["before", before], ["after", after]].map(([phase, summary]) => {
      const value = (summary as EvalScores)[metric];
      if (!isFiniteNumber(value)) {
        throw new RangeError(
          `Expected ${phase}.${metric} to be a finite number but found ${value}`,
        );
      }
      return { metric, phase: phase as string, value, label: `${(value * 100).toFixed(1)}%` };
    })
  );
  const title = options.title ??
    `Before vs after training (n=${before.n} before, n=${after.n} after)`;
  const part = render({
    width: 420,
    height: 280,
    marginLeft: 50,
    fx: { label: null, domain: [...metrics] },
    x: { domain: ["before", "after"], label: null },
    y: { domain: [0, 1], label: "fraction", grid: true, tickFormat: ".0%" },
    color: { domain: ["before", "after"], range: ["#9aa5b1", "steelblue"] },
    marks: [
      Plot.barY(bars, { fx: "metric", x: "phase", y: "value", fill: "phase" }),
      Plot.text(bars, { fx: "metric", x: "phase", y: "value", text: "label", dy: -8 }),
      Plot.ruleY([0]),
    ],
  });
  return compose([part], title);
}
