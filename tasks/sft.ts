/**
 * `deno task sft [--out data/demo/sft-model] [--steps N] [--stage2_steps M] [--resume]`
 *
 * Builds the demo's "SFT checkpoint" from scratch, reproducibly (seeded), in two stages:
 * 1. SFT of a fresh ~563k-parameter Qwen2 on data/demo/train.json (completion-only loss).
 * 2. A short "format defect" stage on the same problems with `\boxed{}` removed from about half
 *    of the solutions, so the shipped model often answers without a box (GRPO then fixes it).
 * After each stage it evaluates greedy accuracy and the no-box rate on the first `--eval_n`
 * problems of data/demo/test.json, then writes an HF directory (config.json, model.safetensors,
 * tokenizer files, generation_config.json, sft_summary.json) to `--out`.
 *
 * Checkpoints (weights, AdamW moments, stage and step) go to `--work` every `--save_every` steps;
 * `--resume` continues from there. The data order is a function of (seed, epoch), so a resumed run
 * sees the same batches as an uninterrupted one.
 */
import { parseArgs } from "node:util";
import { tf } from "../lib/tf.ts";
import { describeBackend, setupBackend } from "../lib/backend.ts";
import { loadDataset } from "../lib/data.ts";
import type { Example } from "../lib/data.ts";
import { evaluate } from "../lib/evaluate.ts";
import type { EvalSummary } from "../lib/evaluate.ts";
import { CheckpointError, ConfigError, DataError } from "../lib/errors.ts";
import type { Qwen2Model } from "../lib/model.ts";
import { countParameters } from "../lib/model.ts";
import { AdamW, learningRateAt } from "../lib/optim.ts";
import { ProgressBar } from "../lib/progress.ts";
import { loadSafetensors, saveSafetensors } from "../lib/safetensors.ts";
import type { TensorData } from "../lib/safetensors.ts";
import {
  buildSftExample,
  collateSft,
  demoModelConfig,
  epochBatches,
  formatDefectExamples,
  initWeights,
  sftStep,
  sftTokenizerFiles,
  trainableModel,
} from "../lib/sft.ts";
import type { SftExample } from "../lib/sft.ts";
import { createTokenizer, saveTokenizer } from "../lib/tokenizer.ts";
import type { Tokenizer } from "../lib/tokenizer.ts";
import { fileExists, runTask } from "./_main.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "data/demo/sft-model" },
    work: { type: "string", default: "results/sft-work" },
    train_file: { type: "string", default: "data/demo/train.json" },
    eval_file: { type: "string", default: "data/demo/test.json" },
    steps: { type: "string", default: "1600" }, // stage 1: ~5.1 epochs of 20k problems at 64
    stage2_steps: { type: "string", default: "270" }, // format-defect stage
    batch_size: { type: "string", default: "64" },
    lr: { type: "string", default: "2e-3" }, // peak; warmup then cosine to 0
    stage2_lr: { type: "string", default: "5e-4" }, // constant after warmup
    warmup_steps: { type: "string", default: "50" },
    weight_decay: { type: "string", default: "0.05" },
    drop_box_fraction: { type: "string", default: "0.5" },
    eval_n: { type: "string", default: "200" },
    save_every: { type: "string", default: "100" },
    seed: { type: "string", default: "42" },
    resume: { type: "boolean", default: false },
  },
});

/** A numeric flag in [min, max], an integer when `integer` is set; anything else is a ConfigError. */
function num(
  name: keyof typeof args,
  { integer = false, min = -Infinity, max = Infinity } = {},
): number {
  const text = String(args[name]);
  const v = Number(text);
  if (!Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min || v > max) {
    const kind = integer ? "an integer" : "a number";
    const range = max < Infinity ? ` in [${min}, ${max}]` : min > -Infinity ? ` >= ${min}` : "";
    throw new ConfigError(`Cannot use --${name}: expected ${kind}${range}, got ${text}`, {
      file: "<command line>",
      key: name,
    });
  }
  return v;
}

interface WorkState {
  stage: 1 | 2;
  /** Steps done in `stage`. */
  step: number;
  tokens: number;
  trainSeconds: number;
  stage1Eval: EvalSummary | null;
}

const MAX_NEW_TOKENS = 96; // solutions are at most ~75 characters (1 token each)

