// Runs the notebook machinery (tasks/notebooks.ts over tasks/_run_notebook.py) on throwaway
// notebooks. Needs /usr/bin/python3 with jupyter_client + nbformat and the Deno kernel
// (`deno jupyter --install`): without them these tests skip with one line saying what to install,
// and under GRPO_DENO_REQUIRE_ALL=1 (CI) they fail.
import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { test } from "./_requires.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TASK = join(ROOT, "tasks", "notebooks.ts");
const RUNNER = join(ROOT, "tasks", "_run_notebook.py");
const PYTHON = "/usr/bin/python3";

interface Cell {
  cell_type: "code" | "markdown";
  source: string | string[];
  metadata: Record<string, unknown>;
  outputs?: Output[];
  execution_count?: number | null;
}

interface Output {
  output_type: string;
  name?: string;
  text?: string | string[];
  data?: Record<string, string | string[]>;
  ename?: string;
}

function notebook(cells: [Cell["cell_type"], string][]): string {
  return JSON.stringify(
    {
      nbformat: 4,
      nbformat_minor: 5,
      metadata: {
        kernelspec: { name: "deno", display_name: "Deno", language: "typescript" },
        language_info: { name: "typescript" },
      },
      cells: cells.map(([cell_type, source], i) => ({
        id: `cell-${i}`,
        cell_type,
        source,
        metadata: {},
        ...(cell_type === "code" ? { outputs: [], execution_count: null } : {}),
      })),
    },
    null,
    1,
  );
}

function joined(text: string | string[] | undefined): string {
  return Array.isArray(text) ? text.join("") : text ?? "";
}

const GOOD: [Cell["cell_type"], string][] = [
  ["markdown", "# A throwaway notebook"],
  ["code", 'import { advantageHistogram, trainingCurves } from "../lib/plot.ts";'],
  ["code", 'console.log("cwd", Deno.cwd().split("/").pop());'],
  ["code", "advantageHistogram([-0.7, 0.7, 0, 0], { bins: 4 })"],
  ["code", "trainingCurves([\n  { step: 1, reward: 0 },\n  { step: 2, reward: 1 },\n])"],
  ["code", "await Promise.resolve(); // no output"],
  ["code", 'Deno.env.get("NO_COLOR")'],
  ["code", "for (let i = 0; i < 2; i++) {\n  console.log(i);\n}"],
  // Printed 300 ms after the kernel reports idle: only the grace period catches it.
  ["code", 'void setTimeout(() => console.log("late"), 300);'],
  ["code", ""],
];

await test.jupyter("expects_output() decides which cells must show something", async () => {
  const cases: [string, boolean][] = [
    ["1 + 1", true],
    ["chart", true],
    ["await evaluate(model)", true],
    ['const x = 1;\nconsole.log("x")', true],
    ["display(chart);", true],
    ["const x = f(\n  1,\n)", false],
    ['import { a } from "../lib/mod.ts";', false],
    ["function f() {\n  return 1;\n}", false],
    ["const x = 1;\nx", true],
    ["const x = 1; x", true],
    ["x;\nconst y = 2;", false],
    ["trainingCurves([\n  { step: 1 },\n])", true],
    ["const y = items\n  .map((i) => i * 2)\n  .filter(Boolean)", false],
    ["await save(x); // no output", false],
    ["// No output: only sets up state\nawait setup()", false],
    ["if (ok) {\n  a();\n} else {\n  b();\n}", false],
    ['const s = "// not a comment; x";', false],
    ["const t = `line\n${1 + 1}\n`", false],
    ["/* block\n comment */\nx", true],
    ["// only a comment", false],
  ];
  const script = [
    "import json, sys",
    `sys.path.insert(0, ${JSON.stringify(join(ROOT, "tasks"))})`,
    "import nbformat, _run_notebook as r",
    "cases = json.load(sys.stdin)",
    "print(json.dumps([r.expects_output(nbformat.v4.new_code_cell(s)) for s in cases]))",
  ].join("\n");
  const child = new Deno.Command(PYTHON, {
    args: ["-c", script],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(cases.map(([s]) => s))));
  await writer.close();
  const out = await child.output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const got: boolean[] = JSON.parse(new TextDecoder().decode(out.stdout));
  const wrong = cases.filter(([, want], i) => got[i] !== want).map(([s]) => s);
  assert.deepEqual(wrong, [], "cells misclassified");
  // A tag works like the comment.
  const tagged = await new Deno.Command(PYTHON, {
    args: [
      "-c",
      `import sys; sys.path.insert(0, ${JSON.stringify(join(ROOT, "tasks"))})\n` +
      "import nbformat, _run_notebook as r\n" +
      'print(r.expects_output(nbformat.v4.new_code_cell("1 + 1", metadata={"tags": ["no-output"]})))',
    ],
    stdout: "piped",
  }).output();
  assert.equal(new TextDecoder().decode(tagged.stdout).trim(), "False");
});

