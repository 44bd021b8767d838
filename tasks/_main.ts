/**
 * What every task shares: run `main`, print a user error (bad config, data, checkpoint or
 * backend setting) as one `error: ...` line and exit 2; anything else is a bug and keeps its
 * stack trace.
 *
 * @module
 */
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