async function main(): Promise<void> {
  const steps1 = num("steps", { integer: true, min: 0 });
  const steps2 = num("stage2_steps", { integer: true, min: 0 });
  const batchSize = num("batch_size", { integer: true, min: 1 });
  const seed = num("seed", { integer: true });
  const saveEvery = num("save_every", { integer: true, min: 1 });
  const evalN = num("eval_n", { integer: true, min: 1 });
  const warmupSteps = num("warmup_steps", { integer: true, min: 0 });
  const lr = num("lr", { min: 0 });
  const stage2Lr = num("stage2_lr", { min: 0 });
  const weightDecay = num("weight_decay", { min: 0 });
  const dropBoxFraction = num("drop_box_fraction", { min: 0, max: 1 });
  const work = args.work!;
  const info = await setupBackend({ backend: "wasm", blas: "auto", num_threads: 2 });
  console.error(describeBackend(info));

  const tokenizerFiles = sftTokenizerFiles();
  const tokenizer = createTokenizer(tokenizerFiles);
  const train = (await loadDataset(args.train_file!)).examples;
  const test = (await loadDataset(args.eval_file!, { max_samples: evalN })).examples;
  const config = demoModelConfig(tokenizer.vocabSize, {
    eos: tokenizer.eosTokenIds[0],
    pad: tokenizer.padTokenId,
  });

  await Deno.mkdir(work, { recursive: true });
  if (!args.resume) await Deno.writeTextFile(`${work}/metrics.jsonl`, "");
  let state: WorkState = { stage: 1, step: 0, tokens: 0, trainSeconds: 0, stage1Eval: null };
  let arrays: Map<string, TensorData> | null = null;
  let moments: Map<string, TensorData> | null = null;
  if (args.resume) {
    if (!await fileExists(`${work}/state.json`)) {
      throw new CheckpointError(
        `Cannot resume from ${work}: no state.json there; run once without --resume`,
        { file: work },
      );
    }
    state = JSON.parse(await Deno.readTextFile(`${work}/state.json`));
    const saved = (await loadSafetensors(`${work}/checkpoint.safetensors`)).tensors;
    arrays = new Map([...saved].filter(([k]) => !k.startsWith("optimizer.")));
    moments = new Map([...saved].filter(([k]) => k.startsWith("optimizer.")));
    console.error(`resuming stage ${state.stage} at step ${state.step}`);
  }
  const { model, variables } = trainableModel(config, arrays ?? initWeights(config, { seed }));
  console.error(
    `model: ${countParameters(model)} parameters, vocab ${config.vocab_size}, hidden ` +
      `${config.hidden_size}, ${config.num_hidden_layers} layers`,
  );

  const rows = train.map((e) => ({ question: e.question, solution: requireSolution(e) }));
  const stages = [
    { stage: 1 as const, steps: steps1, rows, lr, schedule: "cosine" as const },
    {
      stage: 2 as const,
      steps: steps2,
      rows: formatDefectExamples(rows, { fraction: dropBoxFraction, seed: seed + 2 }),
      lr: stage2Lr,
      schedule: "constant" as const,
    },
  ];
  let stage2Eval: EvalSummary | null = null;
  for (const s of stages) {
    if (s.stage < state.stage) continue;
    const examples = s.rows.map((r) => buildSftExample(tokenizer, r));
    const optimizer = new AdamW(variables, {
      adam_beta1: 0.9,
      adam_beta2: 0.999,
      adam_epsilon: 1e-8,
      weight_decay: weightDecay,
    });
    if (moments && moments.size > 0 && state.stage === s.stage) {
      try {
        optimizer.loadState(momentsToState(moments, state));
      } catch (error) {
        if (!(error instanceof RangeError)) throw error;
        const file = `${work}/checkpoint.safetensors`;
        throw new CheckpointError(`Cannot resume from ${file}: ${error.message}`, { file });
      }
    }
    moments = null;
    if (state.stage !== s.stage) state = { ...state, stage: s.stage, step: 0 };
    await trainStage(model, optimizer, examples, {
      state,
      steps: s.steps,
      batchSize,
      seed: seed + s.stage,
      padId: tokenizer.padTokenId,
      schedule: {
        learning_rate: s.lr,
        lr_scheduler_type: s.schedule,
        warmup_steps: Math.min(warmupSteps, Math.floor(s.steps / 5)),
        warmup_ratio: 0,
        totalSteps: Math.max(1, s.steps),
      },
      saveEvery,
      work,
    });
    optimizer.dispose();
    const summary = await evaluateStage(model, tokenizer, test, `eval stage ${s.stage}`);
    if (s.stage === 1) {
      // Stage 1 is done: a resumed run starts stage 2 with fresh optimizer moments.
      state = { ...state, stage: 2, step: 0, stage1Eval: summary };
      await saveCheckpoint(model, null, state, work);
      // Kept apart from the rolling checkpoint, so stage 2 can be redone from it.
      await saveSafetensors(`${work}/stage1.safetensors`, await weightArrays(model));
    } else stage2Eval = summary;
  }

  await writeModelDir(args.out!, model, config, tokenizerFiles, {
    stage1: state.stage1Eval,
    stage2: stage2Eval,
    steps: { stage1: steps1, stage2: steps2 },
    batch_size: batchSize,
    seed,
    train_tokens: state.tokens,
    train_seconds: Math.round(state.trainSeconds),
    tokens_per_second: Math.round(state.tokens / Math.max(1e-9, state.trainSeconds)),
    args,
  });
  model.dispose();
  console.error(`wrote ${args.out}`);
}

