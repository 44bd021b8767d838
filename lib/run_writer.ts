/**
 * Where a training run's records go. A {@linkcode RunWriter} is the one place that writes a
 * run's `metrics.jsonl`, `training.log`, `completions.jsonl`, `eval_results.jsonl`,
 * `summary.json`, `config.yaml` and `checkpoint-<step>/` directories
 * ({@linkcode fileRunWriter}); {@linkcode memoryRunWriter} keeps the same records in memory, so
 * a notebook can run `train` and read them back without touching files. Also the records
 * themselves: the metrics window average, eval and completion rows, and log lines.
 *
 * @module
 */
import type { Config } from "./config.ts";
import { formatConfig } from "./config.ts";
import type { CheckpointParts, RunMark } from "./checkpoint.ts";
import { checkpointDir, readCheckpointSteps, saveCheckpoint } from "./checkpoint.ts";
import { OutputError } from "./errors.ts";
import { isOsError, osReason } from "./_fs.ts";
import type { EvalSummary, ProblemResult } from "./evaluate.ts";
import type { Scores } from "./reward.ts";
import type { CompletionRecord } from "./report.ts";
import type { GroupRollout } from "./rollout.ts";

/** Numbers of one training step or log window, named as TRL logs them (plus the seed's). */
export type StepMetrics = Record<string, number>;

/** What `train` returns and writes to `summary.json`. */
export interface RunSummary {
  before: EvalSummary | null;
  after: EvalSummary | null;
  /** KL to the reference at the last step. */
  kl: number;
  steps: number;
  /** Seconds of training, over every segment of a resumed run. */
  seconds: number;
  /** The run directory, or null for an in-memory run. */
  output_dir: string | null;
  /**
   * Set when `train` stopped early on request (a signal): why, at which step, and the
   * checkpoint that holds it. Such a run writes no summary.json; `--resume latest` continues it.
   */
  stopped?: { reason: string; step: number; checkpoint: string };
}

/** The sink of a run's records; every method resolves once the record is stored. */
export interface RunWriter {
  /** The run directory, or null when nothing goes to files. */
  readonly dir: string | null;
  /** `config.yaml`: the effective config. */
  config(config: Config): Promise<void>;
  /** One `training.log` line (the file writer prefixes the time). */
  log(line: string): Promise<void>;
  /** One `metrics.jsonl` record. */
  metrics(record: StepMetrics): Promise<void>;
  /** One step's `completions.jsonl` rows. */
  completions(records: CompletionRecord[]): Promise<void>;
  /** The final evaluation's `eval_results.jsonl` rows. */
  evalResults(results: ProblemResult[]): Promise<void>;
  /** `summary.json`. */
  summary(summary: RunSummary): Promise<void>;
  /**
   * Saves `checkpoint-<step>` and prunes the oldest beyond `save_total_limit` (null keeps all).
   * Returns where it went.
   */
  checkpoint<S>(
    step: number,
    parts: CheckpointParts<S>,
    options: { save_total_limit: number | null },
  ): Promise<string>;
  /**
   * Removes everything a run writes (the files above, `checkpoint-*` directories and leftovers of
   * interrupted writes), for a fresh run in a used directory (`--overwrite`).
   */
  clear(): Promise<void>;
  /** The record files as they are now, kept in a checkpoint so a resume can rewind to it. */
  mark(): Promise<RunMark>;
  /**
   * Before a run's first step: removes what an interrupted write left (`*.tmp-*`), and on a
   * resume (`to` given) every record after the checkpoint's step: record files truncated to
   * its mark (or, for a checkpoint without one, JSONL rows after `to.step` dropped), later
   * checkpoints, and the final evaluation and summary of a finished run. Each step is then
   * recorded once.
   */
  rewind(to: { step: number; mark: RunMark | null } | null): Promise<void>;
}

/** What an interrupted atomic write leaves: `checkpoint-8.tmp-<uuid>`, `x.safetensors.tmp-<hex>`. */
const LEFTOVER = /\.tmp-[0-9a-f-]+$/;

/** The record files a checkpoint's mark covers (appended to step by step). */
const MARKED = ["metrics", "log", "completions"] as const;

