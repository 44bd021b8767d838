/**
 * LoRA against the fixture (tests/fixtures/README.md "lora"): PEFT's adapter on the tiny Qwen2,
 * logits within 1e-4; PEFT's parameter lines verbatim.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { completionLogProbs } from "../lib/grpo.ts";
import { countParameters, forward } from "../lib/model.ts";
import { loadModel } from "../lib/model_loader.ts";
import { parseQwen2Config } from "../lib/qwen2_config.ts";
import {
  countLoraParameters,
  createLora,
  loadLora,
  mergedWeights,
  parameterCounts,
  saveLora,
  saveMerged,
  trainableParametersLine,
} from "../lib/lora.ts";
import { toTrainingBatch } from "../lib/rollout.ts";
import { assertAllClose } from "./_assert.ts";
import { BACKENDS, useTestBackend } from "./_backend.ts";
import { test } from "./_requires.ts";

const DIR = new URL("./fixtures/qwen2-tiny", import.meta.url).pathname;
const expected = JSON.parse(await Deno.readTextFile(`${DIR}/expected.json`));
const LORA = {
  lora_r: 4,
  lora_alpha: 8,
  lora_dropout: 0,
  target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"],
};

async function logitsOf(
  model: Awaited<ReturnType<typeof loadModel>>,
  ids: number[],
  adapter: Parameters<typeof forward>[2],
) {
  const x = tf.tensor2d([ids], [1, ids.length], "int32");
  const y = forward(model, x, adapter);
  const out = await y.data();
  tf.dispose([x, y]);
  return out;
}

for (const backend of BACKENDS) {
  Deno.test(`loadLora() reproduces PEFT's adapter-on logits (${backend})`, async () => {
    await useTestBackend(backend);
    const model = await loadModel(DIR);
    const lora = await loadLora(model, `${DIR}/adapter`);
    const before = tf.memory().numTensors;
    for (const seq of expected.lora.sequences) {
      const got = await logitsOf(model, seq.input_ids, { adapter: lora });
      assertAllClose(got, seq.logits.flat(), 1e-4, "adapter-on logits");
    }
    // The adapter off is the base model: the GRPO reference.
    const seq0 = expected.forward.sequences[0];
    assertAllClose(
      await logitsOf(model, seq0.input_ids, { adapter: null }),
      seq0.logits.flat(),
      1e-4,
    );
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    lora.dispose();
    model.dispose();
  });
}

Deno.test("createLora() starts at B = 0, so logits equal the base model's exactly", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const lora = createLora(model, LORA, { seed: 1 });
  const ids = expected.forward.sequences[1].input_ids;
  assert.deepEqual(await logitsOf(model, ids, { adapter: lora }), await logitsOf(model, ids, {}));
  // A is Kaiming-uniform with bound 1/sqrt(in) = 1/sqrt(32), and not all zero.
  const a = await lora.variables.get(
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
  )!.data();
  assert.ok(a.every((v) => Math.abs(v) <= 1 / Math.sqrt(32)));
  assert.ok(a.some((v) => Math.abs(v) > 0.05));
  lora.dispose();
  model.dispose();
});

Deno.test("saveLora() then loadLora() round-trips bit-exactly in PEFT format", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const lora = await loadLora(model, `${DIR}/adapter`);
  const dir = await Deno.makeTempDir();
  await saveLora(lora, dir, { baseModel: "qwen2-tiny" });
  const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
  assert.equal(config.peft_type, "LORA");
  assert.equal(config.r, 4);
  assert.equal(config.lora_alpha, 8);
  assert.deepEqual(config.target_modules, LORA.target_modules);
  // Same bytes as the PEFT-written fixture file: same names, order, header and data.
  assert.deepEqual(
    await Deno.readFile(`${dir}/adapter_model.safetensors`),
    await Deno.readFile(`${DIR}/adapter/adapter_model.safetensors`),
  );
  const again = await loadLora(model, dir);
  for (const [name, v] of lora.variables) {
    assert.deepEqual(await again.variables.get(name)!.data(), await v.data(), name);
  }
  again.dispose();
  lora.dispose();
  model.dispose();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("saveMerged() exports an HF checkpoint whose logits equal adapter-on", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const lora = await loadLora(model, `${DIR}/adapter`);
  const dir = await Deno.makeTempDir();
  await saveMerged(model, lora, dir);
  const merged = await loadModel(dir);
  for (const seq of expected.lora.sequences) {
    assertAllClose(
      await logitsOf(merged, seq.input_ids, {}),
      await logitsOf(model, seq.input_ids, { adapter: lora }),
      1e-4,
      "merged vs adapter-on",
    );
  }
  await Deno.stat(`${dir}/tokenizer.json`);
  merged.dispose();
  lora.dispose();
  model.dispose();
  await Deno.remove(dir, { recursive: true });
});

await test.openblas("mergedWeights() of a model with external weights equals that of the same model as tensors", async () => {
  await useTestBackend("wasm+blas");
  const tensors = await loadModel(DIR);
  const external = await loadModel(DIR, { weightStorage: "external" });
  assert.ok(external.external.size > 0 && external.external.has("lm_head.weight"));
  const lora = await loadLora(tensors, `${DIR}/adapter`);
  const want = await mergedWeights(tensors, lora);
  const got = await mergedWeights(external, lora);
  assert.deepEqual([...got.keys()], [...want.keys()]);
  for (const [name, t] of want) assert.deepEqual(got.get(name), t, name);
  assert.equal(countParameters(external), countParameters(tensors));
  lora.dispose();
  tensors.dispose();
  external.dispose();
});

Deno.test("trainableParametersLine() prints PEFT's lines for the tiny model and Qwen2.5-Math-1.5B", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const lora = createLora(model, LORA, { seed: 0 });
  const counts = parameterCounts(model, lora);
  assert.equal(
    trainableParametersLine(counts.trainable, counts.all),
    expected.lora.param_counts_tiny.peft_line,
  );
  lora.dispose();
  model.dispose();
  const big = expected.lora.param_counts_qwen2_5_math_1_5b;
  const config = parseQwen2Config({ model_type: "qwen2", ...big.config }, "qwen2.5-math-1.5b");
  const cases: [string, string[]][] = [
    ["r16_q_k_v_o", ["q_proj", "k_proj", "v_proj", "o_proj"]],
    ["r16_q_v", ["q_proj", "v_proj"]],
    ["r16_all_linear", [
      "q_proj",
      "k_proj",
      "v_proj",
      "o_proj",
      "gate_proj",
      "up_proj",
      "down_proj",
    ]],
  ];
  for (const [key, targets] of cases) {
    const c = countLoraParameters(config, { lora_r: 16, target_modules: targets });
    assert.equal(trainableParametersLine(c.trainable, c.all), big.by_target_modules[key].peft_line);
  }
});

Deno.test("createLora() rejects an unknown target module with the known ones", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  assert.throws(() => createLora(model, { ...LORA, target_modules: ["qkv_proj"] }), {
    name: "RangeError",
    message: /Unknown LoRA target module "qkv_proj".*q_proj/,
  });
  model.dispose();
});

Deno.test("createLora() and loadLora() leave no tensors behind after dispose()", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const before = tf.memory().numTensors;
  createLora(model, LORA, { seed: 3 }).dispose();
  (await loadLora(model, `${DIR}/adapter`)).dispose();
  assert.equal(tf.memory().numTensors, before);
  model.dispose();
});

Deno.test("completionLogProbs() draws LoRA dropout from dropoutSeed alone; the adapter holds no seed", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const adapter = createLora(model, { ...LORA, lora_dropout: 0.5 }, { seed: 2 });
  // lora_B starts at zero (the delta is 0 whatever the mask): give it values.
  for (const [key, v] of adapter.variables) {
    if (key.includes("lora_B")) v.assign(tf.randomNormal(v.shape, 0, 0.5, "float32", 3));
  }
  assert.ok(!("dropoutSeed" in adapter));
  const batch = toTrainingBatch({
    promptIds: [[72, 105, 32]],
    completionIds: [[50, 51, 52, 53]],
    finishReasons: ["length"],
  }, 0);
  const input = { ...batch, temperature: 1 };
  const run = async (dropoutSeed: number | null) => {
    const logps = completionLogProbs(model, input, { adapter, dropoutSeed });
    const out = Array.from(await logps.data());
    logps.dispose();
    return out;
  };
  const a = await run(1);
  assert.deepEqual(await run(1), a, "the same seed draws the same masks");
  assert.notDeepEqual(await run(2), a, "another seed draws other masks");
  const off = await run(null);
  assert.notDeepEqual(off, a);
  const plain = completionLogProbs(model, input, { adapter });
  assert.deepEqual(Array.from(await plain.data()), off, "no seed = no dropout");
  tf.dispose([plain, batch.inputIds, batch.attentionMask, batch.completionMask]);
  adapter.dispose();
  model.dispose();
});

/** The fixture adapter copied to a temp dir, its adapter_config.json changed by `patch`. */
async function patchedAdapter(patch: (config: Record<string, unknown>) => void): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "lora_test_" });
  await Deno.copyFile(
    `${DIR}/adapter/adapter_model.safetensors`,
    `${dir}/adapter_model.safetensors`,
  );
  const config = JSON.parse(await Deno.readTextFile(`${DIR}/adapter/adapter_config.json`));
  patch(config);
  await Deno.writeTextFile(`${dir}/adapter_config.json`, JSON.stringify(config));
  return dir;
}

