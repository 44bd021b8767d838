/**
 * Parity of lib/model.ts with the fixture (tests/fixtures/README.md): an independent PyTorch
 * build of HF `modeling_qwen2` (eager), cross-checked against transformers 5.18. Tolerances are
 * the README's: logits 1e-4 absolute, greedy ids exact.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import {
  decodeStep,
  disposeCache,
  forward,
  hiddenStates,
  prefill,
  sharedPromptHiddenStates,
} from "../lib/model.ts";
import { createLora } from "../lib/lora.ts";
import { completionLogProbs } from "../lib/grpo.ts";
import { loadModel } from "../lib/model_loader.ts";
import type { Qwen2Model } from "../lib/model.ts";
import { CheckpointError } from "../lib/errors.ts";
import { assertAllClose } from "./_assert.ts";
import { BACKEND_STORAGES, storageLabel, storageOptions, useTestBackend } from "./_backend.ts";
import { type GrpoFixture, grpoTensors } from "./_fixtures.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

interface Expected {
  forward: { sequences: { input_ids: number[]; logits: number[][] }[] };
  padded_batch: { input_ids: number[][]; attention_mask: number[][]; logits: number[][][] };
  greedy: { prompt_ids: number[]; generated_ids: number[] };
  grpo?: GrpoFixture;
}

async function expected(name: string): Promise<Expected> {
  return JSON.parse(await Deno.readTextFile(`${FIXTURES}${name}/expected.json`));
}

function masked(rows: number[][], mask: number[][]): number[] {
  const out: number[] = [];
  rows.forEach((row, b) => row.forEach((v, i) => mask[b][i] === 1 && out.push(v)));
  return out;
}

async function greedyFullRecompute(model: Qwen2Model, prompt: number[], n: number) {
  const ids = [...prompt];
  for (let i = 0; i < n; i++) {
    const next = tf.tidy(() => {
      const logits = forward(model, tf.tensor2d([ids], [1, ids.length], "int32"));
      return tf.argMax(logits.slice([0, ids.length - 1, 0], [1, 1, -1]).reshape([-1]));
    });
    ids.push((await next.data())[0]);
    next.dispose();
  }
  return ids.slice(prompt.length);
}

for (const [backend, storage] of BACKEND_STORAGES) {
  const where = storageLabel(storage);
  for (const name of ["qwen2-tiny", "qwen2-tiny-tied-bf16"]) {
    Deno.test(`forward() matches HF logits of ${name} on ${backend}${where}`, async () => {
      await useTestBackend(backend);
      const exp = await expected(name);
      const model = await loadModel(`${FIXTURES}${name}`, storageOptions(storage));
      const before = tf.memory().numTensors;
      for (const seq of exp.forward.sequences) {
        const ids = tf.tensor2d([seq.input_ids], [1, seq.input_ids.length], "int32");
        const logits = forward(model, ids);
        assertAllClose(await logits.data(), seq.logits.flat(), 1e-4, `${name} logits`);
        tf.dispose([ids, logits]);
      }
      assert.equal(tf.memory().numTensors, before, "leaked tensors");
      model.dispose();
    });

    Deno.test(`forward() of a left-padded batch equals unpadded runs (${name}, ${backend}${where})`, async () => {
      await useTestBackend(backend);
      const exp = await expected(name);
      const model = await loadModel(`${FIXTURES}${name}`, storageOptions(storage));
      const p = exp.padded_batch;
      const [B, T] = [p.input_ids.length, p.input_ids[0].length];
      const ids = tf.tensor2d(p.input_ids, [B, T], "int32");
      const mask = tf.tensor2d(p.attention_mask, [B, T], "int32");
      const logits = forward(model, ids, { attentionMask: mask });
      const got = (await logits.array()) as number[][][];
      const keep = p.attention_mask.map((row) => row.map((m) => m));
      for (let b = 0; b < B; b++) {
        const gotRow = got[b].filter((_, t) => keep[b][t] === 1).flat();
        const expRow = p.logits[b].filter((_, t) => keep[b][t] === 1).flat();
        assertAllClose(gotRow, expRow, 1e-4, `${name} padded row ${b}`);
      }
      tf.dispose([ids, mask, logits]);
      model.dispose();
    });

    Deno.test(`greedy decoding gives the fixture's 20 ids exactly (${name}, ${backend}${where})`, async () => {
      await useTestBackend(backend);
      const exp = await expected(name);
      const model = await loadModel(`${FIXTURES}${name}`, storageOptions(storage));
      const got = await greedyFullRecompute(
        model,
        exp.greedy.prompt_ids,
        exp.greedy.generated_ids.length,
      );
      assert.deepEqual(got, exp.greedy.generated_ids);
      model.dispose();
    });
  }

  Deno.test(`KV-cache decoding gives the same logits as a full forward (${backend}${where})`, async () => {
    await useTestBackend(backend);
    const model = await loadModel(`${FIXTURES}qwen2-tiny`, storageOptions(storage));
    const before = tf.memory().numTensors;
    // Left-padded batch of two prompts, then 4 forced tokens through the cache.
    const prompts = [[0, 0, 256, 72, 105], [256, 84, 104, 101, 32]];
    const mask = [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]];
    const forced = [[33, 34], [35, 36], [37, 38], [39, 40]];
    const ids = tf.tensor2d(prompts, [2, 5], "int32");
    const am = tf.tensor2d(mask, [2, 5], "int32");
    let { logits, cache } = prefill(model, ids, { attentionMask: am });
    const stepLogits: number[][][] = [(await logits.array()) as number[][]];
    logits.dispose();
    for (const tok of forced) {
      const t = tf.tensor1d(tok, "int32");
      ({ logits, cache } = decodeStep(model, cache, t));
      stepLogits.push((await logits.array()) as number[][]);
      tf.dispose([t, logits]);
    }
    disposeCache(cache);
    const fullIds = prompts.map((p, b) => [...p, ...forced.map((f) => f[b])]);
    const fullMask = mask.map((m) => [...m, 1, 1, 1, 1]);
    const fi = tf.tensor2d(fullIds, [2, 9], "int32");
    const fm = tf.tensor2d(fullMask, [2, 9], "int32");
    const fullLogits = forward(model, fi, { attentionMask: fm });
    const full = (await fullLogits.array()) as number[][][];
    for (let s = 0; s < stepLogits.length; s++) {
      for (let b = 0; b < 2; b++) {
        assertAllClose(stepLogits[s][b], full[b][4 + s], 1e-4, `step ${s} row ${b}`);
      }
    }
    tf.dispose([ids, am, fi, fm, fullLogits]);
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    model.dispose();
  });

  Deno.test(`completionLogProbs() matches the fixture's reference log-probs (${backend}${where})`, async () => {
    await useTestBackend(backend);
    const exp = await expected("qwen2-tiny");
    const g = exp.grpo!;
    const model = await loadModel(`${FIXTURES}qwen2-tiny`, storageOptions(storage));
    const before = tf.memory().numTensors;
    const { C, inputIds, attentionMask, positionIds, ...rest } = grpoTensors(g);
    const logps = completionLogProbs(model, {
      inputIds,
      attentionMask,
      positionIds,
      completionLength: C,
      temperature: g.temperature,
    });
    const got = (await logps.array()) as number[][];
    assertAllClose(
      masked(got, g.completion_mask),
      masked(g.ref_per_token_logps, g.completion_mask),
      1e-4,
      "ref logps",
    );
    // Positions from the mask (what sampling uses) agree within the README's ~1e-6.
    const logps2 = completionLogProbs(model, {
      inputIds,
      attentionMask,
      completionLength: C,
      temperature: g.temperature,
    });
    assertAllClose(
      masked((await logps2.array()) as number[][], g.completion_mask),
      masked(g.ref_per_token_logps, g.completion_mask),
      1e-4,
      "ref logps with cumsum positions",
    );
    tf.dispose([logps, logps2]);
    rest.dispose();
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    model.dispose();
  });
}

/**
 * hiddenStates() of a left- and right-padded batch through a LoRA adapter with dropout, and the
 * gradients of `sum(h * dy)` with respect to the adapter: [value, ...grads] as arrays.
 */