/** The log files of a run directory. */
export const RUN_LOG_FILES = Object.freeze({
  metrics: "metrics.jsonl",
  log: "training.log",
  completions: "completions.jsonl",
  evalResults: "eval_results.jsonl",
  summary: "summary.json",
  config: "config.yaml",
});

/**
 * A writer into the run directory `dir` (created on the first write). JSONL files and
 * `training.log` are appended to; `summary.json` and `config.yaml` are replaced.
 *
 * @param dir The run directory (`training.output_dir`).
 * @returns The writer.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { fileRunWriter } from "./run_writer.ts";
 * const dir = await Deno.makeTempDir();
 * const writer = fileRunWriter(dir);
 * await writer.metrics({ step: 1, reward: 0.5 });
 * assert.equal(await Deno.readTextFile(`${dir}/metrics.jsonl`), '{"step":1,"reward":0.5}\n');
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function fileRunWriter(dir: string): RunWriter {
  let made = false;
  /** Runs a file operation; an OS failure (full disk, read-only) becomes one OutputError. */
  async function guarded<T>(path: string, what: () => Promise<T>): Promise<T> {
    try {
      return await what();
    } catch (error) {
      if (!isOsError(error)) throw error;
      throw new OutputError(`Cannot write ${path}: ${osReason(error)}`, {
        file: path,
        cause: error,
      });
    }
  }
  async function ensureDir(): Promise<void> {
    if (!made) await guarded(dir, () => Deno.mkdir(dir, { recursive: true }));
    made = true;
  }
  async function append(file: string, lines: string[]): Promise<void> {
    if (lines.length === 0) return;
    await ensureDir();
    // One write per call (a step's completions at once, not one per completion).
    await guarded(
      `${dir}/${file}`,
      () =>
        Deno.writeTextFile(`${dir}/${file}`, lines.join("\n") + "\n", {
          append: true,
          create: true,
        }),
    );
  }
  /** Atomic: a kill mid-write leaves the old file (and a leftover that the next run removes). */
  async function replace(file: string, text: string): Promise<void> {
    await ensureDir();
    const tmp = `${dir}/${file}.tmp-${crypto.randomUUID()}`;
    await guarded(`${dir}/${file}`, async () => {
      await Deno.writeTextFile(tmp, text);
      await Deno.rename(tmp, `${dir}/${file}`);
    });
  }
  async function remove(path: string): Promise<void> {
    await guarded(path, () =>
      Deno.remove(path, { recursive: true }).catch((error) => {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      }));
  }
  async function entries(): Promise<string[]> {
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir(dir)) names.push(e.name);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    return names;
  }
  async function size(file: string): Promise<number> {
    try {
      return (await Deno.stat(`${dir}/${file}`)).size;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return 0;
      throw error;
    }
  }
  /** Keeps the JSONL rows whose `step` is at most `step`. */
  async function keepRowsUpTo(file: string, step: number): Promise<void> {
    let text: string;
    try {
      text = await Deno.readTextFile(`${dir}/${file}`);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return;
      throw error;
    }
    const rows = text.split("\n").filter((line) => {
      if (line.trim() === "") return false;
      try {
        return JSON.parse(line).step <= step;
      } catch {
        return false; // a line torn by a kill
      }
    });
    await replace(file, rows.map((r) => r + "\n").join(""));
  }
  return {
    dir,
    config: (config) => replace(RUN_LOG_FILES.config, formatConfig(config)),
    log: (line) => append(RUN_LOG_FILES.log, [`${new Date().toISOString()} ${line}`]),
    metrics: (record) => append(RUN_LOG_FILES.metrics, [JSON.stringify(record)]),
    completions: (records) =>
      append(RUN_LOG_FILES.completions, records.map((r) => JSON.stringify(r))),
    evalResults: (results) =>
      append(RUN_LOG_FILES.evalResults, results.map((r) => JSON.stringify(r))),
    summary: (summary) => replace(RUN_LOG_FILES.summary, JSON.stringify(summary, null, 2) + "\n"),
    async checkpoint(step, parts, options) {
      const path = checkpointDir(dir, step);
      await ensureDir();
      await saveCheckpoint(path, parts);
      await guarded(dir, () => pruneCheckpoints(dir, options.save_total_limit));
      return path;
    },
    async clear() {
      for (const file of Object.values(RUN_LOG_FILES)) await remove(`${dir}/${file}`);
      for (const name of await entries()) {
        if (/^checkpoint-\d+$/.test(name) || LEFTOVER.test(name)) await remove(`${dir}/${name}`);
      }
    },
    async mark() {
      const mark: RunMark = {};
      for (const key of MARKED) mark[RUN_LOG_FILES[key]] = await size(RUN_LOG_FILES[key]);
      return mark;
    },
    async rewind(to) {
      for (const name of await entries()) {
        if (LEFTOVER.test(name)) await remove(`${dir}/${name}`);
      }
      if (to === null) return;
      for (const key of MARKED) {
        const file = RUN_LOG_FILES[key];
        const at = to.mark?.[file];
        if (at !== undefined) {
          if (await size(file) > at) {
            await guarded(`${dir}/${file}`, () => Deno.truncate(`${dir}/${file}`, at));
          }
        } else if (key !== "log") await keepRowsUpTo(file, to.step);
      }
      for (const step of await readCheckpointSteps(dir)) {
        if (step > to.step) await remove(checkpointDir(dir, step));
      }
      await remove(`${dir}/${RUN_LOG_FILES.evalResults}`);
      await remove(`${dir}/${RUN_LOG_FILES.summary}`);
    },
  };
}

