/** Backend selection for parity tests: every parity test runs on each of these. */
import { useBackend } from "../lib/backend.ts";

/**
 * The backends parity tests run on: the reference `cpu`, stock `wasm`, and both with their
 * matMuls on native BLAS through FFI (`wasm+blas` is the fast CPU path; `cpu+blas` the one
 * without wasm's 4 GiB heap limit). tests/webgpu_test.ts covers webgpu.
 */
export const BACKENDS = ["cpu", "cpu+blas", "wasm", "wasm+blas"] as const;

/** Switches tfjs to `name` for the test that follows. */
export async function useTestBackend(name: (typeof BACKENDS)[number]): Promise<void> {
  await useBackend(name);
}
