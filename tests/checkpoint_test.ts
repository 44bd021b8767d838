/**
 * Checkpoints: a LoRA checkpoint and a full-model checkpoint come back bit-identical (tensors,
 * AdamW moments and step, trainer state), errors name the file and tensor, and the newest /
 * oldest checkpoint helpers and `--resume` resolution.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import {
  checkpointDir,
  latestCheckpoint,
  loadCheckpoint,
  resolveRun,
  saveCheckpoint,
} from "../lib/checkpoint.ts";
import type { TrainerState } from "../lib/checkpoint.ts";
import { defaultConfig } from "../lib/config.ts";
import { pruneCheckpoints } from "../lib/run_writer.ts";
import { CheckpointError, ConfigError } from "../lib/errors.ts";
import { createLora, loadLora } from "../lib/lora.ts";
import type { LoraAdapter } from "../lib/lora.ts";
import { loadModel } from "../lib/model_loader.ts";
import { AdamW } from "../lib/optim.ts";
import { demoModelConfig, initWeights, trainableModel } from "../lib/sft.ts";
import { useTestBackend } from "./_backend.ts";

const DIR = new URL("./fixtures/qwen2-tiny", import.meta.url).pathname;
const ADAM = { adam_beta1: 0.9, adam_beta2: 0.999, adam_epsilon: 1e-8, weight_decay: 0.01 };

async function values(vars: Iterable<[string, tf.Tensor]>): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [k, v] of vars) out.set(k, new Float32Array(await v.data()));
  return out;
}

/** One AdamW step on gradients = the variables themselves, so every moment is non-zero. */
function stepOnce(optimizer: AdamW, variables: Iterable<tf.Variable>): void {
  const grads: tf.NamedTensorMap = {};
  for (const v of variables) grads[v.name] = v.clone();
  optimizer.step(grads, 1e-3);
  tf.dispose(Object.values(grads));
}

function state(step: number): TrainerState {
  return { global_step: step, epoch: 0.5, max_steps: 4, seed: 3, log_history: [], before: null };
}

Deno.test("saveCheckpoint() → loadCheckpoint() restores a LoRA adapter, AdamW moments and state exactly", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const adapter = await loadLora(model, `${DIR}/adapter`);
  const optimizer = new AdamW([...adapter.variables.values()], ADAM);
  stepOnce(optimizer, adapter.variables.values());
  const root = await Deno.makeTempDir();
  const dir = checkpointDir(root, 1);
  const config = defaultConfig();
  await saveCheckpoint(dir, { state: state(1), adapter, baseModel: DIR, optimizer, config });
  const savedValues = await values(adapter.variables);
  const savedMoments = await optimizer.state();

  // A fresh adapter and optimizer (different values), restored from the directory.
  const fresh = createLora(model, adapter.options, { seed: 99 });
  const freshOptimizer = new AdamW([...fresh.variables.values()], ADAM);
  const before = tf.memory().numTensors;
  const loaded = await loadCheckpoint<TrainerState>(dir, {
    adapter: fresh,
    optimizer: freshOptimizer,
  });
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  assert.deepEqual(loaded.state, state(1));
  assert.deepEqual(await values(fresh.variables), savedValues);
  const restored = await freshOptimizer.state();
  assert.equal(restored.step, 1);
  for (const [key, v] of adapter.variables) {
    const name = fresh.variables.get(key)!.name; // a second live adapter's names get ":1"
    assert.deepEqual(restored.exp_avg[name], savedMoments.exp_avg[v.name], key);
    assert.deepEqual(restored.exp_avg_sq[name], savedMoments.exp_avg_sq[v.name], key);
  }
  // The checkpoint is also a PEFT adapter directory, and carries the config.
  const asAdapter = await loadLora(model, dir);
  assert.deepEqual(await values(asAdapter.variables), savedValues);
  assert.match(await Deno.readTextFile(`${dir}/config.yaml`), /^lora:/m);
  for (const a of [adapter, fresh, asAdapter] as LoraAdapter[]) a.dispose();
  optimizer.dispose();
  freshOptimizer.dispose();
  model.dispose();
  await Deno.remove(root, { recursive: true });
});