async function hiddenAndGrads(
  model: Qwen2Model,
  options: { keepLast?: number; gradientCheckpointing?: boolean; dropoutSeed: number | null },
  slice: number,
): Promise<number[][]> {
  const adapter = createLora(model, {
    lora_r: 4,
    lora_alpha: 8,
    lora_dropout: 0.5,
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
  }, { seed: 4 });
  // lora_B starts at zero (no gradient reaches lora_A): give it values.
  let seed = 10;
  for (const [key, v] of adapter.variables) {
    if (!key.includes("lora_B")) continue;
    const values = tf.randomNormal(v.shape, 0, 0.5, "float32", seed++);
    v.assign(values);
    values.dispose(); // the variable keeps the data
  }
  const ids = tf.tensor2d(
    [[0, 0, 72, 105, 32, 50, 51], [72, 105, 32, 33, 50, 51, 0]],
    [2, 7],
    "int32",
  );
  const mask = tf.tensor2d([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]], [2, 7], "int32");
  const dy = tf.randomNormal([2, slice, model.config.hidden_size], 0, 1, "float32", 3);
  const run = () =>
    tf.tidy(() => {
      const h = hiddenStates(model, ids, { attentionMask: mask, adapter, ...options });
      return h.slice([0, h.shape[1] - slice, 0], [2, slice, -1]);
    });
  const value = run();
  const { value: loss, grads } = tf.variableGrads(
    () => tf.sum(tf.mul(run(), dy)) as tf.Scalar,
    [...adapter.variables.values()],
  );
  const out = [Array.from(await value.data())];
  for (const key of adapter.variables.keys()) out.push(Array.from(await grads[key].data()));
  tf.dispose([ids, mask, dy, value, loss, ...Object.values(grads)]);
  adapter.dispose();
  return out;
}

