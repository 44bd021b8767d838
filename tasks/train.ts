/**
 * `deno task train [--config FILE] [--model_path DIR] [--output_dir DIR] [--max_samples N]
 * [--resume DIR|latest] [--set section.key=value ...]`: GRPO + LoRA training, end to end.
 * Without --config it runs configs/demo.yaml on the small model and data the repo ships.
 */
import { resolveRun } from "../lib/checkpoint.ts";
import { configWarnings, describeContext, loadContext } from "../lib/context.ts";
import { formatEval } from "../lib/evaluate.ts";
import { ProgressBar } from "../lib/progress.ts";
import { train } from "../lib/trainer.ts";
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
  for (const w of configWarnings(config)) console.error(`warning: ${w}`);
  const { outputDir, resumeFrom, warnings } = await resolveRun(config.training, {
    resume: commandLine.resume,
  });
  for (const w of warnings) console.error(`warning: ${w}`);
  const run = await loadContext(config);
  for (const line of describeContext(run)) console.error(line);
  console.error(`output ${outputDir}`);

  let bar: ProgressBar | null = null;
  let barKind = "";
  const summary = await train(run, run.data, {
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
  });
  (bar as ProgressBar | null)?.done();
  console.log(
    `\nRun finished in ${summary.seconds.toFixed(0)} s, ${summary.steps} steps → ${outputDir}`,
  );
  if (summary.before) console.log(`before: ${formatEval(summary.before)}`);
  if (summary.after) console.log(`after:  ${formatEval(summary.after)}`);
  console.log(`KL to the reference at the last step: ${summary.kl.toFixed(4)}`);
  run.dispose();
}
await runTask(main);
