/**
 * The GRPO training loop behind `deno task train`. Each step chains the phases, each a plain
 * function in its module: `generatePhase` (rollout.ts) → `scorePhase` (reward.ts) →
 * `advantagePhase` (grpo.ts) → `prepareMicroBatches` + `updatePhase` (update.ts). Records go
 * to a run writer (run_writer.ts), checkpoints through it to checkpoint.ts.
 *
 * Follows TRL `GRPOTrainer` (`_generate_and_score_completions`, `_compute_loss`) with LoRA as
 * the policy and the adapter switched off as the reference (no second copy of the weights).
 *
 * @module
 */
import { dirname, resolve } from "node:path";
import type { TrainerState } from "./checkpoint.ts";
import { checkpointDir, loadCheckpoint, readRunIdentity } from "./checkpoint.ts";
import type { TrainerContext } from "./context.ts";
import type { Example } from "./data.ts";
import type { PromptOrderState } from "./data.ts";
import { deriveSeed, nextPrompts, promptsPerStep, recordOutcomes, totalSteps } from "./data.ts";
import { CheckpointError, DivergenceError } from "./errors.ts";
import type { EvalSummary, ProblemResult } from "./evaluate.ts";
import { evalOptions, evaluateGreedyAndSampled, formatEval } from "./evaluate.ts";
import type { SampledGroups } from "./dynamic_sampling.ts";
import { dynamicSamplingPhase } from "./dynamic_sampling.ts";
import { advantagePhase, groupStats } from "./grpo.ts";
import { learningRateAt } from "./optim.ts";
import type { Scores } from "./reward.ts";
import type { GroupRollout } from "./rollout.ts";
import type { RunSummary, RunWriter, StepMetrics } from "./run_writer.ts";
import {
  averageRecords,
  completionRecords,
  evalRecord,
  fileRunWriter,
  formatRecord,
} from "./run_writer.ts";
import type { UpdateMetrics } from "./update.ts";
import { disposePrepared, prepareMicroBatches, updatePhase } from "./update.ts";

/**
 * One GRPO step: rollout → score (with `grpo.filter_groups`, more generation batches from
 * `nextPrompts` until the step's prompts have groups with signal) → advantages → update
 * (`num_iterations` updates on the same completions). Returns the step's metrics with TRL's
 * names and the seed's, and every drawn prompt's outcome (for the difficulty-aware order).
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
    /** The next generation batch of prompts, for dynamic sampling. */
    nextPrompts?: () => Example[];
    onPhase?: (phase: string, done: number, total: number) => void;
  },
): Promise<
  { metrics: StepMetrics; group: GroupRollout; scores: Scores; outcomes: SampledGroups["outcomes"] }
> {
  const { config } = ctx;
  const seed = config.training.seed;
  const t0 = performance.now();
  // One generation batch for the whole step (TRL's generation_batch_size), so every group is
  // scored and normalised together; the update then walks it in micro-batches of completions.
  const sampled = await dynamicSamplingPhase(ctx, examples, {
    seed: deriveSeed(seed, options.step, 1),
    perStep: promptsPerStep(config),
    next: options.nextPrompts,
    onToken: (d, t) => options.onPhase?.("rollout", d, t),
  });
  const { group, scores } = sampled;
  const tGen = performance.now();
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
    ...(config.grpo.filter_groups
      ? {
        num_gen_batches: sampled.numGenBatches,
        "dynamic_sampling/prompts_drawn": sampled.promptsDrawn,
        "dynamic_sampling/groups_dropped": sampled.groupsDropped,
        "dynamic_sampling/groups_filled": sampled.groupsFilled,
      }
      : {}),
    "completions/mean_length": tokens / rows,
    "completions/max_length": Math.max(...lengths),
    "completions/clipped_ratio": share(group.finishReasons.filter((f) => f === "length").length),
    tokens_per_second: sampled.tokensGenerated / ((tGen - t0) / 1000),
    rollout_time: (tGen - t0) / 1000,
    step_time: (performance.now() - t0) / 1000,
  };
  return { metrics, group, scores, outcomes: sampled.outcomes };
}

/**
 * `trainer_state.json` of a GRPO run: {@linkcode TrainerState}, where the prompt order is, since
 * with dynamic sampling or the difficulty-aware order a step may take any number of prompts (a
 * checkpoint without `prompt_order` drew one batch per step), and the last step's KL, which a
 * resumed run reports even when no step is left to run.
 */