/**
 * Deletes the oldest `checkpoint-<step>` directories of a run beyond `limit` (HF
 * `save_total_limit`, which `Trainer._save_checkpoint` applies after each save); null keeps all.
 * It lives with the writer, which owns what a run directory holds.
 *
 * @param outputDir The run directory.
 * @param limit How many checkpoints to keep, newest by step; null keeps all.
 * @example Usage
 * ```ts ignore
 * await pruneCheckpoints("results/run", 2);
 * ```
 */
export async function pruneCheckpoints(outputDir: string, limit: number | null): Promise<void> {
  if (limit === null) return;
  const steps = await readCheckpointSteps(outputDir);
  for (const step of steps.slice(0, Math.max(0, steps.length - limit))) {
    await Deno.remove(checkpointDir(outputDir, step), { recursive: true });
  }
}

/** The records a {@linkcode memoryRunWriter} kept, one field per file of a run directory. */
export interface RunRecords {
  config: Config | null;
  log: string[];
  metrics: StepMetrics[];
  completions: CompletionRecord[];
  evalResults: ProblemResult[];
  summary: RunSummary | null;
  /** The steps "saved", each with a copy of its trainer state (no tensors are kept). */
  checkpoints: { step: number; state: unknown }[];
}

/**
 * A writer that keeps every record in memory (`records`) and writes no file.
 *
 * @returns The writer and its records.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { memoryRunWriter } from "./run_writer.ts";
 * const writer = memoryRunWriter();
 * await writer.metrics({ step: 1, reward: 0.5 });
 * assert.deepEqual(writer.records.metrics, [{ step: 1, reward: 0.5 }]);
 * ```
 */
export function memoryRunWriter(): RunWriter & { records: RunRecords } {
  const records: RunRecords = {
    config: null,
    log: [],
    metrics: [],
    completions: [],
    evalResults: [],
    summary: null,
    checkpoints: [],
  };
  // Nothing to wait for: every method stores its record and resolves at once.
  const stored = Promise.resolve();
  return {
    dir: null,
    records,
    config(config) {
      records.config = structuredClone(config);
      return stored;
    },
    log(line) {
      records.log.push(line);
      return stored;
    },
    metrics(record) {
      records.metrics.push({ ...record });
      return stored;
    },
    completions(rows) {
      records.completions.push(...rows);
      return stored;
    },
    evalResults(results) {
      records.evalResults.push(...results);
      return stored;
    },
    summary(summary) {
      records.summary = structuredClone(summary);
      return stored;
    },
    checkpoint(step, parts) {
      records.checkpoints.push({ step, state: structuredClone(parts.state) });
      return Promise.resolve(`checkpoint-${step} (in memory: trainer state only)`);
    },
    clear() {
      Object.assign(records, memoryRunWriter().records);
      return stored;
    },
    mark() {
      return Promise.resolve({
        [RUN_LOG_FILES.metrics]: records.metrics.length,
        [RUN_LOG_FILES.log]: records.log.length,
        [RUN_LOG_FILES.completions]: records.completions.length,
      });
    },
    rewind(to) {
      if (to === null) return stored;
      const keep = <T extends { step?: number }>(rows: T[], file: string): T[] => {
        const at = to.mark?.[file];
        return at !== undefined ? rows.slice(0, at) : rows.filter((r) => (r.step ?? 0) <= to.step);
      };
      records.metrics = keep(records.metrics, RUN_LOG_FILES.metrics);
      records.completions = keep(records.completions, RUN_LOG_FILES.completions);
      const logAt = to.mark?.[RUN_LOG_FILES.log];
      if (logAt !== undefined) records.log = records.log.slice(0, logAt);
      records.checkpoints = records.checkpoints.filter((c) => c.step <= to.step);
      records.evalResults = [];
      records.summary = null;
      return stored;
    },
  };
}

