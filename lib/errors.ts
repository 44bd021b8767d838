/**
 * Errors that drivers (tasks, notebooks) catch and print without a stack trace. Each names where
 * the bad input is: a file and line, a config key, a tensor.
 *
 * @module
 */

/** A configuration file or flag that cannot be used. */
export class ConfigError extends Error {
  /** The file the bad value came from (`--set`/flags use `<command line>`). */
  file: string;
  /** Dotted key path, e.g. `grpo.num_return_sequences`, or "" when the whole file is bad. */
  key: string;
  /** 1-based line in `file`, or undefined when unknown. */
  line?: number;
  /** 1-based column in `file`, or undefined when unknown. */
  column?: number;
  constructor(
    message: string,
    options: { file: string; key?: string; line?: number; column?: number; cause?: unknown },
  ) {
    super(message, { cause: options.cause });
    this.name = "ConfigError";
    this.file = options.file;
    this.key = options.key ?? "";
    this.line = options.line;
    this.column = options.column;
  }
}

/** A data row that cannot be used. */
export class DataError extends Error {
  /** The data file. */
  file: string;
  /** 1-based line (JSONL) or record index + 1 (JSON array); undefined for whole-file errors. */
  line?: number;
  constructor(message: string, options: { file: string; line?: number; cause?: unknown }) {
    super(message, { cause: options.cause });
    this.name = "DataError";
    this.file = options.file;
    this.line = options.line;
  }
}

/** A checkpoint (safetensors, config.json, adapter, trainer state) that cannot be used. */
export class CheckpointError extends Error {
  /** The file at fault (or the directory, when a file is missing). */
  file: string;
  /** The HF tensor name or JSON key at fault, or "" when the whole file is bad. */
  key: string;
  constructor(message: string, options: { file: string; key?: string; cause?: unknown }) {
    super(message, { cause: options.cause });
    this.name = "CheckpointError";
    this.file = options.file;
    this.key = options.key ?? "";
  }
}

/** A setting the chosen backend cannot honour (e.g. `fp16` on wasm). */
export class BackendError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "BackendError";
  }
}

/**
 * A run directory, checkpoint or record file that cannot be written (a full disk, a read-only
 * file system). What was complete before the failed write stays complete.
 */
export class OutputError extends Error {
  /** The file or directory that could not be written. */
  file: string;
  constructor(message: string, options: { file: string; cause?: unknown }) {
    super(message, { cause: options.cause });
    this.name = "OutputError";
    this.file = options.file;
  }
}

/**
 * Training stopped after `training.max_nonfinite_steps` steps in a row whose loss or gradients
 * were not finite (each one's update skipped); `checkpoint` holds the last finite adapter.
 */
export class DivergenceError extends Error {
  /** The step training stopped at. */
  step: number;
  /** The checkpoint saved at that step. */
  checkpoint: string;
  constructor(message: string, options: { step: number; checkpoint: string }) {
    super(message);
    this.name = "DivergenceError";
    this.step = options.step;
    this.checkpoint = options.checkpoint;
  }
}

/** True for the errors above: a driver prints `error.message` alone and exits 2. */
export function isUserError(error: unknown): error is Error {
  return error instanceof ConfigError || error instanceof DataError ||
    error instanceof CheckpointError || error instanceof BackendError ||
    error instanceof OutputError || error instanceof DivergenceError;
}
