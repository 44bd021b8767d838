/**
 * `deno task train [--config FILE] [--model_path DIR] [--output_dir DIR] [--max_samples N]
 * [--resume DIR|latest] [--overwrite] [--set section.key=value ...]`: GRPO + LoRA training, end
 * to end. Without --config it runs configs/demo.yaml on the small model and data the repo ships.
 *
 * SIGINT (Ctrl-C) and SIGTERM stop the run at the next safe point with a checkpoint, print the
 * command that resumes it and exit 130 / 143; a second one exits at once.
 */
import { resolveRun } from "../lib/checkpoint.ts";
import type { FlagSpec } from "../lib/cli.ts";
import { configWarnings, describeContext, loadContext } from "../lib/context.ts";
import { formatEval } from "../lib/evaluate.ts";
import { ProgressBar } from "../lib/progress.ts";
import { train } from "../lib/trainer.ts";
import { runTask, startTask } from "./_main.ts";

const DEFAULT_CONFIG = "configs/demo.yaml";

const FLAGS: Record<string, FlagSpec> = {
  overwrite: {
    type: "boolean",
    description: "Replace the run in --output_dir (its records and checkpoints are removed first)",
  },
};

/** Exit codes of a run stopped by a signal: 128 + the signal number, as a shell reports it. */
const EXIT_CODES = { SIGINT: 130, SIGTERM: 143 } as const;

/** `args` quoted for a POSIX shell. */
function shellQuote(args: string[]): string {
  return args.map((a) => /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)
    .join(" ");
}

/** The command that continues this run: the same flags, this output directory, --resume latest. */
function resumeCommand(args: string[], outputDir: string): string {
  const kept: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = /^--(resume|output_dir|overwrite)(=|$)/.exec(args[i]);
    if (!name) kept.push(args[i]);
    else if (name[2] === "" && name[1] !== "overwrite") i++; // its value follows
  }
  return shellQuote([
    "deno",
    "task",
    "train",
    ...kept,
    "--output_dir",
    outputDir,
    "--resume",
    "latest",
  ]);
}

async function main(): Promise<void> {
  const started = await startTask(Deno.args, {
    command: "deno task train",
    summary: `GRPO + LoRA training. Default config: ${DEFAULT_CONFIG}.`,
    defaultConfigPath: DEFAULT_CONFIG,
    extra: FLAGS,
  });
  if (started === null) return;
  const { commandLine, config } = started;
  for (const w of configWarnings(config)) console.error(`warning: ${w}`);
  const overwrite = commandLine.values.overwrite === true;
  const { outputDir, resumeFrom, warnings } = await resolveRun(config.training, {
    resume: commandLine.resume,
    overwrite,
  });
  for (const w of warnings) console.error(`warning: ${w}`);
  const run = await loadContext(config);
  for (const line of describeContext(run)) console.error(line);
  console.error(`output ${outputDir}`);

  let bar: ProgressBar | null = null;
  let barKind = "";
  const say = (line: string) => bar ? bar.log(line) : console.error(line);
  // The first signal asks train() to stop at the next safe point; a second one exits at once.
  const controller = new AbortController();
  const listeners = (["SIGINT", "SIGTERM"] as const).map((signal) => {
    const listener = () => {
      if (controller.signal.aborted) {
        console.error(`\n${signal} again: exiting now, without a checkpoint of this step`);
        Deno.exit(EXIT_CODES[signal]);
      }
      controller.abort(signal);
      say(`${signal}: stopping at the next safe point with a checkpoint (again: exit at once)`);
    };
    Deno.addSignalListener(signal, listener);
    return () => Deno.removeSignalListener(signal, listener);
  });
  let summary;
  try {
    summary = await train(run, run.data, {
      outputDir,
      resumeFrom,
      overwrite,
      signal: controller.signal,
      callbacks: {
        log: say,
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
  } finally {
    for (const remove of listeners) remove();
  }
  (bar as ProgressBar | null)?.done();
  run.dispose();
  if (summary.stopped) {
    const { reason, step, checkpoint } = summary.stopped;
    console.error(`\nStopped by ${reason} at step ${step}; ${checkpoint} holds it. Resume with:`);
    console.error(`  ${resumeCommand(Deno.args, outputDir)}`);
    Deno.exit(EXIT_CODES[reason as keyof typeof EXIT_CODES] ?? 130);
  }
  console.log(
    `\nRun finished in ${summary.seconds.toFixed(0)} s, ${summary.steps} steps → ${outputDir}`,
  );
  if (summary.before) console.log(`before: ${formatEval(summary.before)}`);
  if (summary.after) console.log(`after:  ${formatEval(summary.after)}`);
  console.log(`KL to the reference at the last step: ${summary.kl.toFixed(4)}`);
}
await runTask(main);
