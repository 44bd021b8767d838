/**
 * The embedded default, shortened: `deno task train` on configs/demo.yaml (the shipped demo
 * model and data) for 2 steps with a small held-out slice, end to end in a subprocess. The full
 * 10-minute run is a demo (README, "The demo"), not a test.
 */
import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("deno task train runs the demo config to the end and writes every output", async () => {
  const dir = await Deno.makeTempDir({ prefix: "demo_test_" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "tasks/train.ts",
        "--output_dir",
        dir,
        "--set",
        "training.max_steps=2",
        "--set",
        "training.save_steps=1",
        "--set",
        "eval.eval_max_samples=16",
        "--set",
        "logging.logging_steps=1",
      ],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.match(stderr, /^backend /m);
    assert.match(
      stderr,
      /^trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}$/m,
    );
    assert.match(stdout, /^before: accuracy [\d.]+%/m);
    assert.match(stdout, /^after: {2}accuracy [\d.]+%/m);

    const summary = JSON.parse(await Deno.readTextFile(`${dir}/summary.json`));
    for (const side of ["before", "after"]) {
      for (const key of ["accuracy", "no_answer_rate", "mean_reward", "n"]) {
        assert.equal(typeof summary[side][key], "number", `summary.${side}.${key}`);
      }
      assert.equal(summary[side].n, 16);
    }
    assert.equal(summary.steps, 2);
    assert.ok(Number.isFinite(summary.kl) && summary.kl >= 0);
    assert.ok(summary.seconds > 0);

    const metrics = (await Deno.readTextFile(`${dir}/metrics.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l));
    const train = metrics.filter((m) => "reward" in m);
    assert.deepEqual(train.map((m) => m.step), [1, 2]);
    for (const m of train) {
      assert.ok(m.reward >= -1 && m.reward <= 1, `reward ${m.reward}`);
      assert.ok(m["completions/mean_length"] > 0);
    }
    assert.equal(metrics.filter((m) => "eval/accuracy" in m).length, 2);
    const completions = (await Deno.readTextFile(`${dir}/completions.jsonl`)).trim().split("\n");
    assert.equal(completions.length, 2 * 64); // 2 steps x 8 prompts x 8 completions
    for (const f of ["training.log", "config.yaml", "eval_results.jsonl"]) {
      await Deno.stat(`${dir}/${f}`);
    }
    for (const step of [1, 2]) {
      for (
        const f of ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors"]
      ) {
        await Deno.stat(`${dir}/checkpoint-${step}/${f}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
