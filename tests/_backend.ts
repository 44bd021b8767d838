/** Backend selection for parity tests: every parity test runs on each of these. */
import { useBackend } from "../lib/backend.ts";
import type { LoadModelOptions, WeightStorage } from "../lib/model_loader.ts";

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

/**
 * Each backend with each place parity tests keep the base weights: `external` (outside tfjs, read
 * by BLAS in place) needs BLAS, so the `+blas` backends run both.
 */
export const BACKEND_STORAGES: readonly (readonly [(typeof BACKENDS)[number], WeightStorage])[] =
  BACKENDS.flatMap((backend) =>
    backend.endsWith("+blas")
      ? [[backend, "tensors"] as const, [backend, "external"] as const]
      : [[backend, "tensors"] as const]
  );

/**
 * `loadModel` options for `storage`; external weights keep a 16-bit checkpoint 16-bit
 * (`torch_dtype: auto`), so the widening matMul is what they test.
 */
export function storageOptions(storage: WeightStorage): LoadModelOptions {
  return storage === "external" ? { weightStorage: "external", torch_dtype: "auto" } : {};
}

/** Test-name suffix: nothing for tensors (the names tests had before), else the storage. */
export function storageLabel(storage: WeightStorage): string {
  return storage === "external" ? ", external weights" : "";
}