Deno.test("saveCheckpoint() → loadCheckpoint() restores a fully trained model and returns its moments", async () => {
  await useTestBackend("cpu");
  const config = demoModelConfig(8, { eos: 7, pad: 6 }, {
    hidden_size: 8,
    intermediate_size: 8,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    num_key_value_heads: 1,
  });
  const a = trainableModel(config, initWeights(config, { seed: 1 }));
  const optimizer = new AdamW(a.variables, ADAM);
  stepOnce(optimizer, a.variables);
  const root = await Deno.makeTempDir();
  await saveCheckpoint(`${root}/checkpoint-3`, { state: { step: 3 }, model: a.model, optimizer });
  const weights = await values(a.model.weights);
  const moments = await optimizer.state();
  optimizer.dispose();
  a.model.dispose(); // tfjs variable names are global: one trainable model at a time

  const b = trainableModel(config, initWeights(config, { seed: 2 }));
  const loaded = await loadCheckpoint<{ step: number }>(`${root}/checkpoint-3`, { model: b.model });
  assert.deepEqual(loaded.state, { step: 3 });
  assert.deepEqual(await values(b.model.weights), weights);
  assert.deepEqual(loaded.moments, moments);
  // Without an optimizer the checkpoint has no moments.
  await saveCheckpoint(`${root}/checkpoint-4`, { state: { step: 4 }, model: b.model });
  assert.equal((await loadCheckpoint(`${root}/checkpoint-4`, { model: b.model })).moments, null);
  b.model.dispose();
  await Deno.remove(root, { recursive: true });
});

Deno.test("loadCheckpoint() names what is missing or has another shape", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const adapter = await loadLora(model, `${DIR}/adapter`);
  const root = await Deno.makeTempDir();
  await assert.rejects(() => loadCheckpoint(`${root}/checkpoint-9`, { adapter }), (e: unknown) => {
    assert.ok(e instanceof CheckpointError);
    assert.match(e.message, /trainer_state\.json is missing/);
    return true;
  });
  await saveCheckpoint(`${root}/checkpoint-1`, { state: state(1), adapter });
  const optimizer = new AdamW([...adapter.variables.values()], ADAM);
  await assert.rejects(() => loadCheckpoint(`${root}/checkpoint-1`, { adapter, optimizer }), {
    name: "CheckpointError",
    message: /has no optimizer\.safetensors/,
  });
  const other = createLora(model, { ...adapter.options, lora_r: 2 }, { seed: 1 });
  await assert.rejects(() => loadCheckpoint(`${root}/checkpoint-1`, { adapter: other }), {
    name: "CheckpointError",
    message: /lora_A\.weight has shape \[4,\d+\], expected \[2,\d+\]/,
  });
  for (const a of [adapter, other]) a.dispose();
  optimizer.dispose();
  model.dispose();
  await Deno.remove(root, { recursive: true });
});

Deno.test("latestCheckpoint() and pruneCheckpoints() go by step number, not name order", async () => {
  const root = await Deno.makeTempDir();
  for (const step of [2, 10, 9]) await Deno.mkdir(checkpointDir(root, step));
  await Deno.mkdir(`${root}/checkpoint-11.tmp-x`);
  assert.equal(await latestCheckpoint(root), `${root}/checkpoint-10`);
  await pruneCheckpoints(root, 2);
  const left = [];
  for await (const e of Deno.readDir(root)) left.push(e.name);
  assert.deepEqual(left.sort(), ["checkpoint-10", "checkpoint-11.tmp-x", "checkpoint-9"]);
  await pruneCheckpoints(root, null);
  assert.equal(await latestCheckpoint(`${root}/none`), null);
  await Deno.remove(root, { recursive: true });
});

Deno.test("resolveRun() finds the run directory and the checkpoint --resume names", async () => {
  const root = await Deno.makeTempDir();
  await Deno.mkdir(checkpointDir(root, 4));
  assert.deepEqual(await resolveRun({ output_dir: root }, "latest"), {
    outputDir: root,
    resumeFrom: `${root}/checkpoint-4`,
  });
  assert.deepEqual(await resolveRun({ output_dir: root }, null), {
    outputDir: root,
    resumeFrom: null,
  });
  assert.match((await resolveRun({ output_dir: null }, undefined)).outputDir, /^results\/rl_grpo_/);
  await assert.rejects(() => resolveRun({ output_dir: null }, "latest"), ConfigError);
  await assert.rejects(() => resolveRun({ output_dir: `${root}/empty` }, "latest"), {
    name: "ConfigError",
    message: /no checkpoint-\*\/ directory/,
  });
  await Deno.remove(root, { recursive: true });
});