function requireSolution(e: Example): string {
  if (e.solution === undefined) {
    throw new DataError(`Cannot train on ${e.source}: row has no "solution" to fine-tune on`, {
      file: args.train_file!,
      line: Number(e.source.slice(e.source.lastIndexOf(":") + 1)),
    });
  }
  return e.solution;
}

/** Trains one stage from `state.step` to `steps`, checkpointing every `saveEvery` steps. */
async function trainStage(
  model: Qwen2Model,
  optimizer: AdamW,
  examples: SftExample[],
  o: {
    state: WorkState;
    steps: number;
    batchSize: number;
    seed: number;
    padId: number;
    schedule: Parameters<typeof learningRateAt>[1];
    saveEvery: number;
    work: string;
  },
): Promise<void> {
  const { state } = o;
  const lengths = examples.map((e) => e.ids.length);
  const perEpoch = Math.ceil(examples.length / o.batchSize);
  // A resumed run's bar counts from where it resumed, so its rate and ETA are this run's.
  const startStep = state.step;
  const bar = new ProgressBar({
    label: `sft stage ${state.stage}` + (startStep > 0 ? ` from step ${startStep}` : ""),
    total: o.steps - startStep,
    writer: Deno.stderr,
    unit: "step",
  });
  let epoch = -1;
  let order: number[][] = [];
  const metrics = await Deno.open(`${o.work}/metrics.jsonl`, { append: true, create: true });
  let windowTokens = 0;
  let windowStart = performance.now();
  while (state.step < o.steps) {
    const e = Math.floor(state.step / perEpoch);
    if (e !== epoch) {
      epoch = e;
      order = epochBatches(lengths, { batchSize: o.batchSize, seed: o.seed, epoch });
    }
    const batch = collateSft(order[state.step % perEpoch].map((i) => examples[i]), o.padId);
    const lr = learningRateAt(state.step, o.schedule);
    const t0 = performance.now();
    const { loss, gradNorm } = sftStep(model, batch, { optimizer, lr, maxGradNorm: 1.0 });
    // sync point: one read-back of two scalars per step (the wasm backend is synchronous anyway)
    const [lossValue, normValue] = [(await loss.data())[0], (await gradNorm.data())[0]];
    tf.dispose([loss, gradNorm]);
    state.trainSeconds += (performance.now() - t0) / 1000;
    state.tokens += batch.numTokens;
    windowTokens += batch.numTokens;
    state.step += 1;
    const tokensPerSecond = windowTokens / ((performance.now() - windowStart) / 1000);
    bar.update(state.step - startStep, {
      loss: lossValue,
      grad_norm: normValue,
      lr,
      "tok/s": Math.round(tokensPerSecond),
    });
    if (state.step % 10 === 0 || state.step === o.steps) {
      const line = {
        stage: state.stage,
        step: state.step,
        epoch: state.step / perEpoch,
        loss: lossValue,
        grad_norm: normValue,
        learning_rate: lr,
        tokens_per_second: tokensPerSecond,
        tokens: state.tokens,
      };
      await metrics.write(new TextEncoder().encode(JSON.stringify(line) + "\n"));
      windowTokens = 0;
      windowStart = performance.now();
    }
    if (state.step % o.saveEvery === 0 || state.step === o.steps) {
      await saveCheckpoint(model, optimizer, state, o.work);
    }
  }
  metrics.close();
  bar.done();
}

