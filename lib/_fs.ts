/**
 * File helpers lib shares (private): read a file into the typed error that names it, and ask
 * whether a path exists. Loaders call these instead of each catching `Deno.errors.NotFound`.
 *
 * @module
 */

/** A lib error class that names its file: `ConfigError`, `DataError`, `CheckpointError`. */
export type FileErrorClass = new (
  message: string,
  options: { file: string; cause?: unknown },
) => Error;

/** How {@linkcode readText} words a failure. */
export interface ReadFailureOptions {
  /** The reason when the file does not exist; default "file not found". */
  notFound?: string;
  /** The reason when the path is a directory; default the system's message. */
  isDirectory?: string;
}

/** Options of {@linkcode readText}. */
export interface ReadTextOptions extends ReadFailureOptions {
  /** The error class thrown, e.g. `ConfigError`. */
  error: FileErrorClass;
}

/**
 * Why reading a file failed, in words for an error message.
 *
 * @param cause What `Deno.readTextFile` or `Deno.open` threw.
 * @param options The wording of a missing file and of a directory.
 * @returns `notFound` for a missing file, `isDirectory` for a directory (when given), else the
 *   system's message.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { readFailure } from "./_fs.ts";
 * assert.equal(readFailure(new Deno.errors.NotFound("x")), "file not found");
 * ```
 */
export function readFailure(cause: unknown, options: ReadFailureOptions = {}): string {
  if (cause instanceof Deno.errors.NotFound) return options.notFound ?? "file not found";
  if (cause instanceof Deno.errors.IsADirectory && options.isDirectory !== undefined) {
    return options.isDirectory;
  }
  return cause instanceof Error ? cause.message : String(cause);
}

/**
 * Reads a UTF-8 file; any failure becomes `options.error` with the message
 * `Cannot load <path>: <reason>` and `file` set to the path.
 *
 * @param path The file.
 * @param options The error class, and the wording of a missing file or a directory.
 * @returns The text.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { DataError } from "./errors.ts";
 * import { readText } from "./_fs.ts";
 * await assert.rejects(readText("no/such.jsonl", { error: DataError }), {
 *   name: "DataError",
 *   message: "Cannot load no/such.jsonl: file not found",
 * });
 * ```
 */
export async function readText(path: string, options: ReadTextOptions): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (cause) {
    throw new options.error(`Cannot load ${path}: ${readFailure(cause, options)}`, {
      file: path,
      cause,
    });
  }
}

/**
 * Reads and parses a JSON file; a read failure or invalid JSON becomes `options.error` with the
 * message `Cannot load <path>: <reason>` (see {@linkcode readText}).
 *
 * @param path The file.
 * @param options The error class, and the wording of a missing file or a directory.
 * @returns The parsed value (any JSON value; the caller checks its shape).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { CheckpointError } from "./errors.ts";
 * import { readJson } from "./_fs.ts";
 * const config = await readJson("tests/fixtures/qwen2-tiny/config.json", { error: CheckpointError });
 * assert.equal((config as { model_type: string }).model_type, "qwen2");
 * ```
 */
export async function readJson(path: string, options: ReadTextOptions): Promise<unknown> {
  const text = await readText(path, options);
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new options.error(`Cannot load ${path}: ${(cause as Error).message}`, {
      file: path,
      cause,
    });
  }
}

/**
 * Reads a UTF-8 file, or returns null when it does not exist (other errors propagate).
 *
 * @param path The file.
 * @returns The text, or null.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { readTextIfExists } from "./_fs.ts";
 * assert.equal(await readTextIfExists("no/such/file"), null);
 * ```
 */
export async function readTextIfExists(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

/**
 * Whether anything (file, directory, link target) exists at `path`.
 *
 * @param path The path.
 * @returns True when `Deno.stat` finds it.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { exists } from "./_fs.ts";
 * assert.equal(await exists("lib"), true);
 * assert.equal(await exists("no/such/file"), false);
 * ```
 */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/**
 * Whether `path` is an existing file (not a directory).
 *
 * @param path The path.
 * @returns True for a file.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { isFile } from "./_fs.ts";
 * assert.equal(await isFile("deno.json"), true);
 * assert.equal(await isFile("lib"), false);
 * ```
 */
export async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/**
 * Whether `error` is an operating-system error of a file operation as Deno throws it: one of
 * `Deno.errors` (`PermissionDenied`, `NotFound`, ...) or an `Error` with an errno `code`
 * (`ENOSPC` for a full disk, `EROFS` for a read-only file system).
 *
 * @param error What a `Deno` file call threw.
 * @returns True for such an error.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { isOsError } from "./_fs.ts";
 * assert.equal(isOsError(Object.assign(new Error("No space left"), { code: "ENOSPC" })), true);
 * assert.equal(isOsError(new TypeError("a bug")), false);
 * ```
 */
export function isOsError(error: unknown): error is Error {
  if (!(error instanceof Error)) return false;
  if (Object.values(Deno.errors).some((kind) => error instanceof kind)) return true;
  return /^E[A-Z0-9]+$/.test(String((error as { code?: unknown }).code));
}

/**
 * An OS error's reason without what Deno appends after `(os error N)` (`: <operation> '<path>'`;
 * the caller names the file in its own words).
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { osReason } from "./_fs.ts";
 * const error = new Error("No space left on device (os error 28): write '/run/a.tmp-1'");
 * assert.equal(osReason(error), "No space left on device (os error 28)");
 * ```
 */
export function osReason(error: Error): string {
  return error.message.replace(/(\(os error \d+\)):.*$/s, "$1");
}

/**
 * The SHA-256 of some bytes, as lowercase hex.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { sha256Hex } from "./_fs.ts";
 * assert.equal((await sha256Hex(new Uint8Array())).slice(0, 8), "e3b0c442");
 * ```
 */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}
