/**
 * Command-line flags shared by the tasks (train, eval, generate), parsed with `node:util`
 * `parseArgs`; the one module that uses it, so moving to `@std/cli` later touches this file only.
 * Flags override the config file: `--model_path`, `--output_dir` and `--max_samples` set their
 * config key, and `--set section.key=value` sets any key, typed by the schema.
 *
 * @example A task's main
 * ```ts ignore
 * import { formatConfig } from "./config.ts";
 * import { formatHelp, parseCommandLine, resolveConfig } from "./cli.ts";
 * const extra = { n: { type: "string", valueName: "count", description: "Prompts to run" } } as const;
 * const commandLine = parseCommandLine(Deno.args, { extra });
 * if (commandLine.help) {
 *   console.log(formatHelp({ command: "deno task eval", defaultConfigPath: "configs/demo.yaml", extra }));
 *   Deno.exit(0);
 * }
 * const config = await resolveConfig(commandLine, { defaultConfigPath: "configs/demo.yaml" });
 * if (commandLine.printConfig) {
 *   console.log(formatConfig(config));
 *   Deno.exit(0);
 * }
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { COMMAND_LINE, type Config, type ConfigOverrides, loadConfig, nearest } from "./config.ts";
import { ConfigError } from "./errors.ts";

/** One flag: its `parseArgs` option plus what `--help` says about it. */
export interface FlagSpec {
  /** `string` flags take a value; `boolean` flags do not. */
  type: "string" | "boolean";
  /** The flag may repeat; its value is then an array. */
  multiple?: boolean;
  /** One-letter alias, e.g. `h` for `-h`. */
  short?: string;
  /** Value when the flag is absent. */
  default?: string | boolean | string[] | boolean[];
  /** One line for `--help`. */
  description: string;
  /** Placeholder for the value in `--help`, e.g. `dir` gives `--output_dir <dir>`. */
  valueName?: string;
  /**
   * The config key the flag sets (flat key, alias or dotted path, e.g. `eval_file` or
   * `eval.eval_file`). Its value then lands in `overrides.flags` and overrides the file.
   */
  configKey?: string;
}

/**
 * The flags every task has. Seed guide: `--config`, `--model_path`, `--output_dir`,
 * `--max_samples`; ours: `--resume`, `--set`, `--print_config`, `--help`.
 */
export const COMMON_FLAGS: Readonly<Record<string, FlagSpec>> = Object.freeze({
  config: {
    type: "string",
    valueName: "file",
    description: "YAML config file; flags below override it",
  },
  model_path: {
    type: "string",
    valueName: "dir",
    description: "Model directory (sets model.path)",
    configKey: "model_path",
  },
  output_dir: {
    type: "string",
    valueName: "dir",
    description: "Where checkpoints and metrics go (sets training.output_dir)",
    configKey: "output_dir",
  },
  max_samples: {
    type: "string",
    valueName: "n",
    description: "Use only the first n training rows (sets data.max_samples)",
    configKey: "max_samples",
  },
  resume: {
    type: "string",
    valueName: "dir|latest",
    description: "Resume from a checkpoint directory, or the newest one in output_dir",
  },
  set: {
    type: "string",
    multiple: true,
    valueName: "section.key=value",
    description: "Override one config key, value read as YAML (repeatable), e.g. grpo.kl_coef=0.04",
  },
  print_config: {
    type: "boolean",
    description: "Print the resolved config as sectioned YAML and exit",
  },
  help: { type: "boolean", short: "h", description: "Show this help and exit" },
});

/** Options of {@linkcode parseCommandLine}. */
export interface CommandLineOptions {
  /** Task-specific flags on top of {@linkcode COMMON_FLAGS} (names must not clash). */
  extra?: Readonly<Record<string, FlagSpec>>;
}

/** A value of a parsed flag. */
export type FlagValue = string | boolean | (string | boolean)[] | undefined;

