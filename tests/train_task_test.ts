/**
 * `deno task train` as a user runs it, in child processes on the tiny fixture model (issue 10):
 * signals and SIGKILLs followed by the resume command, output directories, divergence, a
 * read-only or full file system. Every failure is one `error:` line and exit 2; every
 * interrupted run, resumed, ends with the adapter bytes and metrics of the uninterrupted one.
 */
import assert from "node:assert/strict";
import { readCheckpointDamage } from "../lib/checkpoint.ts";
import { test } from "./_requires.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TRAIN = `${ROOT}tasks/train.ts`;

/** The run every test trains: 8 steps of 1 prompt × 2 completions, a checkpoint each step. */
const SETTINGS: Record<string, string> = {
  "model.adapter_path": "tests/fixtures/qwen2-tiny/adapter",
  "generation.prompt_format": "plain",
  "generation.max_new_tokens": "8",
  "training.learning_rate": "0.01",
  "training.lr_scheduler_type": "constant",
  "training.gradient_checkpointing": "false",
  "training.max_steps": "8",
  "training.save_steps": "1",
  "logging.log_completions": "true",
  "eval.eval_file": "data/gsm8k/test.jsonl",
  "eval.eval_max_samples": "2",
};

/** The train task's arguments: the test config with SETTINGS (and `set` over them), then `extra`. */
function trainArgs(
  outputDir: string,
  options: { set?: Record<string, string>; extra?: string[] } = {},
): string[] {
  const settings = { ...SETTINGS, ...options.set };
  return [
    "--config",
    "configs/rl_grpo_config_test.yaml",
    ...Object.entries(settings).flatMap(([k, v]) => ["--set", `${k}=${v}`]),
    "--output_dir",
    outputDir,
    ...(options.extra ?? []),
  ];
}

/** A train task in a child process, its stderr read line by line as it comes. */
class TrainProcess {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  readonly done: Promise<{ code: number; signal: Deno.Signal | null; stderr: string }>;
  #waiters: { pattern: RegExp; resolve: () => void }[] = [];

  constructor(args: string[], command: string[] = ["run", "-A", TRAIN]) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: [...command, ...args],
      cwd: ROOT,
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const reading = this.#read();
    this.done = Promise.all([this.child.status, reading]).then(([status]) => ({
      code: status.code,
      signal: status.signal,
      stderr: this.lines.join("\n"),
    }));
  }

  async #read(): Promise<void> {
    let pending = "";
    for await (const chunk of this.child.stderr.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      // The progress bar redraws with \r; a line is what ends in \n.
      const parts = pending.split(/\n/);
      pending = parts.pop()!;
      for (const part of parts) this.#add(part.split("\r").at(-1)!);
    }
    if (pending) this.#add(pending);
    for (const w of this.#waiters) w.resolve(); // the process ended: nobody waits forever
  }

  #add(line: string): void {
    this.lines.push(line);
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.pattern.test(line)) return true;
      w.resolve();
      return false;
    });
  }

  /** Resolves when a stderr line matches (or the process has ended). */
  waitFor(pattern: RegExp): Promise<void> {
    if (this.lines.some((l) => pattern.test(l))) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ pattern, resolve }));
  }
}

/** Runs the train task to its end. */
function train(args: string[]): Promise<{ code: number; stderr: string }> {
  return new TrainProcess(args).done;
}

/** A user error: exit 2 and exactly one stderr line `error: ...` matching `message`, no stack. */
function assertUserError(result: { code: number; stderr: string }, message: RegExp): void {
  assert.equal(result.code, 2, `exit code; stderr:\n${result.stderr}`);
  const errorLines = result.stderr.split("\n").filter((l) => l.startsWith("error: "));
  assert.equal(errorLines.length, 1, result.stderr);
  assert.match(errorLines[0], message);
  assert.doesNotMatch(result.stderr, /^\s+at /m, "printed a stack trace");
}

