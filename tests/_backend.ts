/** Backend selection for parity tests: every parity test runs on each of these. */
import { useBackend } from "../lib/backend.ts";

/**
 * The backends parity tests run on: the reference `cpu`, stock `wasm`, and `wasm` with its
 * matMuls on native BLAS through FFI (the fast CPU path).
 */
export const BACKENDS = ["cpu", "wasm", "wasm+blas"] as const;

/** Switches tfjs to `name` for the test that follows. */
export async function useTestBackend(name: (typeof BACKENDS)[number]): Promise<void> {
  await useBackend(name);
}
