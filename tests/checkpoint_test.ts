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
  readCheckpointDamage,
  readRunIdentity,
  resolveRun,
  saveCheckpoint,
} from "../lib/checkpoint.ts";
import type { TrainerState } from "../lib/checkpoint.ts";
import { defaultConfig } from "../lib/config.ts";
import { pruneCheckpoints } from "../lib/run_writer.ts";
import { CheckpointError, ConfigError, OutputError } from "../lib/errors.ts";
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

/** A checkpoint directory with only a trainer state (enough for resolveRun). */
async function stateOnly(root: string, step: number): Promise<string> {
  const dir = checkpointDir(root, step);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/trainer_state.json`, JSON.stringify(state(step)));
  return dir;
}

/** The fixture model with its PEFT adapter, AdamW over it and a temp dir; `dispose()` frees all. */
async function fixtureRun() {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const adapter = await loadLora(model, `${DIR}/adapter`);
  const optimizer = new AdamW([...adapter.variables.values()], ADAM);
  const root = await Deno.makeTempDir();
  return {
    model,
    adapter,
    optimizer,
    root,
    async dispose() {
      adapter.dispose();
      optimizer.dispose();
      model.dispose();
      await Deno.remove(root, { recursive: true });
    },
  };
}

Deno.test("resolveRun() finds the run directory and the checkpoint --resume names", async () => {
  const root = await Deno.makeTempDir();
  await stateOnly(root, 4);
  assert.deepEqual(await resolveRun({ output_dir: root }, { resume: "latest" }), {
    outputDir: root,
    resumeFrom: `${root}/checkpoint-4`,
    warnings: [],
  });
  assert.deepEqual(await resolveRun({ output_dir: null }, { resume: `${root}/checkpoint-4/` }), {
    outputDir: root,
    resumeFrom: `${root}/checkpoint-4`,
    warnings: [],
  });
  assert.match((await resolveRun({ output_dir: null }, {})).outputDir, /^results\/rl_grpo_/);
  await assert.rejects(() => resolveRun({ output_dir: null }, { resume: "latest" }), ConfigError);
  await assert.rejects(() => resolveRun({ output_dir: `${root}/empty` }, { resume: "latest" }), {
    name: "ConfigError",
    message: /no checkpoint-\*\/ directory/,
  });
  await Deno.remove(root, { recursive: true });
});

Deno.test("resolveRun() refuses a fresh run in a directory holding another, unless --overwrite", async () => {
  const root = await Deno.makeTempDir();
  for (const step of [2, 10]) await stateOnly(root, step);
  await Deno.writeTextFile(`${root}/metrics.jsonl`, "{}\n");
  await assert.rejects(() => resolveRun({ output_dir: root }, {}), {
    name: "ConfigError",
    message: `Cannot start a run in ${root}: it already holds checkpoint-2, checkpoint-10, ` +
      "metrics.jsonl. Continue that run with --resume latest, replace it with --overwrite, or " +
      "choose a new --output_dir",
  });
  assert.deepEqual(await resolveRun({ output_dir: root }, { overwrite: true }), {
    outputDir: root,
    resumeFrom: null,
    warnings: [],
  });
  await assert.rejects(
    () => resolveRun({ output_dir: root }, { resume: "latest", overwrite: true }),
    {
      message: /--overwrite replaces a run, --resume continues it: give one of them/,
    },
  );
  // A checkpoint of another run starts a new one: its output directory must be new or empty.
  await assert.rejects(
    () => resolveRun({ output_dir: root }, { resume: `${root}/../x/checkpoint-1` }),
    { name: "CheckpointError", message: /x\/checkpoint-1: trainer_state\.json is missing/ },
  );
  const other = await Deno.makeTempDir();
  await stateOnly(other, 1);
  await assert.rejects(
    () => resolveRun({ output_dir: root }, { resume: `${other}/checkpoint-1` }),
    { name: "ConfigError", message: /Cannot start a run in .*: it already holds/ },
  );
  assert.equal(
    (await resolveRun({ output_dir: `${root}/fork` }, { resume: `${other}/checkpoint-1` }))
      .outputDir,
    `${root}/fork`,
  );
  // --output_dir naming a file.
  await assert.rejects(() => resolveRun({ output_dir: `${root}/metrics.jsonl` }, {}), {
    name: "ConfigError",
    message: `Cannot parse <command line>: --output_dir ${root}/metrics.jsonl is a file, not a ` +
      "directory",
  });
  await assert.rejects(() => resolveRun({ output_dir: `${root}/metrics.jsonl/run` }, {}), {
    name: "OutputError",
    message: /metrics\.jsonl is a file, not a directory/,
  });
  for (const dir of [root, other]) await Deno.remove(dir, { recursive: true });
});

Deno.test("saveCheckpoint() writes a manifest; --resume latest skips a damaged newest checkpoint with a warning", async () => {
  const run = await fixtureRun();
  const { adapter, optimizer, root } = run;
  for (const step of [2, 4, 6]) {
    await saveCheckpoint(checkpointDir(root, step), { state: state(step), adapter, optimizer });
    assert.equal(await readCheckpointDamage(checkpointDir(root, step)), null);
  }
  const manifest = JSON.parse(await Deno.readTextFile(`${root}/checkpoint-6/manifest.json`));
  assert.deepEqual(Object.keys(manifest.files), [
    "adapter_config.json",
    "adapter_model.safetensors",
    "optimizer.safetensors",
    "trainer_state.json",
  ]);
  // Torn: checkpoint-6's adapter cut short. Corrupt: one byte of checkpoint-4's optimizer flipped.
  const adapterFile = `${root}/checkpoint-6/adapter_model.safetensors`;
  const bytes = await Deno.readFile(adapterFile);
  await Deno.writeFile(adapterFile, bytes.slice(0, 100));
  const optimizerFile = `${root}/checkpoint-4/optimizer.safetensors`;
  const opt = await Deno.readFile(optimizerFile);
  opt[opt.length - 1] ^= 1;
  await Deno.writeFile(optimizerFile, opt);
  const resolved = await resolveRun({ output_dir: root }, { resume: "latest" });
  assert.equal(resolved.resumeFrom, `${root}/checkpoint-2`);
  assert.deepEqual(resolved.warnings, [
    `${root}/checkpoint-6 is damaged (adapter_model.safetensors has 100 bytes, its manifest ` +
    `says ${bytes.length}); skipping it`,
    `${root}/checkpoint-4 is damaged (optimizer.safetensors does not match the SHA-256 in its ` +
    "manifest); skipping it",
  ]);
  await assert.rejects(() => resolveRun({ output_dir: null }, { resume: `${root}/checkpoint-6` }), {
    name: "CheckpointError",
    message: new RegExp(`^Cannot resume from ${root}/checkpoint-6: adapter_model.safetensors has`),
  });
  await Deno.remove(`${root}/checkpoint-2/trainer_state.json`);
  await assert.rejects(() => resolveRun({ output_dir: root }, { resume: "latest" }), {
    name: "ConfigError",
    message:
      /every checkpoint in .* is damaged .*checkpoint-2 is damaged \(trainer_state\.json is missing\)/,
  });
  await run.dispose();
});

Deno.test("loadCheckpoint() refuses a checkpoint of another base model, lora_r or data file, with one line", async () => {
  const run = await fixtureRun();
  const { adapter, root } = run;
  const data = `${root}/train.jsonl`;
  await Deno.writeTextFile(data, '{"question": "1+1", "answer": "2"}\n');
  const identity = (modelDir: string, lora = adapter.options) =>
    readRunIdentity({ modelDir, lora, trainFile: data });
  const saved = await identity(DIR);
  assert.deepEqual(Object.keys(saved.base_model!.weights), ["model.safetensors"]);
  const dir = checkpointDir(root, 1);
  await saveCheckpoint(dir, { state: { ...state(1), identity: saved }, adapter });
  const before = await values(adapter.variables);
  const tied = new URL("./fixtures/qwen2-tiny-tied-bf16", import.meta.url).pathname;
  const cases: [string, Promise<unknown>, RegExp][] = [
    [
      "another base model",
      identity(tied),
      /it was trained on another base model \(.*qwen2-tiny; this run loads .*qwen2-tiny-tied-bf16, whose config\.json differs\)/,
    ],
    [
      "another lora_r",
      identity(DIR, { ...adapter.options, lora_r: 8 }),
      /it was trained with lora_r 4, this run has lora_r 8\. Set lora\.lora_r: 4 to resume it/,
    ],
    [
      "other data",
      Deno.writeTextFile(data, '{"question": "1+2", "answer": "3"}\n').then(() => identity(DIR)),
      /it was trained on .*train\.jsonl \(\d+ bytes\), this run reads .* with other contents/,
    ],
  ];
  for (const [what, current, message] of cases) {
    await assert.rejects(
      async () => loadCheckpoint(dir, { adapter }, { identity: await current as typeof saved }),
      {
        name: "CheckpointError",
        message: new RegExp(`^Cannot resume from ${dir}: ${message.source}`),
      },
      what,
    );
  }
  assert.deepEqual(await values(adapter.variables), before, "nothing restored");
  // A model whose weights differ past the header: same size, same header, other first MiB.
  const copy = `${root}/model`;
  await Deno.mkdir(copy);
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(`${DIR}/${f}`, `${copy}/${f}`);
  }
  const weights = await Deno.readFile(`${copy}/model.safetensors`);
  weights[weights.length - 5] ^= 0x40;
  await Deno.writeFile(`${copy}/model.safetensors`, weights);
  const changed = await identity(copy);
  assert.notDeepEqual(changed.base_model!.weights, saved.base_model!.weights);
  await run.dispose();
});

Deno.test("saveCheckpoint() on a full disk (injected ENOSPC) leaves the checkpoints before it intact and no leftovers", async () => {
  // An injected failure: Deno.open of the optimizer file throws what a full disk throws. (The
  // train task test fills a real tmpfs where mounts are allowed.)
  const run = await fixtureRun();
  const { adapter, optimizer, root } = run;
  await saveCheckpoint(checkpointDir(root, 2), { state: state(2), adapter, optimizer });
  const deno = Deno as unknown as { open: (...args: unknown[]) => unknown };
  const open = deno.open;
  deno.open = (...args: unknown[]) => {
    if (String(args[0]).includes("/optimizer.safetensors.tmp-")) {
      throw Object.assign(
        new Error(`No space left on device (os error 28): open '${args[0]}'`),
        { code: "ENOSPC" },
      );
    }
    return open(...args);
  };
  try {
    // A new step, and the same step again (a resave replaces the directory only on success).
    for (const step of [4, 2]) {
      await assert.rejects(
        () => saveCheckpoint(checkpointDir(root, step), { state: state(step), adapter, optimizer }),
        (error: unknown) => {
          assert.ok(error instanceof OutputError);
          assert.equal(
            error.message,
            `Cannot save ${root}/checkpoint-${step}: No space left on device (os error 28); the ` +
              "checkpoints saved before it are intact",
          );
          return true;
        },
      );
    }
  } finally {
    deno.open = open;
  }
  const left = [];
  for await (const e of Deno.readDir(root)) left.push(e.name);
  assert.deepEqual(left, ["checkpoint-2"]);
  assert.equal(await readCheckpointDamage(checkpointDir(root, 2)), null);
  await run.dispose();
});