type GrpoTrainerState = TrainerState & { prompt_order?: PromptOrderState; last_kl?: number };

/** Callbacks through which {@linkcode train} reports as it goes; the task prints, a notebook plots. */
export interface TrainCallbacks {
  /** A line for the terminal (the writer also gets it for training.log). */
  log?: (line: string) => void;
  /** Progress of the current phase. */
  progress?: (
    info: { phase: string; step: number; totalSteps: number; done: number; total: number },
  ) => void;
  /** Each logged metrics record. */
  metrics?: (record: StepMetrics) => void;
}

/** Thrown inside a phase's progress callback to abandon it when a stop was requested. */
class StopRequested extends Error {}

/** What {@linkcode unlessStopped} gives for abandoned work. */
const STOPPED = Symbol("stopped");

/** `work`'s result, or {@linkcode STOPPED} when a stop request abandoned it. */
async function unlessStopped<T>(work: Promise<T>): Promise<T | typeof STOPPED> {
  try {
    return await work;
  } catch (error) {
    if (error instanceof StopRequested) return STOPPED;
    throw error;
  }
}

/**
 * Why an update was skipped (its loss or gradients not finite), or null when it was applied;
 * `metrics` are a step's, averaged over its `num_iterations` updates.
 */
function skipReason(metrics: StepMetrics): string | null {
  if (!(metrics.update_skipped > 0)) return null;
  const { loss, grad_norm: norm, kl } = metrics;
  if (!Number.isFinite(loss) || !Number.isFinite(norm)) {
    return `loss ${loss}, grad_norm ${norm}: not finite`;
  }
  return `grad_norm ${norm} while kl is ${kl.toPrecision(3)}: the forward pass overflowed float32`;
}

/**
 * The whole run behind `deno task train`: evaluate → (rollout → score → update) × steps →
 * evaluate, with logs, metrics, checkpoints and resume. Every record goes to `writer` (default:
 * {@linkcode fileRunWriter} into `outputDir`): `training.log`, `metrics.jsonl`,
 * `completions.jsonl`, `checkpoint-<step>/`, `eval_results.jsonl`, `summary.json`,
 * `config.yaml`.
 *
 * Where the run writes is the caller's choice (`resolveRun` checks a directory and picks the
 * checkpoint): `overwrite` clears the writer first; `resumeFrom` restores a checkpoint, refused
 * when it belongs to another base model, LoRA shape or data file, and rewinds the records to it.
 *
 * Stops early in two ways. When `signal` aborts, the step in progress finishes (or, while its
 * rollout runs, is abandoned: nothing has changed yet), a checkpoint is saved and the returned
 * summary has `stopped` (no summary.json is written). When `training.max_nonfinite_steps` steps
 * in a row skipped their update (loss or gradients not finite), a checkpoint is saved and a
 * {@linkcode DivergenceError} is thrown.
 *
 * @example Usage
 * ```ts ignore
 * const writer = memoryRunWriter();
 * const summary = await train(ctx, { train: examples, eval: held }, { writer });
 * console.log(writer.records.metrics);
 * ```
 */
