/**
 * The GRPO trainer: each phase is a plain function in its module that a notebook can call on
 * its own inputs — `generatePhase` (rollout.ts), `scorePhase` (reward.ts), `advantagePhase`
 * (grpo.ts), `prepareMicroBatches` + `updatePhase` (update.ts) — and {@linkcode trainStep}
 * chains them; {@linkcode train} is the loop behind `deno task train`.
 *
 * Follows TRL `GRPOTrainer` (`_generate_and_score_completions`, `_compute_loss`) with LoRA as
 * the policy and the adapter switched off as the reference (no second copy of the weights).
 *
 * @module
 */
import type { Config } from "./config.ts";
import { formatConfig } from "./config.ts";
import type { Example } from "./data.ts";
import { deriveSeed, promptsForStep, promptsPerStep, totalSteps } from "./data.ts";
import { CheckpointError } from "./errors.ts";
import type { EvalSummary, ProblemResult } from "./evaluate.ts";
import { evalOptions, evaluate, formatEval } from "./evaluate.ts";
import { advantagePhase, groupStats } from "./grpo.ts";
import type { LoraAdapter } from "./lora.ts";
import { loadLora, saveLora } from "./lora.ts";
import type { Qwen2Model } from "./model.ts";
import { AdamW, learningRateAt } from "./optim.ts";
import type { AdamWState } from "./optim.ts";
import type { Scores } from "./reward.ts";
import { scorePhase } from "./reward.ts";
import type { GroupRollout } from "./rollout.ts";
import { generatePhase, repeatGroups } from "./rollout.ts";
import { loadSafetensors, saveSafetensors } from "./safetensors.ts";
import type { TensorData } from "./safetensors.ts";
import type { Tokenizer } from "./tokenizer.ts";
import type { UpdateMetrics } from "./update.ts";
import { disposePrepared, prepareMicroBatches, updatePhase } from "./update.ts";

/** What every phase works on: the model, its tokenizer, the LoRA policy and the optimizer. */
export interface TrainerContext {
  config: Config;
  model: Qwen2Model;
  tokenizer: Tokenizer;
  adapter: LoraAdapter;
  optimizer: AdamW;
}

/** Numbers of one training step, named as TRL logs them (plus the seed's). */
export type StepMetrics = Record<string, number>;

/**
 * Warnings about a config that runs but may not do what the user wants.
 *
 * @example Usage
 * ```ts
 * import { defaultConfig } from "./config.ts";
 * import { configWarnings } from "./trainer.ts";
 * console.assert(configWarnings(defaultConfig()).length === 1); // -0.5 > -1
 * ```
 */
export function configWarnings(config: Config): string[] {
  const out: string[] = [];
  const r = config.reward;
  if (r.reward_functions.includes("accuracy") && r.reward_no_answer > r.reward_wrong) {
    out.push(
      `reward.reward_no_answer (${r.reward_no_answer}) > reward.reward_wrong (${r.reward_wrong}): ` +
        `inside a group a missing \\boxed{} then beats a wrong answer, so the policy can learn to ` +
        `drop the box. Set reward_no_answer: ${r.reward_wrong} to prevent it (see README, "Model not learning").`,
    );
  }
  return out;
}

/** Where the trainer is: step, epoch and position in the epoch's shuffled order. */
export interface TrainerState {
  /** Optimizer steps done. */
  global_step: number;
  /** Completed epochs as a fraction (TRL `epoch`). */
  epoch: number;
  /** Steps the run will take. */
  max_steps: number;
  /** The base seed. */
  seed: number;
  /** Logged records so far (TRL `log_history`). */
  log_history: Record<string, number>[];
  /** The evaluation before training, kept so a resumed run can still report before/after. */
  before?: EvalSummary | null;
}

/**
 * One GRPO step: rollout → score → advantages → update (`num_iterations` updates on the same
 * completions). Returns the step's metrics with TRL's names and the seed's.
 *
 * @example Usage
 * ```ts ignore
 * const { metrics } = await trainStep(ctx, examples.slice(0, 8), { step: 0 });
 * ```
 */