await test.jupyter("deno task notebooks executes cells in the notebook's folder and reports failures", async () => {
  try {
    await Deno.stat(PYTHON);
  } catch {
    assert.fail(`${PYTHON} is missing: install python3-jupyter-client and python3-nbformat`);
  }
  // Inside the repo (like notebooks/), so `../lib/plot.ts` and deno.json's import map resolve.
  const dir = await Deno.makeTempDir({ dir: ROOT, prefix: ".notebooks_test_" });
  try {
    const good = join(dir, "good.ipynb");
    const bad = join(dir, "bad.ipynb");
    await Deno.writeTextFile(good, notebook(GOOD));
    // A silent cell is reported and the run goes on; an error stops it (later cells depend on it).
    const badText = notebook([
      ["code", 'console.log("before")'],
      ["code", "await Promise.resolve()"],
      ["code", 'throw new Error("boom")'],
      ["code", 'console.log("never")'],
    ]);
    await Deno.writeTextFile(bad, badText);

    const run = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", TASK, "--write", "--timeout", "120", good, bad],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(run.stderr);
    assert.equal(run.code, 1, stderr);
    assert.match(stderr, /ok {5}.*good\.ipynb \(8 cells, [\d.]+ s\)/);
    assert.match(
      stderr,
      /FAILED .*bad\.ipynb\n {2}cell 1: showed no output, .*`\/\/ no output`.*\n {2}cell 2: Error: boom\n/,
    );
    assert.match(stderr, /\| Error: boom\n/, "the traceback is shown");
    assert.doesNotMatch(stderr, /unstable/);
    assert.match(stderr, /1 of 2 notebooks failed: .*bad\.ipynb\n/);
    assert.match(stderr, /notebooks 100%\|█+\| 2\/2 /);

    // A failed notebook keeps its file; the good one now holds its outputs.
    assert.equal(await Deno.readTextFile(bad), badText);
    const executed = JSON.parse(await Deno.readTextFile(good));
    assert.equal(executed.nbformat, 4);
    const cells: Cell[] = executed.cells;
    assert.deepEqual(
      cells.map((c) => c.execution_count ?? null),
      [null, 1, 2, 3, 4, 5, 6, 7, 8, null],
    );
    assert.deepEqual(cells[1].outputs, []);
    assert.deepEqual(
      cells[2].outputs?.map((o) => [o.output_type, o.name, joined(o.text)]),
      [["stream", "stdout", `cwd ${basename(dir)}\n`]],
    );
    const svg = joined(cells[3].outputs?.[0].data?.["image/svg+xml"]);
    assert.equal(cells[3].outputs?.[0].output_type, "execute_result");
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.equal(svg.match(/<rect/g)?.length, 1 + 4, "background + 4 bins");
    assert.match(joined(cells[4].outputs?.[0].data?.["image/svg+xml"]), /↑ reward/);
    assert.deepEqual(cells[5].outputs, []);
    assert.equal(joined(cells[6].outputs?.[0].data?.["text/plain"]), '"1"', "NO_COLOR=1");
    assert.deepEqual(cells[7].outputs?.map((o) => joined(o.text)), ["0\n1\n"]);
    assert.deepEqual(cells[8].outputs?.map((o) => joined(o.text)), ["late\n"]);
    assert.doesNotMatch(JSON.stringify(executed), /\\u001b\[/, "no ANSI colour codes");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task notebooks: an unknown flag is a one-line error, exit 2", async () => {
  const run = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TASK, "--wirte"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(run.code, 2);
  assert.match(
    new TextDecoder().decode(run.stderr),
    /^error: Unknown option '--wirte'.*; see --help\n$/,
  );
});

await test.jupyter("_run_notebook.py without --write leaves the notebook untouched", async () => {
  const dir = await Deno.makeTempDir({ prefix: "notebooks_test_" });
  try {
    const path = join(dir, "plain.ipynb");
    const text = notebook([["code", "6 * 7"]]);
    await Deno.writeTextFile(path, text);
    const run = await new Deno.Command(PYTHON, {
      args: [RUNNER, path, "--timeout", "120"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(run.code, 0, new TextDecoder().decode(run.stderr));
    const result = JSON.parse(new TextDecoder().decode(run.stdout));
    assert.equal(result.ok, true);
    assert.equal(result.cells, 1);
    assert.deepEqual(result.failures, []);
    assert.equal(await Deno.readTextFile(path), text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