function momentsToState(
  moments: Map<string, TensorData>,
  state: WorkState & { optimizerStep?: number },
): {
  step: number;
  exp_avg: Record<string, Float32Array>;
  exp_avg_sq: Record<string, Float32Array>;
} {
  const exp_avg: Record<string, Float32Array> = {};
  const exp_avg_sq: Record<string, Float32Array> = {};
  for (const [k, t] of moments) {
    const m = /^optimizer\.(exp_avg|exp_avg_sq)\.(.+)$/.exec(k);
    if (!m) continue;
    (m[1] === "exp_avg" ? exp_avg : exp_avg_sq)[m[2]] = t.data as Float32Array;
  }
  return { step: state.optimizerStep ?? state.step, exp_avg, exp_avg_sq };
}

/** Weights, AdamW moments (when an optimizer is given) and the state JSON, each written atomically. */
async function saveCheckpoint(
  model: Qwen2Model,
  optimizer: AdamW | null,
  state: WorkState,
  work: string,
): Promise<void> {
  const tensors = await weightArrays(model);
  let optimizerStep = 0;
  if (optimizer) {
    const s = await optimizer.state();
    optimizerStep = s.step;
    for (const [name, data] of Object.entries(s.exp_avg)) {
      tensors.set(`optimizer.exp_avg.${name}`, {
        dtype: "F32",
        shape: [data.length],
        data,
      });
    }
    for (const [name, data] of Object.entries(s.exp_avg_sq)) {
      tensors.set(`optimizer.exp_avg_sq.${name}`, { dtype: "F32", shape: [data.length], data });
    }
  }
  await saveSafetensors(`${work}/checkpoint.safetensors`, tensors);
  const tmp = `${work}/state.json.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify({ ...state, optimizerStep }, null, 2) + "\n");
  await Deno.rename(tmp, `${work}/state.json`);
}

async function weightArrays(model: Qwen2Model): Promise<Map<string, TensorData>> {
  const out = new Map<string, TensorData>();
  for (const [name, t] of model.weights) {
    out.set(name, {
      dtype: "F32",
      shape: t.shape,
      data: new Float32Array(await t.data() as Float32Array),
    });
  }
  return out;
}

async function evaluateStage(
  model: Qwen2Model,
  tokenizer: Tokenizer,
  test: Example[],
  label: string,
): Promise<EvalSummary> {
  const bar = new ProgressBar({ label, total: test.length, writer: Deno.stderr, unit: "problem" });
  const { results, summary } = await evaluate(model, tokenizer, test, {
    generation: {
      max_new_tokens: MAX_NEW_TOKENS,
      temperature: 1,
      top_p: 1,
      top_k: 0,
      stop: [],
      prompt_format: "plain",
      system_prompt: "",
    },
    reward: { reward_correct: 1, reward_wrong: -1, reward_no_answer: -0.5 },
    batchSize: 100,
    onProgress: (done) => bar.update(done),
  });
  const noBox = results.filter((r) => !r.completion.includes("\\boxed{")).length / results.length;
  bar.done({ accuracy: summary.accuracy, no_box: noBox });
  for (const r of results.slice(0, 3)) {
    console.error(`  ${r.status}: ${JSON.stringify(r.completion)}`);
  }
  return { ...summary, no_box_rate: noBox } as EvalSummary;
}

async function writeModelDir(
  out: string,
  model: Qwen2Model,
  config: ReturnType<typeof demoModelConfig>,
  tokenizerFiles: ReturnType<typeof sftTokenizerFiles>,
  summary: Record<string, unknown>,
): Promise<void> {
  await Deno.mkdir(out, { recursive: true });
  await Deno.writeTextFile(`${out}/config.json`, JSON.stringify(config, null, 2) + "\n");
  await saveSafetensors(`${out}/model.safetensors`, await weightArrays(model));
  await saveTokenizer(out, tokenizerFiles);
  const generation = {
    bos_token_id: null,
    eos_token_id: config.eos_token_id,
    pad_token_id: config.pad_token_id,
  };
  await Deno.writeTextFile(
    `${out}/generation_config.json`,
    JSON.stringify(generation, null, 2) + "\n",
  );
  await Deno.writeTextFile(`${out}/sft_summary.json`, JSON.stringify(summary, null, 2) + "\n");
}

if (import.meta.main) await runTask(main);