export async function trainStep(
  ctx: TrainerContext,
  examples: Example[],
  options: {
    step: number;
    totalSteps?: number;
    onPhase?: (phase: string, done: number, total: number) => void;
  },
): Promise<{ metrics: StepMetrics; group: GroupRollout; scores: Scores }> {
  const { config } = ctx;
  const seed = config.training.seed;
  const t0 = performance.now();
  // One generation batch for the whole step (TRL's generation_batch_size), so every group is
  // scored and normalised together; the update then walks it in micro-batches of completions.
  const group = await generatePhase(ctx, examples, {
    seed: deriveSeed(seed, options.step, 1),
    onToken: (d, t) => options.onPhase?.("rollout", d, t),
  });
  const tGen = performance.now();
  const scores = scorePhase(group, config.reward);
  const advantages = await advantagePhase(scores.rewards, config.grpo);
  const prepared = prepareMicroBatches(ctx, group, advantages);
  const updates: UpdateMetrics[] = [];
  try {
    for (let it = 0; it < config.grpo.num_iterations; it++) {
      const opt = ctx.optimizer.stepCount;
      const learningRate = learningRateAt(opt, {
        ...config.training,
        totalSteps: (options.totalSteps ?? opt + 1) * config.grpo.num_iterations,
      });
      options.onPhase?.("update", it, config.grpo.num_iterations);
      const dropoutSeed = deriveSeed(seed, options.step, it, 2);
      updates.push(await updatePhase(ctx, prepared, { learningRate, dropoutSeed }));
    }
  } finally {
    prepared.forEach(disposePrepared);
  }
  const stats = groupStats(scores.rewards, config.grpo);
  const lengths = group.completionIds.map((c) => c.length);
  const tokens = lengths.reduce((a, b) => a + b, 0);
  const rows = group.texts.length;
  const share = (n: number) => n / rows;
  const metrics: StepMetrics = {
    reward: stats.rewardMean,
    reward_std: config.grpo.scale_rewards === "batch" ? stats.batchStd : stats.rewardStd,
    accuracy: share(scores.status.filter((s) => s === "correct").length),
    no_answer_rate: share(scores.status.filter((s) => s === "no_answer").length),
    frac_reward_zero_std: stats.fracRewardZeroStd,
    ...Object.fromEntries(
      Object.entries(scores.perFunction).map((
        [fn, v],
      ) => [`rewards/${fn}/mean`, v.reduce((a, b) => a + b, 0) / rows]),
    ),
    ...averageRecords(updates),
    "completions/mean_length": tokens / rows,
    "completions/max_length": Math.max(...lengths),
    "completions/clipped_ratio": share(group.finishReasons.filter((f) => f === "length").length),
    tokens_per_second: tokens / ((tGen - t0) / 1000),
    rollout_time: (tGen - t0) / 1000,
    step_time: (performance.now() - t0) / 1000,
  };
  return { metrics, group, scores };
}

/** Averages step records key by key (TRL logs the mean since the last log). */
export function averageRecords(records: StepMetrics[]): StepMetrics {
  const out: StepMetrics = {};
  for (const key of Object.keys(records[0] ?? {})) {
    out[key] = records.reduce((s, r) => s + (r[key] ?? 0), 0) / records.length;
  }
  return out;
}

// ----- checkpoints ---------------------------------------------------------------------------

/**
 * Saves `<dir>` = `checkpoint-<step>/`: the adapter (PEFT), `optimizer.safetensors` (AdamW
 * moments, torch names `exp_avg` / `exp_avg_sq`), `trainer_state.json` and the effective
 * `config.yaml`. Files are written atomically; the directory appears complete or not at all.
 *
 * @example Usage
 * ```ts ignore
 * await saveCheckpoint(`${outputDir}/checkpoint-10`, ctx, state);
 * ```
 */
