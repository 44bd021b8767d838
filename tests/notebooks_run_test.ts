// Runs the committed notebooks (notebooks/*.ipynb) top to bottom on the demo model with
// `deno task notebooks`, as CI does, and checks that what is committed was executed. Needs the
// Deno Jupyter kernel and Debian's python3-jupyter-client / python3-nbformat (see
// tests/notebooks_test.ts). Takes a few minutes on 2 CPU cores: the notebooks load the model,
// sample, update and evaluate for real.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "./_requires.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DIR = join(ROOT, "notebooks");
const NOTEBOOKS = [
  "00_walkthrough.ipynb",
  "01_load.ipynb",
  "02_rollout.ipynb",
  "03_score.ipynb",
  "04_update.ipynb",
  "05_evaluate.ipynb",
];

interface Cell {
  cell_type: string;
  source: string | string[];
  outputs?: { output_type: string; data?: Record<string, unknown> }[];
  execution_count?: number | null;
}

function text(source: string | string[]): string {
  return Array.isArray(source) ? source.join("") : source;
}

async function readCells(name: string): Promise<Cell[]> {
  return JSON.parse(await Deno.readTextFile(join(DIR, name))).cells;
}

Deno.test("the committed notebooks are executed, in order, with their charts", async () => {
  const found = [];
  for await (const e of Deno.readDir(DIR)) if (e.name.endsWith(".ipynb")) found.push(e.name);
  assert.deepEqual(found.sort(), NOTEBOOKS);
  for (const name of NOTEBOOKS) {
    const code = (await readCells(name)).filter((c) => c.cell_type === "code");
    // `deno task notebooks --write` numbers every code cell 1, 2, ... in one clean run.
    assert.deepEqual(
      code.map((c) => c.execution_count),
      code.map((_, i) => i + 1),
      `${name}: not executed top to bottom (run deno task notebooks --write)`,
    );
    assert.match(text(code[0].source), /from "\.\.\/lib\/mod\.ts"/, `${name}: imports lib/mod.ts`);
    assert.match(text(code[0].source), /Deno\.chdir\("\.\."\)/);
    assert.match(text(code[0].source), /loadConfig\("configs\/demo\.yaml"/);
    // Final outputs come from the demo model, not a development override.
    assert.doesNotMatch(text(code[0].source), /model\.path=/, `${name}: overrides model.path`);
  }
  const svgs = async (name: string) =>
    (await readCells(name)).flatMap((c) => c.outputs ?? []).filter((o) =>
      o.data?.["image/svg+xml"] !== undefined
    ).length;
  assert.equal(await svgs("00_walkthrough.ipynb"), 1, "trainingCurves");
  assert.equal(await svgs("03_score.ipynb"), 2, "rewardGroupsChart, advantageHistogram");
  assert.equal(await svgs("04_update.ipynb"), 2, "two tokenStripCharts");
  assert.equal(await svgs("05_evaluate.ipynb"), 1, "beforeAfterChart");
});

await test.jupyter("deno task notebooks runs every notebook without errors", async () => {
  const before = await Promise.all(NOTEBOOKS.map((n) => Deno.readTextFile(join(DIR, n))));
  const run = await new Deno.Command(Deno.execPath(), {
    args: ["task", "notebooks"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(run.stdout);
  const stderr = new TextDecoder().decode(run.stderr);
  assert.equal(run.code, 0, `${stdout}\n${stderr}`);
  for (const name of NOTEBOOKS) {
    assert.match(stderr, new RegExp(`ok {5}notebooks/${name.replace(".", "\\.")} \\(\\d+ cells`));
  }
  assert.match(stdout, /6 notebooks ok\n/);
  // Without --write the committed files stay as they are.
  const after = await Promise.all(NOTEBOOKS.map((n) => Deno.readTextFile(join(DIR, n))));
  assert.deepEqual(after, before);
});