async function entries(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

async function jsonl(path: string): Promise<Record<string, unknown>[]> {
  return (await Deno.readTextFile(path)).trim().split("\n").map((l) => JSON.parse(l));
}

/** A metrics row without the timings, which differ from run to run. */
function strip(row: Record<string, unknown>): Record<string, unknown> {
  const { step_time: _a, rollout_time: _b, tokens_per_second: _c, ...rest } = row;
  return rest;
}

/** The uninterrupted run, trained once for every test that compares with it. */
let reference: Promise<string> | null = null;
function referenceRun(): Promise<string> {
  reference ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "train_task_reference_" });
    addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const result = await train(trainArgs(`${dir}/run`));
    assert.equal(result.code, 0, result.stderr);
    return `${dir}/run`;
  })();
  return reference;
}

/**
 * Asserts that a run directory ended as the uninterrupted run did: the final adapter's bytes,
 * metrics.jsonl and completions.jsonl (each step once), each step's log line once, the summary's
 * numbers, and no leftovers of interrupted writes.
 */
async function assertSameAsReference(run: string): Promise<void> {
  const ref = await referenceRun();
  assert.deepEqual(
    await Deno.readFile(`${run}/checkpoint-8/adapter_model.safetensors`),
    await Deno.readFile(`${ref}/checkpoint-8/adapter_model.safetensors`),
    "final adapter bytes",
  );
  assert.deepEqual(
    await Deno.readFile(`${run}/checkpoint-8/optimizer.safetensors`),
    await Deno.readFile(`${ref}/checkpoint-8/optimizer.safetensors`),
    "final AdamW moments",
  );
  assert.deepEqual(
    (await jsonl(`${run}/metrics.jsonl`)).map(strip),
    (await jsonl(`${ref}/metrics.jsonl`)).map(strip),
    "metrics.jsonl",
  );
  assert.deepEqual(
    await jsonl(`${run}/completions.jsonl`),
    await jsonl(`${ref}/completions.jsonl`),
  );
  const stepLines = (await Deno.readTextFile(`${run}/training.log`)).split("\n")
    .map((l) => / step=(\d+) /.exec(l)?.[1]).filter((s) => s !== undefined);
  assert.deepEqual(stepLines, ["1", "2", "3", "4", "5", "6", "7", "8"], "training.log steps");
  const summary = JSON.parse(await Deno.readTextFile(`${run}/summary.json`));
  const refSummary = JSON.parse(await Deno.readTextFile(`${ref}/summary.json`));
  for (const key of ["before", "after", "kl", "steps"]) {
    assert.deepEqual(summary[key], refSummary[key], `summary.json ${key}`);
  }
  assert.deepEqual(
    (await entries(run)).filter((name) => name.includes(".tmp-")),
    [],
    "leftovers of interrupted writes",
  );
}

/** Splits the printed resume command (POSIX single quotes) into words. */
function shellWords(command: string): string[] {
  return [...command.matchAll(/'((?:[^']|'\\'')*)'|(\S+)/g)].map((m) =>
    m[1] !== undefined ? m[1].replaceAll(`'\\''`, "'") : m[2]
  );
}