export async function train(
  ctx: TrainerContext,
  data: { train: Example[]; eval: Example[] },
  options: {
    outputDir?: string;
    writer?: RunWriter;
    resumeFrom?: string | null;
    /** Clear what the writer holds before the first step (`--overwrite`). */
    overwrite?: boolean;
    /** Abort it to stop at the next safe point with a checkpoint (SIGINT, SIGTERM). */
    signal?: AbortSignal;
    callbacks?: TrainCallbacks;
  },
): Promise<RunSummary> {
  const { config } = ctx;
  const cb = options.callbacks ?? {};
  if (!options.writer && !options.outputDir) {
    throw new TypeError("train() needs an outputDir or a writer");
  }
  const writer = options.writer ?? fileRunWriter(options.outputDir!);
  const signal = options.signal;
  const log = async (line: string) => {
    cb.log?.(line);
    await writer.log(line);
  };
  const logMetrics = async (record: StepMetrics) => {
    cb.metrics?.(record);
    await writer.metrics(record);
  };
  // Work that changes nothing until it ends (a step's sampling, the evaluations before and after
  // training) is abandoned when a stop is requested: its progress callback throws.
  // NOTE: only phases before a step's first optimizer step may be abandoned; the checkpoint of a
  // stop is the state after the last whole step.
  const abandonable = (phase: string) => {
    if (signal?.aborted && (phase === "rollout" || phase === "eval")) throw new StopRequested();
  };
  const runEval = (step: number): Promise<{ summary: EvalSummary; results: ProblemResult[] }> =>
    evaluateGreedyAndSampled(ctx.model, ctx.tokenizer, data.eval, {
      ...evalOptions(config),
      samples: config.eval.num_samples,
      // The same seed at every evaluation (and `deno task eval --samples k`'s), so the curves
      // compare policies on the same random numbers.
      seed: config.training.seed,
      adapter: ctx.adapter,
      onProgress: (done, total) => {
        // An evaluation during training is finished: its record belongs to the step.
        if (step === 0 || step === steps) abandonable("eval");
        cb.progress?.({ phase: "eval", step, totalSteps: 0, done, total });
      },
    });
  const identity = await readRunIdentity({
    modelDir: ctx.model.dir,
    lora: ctx.adapter.options,
    trainFile: config.data.train_file,
  });
  const steps = totalSteps(data.train.length, config);
  let state: GrpoTrainerState = {
    global_step: 0,
    epoch: 0,
    max_steps: steps,
    seed: config.training.seed,
    log_history: [],
    before: null,
  };
  if (options.overwrite) await writer.clear();
  if (options.resumeFrom) {
    const into = { adapter: ctx.adapter, optimizer: ctx.optimizer };
    state = (await loadCheckpoint<GrpoTrainerState>(options.resumeFrom, into, { identity })).state;
    // Refused before the writer rewinds: the run's records and summary stay as they are.
    if (state.global_step > steps) {
      throw new CheckpointError(
        `Cannot resume from ${options.resumeFrom}: it is at step ${state.global_step}, past this ` +
          `run's ${steps} steps. Raise training.max_steps to at least ${state.global_step}`,
        { file: options.resumeFrom },
      );
    }
    // A checkpoint of this run: the records after it are dropped. One from another directory
    // starts this run from it.
    const ours = writer.dir === null ||
      resolve(dirname(options.resumeFrom)) === resolve(writer.dir);
    await writer.rewind(ours ? { step: state.global_step, mark: state.records ?? null } : null);
  } else await writer.rewind(null);
  await writer.config(config);
  if (options.resumeFrom) {
    await log(`resumed from ${options.resumeFrom} at step ${state.global_step}`);
  }
  // Seconds count every segment of a resumed run.
  const t0 = performance.now() - (state.seconds ?? 0) * 1000;
  let savedStep = options.resumeFrom ? state.global_step : -1;
  const save = async (step: number): Promise<string> => {
    state.seconds = (performance.now() - t0) / 1000;
    state.identity = identity;
    state.records = await writer.mark();
    const saved = await writer.checkpoint(step, {
      state,
      adapter: ctx.adapter,
      baseModel: ctx.model.dir,
      optimizer: ctx.optimizer,
      config,
    }, config.training);
    savedStep = step;
    await log(`saved ${saved}`);
    return saved;
  };
  /** The checkpoint of `step`, saved now unless it already was. */
  const savedAt = async (step: number): Promise<string> =>
    savedStep !== step
      ? await save(step)
      : writer.dir
      ? checkpointDir(writer.dir, step)
      : `checkpoint-${step}`;
  const stop = async (): Promise<RunSummary> => {
    const step = state.global_step;
    const reason = String(signal?.reason ?? "stop requested");
    const checkpoint = await savedAt(step);
    await log(`stopped at step ${step} (${reason})`);
    return {
      before: state.before ?? null,
      after: null,
      kl: lastKl,
      steps,
      seconds: (performance.now() - t0) / 1000,
      output_dir: writer.dir,
      stopped: { reason, step, checkpoint },
    };
  };
  const evalEnabled = data.eval.length > 0;
  let lastKl = state.last_kl ?? 0;
  if (evalEnabled && state.global_step === 0) {
    const before = await unlessStopped(runEval(0));
    if (before === STOPPED) return await stop();
    state.before = before.summary;
    await logMetrics(evalRecord(0, state.before));
    await log(`eval before training: ${formatEval(state.before)}`);
  }
  let window: StepMetrics[] = [];
  let skipped: number[] = []; // the steps in a row that skipped their update
  let lastUpdated = state.global_step;
  const genBatch = config.data.gen_batch_size ?? promptsPerStep(config);
  const { skip_easy_prob: skipEasy, skip_hard_prob: skipHard } = config.data;
  const difficultyOrder = skipEasy > 0 || skipHard > 0;
  // A checkpoint without prompt_order drew one step's prompts per step (no dynamic sampling).
  let order = state.prompt_order ??
    { position: state.global_step * promptsPerStep(config), outcomes: {} };
  let epoch = state.epoch;
  let promptsSkipped = 0;
  const draw = (): Example[] => {
    const next = nextPrompts(data.train, order, {
      batchSize: genBatch,
      seed: config.training.seed,
      shuffle: config.data.shuffle,
      skipEasy,
      skipHard,
    });
    order = next.state;
    epoch = next.epoch;
    promptsSkipped += next.skipped;
    return next.examples;
  };
  for (let step = state.global_step; step < steps; step++) {
    if (signal?.aborted) return await stop();
    promptsSkipped = 0;
    const out = await unlessStopped(trainStep(ctx, draw(), {
      step,
      totalSteps: steps,
      nextPrompts: draw,
      onPhase: (phase, done, total) => {
        abandonable(phase);
        cb.progress?.({ phase, step, totalSteps: steps, done, total });
      },
    }));
    if (out === STOPPED) return await stop();
    const { metrics, group, scores, outcomes } = out;
    if (difficultyOrder) {
      order = recordOutcomes(order, outcomes);
      const known = Object.values(order.outcomes);
      metrics["prompt_order/skipped"] = promptsSkipped;
      metrics["prompt_order/easy"] = known.filter((o) => o === "easy").length;
      metrics["prompt_order/hard"] = known.filter((o) => o === "hard").length;
    }
    window.push(metrics);
    lastKl = metrics.kl;
    state.last_kl = lastKl;
    state.global_step = step + 1;
    state.epoch = epoch;
    state.prompt_order = order;
    const why = skipReason(metrics);
    if (why === null) {
      skipped = [];
      lastUpdated = step + 1;
    } else {
      skipped.push(step + 1);
      await log(
        `step ${step + 1}: update skipped (${why}); ${skipped.length} in a row of ` +
          `training.max_nonfinite_steps ${config.training.max_nonfinite_steps}`,
      );
    }
    cb.progress?.({
      phase: "step",
      step: step + 1,
      totalSteps: steps,
      done: step + 1,
      total: steps,
    });
    if (config.logging.log_completions) {
      await writer.completions(completionRecords(step + 1, group, scores));
    }
    const isLast = step + 1 === steps;
    if ((step + 1) % config.logging.logging_steps === 0 || isLast) {
      const record = { step: step + 1, epoch: +state.epoch.toFixed(4), ...averageRecords(window) };
      window = [];
      state.log_history.push(record);
      await logMetrics(record);
      await log(formatRecord(record));
    }
    const evalNow = config.eval.eval_steps > 0 && (step + 1) % config.eval.eval_steps === 0;
    if (evalEnabled && evalNow && !isLast) {
      const s = (await runEval(step + 1)).summary;
      await logMetrics(evalRecord(step + 1, s));
      await log(`eval at step ${step + 1}: ${formatEval(s)}`);
    }
    if ((step + 1) % config.training.save_steps === 0 || isLast) await save(step + 1);
    if (skipped.length >= config.training.max_nonfinite_steps) {
      const checkpoint = await savedAt(step + 1);
      throw new DivergenceError(
        `training diverged: steps ${skipped[0]} to ${step + 1} in a row skipped their update (` +
          `${why}); training.max_nonfinite_steps is ${config.training.max_nonfinite_steps}. ` +
          `${checkpoint} holds the adapter as last updated (step ${lastUpdated}). Lower ` +
          `training.learning_rate (now ${config.training.learning_rate}) or grpo.kl_coef (now ` +
          `${config.grpo.kl_coef}) and start again`,
        { step: step + 1, checkpoint },
      );
    }
  }
  let after: EvalSummary | null = null;
  if (evalEnabled) {
    const res = await unlessStopped(runEval(steps));
    if (res === STOPPED) return await stop();
    after = res.summary;
    await logMetrics(evalRecord(steps, after));
    await log(`eval after training: ${formatEval(after)}`);
    await writer.evalResults(res.results);
  }
  const summary: RunSummary = {
    before: evalEnabled ? state.before ?? null : null,
    after,
    kl: lastKl,
    steps,
    seconds: (performance.now() - t0) / 1000,
    output_dir: writer.dir,
  };
  await writer.summary(summary);
  return summary;
}