/** What {@linkcode parseCommandLine} found. */
export interface CommandLine {
  /** `--config`, or null when absent (the caller's default applies). */
  configPath: string | null;
  /** Flag values with a config key, and the `--set` list, for {@linkcode loadConfig}. */
  overrides: ConfigOverrides;
  /** Every flag's value by name, common and extra (absent flags: their default or undefined). */
  values: Record<string, FlagValue>;
  /** `--resume`: a checkpoint directory, `latest`, or null. */
  resume: string | null;
  /** `--print_config` was given. */
  printConfig: boolean;
  /** `--help` or `-h` was given. */
  help: boolean;
}

/**
 * Parses command-line arguments into a config path, config overrides and flag values.
 *
 * @param args The arguments, e.g. `Deno.args`.
 * @param options Extra flags of the task.
 * @returns The parsed command line; nothing is read from disk.
 * @throws {ConfigError} On an unknown flag (with a did-you-mean hint), a missing value, or a
 * positional argument; the file is `<command line>`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseCommandLine } from "./cli.ts";
 * const commandLine = parseCommandLine([
 *   "--config", "configs/rl_grpo_config.yaml", "--max_samples", "10", "--set", "grpo.kl_coef=0.04",
 * ]);
 * assert.equal(commandLine.configPath, "configs/rl_grpo_config.yaml");
 * assert.deepEqual(commandLine.overrides, {
 *   flags: { max_samples: "10" },
 *   set: ["grpo.kl_coef=0.04"],
 * });
 * ```
 */
export function parseCommandLine(args: string[], options: CommandLineOptions = {}): CommandLine {
  const flags = allFlags(options.extra);
  const parseOptions: Record<
    string,
    {
      type: "string" | "boolean";
      multiple?: boolean;
      short?: string;
      default?: FlagSpec["default"];
    }
  > = {};
  for (const [name, spec] of Object.entries(flags)) {
    parseOptions[name] = { type: spec.type };
    if (spec.multiple) parseOptions[name].multiple = true;
    if (spec.short) parseOptions[name].short = spec.short;
    if (spec.default !== undefined) parseOptions[name].default = spec.default;
  }
  let values: Record<string, FlagValue>;
  try {
    values = {
      ...parseArgs({
        args: joinNegativeValues(args, flags),
        options: parseOptions,
        strict: true,
        allowPositionals: false,
      }).values,
    } as Record<string, FlagValue>;
  } catch (error) {
    throw commandLineError(error as Error & { code?: string }, Object.keys(flags));
  }
  const overrideFlags: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(flags)) {
    if (spec.configKey !== undefined && values[name] !== undefined) {
      overrideFlags[spec.configKey] = values[name];
    }
  }
  const overrides: ConfigOverrides = {};
  if (Object.keys(overrideFlags).length > 0) overrides.flags = overrideFlags;
  const set = values.set as string[] | undefined;
  if (set !== undefined && set.length > 0) overrides.set = [...set];
  return {
    configPath: (values.config as string | undefined) ?? null,
    overrides,
    values,
    resume: (values.resume as string | undefined) ?? null,
    printConfig: values.print_config === true,
    help: values.help === true,
  };
}

/** Options of {@linkcode formatHelp}. */
export interface HelpOptions {
  /** How the task is run, e.g. `deno task train`. */
  command: string;
  /** One line saying what the task does. */
  summary?: string;
  /** Shown as the `--config` default. */
  defaultConfigPath?: string | null;
  /** The task's extra flags, as given to {@linkcode parseCommandLine}. */
  extra?: Readonly<Record<string, FlagSpec>>;
}

/**
 * The `--help` text: usage, then one line per flag (common flags first, then the extra ones).
 *
 * @param options The command, summary, default config and extra flags.
 * @returns The help text, ending with a newline.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatHelp } from "./cli.ts";
 * const help = formatHelp({ command: "deno task train", defaultConfigPath: "configs/demo.yaml" });
 * assert.match(help, /^Usage: deno task train \[flags\]/);
 * assert.match(help, /  --set <section\.key=value> +Override one config key/);
 * ```
 */
