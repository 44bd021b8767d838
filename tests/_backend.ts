/** Backend selection for parity tests: every parity test runs on each of these. */
import { tf } from "../lib/tf.ts";

/** The backends parity tests run on. */
export const BACKENDS = ["cpu"] as const;

/** Switches tfjs to `name` for the test that follows. */
export async function useTestBackend(name: (typeof BACKENDS)[number]): Promise<void> {
  await tf.setBackend(name);
  await tf.ready();
}
