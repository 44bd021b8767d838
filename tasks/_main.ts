/**
 * What every task shares: run `main`, print a user error (bad config, data, checkpoint or
 * backend setting) as one `error: ...` line and exit 2; anything else is a bug and keeps its
 * stack trace.
 *
 * @module
 */
import { isUserError } from "../lib/errors.ts";

/** Runs a task's `main`, turning user errors into `error: <message>` and exit code 2. */
export async function runTask(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (error) {
    if (!isUserError(error)) throw error;
    console.error(`error: ${error.message}`);
    Deno.exit(2);
  }
}

/** Whether `path` is an existing file. */
export async function fileExists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}
