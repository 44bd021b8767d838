/**
 * `deno task sft [--out data/demo/sft-model] [--stage1_out data/demo/sft-stage1] [--steps N]
 * [--stage2_steps M] [--resume]`
 *
 * Builds the demo's "SFT checkpoints" from scratch, reproducibly (seeded), in two stages:
 * 1. SFT of a fresh ~563k-parameter Qwen2 on data/demo/train.json (completion-only loss). The
 *    clean stage-1 model (it always boxes) is written to `--stage1_out`.
 * 2. A short "format defect" stage on the same problems with `\boxed{}` removed from about half
 *    of the solutions, so the shipped model often answers without a box (GRPO then fixes it).
 *    `--stage2_steps 0` skips it: `--out` then gets the stage-1 model too.
 * After each stage it evaluates greedy accuracy and the no-box rate on the first `--eval_n`
 * problems of data/demo/test.json, then writes an HF directory (config.json, model.safetensors,
 * tokenizer files, generation_config.json, sft_summary.json) to `--out`.
 *
 * Checkpoints (`checkpoint-<step>/`: weights, AdamW moments, stage and step; the newest kept) and
 * metrics.jsonl go to `--work` every `--save_every` steps; `--resume` continues from there. The data order is a function of (seed, epoch), so a resumed run
 * sees the same batches as an uninterrupted one.
 */
import { parseArgs } from "node:util";
import { describeBackend, setupBackend } from "../lib/backend.ts";
import { latestCheckpoint, loadCheckpoint } from "../lib/checkpoint.ts";
import { loadDataset } from "../lib/data.ts";
import { CheckpointError, ConfigError } from "../lib/errors.ts";
import { countParameters } from "../lib/model.ts";
import { ProgressBar } from "../lib/progress.ts";
import { fileRunWriter } from "../lib/run_writer.ts";
import type { SftState } from "../lib/sft.ts";
import {
  demoModelConfig,
  evaluateSft,
  initWeights,
  runSft,
  saveSftModel,
  sftRows,
  sftSummary,
  sftTokenizerFiles,
  trainableModel,
} from "../lib/sft.ts";
import { createTokenizer } from "../lib/tokenizer.ts";
import { runTask } from "./_main.ts";

/** The flags; parsed inside `main`, so that runTask turns a bad one into one error line. */
function parseFlags() {
  return parseArgs({
    args: Deno.args,
    options: {
      out: { type: "string", default: "data/demo/sft-model" },
      stage1_out: { type: "string", default: "data/demo/sft-stage1" },
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
  }).values;
}

type Flags = ReturnType<typeof parseFlags>;

/** A numeric flag in [min, max], an integer when `integer` is set; anything else is a ConfigError. */
function num(
  args: Flags,
  name: keyof Flags,
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

async function main(): Promise<void> {
  const args = parseFlags();
  const settings = {
    steps: num(args, "steps", { integer: true, min: 0 }),
    stage2_steps: num(args, "stage2_steps", { integer: true, min: 0 }),
    batch_size: num(args, "batch_size", { integer: true, min: 1 }),
    lr: num(args, "lr", { min: 0 }),
    stage2_lr: num(args, "stage2_lr", { min: 0 }),
    warmup_steps: num(args, "warmup_steps", { integer: true, min: 0 }),
    weight_decay: num(args, "weight_decay", { min: 0 }),
    drop_box_fraction: num(args, "drop_box_fraction", { min: 0, max: 1 }),
    seed: num(args, "seed", { integer: true }),
    save_every: num(args, "save_every", { integer: true, min: 1 }),
  };
  const evalN = num(args, "eval_n", { integer: true, min: 1 });
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
  const { model, variables } = trainableModel(config, initWeights(config, { seed: settings.seed }));
  console.error(
    `model: ${countParameters(model)} parameters, vocab ${config.vocab_size}, hidden ` +
      `${config.hidden_size}, ${config.num_hidden_layers} layers`,
  );

  const writer = fileRunWriter(work);
  let resumed = null;
  if (args.resume) {
    const dir = await latestCheckpoint(work);
    if (dir === null) {
      throw new CheckpointError(
        `Cannot resume from ${work}: no checkpoint-*/ there; run once without --resume`,
        { file: work },
      );
    }
    resumed = await loadCheckpoint<SftState>(dir, { model });
    console.error(`resuming stage ${resumed.state.stage} at step ${resumed.state.step}`);
  } else await writer.clear();

  let bar: ProgressBar | null = null;
  let startStep = 0;
  const { state, stage2Eval } = await runSft(
    { model, variables, tokenizer },
    { rows: sftRows(train, args.train_file!), test },
    {
      ...settings,
      writer,
      resumed,
      // A resumed run's bar counts from where it resumed, so its rate and ETA are this run's.
      onStage: (stage, from, steps) => {
        startStep = from;
        const label = `sft stage ${stage}` + (from > 0 ? ` from step ${from}` : "");
        bar = new ProgressBar({ label, total: steps - from, writer: Deno.stderr, unit: "step" });
      },
      // The clean stage-1 model, before stage 2 changes the weights.
      onStage1Done: async (s) => {
        await saveSftModel(args.stage1_out!, model, {
          config,
          tokenizerFiles,
          summary: sftSummary(s, { stage2Eval: null, settings, args }),
        });
        console.error(`wrote ${args.stage1_out} (stage 1)`);
      },
      onStep: (i) =>
        bar!.update(i.step - startStep, {
          loss: i.loss,
          grad_norm: i.grad_norm,
          lr: i.learning_rate,
          "tok/s": Math.round(i.tokens_per_second),
        }),
      evaluate: async (stage) => {
        (bar as ProgressBar | null)?.done();
        const evalBar = new ProgressBar({
          label: `eval stage ${stage}`,
          total: test.length,
          writer: Deno.stderr,
          unit: "problem",
        });
        const { summary, results } = await evaluateSft({ model, tokenizer }, test, {
          onProgress: (done) => evalBar.update(done),
        });
        evalBar.done({ accuracy: summary.accuracy, no_box: summary.no_box_rate });
        for (const r of results.slice(0, 3)) {
          console.error(`  ${r.status}: ${JSON.stringify(r.completion)}`);
        }
        return summary;
      },
    },
  );

  await saveSftModel(args.out!, model, {
    config,
    tokenizerFiles,
    summary: sftSummary(state, { stage2Eval, settings, args }),
  });
  model.dispose();
  console.error(`wrote ${args.out}`);
}

if (import.meta.main) await runTask(main);
