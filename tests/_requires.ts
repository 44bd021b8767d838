/**
 * Tests that need something besides Deno (a browser, Jupyter, a WebGPU adapter, OpenBLAS) are
 * registered through {@linkcode test} (`await test.chromium(name, fn)`). When the system lacks it, the test is ignored and one
 * loud line names what is missing and the Debian package that provides it, so `deno task test`
 * passes on a machine with only Deno. Under `GRPO_DENO_REQUIRE_ALL=1` (.ci/run sets it) nothing
 * may skip: the test fails with that line instead.
 */
import { join } from "node:path";
import { blasCandidates } from "../lib/_blas.ts";

/** Set to 1 and a missing requirement fails its tests instead of skipping them. */
export const REQUIRE_ALL_VAR = "GRPO_DENO_REQUIRE_ALL";

/** Something a test needs from the system. */
export interface Requirement {
  /** What it is, e.g. "Chromium (chromium on PATH)". */
  what: string;
  /** How to get it on Debian, e.g. "apt-get install chromium". */
  install: string;
  /** Whether this system has it. */
  present(): Promise<boolean>;
}

/**
 * The first executable named `name` on PATH, or null.
 *
 * @param name A program name, e.g. "chromium".
 * @returns Its path, or null.
 */
export async function which(name: string): Promise<string | null> {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir === "") continue;
    const path = join(dir, name);
    try {
      const info = await Deno.stat(path);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0) return path;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  return null;
}

/** Caches a check: each runs at most once per test file. */
function once(check: () => Promise<boolean>): () => Promise<boolean> {
  let result: Promise<boolean> | null = null;
  return () => result ??= check();
}

/** Python with Jupyter's libraries, as tasks/notebooks.ts runs it (NOTEBOOK_PYTHON aside). */
const PYTHON = "/usr/bin/python3";

/** Headless Chromium, found on PATH (Debian's package installs /usr/bin/chromium). */
export const CHROMIUM_BROWSER: Requirement = {
  what: "Chromium (chromium on PATH)",
  install: "apt-get install chromium",
  present: once(async () => await which("chromium") !== null),
};

/** /usr/bin/python3 with jupyter_client and nbformat, and Deno's Jupyter kernel registered. */
export const JUPYTER_KERNEL: Requirement = {
  what: `Jupyter (${PYTHON} with jupyter_client and nbformat, and the Deno kernel)`,
  install: "apt-get install python3-jupyter-client python3-nbformat python3-ipykernel, " +
    "then deno jupyter --install",
  present: once(async () => {
    try {
      const { code } = await new Deno.Command(PYTHON, {
        args: [
          "-c",
          "import nbformat\nfrom jupyter_client.kernelspec import KernelSpecManager\n" +
          'KernelSpecManager().get_kernel_spec("deno")',
        ],
        stdout: "null",
        stderr: "null",
      }).output();
      return code === 0;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return false;
      throw error;
    }
  }),
};

/** A WebGPU adapter offered to Deno (a GPU, or Mesa's software one, llvmpipe). */
export const WEBGPU_ADAPTER: Requirement = {
  what: "a WebGPU adapter (navigator.gpu.requestAdapter() gave none)",
  install: "a GPU driver, or Mesa's software renderer: apt-get install libegl-mesa0 " +
    "libgl1-mesa-dri",
  present: once(async () => {
    try {
      return await navigator.gpu?.requestAdapter() != null;
    } catch {
      return false;
    }
  }),
};

/** OpenBLAS where lib/_blas.ts looks for it (`blas: auto`). */
export const OPENBLAS_LIBRARY: Requirement = {
  what: "OpenBLAS (libopenblas.so.0 where lib/_blas.ts looks)",
  install: "apt-get install libopenblas0-pthread",
  present: once(async () => {
    for (const path of blasCandidates()) {
      try {
        await Deno.stat(path);
        return true;
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      }
    }
    return false;
  }),
};

/**
 * `unshare -rm` can mount a tmpfs: a private mount namespace (util-linux's unshare, and user
 * namespaces or root), where a test sizes a file system to fill it or mounts one read-only.
 */
export const MOUNT_NAMESPACE: Requirement = {
  what: "a mount namespace (unshare -rm mount -t tmpfs failed)",
  install: "apt-get install util-linux, and allow user namespaces " +
    "(sysctl kernel.unprivileged_userns_clone=1) or run as root",
  present: once(async () => {
    if (await which("unshare") === null) return false;
    const dir = await Deno.makeTempDir({ prefix: "mount_probe_" });
    try {
      const { code } = await new Deno.Command("unshare", {
        args: ["-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir],
        stdout: "null",
        stderr: "null",
      }).output();
      return code === 0;
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }),
};

/** A `Deno.test(name, fn)` that first checks its requirements. */
export type TestNeeding = (name: string, fn: () => void | Promise<void>) => Promise<void>;

/**
 * `Deno.test(name, fn)` for tests that need `requirements`. When one is missing, it prints one
 * line (`SKIP <name>: <what> is missing; install: ...`) and registers the test as ignored; with
 * GRPO_DENO_REQUIRE_ALL=1 it registers a test that fails with that line instead.
 *
 * @param requirements What the tests need.
 * @returns The test function; `await` it at the top level of a test file.
 */
export function testNeeding(...requirements: Requirement[]): TestNeeding {
  return async (name, fn) => {
    const missing: Requirement[] = [];
    for (const r of requirements) if (!(await r.present())) missing.push(r);
    if (missing.length === 0) {
      Deno.test(name, fn);
      return;
    }
    const why = missing.map((r) => `${r.what} is missing; install: ${r.install}`).join("; ");
    if (Deno.env.get(REQUIRE_ALL_VAR) === "1") {
      Deno.test(name, () => {
        throw new Error(`${why} (${REQUIRE_ALL_VAR}=1: nothing may skip)`);
      });
      return;
    }
    console.error(`%cSKIP%c ${name}: ${why}`, "color: yellow; font-weight: bold", "");
    Deno.test({ name, ignore: true, fn });
  };
}

/**
 * The tests of this repo that need more than Deno, one per requirement:
 * `await test.chromium("report.html renders ...", async () => { ... })`. (Named `test` so that
 * `deno fmt` formats these calls like `Deno.test`.)
 */
export const test = {
  chromium: testNeeding(CHROMIUM_BROWSER),
  jupyter: testNeeding(JUPYTER_KERNEL),
  webgpu: testNeeding(WEBGPU_ADAPTER),
  openblas: testNeeding(OPENBLAS_LIBRARY),
  mount: testNeeding(MOUNT_NAMESPACE),
};