Deno.test("train: SIGINT stops at a checkpoint, prints the command that resumes it, exits 130; that command ends as the uninterrupted run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "train_task_" });
  const run = `${dir}/my run`; // a space: the printed command must quote it
  const p = new TrainProcess(trainArgs(run));
  await p.waitFor(/saved .*checkpoint-3$/);
  p.child.kill("SIGINT");
  const result = await p.done;
  assert.equal(result.code, 130, result.stderr);
  const at = p.lines.findIndex((l) =>
    /^Stopped by SIGINT at step \d+; .*checkpoint-\d+ holds it\. Resume with:$/.test(l)
  );
  assert.ok(at >= 0, result.stderr);
  const step = Number(/at step (\d+)/.exec(p.lines[at])![1]);
  assert.ok(step >= 3 && step < 8, p.lines[at]);
  assert.equal(await readCheckpointDamage(`${run}/checkpoint-${step}`), null);
  const words = shellWords(p.lines[at + 1].trim());
  assert.deepEqual(words.slice(0, 3), ["deno", "task", "train"]);
  assert.deepEqual(words.slice(-4), ["--output_dir", run, "--resume", "latest"]);
  const resumed = await train(words.slice(3));
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stderr, new RegExp(`resumed from .*checkpoint-${step} at step ${step}`));
  await assertSameAsReference(run);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train: SIGTERM stops with a checkpoint and exits 143; a second SIGINT exits at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "train_task_" });
  const term = new TrainProcess(trainArgs(`${dir}/term`));
  await term.waitFor(/saved .*checkpoint-2$/);
  term.child.kill("SIGTERM");
  const stopped = await term.done;
  assert.equal(stopped.code, 143, stopped.stderr);
  assert.match(stopped.stderr, /^Stopped by SIGTERM at step \d+; .* Resume with:$/m);

  // The first SIGINT lands in an evaluation during training, which is finished, not abandoned
  // (its record belongs to the step): about a second of work left when the second one comes.
  const twice = new TrainProcess(trainArgs(`${dir}/twice`, {
    set: { "eval.eval_steps": "1", "eval.eval_max_samples": "8", "eval.eval_batch_size": "1" },
  }));
  await twice.waitFor(/^step=2 /);
  twice.child.kill("SIGINT");
  await twice.waitFor(/^SIGINT: stopping at the next safe point/);
  twice.child.kill("SIGINT");
  const result = await twice.done;
  assert.equal(result.code, 130, result.stderr);
  assert.match(result.stderr, /^SIGINT again: exiting now, without a checkpoint of this step$/m);
  assert.doesNotMatch(result.stderr, /Stopped by/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train: SIGKILLs (some while a checkpoint is written) then --resume latest, and a torn newest checkpoint: the end equals the uninterrupted run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "train_task_" });
  const run = `${dir}/run`;
  let midWrite = 0;
  // Each round starts the run (fresh, then --resume latest) and SIGKILLs it: while a checkpoint
  // of a new step is being written, or while a step is computed.
  for (const [round, when] of ["write", "step", "write", "step", "write"].entries()) {
    const p = new TrainProcess(
      trainArgs(run, round === 0 ? {} : { extra: ["--resume", "latest"] }),
    );
    let resumedAt = 0;
    if (round > 0) {
      await p.waitFor(/^resumed from .* at step \d+$/);
      resumedAt = Number(/at step (\d+)$/.exec(p.lines.find((l) => l.startsWith("resumed")!)!)![1]);
    }
    if (when === "step") {
      await p.waitFor(new RegExp(`^step=${resumedAt + 2} `));
      p.child.kill("SIGKILL");
    } else {
      // Poll for checkpoint-<N>.tmp-* of a step past the one resumed from.
      const writing = new RegExp(`^checkpoint-(\\d+)\\.tmp-`);
      let seen = false;
      while (!seen) {
        for (const name of await entries(run).catch(() => [])) {
          const m = writing.exec(name);
          if (m && Number(m[1]) > Math.max(resumedAt, 1)) seen = true;
        }
        if (!seen) await new Promise((r) => setTimeout(r, 1));
      }
      p.child.kill("SIGKILL");
    }
    const result = await p.done;
    assert.equal(result.signal, "SIGKILL", `round ${round} was not killed:\n${result.stderr}`);
    if ((await entries(run)).some((name) => /^checkpoint-\d+\.tmp-/.test(name))) midWrite++;
  }
  assert.ok(midWrite >= 1, "no SIGKILL landed while a checkpoint was written");
  // A torn newest checkpoint (its adapter cut short): --resume latest skips it with a warning.
  const steps = (await entries(run)).map((n) => /^checkpoint-(\d+)$/.exec(n)?.[1]).filter(Boolean)
    .map(Number).sort((a, b) => a - b);
  const newest = steps.at(-1)!;
  const adapter = `${run}/checkpoint-${newest}/adapter_model.safetensors`;
  await Deno.truncate(adapter, 64);
  const last = await train(trainArgs(run, { extra: ["--resume", "latest"] }));
  assert.equal(last.code, 0, last.stderr);
  assert.match(
    last.stderr,
    new RegExp(
      `^warning: .*checkpoint-${newest} is damaged \\(adapter_model\\.safetensors has 64 bytes, ` +
        `its manifest says \\d+\\); skipping it$`,
      "m",
    ),
  );
  assert.match(last.stderr, new RegExp(`resumed from .*checkpoint-${steps.at(-2)} at step`));
  await assertSameAsReference(run);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train: an output directory holding a run, a file as --output_dir, another base model or lora_r on resume, --max_samples -3: one error line, exit 2, nothing written over", async () => {
  const dir = await Deno.makeTempDir({ prefix: "train_task_" });
  const run = `${dir}/run`;
  const first = await train(trainArgs(run, { set: { "training.max_steps": "2" } }));
  assert.equal(first.code, 0, first.stderr);
  const snapshot = async () => {
    const files: Record<string, string> = {};
    for (const name of await entries(run)) {
      if (name.endsWith(".jsonl") || name.endsWith(".json") || name.endsWith(".log")) {
        files[name] = await Deno.readTextFile(`${run}/${name}`);
      } else files[name] = "";
    }
    return files;
  };
  const before = await snapshot();
  assertUserError(
    await train(trainArgs(run)),
    new RegExp(
      `^error: Cannot start a run in ${run}: it already holds checkpoint-1, checkpoint-2, ` +
        `completions\\.jsonl, config\\.yaml, \\.\\.\\. \\(\\d+ entries\\)\\. Continue that run with ` +
        `--resume latest, replace it with --overwrite, or choose a new --output_dir$`,
    ),
  );
  assertUserError(
    await train(trainArgs(`${run}/metrics.jsonl`)),
    /^error: Cannot parse <command line>: --output_dir .*metrics\.jsonl is a file, not a directory$/,
  );
  // Resuming with what the checkpoints were not trained on: a fresh LoRA of another rank (no
  // adapter_path to adopt r from), another base model with the same shapes.
  const resume = ["--resume", "latest"];
  assertUserError(
    await train(trainArgs(run, {
      set: { "model.adapter_path": "null", "lora.lora_r": "8" },
      extra: resume,
    })),
    /^error: Cannot resume from .*checkpoint-2: it was trained with lora_r 4, this run has lora_r 8\. Set lora\.lora_r: 4 to resume it, or start a new run$/,
  );
  assertUserError(
    await train(trainArgs(run, {
      extra: [...resume, "--model_path", "tests/fixtures/qwen2-tiny-tied-bf16"],
    })),
    /^error: Cannot resume from .*checkpoint-2: it was trained on another base model \(tests\/fixtures\/qwen2-tiny; this run loads tests\/fixtures\/qwen2-tiny-tied-bf16, whose config\.json differs\)/,
  );
  assertUserError(
    await train([...trainArgs(`${dir}/other`), "--max_samples", "-3"]),
    /^error: Cannot load <command line> --max_samples -3: data\.max_samples: expected an integer >= 1 or null, got -3$/,
  );
  assert.deepEqual(await snapshot(), before, "a refused run wrote over the old one");
  // --overwrite replaces it: the old records and checkpoints go first.
  await Deno.mkdir(`${run}/checkpoint-7`);
  await Deno.mkdir(`${run}/checkpoint-9.tmp-0a1b`);
  const again = await train(trainArgs(run, {
    set: { "training.max_steps": "1" },
    extra: ["--overwrite"],
  }));
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(await entries(run), [
    "checkpoint-1",
    "completions.jsonl",
    "config.yaml",
    "eval_results.jsonl",
    "metrics.jsonl",
    "summary.json",
    "training.log",
  ]);
  assert.deepEqual((await jsonl(`${run}/metrics.jsonl`)).map((m) => m.step), [0, 1, 1]);
  await Deno.remove(dir, { recursive: true });
});

