/**
 * `deno task report <run_dir> [--out <file>] [--max-completions N]`: writes `<run_dir>/report.html`,
 * one self-contained page with the training curves, evaluation tables, effective config and a
 * sample of completions.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { runTask } from "./_main.ts";
import { buildReport, loadRun, RUN_FILES, saveReport } from "../lib/report.ts";

const USAGE = "usage: deno task report <run_dir> [--out <file>] [--max-completions N]";

async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      out: { type: "string" },
      "max-completions": { type: "string", default: "12" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 1) {
    console.error(`error: expected one run directory, got ${positionals.length}\n${USAGE}`);
    return 2;
  }
  const maxCompletions = Number(values["max-completions"]);
  if (!Number.isInteger(maxCompletions) || maxCompletions < 0) {
    console.error(
      `error: --max-completions must be a non-negative integer, got ${values["max-completions"]}`,
    );
    return 2;
  }
  const dir = positionals[0];
  const run = await loadRun(dir);
  const html = buildReport(run, { maxCompletions, generatedAt: new Date().toISOString() });
  const out = values.out ?? join(dir, "report.html");
  await saveReport(out, html);
  const missing = Object.entries(RUN_FILES)
    .filter(([key]) => run[key as keyof typeof RUN_FILES] === null)
    .map(([, file]) => file);
  console.log(
    `wrote ${out} (${(html.length / 1024).toFixed(0)} KiB)` +
      (missing.length > 0 ? `; skipped missing ${missing.join(", ")}` : ""),
  );
  return 0;
}

if (import.meta.main) {
  await runTask(async () => {
    const code = await main(Deno.args);
    if (code !== 0) Deno.exit(code);
  });
}