export async function saveCheckpoint(
  dir: string,
  ctx: Pick<TrainerContext, "config" | "adapter" | "optimizer" | "model">,
  state: TrainerState,
): Promise<void> {
  const tmp = `${dir}.tmp-${crypto.randomUUID()}`;
  await Deno.mkdir(tmp, { recursive: true });
  await saveLora(ctx.adapter, tmp, { baseModel: ctx.model.dir });
  const opt: AdamWState = await ctx.optimizer.state();
  const tensors: Record<string, TensorData> = {};
  for (const [name, v] of ctx.adapter.variables) {
    const shape = v.shape;
    tensors[`${name}.exp_avg`] = { dtype: "F32", shape, data: opt.exp_avg[v.name] };
    tensors[`${name}.exp_avg_sq`] = { dtype: "F32", shape, data: opt.exp_avg_sq[v.name] };
  }
  await saveSafetensors(`${tmp}/optimizer.safetensors`, tensors, {
    format: "pt",
    step: String(opt.step),
  });
  await Deno.writeTextFile(`${tmp}/trainer_state.json`, JSON.stringify(state, null, 2) + "\n");
  await Deno.writeTextFile(`${tmp}/config.yaml`, formatConfig(ctx.config));
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.rename(tmp, dir);
}

/**
 * Restores a checkpoint into a live context: adapter values, optimizer moments and step.
 *
 * @returns The saved trainer state.
 * @example Usage
 * ```ts ignore
 * const state = await loadCheckpoint("results/run/checkpoint-10", ctx);
 * ```
 */
export async function loadCheckpoint(
  dir: string,
  ctx: Pick<TrainerContext, "adapter" | "optimizer" | "model">,
): Promise<TrainerState> {
  const statePath = `${dir}/trainer_state.json`;
  let state: TrainerState;
  try {
    state = JSON.parse(await Deno.readTextFile(statePath));
  } catch (error) {
    throw new CheckpointError(
      `Cannot resume from ${dir}: ${statePath} is missing or not JSON (${
        (error as Error).message
      }). ` +
        `A checkpoint directory holds adapter_model.safetensors, adapter_config.json, ` +
        `optimizer.safetensors and trainer_state.json`,
      { file: statePath, cause: error },
    );
  }
  const saved = await loadLora(ctx.model, dir);
  try {
    for (const [key, v] of ctx.adapter.variables) {
      const s = saved.variables.get(key);
      if (!s) {
        throw new CheckpointError(`Cannot resume from ${dir}: adapter has no tensor ${key}`, {
          file: `${dir}/adapter_model.safetensors`,
          key,
        });
      }
      v.assign(s);
    }
  } finally {
    saved.dispose();
  }
  const optPath = `${dir}/optimizer.safetensors`;
  const file = await loadSafetensors(optPath);
  const exp_avg: Record<string, Float32Array> = {};
  const exp_avg_sq: Record<string, Float32Array> = {};
  for (const [key, v] of ctx.adapter.variables) {
    const m = file.tensors.get(`${key}.exp_avg`);
    const s = file.tensors.get(`${key}.exp_avg_sq`);
    if (!m || !s) {
      throw new CheckpointError(`Cannot resume from ${optPath}: no moments for ${key}`, {
        file: optPath,
        key,
      });
    }
    exp_avg[v.name] = m.data as Float32Array;
    exp_avg_sq[v.name] = s.data as Float32Array;
  }
  ctx.optimizer.loadState({ step: Number(file.metadata.step ?? 0), exp_avg, exp_avg_sq });
  return state;
}

