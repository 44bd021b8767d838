/**
 * What every task shares: run `main`, print a user error (bad config, data, checkpoint or
 * backend setting) as one `error: ...` line and exit 2; anything else is a bug and keeps its
 * stack trace.
 *
 * @module
 */
import {
  type CommandLine,
  type FlagSpec,
  formatHelp,
  parseCommandLine,
  resolveConfig,
} from "../lib/cli.ts";
import { type Config, formatConfig } from "../lib/config.ts";
import { isUserError } from "../lib/errors.ts";

/**
 * Runs a task's `main`, turning user errors into `error: <message>` and exit code 2. A wasm
 * abort (tfjs-backend-wasm aborts, rather than throwing, when its 4 GiB heap runs out) gets a
 * message that says what to change, and exit code 3.
 */
export async function runTask(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (error) {
    if (error instanceof WebAssembly.RuntimeError) {
      console.error(
        `error: the wasm backend aborted (${error.message.split(".")[0]}), most often because a ` +
          `batch needs more than its 4 GiB heap. Lower training.per_device_train_batch_size or ` +
          `eval.eval_batch_size, set training.gradient_checkpointing: true, or use ` +
          `runtime.backend: cpu (no heap limit). Checkpoints already written are complete.`,
      );
      Deno.exit(3);
    }
    // node:util parseArgs (tasks with their own flags): an unknown flag or a missing value.
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_")) {
      console.error(`error: ${(error as Error).message.replaceAll("\n", " ")}; see --help`);
      Deno.exit(2);
    }
    if (!isUserError(error)) throw error;
    console.error(`error: ${error.message}`);
    Deno.exit(2);
  }
}

/** Whether `path` is an existing file (lib's helper, shared with the tasks). */
export { isFile as fileExists } from "../lib/_fs.ts";

/**
 * The start every config-driven task shares: parse the flags, answer `--help`, resolve the
 * config (file, flags, `--set`) and answer `--print_config`. Returns null when it answered.
 */
export async function startTask(
  args: string[],
  options: {
    command: string;
    summary: string;
    defaultConfigPath: string | null;
    extra?: Readonly<Record<string, FlagSpec>>;
  },
): Promise<{ commandLine: CommandLine; config: Config } | null> {
  const commandLine = parseCommandLine(args, { extra: options.extra });
  if (commandLine.help) {
    console.log(formatHelp({
      command: options.command,
      summary: options.summary,
      defaultConfigPath: options.defaultConfigPath,
      extra: options.extra,
    }));
    return null;
  }
  const config = await resolveConfig(commandLine, { defaultConfigPath: options.defaultConfigPath });
  if (commandLine.printConfig) {
    console.log(formatConfig(config));
    return null;
  }
  return { commandLine, config };
}