for (const [lr, why] of [["1e6", "grad_norm 0 while kl is"], ["1e30", "loss NaN, grad_norm NaN"]]) {
  Deno.test(`train: learning_rate ${lr} skips the non-finite updates and stops after 3 with a checkpoint, one error line, exit 2`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "train_task_" });
    const run = `${dir}/run`;
    const result = await train(trainArgs(run, {
      // At lr 1e6 only the stock kernels' float32 RMSNorm overflows (see trainer_test.ts).
      set: {
        "training.learning_rate": lr,
        "eval.eval_file": "null",
        ...(lr === "1e6" ? { "runtime.backend": "cpu", "runtime.blas": "off" } : {}),
      },
    }));
    assertUserError(
      result,
      new RegExp(
        `^error: training diverged: steps 2 to 4 in a row skipped their update \\(${why}.*\\); ` +
          `training\\.max_nonfinite_steps is 3\\. .*checkpoint-4 holds the adapter as last ` +
          `updated \\(step 1\\)\\. Lower training\\.learning_rate \\(now .*\\) or grpo\\.kl_coef ` +
          `\\(now 0\\.05\\) and start again$`,
      ),
    );
    assert.equal(
      result.stderr.split("\n").filter((l) => /^step [234]: update skipped \(/.test(l)).length,
      3,
    );
    assert.equal(await readCheckpointDamage(`${run}/checkpoint-4`), null);
    assert.deepEqual(
      (await jsonl(`${run}/metrics.jsonl`)).map((m) => m.update_skipped),
      [0, 1, 1, 1],
    );
    await Deno.remove(dir, { recursive: true });
  });
}

