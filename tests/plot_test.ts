import assert from "node:assert/strict";
import { parseHTML } from "linkedom";
import {
  advantageHistogram,
  beforeAfterChart,
  type Chart,
  evalCurves,
  histogramBins,
  jupyterDisplay,
  rewardGroupsChart,
  saveChart,
  spreadLabels,
  tokenStripChart,
  trainingCurves,
} from "../lib/plot.ts";
import { assertAllClose } from "./_assert.ts";

interface Node {
  getAttribute(name: string): string | null;
  textContent: string;
  querySelectorAll(selector: string): ArrayLike<Node>;
}

/** Parses a chart's SVG back into a DOM to count marks. */
function parse(chart: Chart): Node {
  const window = parseHTML(`<html><body>${chart.svg}</body></html>`) as unknown as {
    document: { querySelector(selector: string): Node };
  };
  return window.document.querySelector("svg");
}

/** Elements `tag` inside the mark groups labelled `mark` (Plot sets aria-label to the mark name). */
function marks(root: Node, mark: string, tag: string): Node[] {
  return Array.from(root.querySelectorAll(`g[aria-label="${mark}"] ${tag}`));
}

function texts(root: Node): string[] {
  return Array.from(root.querySelectorAll("text"), (t) => t.textContent);
}

/** Every attribute value must be free of NaN / undefined (a broken channel renders like that). */
function assertCleanSvg(chart: Chart): void {
  const bad = chart.svg.match(/="[^"]*(NaN|undefined|Infinity)[^"]*"/);
  assert.equal(bad, null, `bad attribute ${bad?.[0]}`);
  assert.match(chart.svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
}

Deno.test("rewardGroupsChart() draws one dot per scored completion and one mean per group", () => {
  const rewards = [1, -1, 1, 1, null, -0.5, null, null];
  const chart = rewardGroupsChart(rewards, { num_return_sequences: 2 });
  const root = parse(chart);
  assertCleanSvg(chart);
  assert.equal(marks(root, "dot", "circle").length, 5);
  const ticks = marks(root, "tick", "line");
  assert.equal(ticks.length, 3, "group 3 has no scored completion, so no mean");
  assert.deepEqual(marks(root, "tick", "title").map((t) => t.textContent), [
    "group 0: mean 0.000 (2 scored)",
    "group 1: mean 1.000 (2 scored)",
    "group 2: mean -0.500 (1 scored)",
  ]);
  assert.ok(texts(root).includes("prompt group"));
  assert.ok(texts(root).some((t) => t.includes("reward")));
  assert.match(chart.title, /G=2/);
});

Deno.test("rewardGroupsChart() rejects incomplete groups", () => {
  assert.throws(() => rewardGroupsChart([1, 0, 1], { num_return_sequences: 2 }), {
    name: "RangeError",
    message: /num_return_sequences=2/,
  });
});

Deno.test("histogramBins() counts values into equal-width bins", () => {
  const bins = histogramBins([-1, -0.5, 0, 0, 0.49, 1, NaN, Infinity], 4);
  assert.deepEqual(bins.map((b) => b.count), [1, 1, 3, 1]);
  assertAllClose(bins.map((b) => b.x0), [-1, -0.5, 0, 0.5], 1e-12);
  assert.equal(bins[3].x1, 1, "the last bin closes at the maximum");
  assert.deepEqual(histogramBins([0.5, 0.5], 3), [{ x0: 0, x1: 1, count: 2 }]);
  assert.deepEqual(histogramBins([NaN], 3), []);
  assert.throws(() => histogramBins([1], 0), { name: "RangeError", message: /found 0/ });
});

Deno.test("advantageHistogram() draws one rect per bin with heights proportional to counts", () => {
  const chart = advantageHistogram([-1, -0.5, 0, 0, 0.49, 1], { bins: 4 });
  const root = parse(chart);
  assertCleanSvg(chart);
  const rects = marks(root, "rect", "rect");
  assert.equal(rects.length, 4);
  const heights = rects.map((r) => Number(r.getAttribute("height")));
  assertAllClose(heights.map((h) => h / heights[0]), [1, 1, 3, 1], 1e-9);
  assert.ok(texts(root).some((t) => t.includes("advantage")));
  assert.ok(texts(root).some((t) => t.includes("completions")));
  assert.match(chart.title, /n=6/);
});

Deno.test("tokenStripChart() colours one cell per token and labels it with the token text", () => {
  const tokens = [
    { token: "The", value: -0.1 },
    { token: " answer\n", value: -2.3 },
    { token: "<is>", value: NaN },
    { token: "4", value: -0.01 },
  ];
  const chart = tokenStripChart(tokens, { label: "log-prob", columns: 3 });
  assertCleanSvg(chart);
  // The chart stacks two parts: the colour legend, then the token grid.
  const [legend, root] = Array.from(parse(chart).querySelectorAll("svg"));
  const cells = marks(root, "cell", "rect");
  assert.equal(cells.length, 4);
  assert.equal(cells[2].getAttribute("fill"), "#ddd", "a non-finite value is grey");
  assert.equal(new Set(cells.map((c) => c.getAttribute("fill"))).size, 4);
  assert.deepEqual(marks(root, "text", "text").map((t) => t.textContent), [
    "The",
    "·answer⏎",
    "<is>",
    "4",
  ]);
  assert.deepEqual(marks(root, "cell", "title").map((t) => t.textContent), [
    '"The": log-prob -0.1000',
    '" answer\\n": log-prob -2.300',
    '"<is>": log-prob n/a',
    '"4": log-prob -0.01000',
  ]);
  assert.equal(marks(legend, "rect", "rect").length, 32);
  assert.ok(texts(legend).includes("log-prob"));
  // Two rows of three columns: cell y positions take two distinct values.
  assert.equal(new Set(cells.map((c) => c.getAttribute("y"))).size, 2);
});

Deno.test("trainingCurves() draws one panel per present metric plus eval dots", () => {
  const rows = [
    { step: 0, "eval/accuracy": 0.2, "eval/n": 50 },
    { step: 10, reward: -0.2, accuracy: 0.3, kl: 0.0, loss: 0.01, "completions/mean_length": 210 },
    {
      step: 20,
      reward: 0.1,
      accuracy: 0.45,
      kl: 0.002,
      loss: null,
      "completions/mean_length": 190,
    },
    { step: 30, reward: 0.3, accuracy: 0.55, kl: NaN, loss: -0.02, "completions/mean_length": 180 },
    { step: 30, "eval/accuracy": 0.5, "eval/n": 50 },
  ];
  const chart = trainingCurves(rows);
  const root = parse(chart);
  assertCleanSvg(chart);
  const lines = marks(root, "line", "path");
  assert.equal(lines.length, 5);
  // Each path has one vertex per finite value: "M..L..L.." → count the commands.
  assert.deepEqual(lines.map((p) => (p.getAttribute("d") ?? "").match(/[ML]/g)?.length), [
    3,
    3,
    2,
    2,
    3,
  ]);
  assert.equal(marks(root, "dot", "circle").length, 2, "two eval/accuracy points");
  for (const label of ["↑ reward", "↑ accuracy", "↑ kl", "↑ loss", "↑ completions/mean_length"]) {
    assert.ok(texts(root).includes(label), label);
  }
  assert.equal(texts(root).filter((t) => t === "step →").length, 5);

  const some = trainingCurves(rows, { metrics: ["reward", "grad_norm"] });
  assert.equal(marks(parse(some), "line", "path").length, 1, "grad_norm is absent: no panel");
  assert.throws(() => trainingCurves(rows, { metrics: ["grad_norm"] }), {
    name: "RangeError",
    message: /grad_norm/,
  });
});

Deno.test("evalCurves() draws greedy, boxed, pass@k, maj@k and pass@1 lines labelled at the end", () => {
  const rows = [
    { step: 0, "eval/accuracy": 0.2, "eval/accuracy_boxed": 0.2, "eval/pass@8": 0.42 },
    { step: 5, reward: 0.1 },
    { step: 50, "eval/accuracy": 0.25, "eval/accuracy_boxed": 0.26, "eval/pass@8": 0.45 },
    { step: 100, "eval/accuracy": 0.3, "eval/accuracy_boxed": 0.3, "eval/pass@8": 0.47 },
  ].map((r, i) => i === 1 ? r : { ...r, "eval/maj@8": 0.2, "eval/pass@1": 0.19 });
  const chart = evalCurves(rows);
  assertCleanSvg(chart);
  const root = parse(chart);
  assert.equal(marks(root, "line", "path").length, 5, "one line per series");
  assert.equal(marks(root, "dot", "circle").length, 15);
  const labels = texts(root);
  for (const label of ["greedy 30.0%", "pass@8 47.0%", "maj@8 20.0%", "pass@1 (sampled) 19.0%"]) {
    assert.ok(labels.includes(label), `${label} in ${labels}`);
  }
  const greedyOnly = evalCurves([{ step: 0, "eval/accuracy": 0.1 }, {
    step: 9,
    "eval/accuracy": 0.2,
  }]);
  assert.equal(marks(parse(greedyOnly), "line", "path").length, 1);
  assert.throws(() => evalCurves([{ step: 1, reward: 0 }]), { name: "RangeError" });
});

Deno.test("spreadLabels() keeps end labels a gap apart without moving the top one or reordering", () => {
  const labels = [
    { series: "greedy", value: 0.208 },
    { series: "boxed", value: 0.208 },
    { series: "pass@8", value: 0.296 },
    { series: "pass@1", value: 0.1998 },
  ];
  const placed = spreadLabels(labels, 0.02);
  assert.deepEqual(placed.map((l) => l.series), labels.map((l) => l.series));
  assert.deepEqual(placed.map((l) => l.value), labels.map((l) => l.value));
  assertAllClose(placed.map((l) => l.labelValue), [0.208, 0.188, 0.296, 0.168], 1e-12);
  // Labels already apart stay where their lines end.
  const apart = spreadLabels([{ value: 0.5 }, { value: 0.1 }], 0.02);
  assert.deepEqual(apart.map((l) => l.labelValue), [0.5, 0.1]);
});

Deno.test("beforeAfterChart() draws accuracy and no-answer bars before and after", () => {
  const chart = beforeAfterChart(
    { accuracy: 0.3, no_answer_rate: 0.2, mean_reward: -0.3, n: 50 },
    { accuracy: 0.6, no_answer_rate: 0.05, n: 50 },
  );
  const root = parse(chart);
  assertCleanSvg(chart);
  const bars = marks(root, "bar", "rect");
  assert.equal(bars.length, 4);
  const heights = bars.map((r) => Number(r.getAttribute("height")));
  // Order: accuracy before/after, no_answer_rate before/after; y domain is [0, 1].
  assertAllClose(heights.map((h) => h / heights[0]), [1, 2, 2 / 3, 1 / 6], 1e-9);
  const labels = texts(root);
  for (const t of ["30.0%", "60.0%", "20.0%", "5.0%", "accuracy", "no_answer_rate", "before"]) {
    assert.ok(labels.includes(t), t);
  }
  assert.throws(
    () =>
      beforeAfterChart({ accuracy: NaN, no_answer_rate: 0, n: 1 }, {
        accuracy: 1,
        no_answer_rate: 0,
        n: 1,
      }),
    { name: "RangeError", message: /before\.accuracy/ },
  );
});

Deno.test("Chart displays as image/svg+xml in Jupyter and saveChart() writes the SVG", async () => {
  const chart = advantageHistogram([0, 1]);
  assert.equal(Symbol.for("Jupyter.display"), jupyterDisplay);
  assert.deepEqual(chart[jupyterDisplay](), { "image/svg+xml": chart.svg });
  assert.equal(`${chart}`, chart.svg);
  const path = await Deno.makeTempFile({ suffix: ".svg" });
  try {
    await saveChart(path, chart);
    const text = await Deno.readTextFile(path);
    assert.equal(text, `<?xml version="1.0" encoding="UTF-8"?>\n${chart.svg}\n`);
  } finally {
    await Deno.remove(path);
  }
});
