/**
 * `deno task bench`'s side-by-side: our JSON line and the PyTorch peer's best for each workload,
 * the ratio of their times, and the markdown table of them.
 *
 * @module
 */
import type { Workload } from "./workloads.ts";

/** A JSON line of bench/workloads.ts or bench/peer_torch.py. */
export type Line = Record<string, unknown> & { workload: string; seconds: number };

/** What a workload is compared by: a time per unit, lower is better. */
const METRIC: Record<Workload, { key: string; unit: string; scale: number }> = {
  grpo_step: { key: "seconds_per_token", unit: "ms per completion token", scale: 1000 },
  rollout: { key: "seconds_per_token", unit: "ms per completion token", scale: 1000 },
  "forward_1.5b": { key: "seconds", unit: "s", scale: 1 },
  "decode_1.5b": { key: "seconds", unit: "s for 16 steps", scale: 1 },
  "grpo_update_1.5b": { key: "seconds", unit: "s", scale: 1 },
  verifier: { key: "seconds", unit: "µs per completion", scale: 1e6 },
};

/** One workload side by side. */
export interface Comparison {
  workload: Workload;
  /** What `ours` and `peer` are: e.g. "ms per completion token". */
  unit: string;
  ours: number | null;
  /** The peer's best over its thread counts, or null (no PyTorch, no peer of this workload). */
  peer: number | null;
  /** Threads of the peer's best run. */
  peerThreads: number | null;
  /** ours ÷ peer: below 1 is faster than PyTorch. */
  ratio: number | null;
  /** Every peer run: threads → value. */
  peerRuns: { threads: number; value: number }[];
  oursLine: Line | null;
  peerLine: Line | null;
}

function metricOf(line: Line, workload: Workload): number {
  const m = METRIC[workload];
  return Number(line[m.key]) * m.scale;
}

/**
 * Pairs our lines with the peer's best per workload (lowest time per unit over its thread counts).
 *
 * @param workloads In the order to report.
 * @param ours Our JSON lines.
 * @param peers The peer's JSON lines, of every thread count.
 * @returns One comparison per workload.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { compare } from "./_compare.ts";
 * const [c] = compare(["forward_1.5b"], [{ workload: "forward_1.5b", seconds: 30 }], [
 *   { workload: "forward_1.5b", seconds: 40, threads: 1 },
 *   { workload: "forward_1.5b", seconds: 60, threads: 2 },
 * ]);
 * assert.equal(c.peer, 40);
 * assert.equal(c.ratio, 0.75);
 * ```
 */
export function compare(workloads: Workload[], ours: Line[], peers: Line[]): Comparison[] {
  return workloads.map((workload) => {
    const oursLine = ours.find((l) => l.workload === workload) ?? null;
    const mine = peers.filter((l) => l.workload === workload);
    const peerRuns = mine.map((l) => ({
      threads: Number(l.threads),
      value: metricOf(l, workload),
    }));
    let best: Line | null = null;
    for (const l of mine) {
      if (best === null || metricOf(l, workload) < metricOf(best, workload)) best = l;
    }
    const value = oursLine === null ? null : metricOf(oursLine, workload);
    const peer = best === null ? null : metricOf(best, workload);
    return {
      workload,
      unit: METRIC[workload].unit,
      ours: value,
      peer,
      peerThreads: best === null ? null : Number(best.threads),
      ratio: value !== null && peer !== null ? value / peer : null,
      peerRuns,
      oursLine,
      peerLine: best,
    };
  });
}

function fmt(x: number | null, digits = 3): string {
  if (x === null || !Number.isFinite(x)) return "";
  return x >= 100 ? x.toFixed(1) : x >= 10 ? x.toFixed(2) : x.toPrecision(digits);
}

function gb(bytes: unknown): string {
  return typeof bytes === "number" ? `${(bytes / 1e9).toFixed(2)} GB` : "";
}

function load(line: Line | null): string {
  return typeof line?.load_average === "number" ? line.load_average.toFixed(1) : "";
}

/**
 * The markdown table: per workload ours, the peer's best (and its threads), the ratio, each side's
 * peak RSS and load; the demo step's rollout and update parts get rows of their own.
 *
 * @param rows From {@linkcode compare}.
 * @returns The table's lines.
 */
export function formatTable(rows: Comparison[]): string[] {
  const header = [
    "workload",
    "unit",
    "ours",
    "PyTorch (best)",
    "ours ÷ PyTorch",
    "peak RSS ours / PyTorch",
    "load ours / PyTorch",
  ];
  const out = [header, header.map(() => "---")];
  for (const r of rows) {
    const threads = r.peerThreads === null
      ? ""
      : ` (${r.peerThreads} thread${r.peerThreads > 1 ? "s" : ""})`;
    const peer = r.peer === null ? "" : `${fmt(r.peer)}${threads}`;
    out.push([
      r.workload,
      r.unit,
      fmt(r.ours),
      peer,
      r.ratio === null ? "" : `${r.ratio.toFixed(2)}×`,
      `${gb(r.oursLine?.peak_rss_bytes)} / ${gb(r.peerLine?.peak_rss_bytes)}`,
      `${load(r.oursLine)} / ${load(r.peerLine)}`,
    ]);
    if (r.workload === "grpo_step") {
      for (const part of ["rollout", "update"]) {
        const key = `${part}_seconds_per_token`;
        const o = r.oursLine ? Number(r.oursLine[key]) * 1000 : null;
        const p = r.peerLine ? Number(r.peerLine[key]) * 1000 : null;
        const ratio = o !== null && p !== null ? `${(o / p).toFixed(2)}×` : "";
        out.push([`— ${part} part`, "ms per completion token", fmt(o), fmt(p), ratio, "", ""]);
      }
    }
  }
  return out.map((cells) => `| ${cells.join(" | ")} |`);
}
