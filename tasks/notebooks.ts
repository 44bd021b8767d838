/**
 * `deno task notebooks [--write] [--timeout S] [files...]`: executes notebooks on the Deno
 * Jupyter kernel (default: all of notebooks/*.ipynb) with tasks/_run_notebook.py, one at a time,
 * and exits 1 when any fails. `--write` stores the outputs in the notebooks, as committed.
 *
 * Needs Debian's python3 with jupyter_client and nbformat (`python3-jupyter-client`,
 * `python3-nbformat`) and the Deno kernel (`deno jupyter --install`). Set NOTEBOOK_PYTHON to use
 * another interpreter than /usr/bin/python3.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { ProgressBar } from "../lib/progress.ts";
import { runTask } from "./_main.ts";

const USAGE = "usage: deno task notebooks [--write] [--timeout SECONDS] [notebook.ipynb ...]";
const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const RUNNER = join(ROOT, "tasks", "_run_notebook.py");

/** The runner's one-line JSON result. */
interface RunResult {
  notebook: string;
  ok: boolean;
  cells: number;
  seconds: number;
  failures: { cell: number | null; reason: string }[];
}

async function defaultNotebooks(): Promise<string[]> {
  const dir = join(ROOT, "notebooks");
  const files: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isFile && entry.name.endsWith(".ipynb")) files.push(join(dir, entry.name));
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return files.sort();
}

async function runNotebook(
  path: string,
  options: { python: string; write: boolean; timeout: string },
): Promise<{ result: RunResult | null; stderr: string; code: number }> {
  const args = [RUNNER, path, "--timeout", options.timeout];
  if (options.write) args.push("--write");
  const output = await new Deno.Command(options.python, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const stdout = new TextDecoder().decode(output.stdout).trim();
  const stderr = new TextDecoder().decode(output.stderr);
  let result: RunResult | null = null;
  try {
    result = JSON.parse(stdout.split("\n").pop() ?? "");
  } catch {
    result = null; // the runner died before printing its result; stderr says why
  }
  return { result, stderr, code: output.code };
}

async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      write: { type: "boolean", default: false },
      timeout: { type: "string", default: "600" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!(Number(values.timeout) > 0)) {
    console.error(`error: --timeout must be a positive number of seconds, got ${values.timeout}`);
    return 2;
  }
  const notebooks = positionals.length > 0 ? positionals : await defaultNotebooks();
  for (const path of notebooks) {
    try {
      await Deno.stat(path);
    } catch {
      console.error(`error: Cannot run notebook ${path}: it does not exist`);
      return 2;
    }
  }
  if (notebooks.length === 0) {
    console.log("no notebooks in notebooks/*.ipynb");
    return 0;
  }
  const python = Deno.env.get("NOTEBOOK_PYTHON") ?? "/usr/bin/python3";
  const bar = new ProgressBar({
    label: "notebooks",
    total: notebooks.length,
    writer: Deno.stderr,
    unit: "nb",
  });
  const failed: string[] = [];
  for (const [i, path] of notebooks.entries()) {
    const name = relative(Deno.cwd(), path) || basename(path);
    bar.update(i, { running: basename(path) });
    const { result, stderr, code } = await runNotebook(path, {
      python,
      write: values.write,
      timeout: values.timeout,
    });
    if (result !== null && result.ok && code === 0) {
      bar.log(`ok     ${name} (${result.cells} cells, ${result.seconds.toFixed(1)} s)`);
      continue;
    }
    failed.push(name);
    const reasons = result?.failures.map((f) =>
      `  ${f.cell === null ? "kernel" : `cell ${f.cell}`}: ${f.reason}`
    ) ?? [`  runner exited with status ${code}`];
    // The kernel's stderr holds tracebacks; its "unstable" banner is noise.
    const log = stderr.split("\n").filter((line) =>
      !/"deno jupyter" is unstable/.test(line)
    );
    bar.log(`FAILED ${name}\n${reasons.join("\n")}\n${indent(log.join("\n").trim())}`);
  }
  bar.update(notebooks.length, { failed: failed.length });
  bar.done();
  if (failed.length > 0) {
    console.error(`${failed.length} of ${notebooks.length} notebooks failed: ${failed.join(", ")}`);
    return 1;
  }
  console.log(`${notebooks.length} notebooks ok${values.write ? " (outputs written)" : ""}`);
  return 0;
}

function indent(text: string): string {
  return text === "" ? "" : text.split("\n").map((line) => `    | ${line}`).join("\n");
}

if (import.meta.main) {
  await runTask(async () => Deno.exit(await main(Deno.args)));
}