/** The checkpoint directory with the highest step under `outputDir`, or null. */
export async function latestCheckpoint(outputDir: string): Promise<string | null> {
  let best: { step: number; name: string } | null = null;
  try {
    for await (const e of Deno.readDir(outputDir)) {
      const m = /^checkpoint-(\d+)$/.exec(e.name);
      if (e.isDirectory && m && (!best || Number(m[1]) > best.step)) {
        best = { step: Number(m[1]), name: e.name };
      }
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return best ? `${outputDir}/${best.name}` : null;
}

/** Deletes the oldest checkpoints beyond `limit` (HF `save_total_limit`). */
export async function pruneCheckpoints(outputDir: string, limit: number | null): Promise<void> {
  if (limit === null) return;
  const steps: number[] = [];
  for await (const e of Deno.readDir(outputDir)) {
    const m = /^checkpoint-(\d+)$/.exec(e.name);
    if (e.isDirectory && m) steps.push(Number(m[1]));
  }
  steps.sort((a, b) => a - b);
  for (const s of steps.slice(0, Math.max(0, steps.length - limit))) {
    await Deno.remove(`${outputDir}/checkpoint-${s}`, { recursive: true });
  }
}

/** Appends one line to a file (creating it), for training.log / metrics.jsonl. */
export async function saveLine(path: string, line: string): Promise<void> {
  await Deno.writeTextFile(path, line + "\n", { append: true, create: true });
}

// ----- the loop ------------------------------------------------------------------------------

/** Callbacks through which {@linkcode train} reports; the task prints, a notebook plots. */
export interface TrainCallbacks {
  /** A line for the terminal and training.log. */
  log?: (line: string) => void;
  /** Progress of the current phase. */
  progress?: (
    info: { phase: string; step: number; totalSteps: number; done: number; total: number },
  ) => void;
  /** Each logged metrics record. */
  metrics?: (record: StepMetrics) => void;
}

/** What {@linkcode train} returns and writes to `summary.json`. */
export interface RunSummary {
  before: EvalSummary | null;
  after: EvalSummary | null;
  kl: number;
  steps: number;
  seconds: number;
  output_dir: string;
}

/** Evaluation on the held-out slice, logged as `eval/*`. */
async function runEval(
  ctx: TrainerContext,
  examples: Example[],
  step: number,
  callbacks: TrainCallbacks,
): Promise<{ summary: EvalSummary; results: ProblemResult[] }> {
  return await evaluate(ctx.model, ctx.tokenizer, examples, {
    ...evalOptions(ctx.config),
    adapter: ctx.adapter,
    onProgress: (done, total) =>
      callbacks.progress?.({ phase: "eval", step, totalSteps: 0, done, total }),
  });
}

/**
 * The whole run behind `deno task train`: evaluate → (rollout → score → update) × steps →
 * evaluate, with logs, metrics, checkpoints and resume. Everything lands in
 * `outputDir`: `training.log`, `metrics.jsonl`, `completions.jsonl`, `checkpoint-<step>` dirs,
 * `summary.json`, `config.yaml`.
 *
 * @example Usage
 * ```ts ignore
 * const summary = await train(ctx, { train: examples, eval: held }, { outputDir, callbacks });
 * ```
 */
export async function train(
  ctx: TrainerContext,
  data: { train: Example[]; eval: Example[] },
  options: { outputDir: string; resumeFrom?: string | null; callbacks?: TrainCallbacks },
): Promise<RunSummary> {
  const { config } = ctx;
  const cb = options.callbacks ?? {};
  const out = options.outputDir;
  await Deno.mkdir(out, { recursive: true });
  const log = async (line: string) => {
    cb.log?.(line);
    await saveLine(`${out}/training.log`, `${new Date().toISOString()} ${line}`);
  };
  const writeMetrics = async (record: StepMetrics) => {
    cb.metrics?.(record);
    await saveLine(`${out}/metrics.jsonl`, JSON.stringify(record));
  };
  await Deno.writeTextFile(`${out}/config.yaml`, formatConfig(config));
  const steps = totalSteps(data.train.length, config);
  let state: TrainerState = {
    global_step: 0,
    epoch: 0,
    max_steps: steps,
    seed: config.training.seed,
    log_history: [],
    before: null,
  };
  if (options.resumeFrom) {
    state = await loadCheckpoint(options.resumeFrom, ctx);
    await log(`resumed from ${options.resumeFrom} at step ${state.global_step}`);
  }
  const t0 = performance.now();
  let after: EvalSummary | null = null;
  const evalEnabled = data.eval.length > 0;
  if (evalEnabled && state.global_step === 0) {
    state.before = (await runEval(ctx, data.eval, 0, cb)).summary;
    await writeMetrics(evalRecord(0, state.before));
    await log(`eval before training: ${formatEval(state.before)}`);
  }
  let window: StepMetrics[] = [];
  let lastKl = 0;
  for (let step = state.global_step; step < steps; step++) {
    const batch = promptsForStep(data.train, step, {
      perStep: promptsPerStep(config),
      seed: config.training.seed,
      shuffle: config.data.shuffle,
    });
    const { metrics, group, scores } = await trainStep(ctx, batch.examples, {
      step,
      totalSteps: steps,
      onPhase: (phase, done, total) =>
        cb.progress?.({ phase, step, totalSteps: steps, done, total }),
    });
    window.push(metrics);
    lastKl = metrics.kl;
    state.global_step = step + 1;
    state.epoch = batch.epoch;
    cb.progress?.({
      phase: "step",
      step: step + 1,
      totalSteps: steps,
      done: step + 1,
      total: steps,
    });
    if (config.logging.log_completions) {
      const prompts = repeatGroups(
        group.examples.map((e) => e.question),
        config.grpo.num_return_sequences,
      );
      // One write per step, not one per completion.
      const lines = group.texts.map((completion, i) =>
        JSON.stringify({
          step: step + 1,
          prompt: prompts[i],
          completion,
          answer: group.answers[i],
          predicted: scores.predicted[i],
          reward: scores.rewards[i],
          status: scores.status[i],
        })
      );
      await saveLine(`${out}/completions.jsonl`, lines.join("\n"));
    }
    const isLast = step + 1 === steps;
    if ((step + 1) % config.logging.logging_steps === 0 || isLast) {
      const record = { step: step + 1, epoch: +state.epoch.toFixed(4), ...averageRecords(window) };
      window = [];
      state.log_history.push(record);
      await writeMetrics(record);
      await log(formatRecord(record));
    }
    if (
      evalEnabled && config.eval.eval_steps > 0 && (step + 1) % config.eval.eval_steps === 0 &&
      !isLast
    ) {
      const s = (await runEval(ctx, data.eval, step + 1, cb)).summary;
      await writeMetrics(evalRecord(step + 1, s));
      await log(`eval at step ${step + 1}: ${formatEval(s)}`);
    }
    if ((step + 1) % config.training.save_steps === 0 || isLast) {
      const dir = `${out}/checkpoint-${step + 1}`;
      await saveCheckpoint(dir, ctx, state);
      await pruneCheckpoints(out, config.training.save_total_limit);
      await log(`saved ${dir}`);
    }
  }
  if (evalEnabled) {
    const res = await runEval(ctx, data.eval, steps, cb);
    after = res.summary;
    await writeMetrics(evalRecord(steps, after));
    await log(`eval after training: ${formatEval(after)}`);
    await saveLine(
      `${out}/eval_results.jsonl`,
      res.results.map((r) => JSON.stringify(r)).join("\n"),
    );
  }
  const summary: RunSummary = {
    before: evalEnabled ? state.before ?? null : null,
    after,
    kl: lastKl,
    steps,
    seconds: (performance.now() - t0) / 1000,
    output_dir: out,
  };
  await Deno.writeTextFile(`${out}/summary.json`, JSON.stringify(summary, null, 2) + "\n");
  return summary;
}

function evalRecord(step: number, s: EvalSummary): StepMetrics {
  return {
    step,
    "eval/accuracy": s.accuracy,
    "eval/no_answer_rate": s.no_answer_rate,
    "eval/mean_reward": s.mean_reward,
    "eval/accuracy_boxed": s.accuracy_boxed,
    "eval/n": s.n,
  };
}

/** One log line of a metrics record, the seed's four first. */
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