/**
 * Averages step records key by key (TRL logs the mean since the last log).
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { averageRecords } from "./run_writer.ts";
 * assert.deepEqual(averageRecords([{ loss: 1 }, { loss: 3 }]), { loss: 2 });
 * ```
 */
export function averageRecords(records: StepMetrics[]): StepMetrics {
  const out: StepMetrics = {};
  for (const key of Object.keys(records[0] ?? {})) {
    out[key] = records.reduce((s, r) => s + (r[key] ?? 0), 0) / records.length;
  }
  return out;
}

/**
 * The `eval/*` metrics record of an evaluation at `step`.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { evalRecord } from "./run_writer.ts";
 * const r = evalRecord(0, { n: 2, accuracy: 0.5, no_answer_rate: 0, mean_reward: 0,
 *   accuracy_boxed: 0.5, mean_length: 10, k: 1 });
 * assert.equal(r["eval/accuracy"], 0.5);
 * ```
 */
export function evalRecord(step: number, s: EvalSummary): StepMetrics {
  return {
    step,
    "eval/accuracy": s.accuracy,
    "eval/no_answer_rate": s.no_answer_rate,
    "eval/mean_reward": s.mean_reward,
    "eval/accuracy_boxed": s.accuracy_boxed,
    "eval/n": s.n,
    ...(s.pass_at_k === undefined ? {} : {
      [`eval/pass@${s.k}`]: s.pass_at_k,
      [`eval/maj@${s.k}`]: s.maj_at_k ?? NaN,
      "eval/pass@1": s.pass_at_1 ?? NaN,
    }),
  };
}

/**
 * One step's `completions.jsonl` rows (TRL `log_completions`): prompt, completion, answer,
 * extracted answer, reward and verdict of every completion.
 *
 * @param step The step (1-based, as logged).
 * @param group The rollout phase's output; `scores` the score phase's.
 * @returns One row per completion.
 * @example Usage
 * ```ts ignore
 * await writer.completions(completionRecords(step + 1, group, scores));
 * ```
 */
export function completionRecords(
  step: number,
  group: Pick<GroupRollout, "examples" | "texts" | "answers">,
  scores: Pick<Scores, "rewards" | "predicted" | "status">,
): CompletionRecord[] {
  const g = group.texts.length / group.examples.length;
  return group.texts.map((completion, i) => ({
    step,
    prompt: group.examples[Math.floor(i / g)].question,
    completion,
    answer: group.answers[i],
    predicted: scores.predicted[i],
    reward: scores.rewards[i],
    status: scores.status[i],
  }));
}

/**
 * One log line of a metrics record, the seed's four first.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatRecord } from "./run_writer.ts";
 * assert.equal(formatRecord({ loss: 0.5, step: 3, kl: 2e-5 }), "step=3 loss=0.5000 kl=2.00e-5");
 * ```
 */
export function formatRecord(r: StepMetrics): string {
  const first = ["step", "reward", "accuracy", "kl_penalty", "loss"];
  const keys = [...first, ...Object.keys(r).filter((k) => !first.includes(k))];
  return keys.filter((k) => k in r).map((k) => {
    const v = r[k];
    return `${k}=${
      Number.isInteger(v) ? v : Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : v.toFixed(4)
    }`;
  }).join(" ");
}