for (const backend of ["cpu", "wasm+blas", "cpu+blas"] as const) {
  Deno.test(`hiddenStates() with keepLast equals the full pass's last positions, LoRA dropout and gradients included (${backend})`, async () => {
    await useTestBackend(backend);
    const model = await loadModel(`${FIXTURES}qwen2-tiny`);
    const before = tf.memory().numTensors;
    for (const gradientCheckpointing of [false, true]) {
      for (const dropoutSeed of [null, 7]) {
        const options = { gradientCheckpointing, dropoutSeed };
        const want = await hiddenAndGrads(model, options, 3);
        const got = await hiddenAndGrads(model, { ...options, keepLast: 3 }, 3);
        const label = `checkpointing ${gradientCheckpointing}, dropout seed ${dropoutSeed}`;
        assert.equal(got[0].length, 2 * 3 * model.config.hidden_size);
        for (let i = 0; i < want.length; i++) {
          // Gradients reach ~40 here: 1e-4 is float32 rounding.
          assertAllClose(
            got[i],
            want[i],
            i ? 1e-4 : 1e-5,
            `${label}: ${i ? `grad ${i}` : "value"}`,
          );
        }
      }
    }
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    model.dispose();
  });
}

for (const backend of ["cpu", "wasm+blas", "cpu+blas"] as const) {
  Deno.test(`sharedPromptHiddenStates() equals hiddenStates() at every real position (${backend})`, async () => {
    await useTestBackend(backend);
    const model = await loadModel(`${FIXTURES}qwen2-tiny`);
    const adapter = createLora(model, {
      lora_r: 4,
      lora_alpha: 8,
      lora_dropout: 0.5, // no seed: no dropout
      target_modules: ["q_proj", "v_proj", "o_proj"],
    }, { seed: 5 });
    for (const [key, v] of adapter.variables) {
      if (key.includes("lora_B")) v.assign(tf.randomNormal(v.shape, 0, 0.5, "float32", 6));
    }
    const before = tf.memory().numTensors;
    // Prompts of widths 3 and 2 (left-padded to P = 3), two completions each, right-padded to 4.
    const P = 3;
    const rows = [
      [72, 105, 32, 50, 51, 52, 53],
      [72, 105, 32, 60, 61, 0, 0],
      [0, 40, 41, 50, 0, 0, 0],
      [0, 40, 41, 70, 71, 72, 0],
    ];
    const masks = [
      [1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 1, 1, 0, 0],
      [0, 1, 1, 1, 0, 0, 0],
      [0, 1, 1, 1, 1, 1, 0],
    ];
    const ids = tf.tensor2d(rows, [4, 7], "int32");
    const attentionMask = tf.tensor2d(masks, [4, 7], "int32");
    for (const a of [null, adapter]) {
      const full = hiddenStates(model, ids, { attentionMask, adapter: a });
      const shared = sharedPromptHiddenStates(model, ids, {
        attentionMask,
        adapter: a,
        promptLength: P,
        promptOf: [0, 0, 2, 2],
      });
      assert.deepEqual(shared.shape, [4, 5, model.config.hidden_size]);
      const want = (await full.array()) as number[][][];
      const got = (await shared.array()) as number[][][];
      for (let b = 0; b < 4; b++) {
        for (let t = P - 1; t < 7; t++) {
          if (masks[b][t] === 0) continue;
          assertAllClose(got[b][t - P + 1], want[b][t], 1e-5, `row ${b}, position ${t}`);
        }
      }
      tf.dispose([full, shared]);
    }
    tf.dispose([ids, attentionMask]);
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    adapter.dispose();
    model.dispose();
  });
}

