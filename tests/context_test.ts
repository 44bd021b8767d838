/** loadContext(): one call loads what a run needs, as `deno task train` and the notebooks use it. */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { formatConfig, loadConfig } from "../lib/config.ts";
import { configWarnings, describeContext, loadContext } from "../lib/context.ts";
import { BackendError } from "../lib/errors.ts";

Deno.test("loadContext() loads backend, model, tokenizer, adapter, optimizer and data; dispose() frees them", async () => {
  const config = await loadConfig("configs/rl_grpo_config_test.yaml", {
    set: ["eval.eval_file=data/gsm8k/test.jsonl", "eval.eval_max_samples=3"],
  });
  const before = tf.memory().numTensors;
  const run = await loadContext(config);
  assert.equal(run.backend.name, "wasm");
  assert.equal(run.model.dir, "tests/fixtures/qwen2-tiny");
  assert.equal(run.adapter.options.lora_r, 4);
  assert.deepEqual(run.optimizer.variables, [...run.adapter.variables.values()]);
  assert.equal(run.data.train.length, 10);
  assert.equal(run.data.eval.length, 3);
  assert.equal(run.skipped, 0);
  const lines = describeContext(run);
  assert.match(lines[0], /^backend wasm/);
  assert.ok(lines.some((l) => l.startsWith("trainable params: ")));
  assert.equal(
    lines.at(-1),
    "10 training problems in data/gsm8k/test.jsonl, 3 held-out from data/gsm8k/test.jsonl",
  );
  run.dispose();
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("loadContext() refuses fp16 on a float32 backend before loading anything", async () => {
  const config = await loadConfig("configs/rl_grpo_config_test.yaml", {
    set: ["training.fp16=true"],
  });
  await assert.rejects(() => loadContext(config), (e: unknown) => {
    assert.ok(e instanceof BackendError);
    assert.match(e.message, /training\.fp16: true cannot be honoured on the wasm backend/);
    return true;
  });
});

Deno.test("configWarnings() warns when a missing box beats a wrong answer", async () => {
  const config = await loadConfig("configs/demo.yaml");
  assert.deepEqual(configWarnings(config), []);
  config.reward.reward_no_answer = -0.5;
  assert.match(configWarnings(config)[0], /reward_no_answer \(-0\.5\) > reward\.reward_wrong/);
});

Deno.test("loadContext() adopts model.adapter_path's r and lora_alpha into the run's config, with a note", async () => {
  const config = await loadConfig("configs/rl_grpo_config_test.yaml", {
    set: [
      "model.adapter_path=tests/fixtures/qwen2-tiny/adapter",
      "lora.lora_r=16",
      "lora.lora_alpha=32",
    ],
  });
  const run = await loadContext(config);
  assert.equal(run.adapter.options.lora_r, 4);
  assert.deepEqual(run.config.lora, { ...config.lora, lora_r: 4, lora_alpha: 8 });
  assert.match(formatConfig(run.config), /^ {2}lora_r: 4$/m);
  assert.deepEqual(run.notes, [
    "model.adapter_path tests/fixtures/qwen2-tiny/adapter has lora_r 4, lora_alpha 8: the run " +
    "uses them (the config said lora_r 16, lora_alpha 32; config.yaml records the adapter's)",
  ]);
  assert.ok(describeContext(run).includes(run.notes[0]));
  assert.equal(config.lora.lora_r, 16, "the caller's config is not changed");
  run.dispose();
});
