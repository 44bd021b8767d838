import assert from "node:assert/strict";
import { join } from "node:path";
import { DataError } from "../lib/errors.ts";
import { buildReport, loadRun, type RunData, sampleCompletions } from "../lib/report.ts";
import { test, which } from "./_requires.ts";

const FIXTURE = new URL("./fixtures/run/", import.meta.url).pathname;
const TASK = new URL("../tasks/report.ts", import.meta.url).pathname;
const CHROMIUM = await which("chromium") ?? "/usr/bin/chromium";

async function copyFixture(files: string[]): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "report_test_" });
  for (const file of files) await Deno.copyFile(join(FIXTURE, file), join(dir, file));
  return dir;
}

function count(html: string, pattern: RegExp): number {
  return html.match(pattern)?.length ?? 0;
}

Deno.test("loadRun() reads the fixture run directory", async () => {
  const run = await loadRun(FIXTURE);
  assert.equal(run.metrics?.length, 8);
  assert.deepEqual(run.metrics?.map((r) => r.step), [0, 5, 10, 15, 20, 25, 30, 30]);
  assert.equal(run.summary?.before?.accuracy, 0.3);
  assert.equal(run.summary?.after?.n, 20);
  assert.match(run.config ?? "", /num_return_sequences: 2/);
  assert.equal(run.completions?.length, 8);
  assert.deepEqual(run.completions?.[2], {
    step: 10,
    prompt: "Tom has 3 apples and eats one. How many are left?",
    completion: "He has 3 - 1 = 2 left. <script>alert('x')</script> & done.",
    answer: "2",
    predicted: null,
    reward: -0.5,
    status: "no_answer",
  });
});

