/**
 * `deno task train [--config FILE] [--model_path DIR] [--output_dir DIR] [--max_samples N]
 * [--resume DIR|latest] [--set section.key=value ...]`: GRPO + LoRA training, end to end.
 * Without --config it runs configs/demo.yaml on the small model and data the repo ships.
 */
import { describeBackend, setupBackend } from "../lib/backend.ts";
import { resolveRun } from "../lib/checkpoint.ts";
import { loadDataset } from "../lib/data.ts";
import { BackendError } from "../lib/errors.ts";
import { createLora, loadLora, parameterCounts, trainableParametersLine } from "../lib/lora.ts";
import { loadModel, loadModelConfig, weightBytes } from "../lib/model.ts";
import { AdamW } from "../lib/optim.ts";
import { ProgressBar } from "../lib/progress.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { formatEval } from "../lib/evaluate.ts";
import { configWarnings, train } from "../lib/trainer.ts";
import { runTask, startTask } from "./_main.ts";

const DEFAULT_CONFIG = "configs/demo.yaml";

async function main(): Promise<void> {
  const started = await startTask(Deno.args, {
    command: "deno task train",
    summary: `GRPO + LoRA training. Default config: ${DEFAULT_CONFIG}.`,
    defaultConfigPath: DEFAULT_CONFIG,
  });
  if (started === null) return;
  const { commandLine, config } = started;
  // Sized first: under runtime.backend auto, weights too big for the wasm heap go to cpu + BLAS.
  const modelBytes = weightBytes(await loadModelConfig(config.model.path));
  const backend = await setupBackend(config.runtime, { weightBytes: modelBytes });
  console.error(describeBackend(backend));
  for (const note of backend.notes) console.error(`  ${note}`);
  if (config.training.fp16 || config.training.bf16) {
    const which = config.training.fp16 ? "fp16" : "bf16";
    throw new BackendError(
      `training.${which}: true cannot be honoured on the ${backend.name} backend (TensorFlow.js ` +
        `computes in float32 there); set training.${which}: false`,
    );
  }
  for (const w of configWarnings(config)) console.error(`warning: ${w}`);

  const { outputDir, resumeFrom } = await resolveRun(config.training, commandLine.resume);

  const model = await loadModel(config.model.path);
  const tokenizer = await loadTokenizer(config.model.path);
  const adapter = config.model.adapter_path
    ? await loadLora(model, config.model.adapter_path)
    : createLora(model, config.lora, { seed: config.training.seed });
  const counts = parameterCounts(model, adapter);
  console.error(trainableParametersLine(counts.trainable, counts.all));
  const optimizer = new AdamW([...adapter.variables.values()], config.training);
  const trainSet = await loadDataset(config.data.train_file, {
    format: config.data.format,
    max_samples: config.data.max_samples,
    on_bad_row: config.data.on_bad_row,
  });
  if (trainSet.skipped > 0) {
    console.error(`skipped ${trainSet.skipped} bad rows of ${config.data.train_file}`);
  }
  const evalSet = config.eval.eval_file
    ? (await loadDataset(config.eval.eval_file, {
      format: config.data.format,
      max_samples: config.eval.eval_max_samples,
      on_bad_row: config.data.on_bad_row,
    })).examples
    : [];
  console.error(
    `${trainSet.examples.length} training prompts, ${evalSet.length} held-out; output ${outputDir}`,
  );

  let bar: ProgressBar | null = null;
  let barKind = "";
  const summary = await train(
    { config, model, tokenizer, adapter, optimizer },
    { train: trainSet.examples, eval: evalSet },
    {
      outputDir,
      resumeFrom,
      callbacks: {
        log: (line) => bar ? bar.log(line) : console.error(line),
        progress: ({ phase, step, totalSteps, done, total }) => {
          const kind = phase === "eval" ? "eval" : "train";
          if (barKind !== kind || !bar) {
            bar?.done();
            barKind = kind;
            bar = new ProgressBar({
              label: kind,
              total: kind === "eval" ? total : totalSteps,
              writer: Deno.stderr,
              unit: kind === "eval" ? "problems" : "steps",
              initial: kind === "eval" ? 0 : step, // a resumed run starts mid-way
            });
          }
          if (kind === "eval") bar.update(done);
          else bar.update(phase === "step" ? done : step, { phase });
        },
      },
    },
  );
  (bar as ProgressBar | null)?.done();
  console.log(
    `\nRun finished in ${summary.seconds.toFixed(0)} s, ${summary.steps} steps → ${outputDir}`,
  );
  if (summary.before) console.log(`before: ${formatEval(summary.before)}`);
  if (summary.after) console.log(`after:  ${formatEval(summary.after)}`);
  console.log(`KL to the reference at the last step: ${summary.kl.toFixed(4)}`);
  adapter.dispose();
  optimizer.dispose();
  model.dispose();
}
await runTask(main);