/**
 * Runs a shell script in a private mount namespace (`unshare -rm`), where it can mount a tmpfs;
 * `$MNT` is an empty directory to mount on, `$OUT` a directory that outlives the namespace.
 */
async function inMountNamespace(script: string, env: Record<string, string>) {
  const out = await new Deno.Command("unshare", {
    args: ["-rm", "sh", "-c", `set -u\n${script}`],
    cwd: ROOT,
    env: { ...env, DENO: Deno.execPath() },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
}

await test.mount("train: a read-only output directory, and a full disk while a checkpoint is written: one error line, exit 2, the checkpoint before intact", async () => {
  const dir = await Deno.makeTempDir({ prefix: "train_task_" });
  await Deno.mkdir(`${dir}/mnt`);
  await Deno.mkdir(`${dir}/out`);
  const args = (run: string, extra: string[] = []) =>
    trainArgs(run, { set: { "eval.eval_file": "null", "logging.log_completions": "false" }, extra })
      .map((a) => `"${a}"`).join(" "); // double quotes: $MNT expands
  const train = `"$DENO" run -A tasks/train.ts > /dev/null`;
  // 1. A read-only file system, for a new run and for a run to resume there.
  // 2. A 2-step run, then the tmpfs filled to 16 KiB of room (logs of steps 3 and 4 fit, the
  //    ~40 KiB of checkpoint-3 does not), then --resume latest to step 4.
  const script = `
mount -t tmpfs -o size=1m tmpfs "$MNT" || exit 90
mount -o remount,ro "$MNT" || exit 91
${train} ${args("$MNT/run")} 2> "$OUT/ro-new.err"; echo "ro-new $?"
mount -o remount,rw "$MNT"
${train} ${args("$MNT/run", ["--set", "training.max_steps=2"])} 2> "$OUT/first.err"; echo "first $?"
mount -o remount,ro "$MNT"
${train} ${args("$MNT/run", ["--resume", "latest"])} 2> "$OUT/ro-resume.err"; echo "ro-resume $?"
mount -o remount,rw "$MNT"
free=$(df --output=avail -B1 "$MNT" | tail -n 1)
head -c $((free - 16384)) /dev/zero > "$MNT/filler"
${train} ${args("$MNT/run", ["--resume", "latest"])} 2> "$OUT/full.err"; echo "full $?"
cp -r "$MNT/run" "$OUT/run"
`;
  const { code, stdout } = await inMountNamespace(script, { MNT: `${dir}/mnt`, OUT: `${dir}/out` });
  assert.equal(code, 0, stdout);
  const exits = Object.fromEntries(stdout.trim().split("\n").map((l) => l.split(" ")));
  const stderr = async (name: string) => ({
    code: Number(exits[name]),
    stderr: await Deno.readTextFile(`${dir}/out/${name}.err`),
  });
  assertUserError(
    await stderr("ro-new"),
    /^error: Cannot write to .*\/mnt\/run: Read-only file system \(os error 30\); choose another --output_dir$/,
  );
  assert.equal(exits.first, "0", (await stderr("first")).stderr);
  assertUserError(
    await stderr("ro-resume"),
    /^error: Cannot write to .*\/mnt\/run: Read-only file system \(os error 30\); choose another --output_dir$/,
  );
  assertUserError(
    await stderr("full"),
    /^error: Cannot save .*\/mnt\/run\/checkpoint-3: No space left on device \(os error 28\); the checkpoints saved before it are intact$/,
  );
  const run = `${dir}/out/run`;
  assert.deepEqual((await entries(run)).filter((n) => n.startsWith("checkpoint")), [
    "checkpoint-1",
    "checkpoint-2",
  ]);
  assert.equal(await readCheckpointDamage(`${run}/checkpoint-2`), null);
  await Deno.remove(dir, { recursive: true });
});