Deno.test("loadRun() fails clearly on a missing directory and on bad lines", async () => {
  await assert.rejects(loadRun("/nonexistent/run_dir"), (error: unknown) => {
    assert.ok(error instanceof DataError);
    assert.equal(
      error.message,
      "Cannot read run directory /nonexistent/run_dir: it does not exist",
    );
    return true;
  });
  const dir = await copyFixture([]);
  try {
    await Deno.writeTextFile(join(dir, "file.txt"), "");
    await assert.rejects(loadRun(join(dir, "file.txt")), /file\.txt: it is not a directory/);
    await Deno.writeTextFile(
      join(dir, "metrics.jsonl"),
      '{"step": 1, "reward": 0}\n\n{"step": 2,\n',
    );
    await assert.rejects(loadRun(dir), (error: unknown) => {
      assert.ok(error instanceof DataError);
      assert.equal(error.line, 3);
      assert.match(error.message, /metrics\.jsonl:3/);
      return true;
    });
    await Deno.writeTextFile(join(dir, "metrics.jsonl"), '{"reward": 0}\n');
    await assert.rejects(loadRun(dir), /metrics\.jsonl:1: "step" must be a number/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sampleCompletions() spreads picks over steps and keeps order", () => {
  const rows = [5, 1, 3, 2, 4, 0].map((step) => ({ step }));
  assert.deepEqual(sampleCompletions(rows, 4).map((r) => r.step), [0, 2, 3, 5]);
  assert.deepEqual(sampleCompletions(rows, 1).map((r) => r.step), [5]);
  assert.equal(sampleCompletions(rows, 10).length, 6);
  assert.deepEqual(sampleCompletions(rows, 0), []);
  assert.throws(() => sampleCompletions(rows, -1), RangeError);
});

Deno.test("buildReport() has eval tables, curves, config and escaped completions", async () => {
  const run = await loadRun(FIXTURE);
  const html = buildReport(run, { maxCompletions: 4 });
  assert.equal(html, buildReport(run, { maxCompletions: 4 }), "pure: same input, same page");
  // Four charts: before/after bars, main curves, held-out greedy vs sampled, diagnostics.
  assert.equal(count(html, /<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"[^>]*class="chart"/g), 4);
  assert.match(html, /Held-out evaluation: greedy vs sampled/);
  // Eval table rows: before, after, change.
  assert.match(html, /<th>accuracy<\/th><td>30\.0%<\/td><td>55\.0%<\/td><td>\+25\.0 pp<\/td>/);
  assert.match(html, /<th>no-answer rate<\/th><td>20\.0%<\/td><td>5\.0%<\/td><td>-15\.0 pp<\/td>/);
  assert.match(html, /<th>mean reward<\/th><td>-0\.5<\/td><td>0\.05<\/td><td>\+0\.55<\/td>/);
  // What RL did not fix shows: accuracy among boxed answers, and pass@k / maj@k of k samples.
  assert.match(
    html,
    /<th>accuracy among boxed answers<\/th><td>37\.5%<\/td><td>57\.9%<\/td><td>\+20\.4 pp<\/td>/,
  );
  assert.match(html, /<th>pass@8<\/th><td>60\.0%<\/td><td>70\.0%<\/td><td>\+10\.0 pp<\/td>/);
  assert.match(html, /<th>maj@8<\/th><td>35\.0%<\/td><td>60\.0%<\/td><td>\+25\.0 pp<\/td>/);
  assert.match(html, /<th>pass@1 \(8 samples\)<\/th><td>32\.0%<\/td><td>50\.0%<\/td>/);
  assert.match(html, /<th>training time<\/th><td>7m 2s<\/td>/);
  assert.match(html, /<th>final KL<\/th><td>0\.0792<\/td>/);
  assert.match(html, /kl_coef: 0\.05/);
  // Four of eight completions, evenly spaced: indices round(k * 7 / 3) = 0, 2, 5, 7.
  assert.deepEqual([...html.matchAll(/<\/span> step (\d+) /g)].map((m) => m[1]), [
    "5",
    "10",
    "25",
    "30",
  ]);
  assert.match(html, /4 of 8 logged completions/);
  // Completion text is escaped: the page has exactly one script, our own.
  assert.equal(count(html, /<script>/g), 1);
  const all = buildReport(run);
  assert.match(all, /&lt;script&gt;alert\('x'\)&lt;\/script&gt; &amp; done\./);
  assert.equal(count(all, /<details class="completion">/g), 8);
  // Self-contained: nothing is fetched.
  assert.doesNotMatch(
    html,
    /<link|<img|\ssrc=|url\(|@import|https?:\/\/(?!www\.w3\.org\/2000\/svg)/,
  );
  assert.doesNotMatch(html, /NaN|undefined/);
});

Deno.test("buildReport() notes missing optional files", () => {
  const run: RunData = {
    dir: "results/empty_run/",
    metrics: null,
    summary: null,
    config: null,
    completions: null,
  };
  const html = buildReport(run);
  assert.match(html, /<h1>GRPO run report: empty_run<\/h1>/);
  for (const file of ["metrics.jsonl", "summary.json", "config.yaml", "completions.jsonl"]) {
    assert.match(
      html,
      new RegExp(`${file.replace(".", "\\.")} is missing from results/empty_run/`),
    );
  }
  assert.equal(count(html, /<svg/g), 0);
  const noCurves = buildReport({ ...run, metrics: [{ step: 1, "eval/n": 5 }] });
  assert.match(noCurves, /No training curves: Cannot plot training curves/);
});

Deno.test("buildReport() of a run without eval (before/after null) shows no eval table", () => {
  // The trainer writes `before: null, after: null` when eval.eval_file is null.
  const html = buildReport({
    dir: "results/no_eval",
    metrics: null,
    summary: { before: null, after: null, kl: 0.01, steps: 3, seconds: 5 },
    config: null,
    completions: null,
  });
  assert.doesNotMatch(html, /<table class="eval">/);
  assert.doesNotMatch(html, /chart skipped/);
  assert.match(html, /<th>steps<\/th><td>3<\/td>/);
  assert.equal(count(html, /<svg/g), 0);
});

Deno.test("deno task report writes report.html and reports user errors in one line", async () => {
  const dir = await copyFixture(["metrics.jsonl", "summary.json"]);
  try {
    const ok = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", TASK, dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(ok.stdout);
    assert.equal(ok.code, 0, new TextDecoder().decode(ok.stderr));
    assert.match(
      stdout,
      /^wrote .*report\.html \(\d+ KiB\); skipped missing config\.yaml, completions\.jsonl\n$/,
    );
    const html = await Deno.readTextFile(join(dir, "report.html"));
    assert.match(html, /config\.yaml is missing/);
    assert.match(html, / · generated \d{4}-\d\d-\d\dT/);

    const bad = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", TASK, join(dir, "nope")],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(bad.code, 2);
    assert.equal(
      new TextDecoder().decode(bad.stderr),
      `error: Cannot read run directory ${join(dir, "nope")}: it does not exist\n`,
    );

    const flag = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", TASK, "--bogus", dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(flag.code, 2);
    assert.match(
      new TextDecoder().decode(flag.stderr),
      /^error: Unknown option '--bogus'.*; see --help\n$/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

await test.chromium("report.html renders its charts in headless Chromium", async () => {
  try {
    await Deno.stat(CHROMIUM);
  } catch {
    assert.fail(
      `${CHROMIUM} is missing: this test needs a real browser (CI installs the Debian package "chromium")`,
    );
  }
  const dir = await Deno.makeTempDir({ prefix: "report_chromium_" });
  try {
    const page = join(dir, "report.html");
    await Deno.writeTextFile(page, buildReport(await loadRun(FIXTURE)));
    const result = await new Deno.Command(CHROMIUM, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--user-data-dir=${join(dir, "profile")}`,
        "--dump-dom",
        `file://${page}`,
      ],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(60_000),
    }).output();
    const dom = new TextDecoder().decode(result.stdout);
    assert.equal(result.code, 0, new TextDecoder().decode(result.stderr).slice(-2000));
    // Set by the page's own script after measuring each chart's getBBox() in the browser.
    const body = dom.match(/<body[^>]*>/)?.[0] ?? "";
    assert.match(body, /data-charts="4"/, `body tag: ${body}`);
    assert.match(body, /data-rendered="4"/, `body tag: ${body}`);
    // The SVGs survived parsing with their marks.
    assert.ok(count(dom, /<circle/g) >= 4, "eval dots");
    assert.ok(count(dom, /<path/g) >= 13, "curve lines and axes");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