Deno.test("loadLora() refuses what PEFT would read differently: fewer target_modules than tensors, no lora_alpha, patterns, no r", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const before = tf.memory().numTensors;
  const cases: [string, (c: Record<string, unknown>) => void, RegExp][] = [
    [
      "target_modules lists 2 of the 4 modules the file holds",
      (c) => c.target_modules = ["q_proj", "k_proj"],
      /adapter_model\.safetensors: it holds 8 tensors of modules that .*target_modules \[q_proj, k_proj\] does not list: o_proj, v_proj \(e\.g\. base_model\.model\.model\.layers\.0\.self_attn\.(v|o)_proj\.lora_A\.weight\)/,
    ],
    [
      "no lora_alpha",
      (c) => delete c.lora_alpha,
      /adapter_config\.json: lora_alpha: expected a number \(the scaling is lora_alpha \/ r\), got undefined/,
    ],
    [
      "an alpha_pattern",
      (c) => c.alpha_pattern = { "model.layers.0.self_attn.q_proj": 16 },
      /alpha_pattern: per-module ranks and alphas are not supported/,
    ],
    [
      "a rank_pattern",
      (c) => c.rank_pattern = { q_proj: 8 },
      /rank_pattern: per-module ranks and alphas are not supported/,
    ],
    [
      "no r",
      (c) => delete c.r,
      /adapter_config\.json: r: expected a positive integer, got undefined/,
    ],
    [
      "an unknown target module",
      (c) => c.target_modules = ["qkv_proj"],
      /adapter_config\.json: Unknown LoRA target module "qkv_proj"/,
    ],
  ];
  for (const [what, patch, message] of cases) {
    const dir = await patchedAdapter(patch);
    await assert.rejects(loadLora(model, dir), { name: "CheckpointError", message }, what);
    await Deno.remove(dir, { recursive: true });
  }
  // Empty patterns (what PEFT writes) load.
  const dir = await patchedAdapter((c) => {
    c.alpha_pattern = {};
    c.rank_pattern = {};
  });
  (await loadLora(model, dir)).dispose();
  await Deno.remove(dir, { recursive: true });
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  model.dispose();
});