Deno.test("loadModel() names the expected files when config.json is missing", async () => {
  const dir = await Deno.makeTempDir();
  await assert.rejects(() => loadModel(dir), (error: unknown) => {
    assert.ok(error instanceof CheckpointError);
    assert.match(error.message, /config\.json not found/);
    assert.match(error.message, /tokenizer\.json, tokenizer_config\.json, model\.safetensors/);
    return true;
  });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loadModel() names the tensor whose shape disagrees with config.json", async () => {
  const dir = await Deno.makeTempDir();
  const config = JSON.parse(await Deno.readTextFile(`${FIXTURES}qwen2-tiny/config.json`));
  config.intermediate_size = 90;
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  await Deno.copyFile(`${FIXTURES}qwen2-tiny/model.safetensors`, `${dir}/model.safetensors`);
  await assert.rejects(() => loadModel(dir), (error: unknown) => {
    assert.ok(error instanceof CheckpointError);
    assert.match(error.message, /model\.layers\.0\.mlp\.gate_proj\.weight has shape \[88,32\]/);
    return true;
  });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("decodeStep() past the cache's room grows it and decodes as a full forward does", async () => {
  await useTestBackend("wasm+blas"); // the fused path: a cache with room, appended in place
  const model = await loadModel(`${FIXTURES}qwen2-tiny`);
  const before = tf.memory().numTensors;
  const prompts = [[0, 0, 256, 72, 105], [256, 84, 104, 101, 32]];
  const mask = [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]];
  const ids = tf.tensor2d(prompts, [2, 5], "int32");
  const am = tf.tensor2d(mask, [2, 5], "int32");
  let { logits, cache } = prefill(model, ids, { attentionMask: am });
  const room = cache.keys[0].shape[2];
  const steps = room - 5 + 3; // three tokens past the first capacity
  const forced = Array.from({ length: steps }, (_, i) => [40 + (i % 50), 90 + (i % 30)]);
  for (const tok of forced) {
    logits.dispose();
    const t = tf.tensor1d(tok, "int32");
    ({ logits, cache } = decodeStep(model, cache, t));
    t.dispose();
  }
  assert.ok(cache.keys[0].shape[2] > room, "the cache grew");
  assert.equal(cache.length, 5 + steps);
  const last = (await logits.array()) as number[][];
  const fullIds = tf.tensor2d(
    prompts.map((p, b) => [...p, ...forced.map((f) => f[b])]),
    [2, 5 + steps],
    "int32",
  );
  const fullMask = tf.tensor2d(
    mask.map((m) => [...m, ...forced.map(() => 1)]),
    [2, 5 + steps],
    "int32",
  );
  const full = forward(model, fullIds, { attentionMask: fullMask });
  const want = (await full.array()) as number[][][];
  for (let b = 0; b < 2; b++) assertAllClose(last[b], want[b][4 + steps], 1e-4, `row ${b}`);
  tf.dispose([ids, am, logits, full, fullIds, fullMask]);
  disposeCache(cache);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  model.dispose();
});

Deno.test("prefill() in row chunks (long prompts) equals one pass, cache included", async () => {
  await useTestBackend("wasm+blas");
  const model = await loadModel(`${FIXTURES}qwen2-tiny`);
  const before = tf.memory().numTensors;
  const ids = tf.tensor2d([[0, 0, 256, 72, 105], [256, 84, 104, 101, 32], [0, 256, 1, 2, 3]], [
    3,
    5,
  ], "int32");
  const mask = tf.tensor2d([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], [3, 5], "int32");
  const whole = prefill(model, ids, { attentionMask: mask });
  // 4 heads x 5 x 5 = 100 scores per row: a budget of 150 runs one row per chunk.
  const chunked = prefill(model, ids, { attentionMask: mask, maxAttentionFloats: 150 });
  // BLAS blocks a 1-row matMul differently from a 3-row one: equal up to float rounding.
  assertAllClose(await chunked.logits.data(), await whole.logits.data(), 1e-5, "logits");
  for (let i = 0; i < whole.cache.keys.length; i++) {
    assertAllClose(await chunked.cache.keys[i].data(), await whole.cache.keys[i].data(), 1e-5);
    assertAllClose(await chunked.cache.values[i].data(), await whole.cache.values[i].data(), 1e-5);
  }
  assert.deepEqual(
    await chunked.cache.nextPositions.data(),
    await whole.cache.nextPositions.data(),
  );
  const next = tf.tensor1d([7, 8, 9], "int32");
  const a = decodeStep(model, whole.cache, next);
  const b = decodeStep(model, chunked.cache, next);
  assertAllClose(await b.logits.data(), await a.logits.data(), 1e-5);
  tf.dispose([ids, mask, next, whole.logits, chunked.logits, a.logits, b.logits]);
  disposeCache(a.cache);
  disposeCache(b.cache);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  model.dispose();
});