export function formatHelp(options: HelpOptions): string {
  const flags = allFlags(options.extra);
  const rows = Object.entries(flags).map(([name, spec]) => {
    const short = spec.short ? `-${spec.short}, ` : "";
    const value = spec.type === "string" ? ` <${spec.valueName ?? "value"}>` : "";
    let description = spec.description;
    if (name === "config" && options.defaultConfigPath) {
      description += ` (default: ${options.defaultConfigPath})`;
    } else if (spec.default !== undefined && spec.type === "string") {
      description += ` (default: ${spec.default})`;
    }
    return [`${short}--${name}${value}`, description];
  });
  const width = Math.max(...rows.map(([flag]) => flag.length)) + 2;
  const lines = [`Usage: ${options.command} [flags]`, ""];
  if (options.summary) lines.push(options.summary, "");
  lines.push("Flags:");
  for (const [flag, description] of rows) lines.push(`  ${flag.padEnd(width)}${description}`);
  return lines.join("\n") + "\n";
}

/** Options of {@linkcode resolveConfig}. */
export interface ResolveConfigOptions {
  /** The config file when `--config` is absent (e.g. `configs/demo.yaml`); null: defaults only. */
  defaultConfigPath: string | null;
}

/**
 * Loads the config a command line names (`--config`, else the caller's default) and applies
 * its flags and `--set` values over the file.
 *
 * @param commandLine From {@linkcode parseCommandLine}.
 * @param options The default config path.
 * @returns The validated config.
 * @throws {ConfigError} When the file or a flag value is not valid.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseCommandLine, resolveConfig } from "./cli.ts";
 * const commandLine = parseCommandLine(["--model_path", "checkpoints/m", "--set", "lora.lora_r=8"]);
 * const config = await resolveConfig(commandLine, { defaultConfigPath: null });
 * assert.equal(config.model.path, "checkpoints/m");
 * assert.equal(config.lora.lora_r, 8);
 * ```
 */
export function resolveConfig(
  commandLine: CommandLine,
  options: ResolveConfigOptions,
): Promise<Config> {
  return loadConfig(commandLine.configPath ?? options.defaultConfigPath, commandLine.overrides);
}

function allFlags(extra: Readonly<Record<string, FlagSpec>> = {}): Record<string, FlagSpec> {
  for (const name of Object.keys(extra)) {
    if (Object.hasOwn(COMMON_FLAGS, name)) {
      throw new TypeError(`Cannot add flag --${name}: it is one of the common flags`);
    }
  }
  return { ...COMMON_FLAGS, ...extra };
}

/**
 * `--max_samples -3` as `--max_samples=-3`: parseArgs takes a value that starts with a dash for
 * a flag and refuses it as ambiguous, so a negative number would get a different message than
 * the same value after `=` (which the schema then rejects, or accepts, by its own rule).
 */
function joinNegativeValues(args: string[], flags: Record<string, FlagSpec>): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = /^--([^=]+)$/.exec(args[i])?.[1];
    const next = args[i + 1];
    if (
      name !== undefined && flags[name]?.type === "string" && next !== undefined &&
      /^-(\d|\.\d)/.test(next)
    ) {
      out.push(`${args[i]}=${next}`);
      i++;
    } else out.push(args[i]);
  }
  return out;
}

/** A `parseArgs` error as a ConfigError on `<command line>`, with a did-you-mean for flags. */
function commandLineError(error: Error & { code?: string }, names: string[]): ConfigError {
  let message = error.message;
  if (error.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    const flag = /'([^']+)'/.exec(error.message)?.[1] ?? "";
    const bare = flag.replace(/^-+/, "").split("=")[0];
    const hint = nearest(bare.replaceAll("-", "_"), names) ?? nearest(bare, names);
    message = `unknown flag ${flag}${hint ? ` (did you mean --${hint}?)` : ""}; see --help`;
  } else if (error.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
    const argument = /'([^']+)'/.exec(error.message)?.[1] ?? "";
    message =
      `unexpected argument ${argument}: every value follows a flag, e.g. --config ${argument}`;
  } else if (error.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    // One line: parseArgs explains an ambiguous value (`--output_dir --resume`) over three.
    message = error.message.replace(/^Option /, "flag ").replaceAll("\n", " ");
  }
  return new ConfigError(`Cannot parse ${COMMAND_LINE}: ${message}`, {
    file: COMMAND_LINE,
    cause: error,
  });
}
