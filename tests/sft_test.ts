import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { useBackend } from "../lib/backend.ts";
import { loadDataset } from "../lib/data.ts";
import { forward } from "../lib/model.ts";
import { loadModel } from "../lib/model_loader.ts";
import { latestCheckpoint, loadCheckpoint } from "../lib/checkpoint.ts";
import { AdamW } from "../lib/optim.ts";
import { fileRunWriter } from "../lib/run_writer.ts";
import { rollout } from "../lib/rollout.ts";
import {
  buildSftExample,
  collateSft,
  demoModelConfig,
  epochBatches,
  formatDefectExamples,
  initWeights,
  runSft,
  SFT_CHARS,
  sftLoss,
  sftRows,
  sftStep,
  sftSummary,
  sftTokenizerFiles,
  trainableModel,
  unboxSolution,
} from "../lib/sft.ts";
import type { SftBatch, SftState } from "../lib/sft.ts";
import { SYNTHETIC_CHARS } from "../lib/synthetic.ts";
import { createTokenizer, formatPrompt, loadTokenizer } from "../lib/tokenizer.ts";
import { assertAllClose } from "./_assert.ts";

const TINY = {
  hidden_size: 8,
  intermediate_size: 16,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  num_key_value_heads: 1,
};
const tinyConfig = demoModelConfig(7, { eos: 6, pad: 5 }, TINY);

// Two rows of different length: row 0 has prompt [1, 2] and completion [3, 6]; row 1 has
// prompt [2] and completion [4, 6], right-padded with 5.
const batch: SftBatch = collateSft([
  { ids: [1, 2, 3, 6], promptLength: 2 },
  { ids: [2, 4, 6], promptLength: 1 },
], 5);

Deno.test("collateSft() right-pads and marks only completion targets", () => {
  assert.deepEqual(batch.inputIds, [[1, 2, 3, 6], [2, 4, 6, 5]]);
  assert.deepEqual(batch.attentionMask, [[1, 1, 1, 1], [1, 1, 1, 0]]);
  // Target t+1 of row 0: 2 (prompt), 3, 6; row 1: 4, 6, pad.
  assert.deepEqual(batch.lossMask, [[0, 1, 1], [1, 1, 0]]);
  assert.equal(batch.numLossTokens, 4);
  assert.equal(batch.numTokens, 7);
});

Deno.test("sftLoss() equals a hand computation over completion tokens only", async () => {
  await useBackend("cpu");
  const before = tf.memory().numTensors;
  const { model } = trainableModel(tinyConfig, initWeights(tinyConfig, { seed: 3, std: 0.5 }));
  const loss = sftLoss(model, batch);
  const got = (await loss.data())[0];
  // Each row's logits on its own (unpadded), then -log softmax at the completion targets.
  const rows = [[1, 2, 3, 6], [2, 4, 6]];
  const targets = [[[1, 3], [2, 6]], [[0, 4], [1, 6]]]; // [position predicting, target id]
  let total = 0;
  for (let b = 0; b < 2; b++) {
    const ids = tf.tensor2d([rows[b]], [1, rows[b].length], "int32");
    const logits = forward(model, ids);
    const values = (await logits.array())[0];
    tf.dispose([ids, logits]);
    for (const [t, target] of targets[b]) {
      const row = values[t];
      const max = Math.max(...row);
      const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
      total += lse - row[target];
    }
  }
  tf.dispose(loss);
  model.dispose();
  assertAllClose([got], [total / 4], 1e-5);
  assert.ok(got > 0.5, `a std-0.5 model should not already fit the batch (loss ${got})`);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("sftLoss() ignores padding: a different pad id keeps the loss", async () => {
  await useBackend("cpu");
  const { model } = trainableModel(tinyConfig, initWeights(tinyConfig, { seed: 4, std: 0.5 }));
  // Replacing the last token of row 1 (the pad) changes no completion target or context.
  const changed = collateSft([
    { ids: [1, 2, 3, 6], promptLength: 2 },
    { ids: [2, 4, 6], promptLength: 1 },
  ], 0);
  const a = sftLoss(model, batch);
  const b = sftLoss(model, changed);
  const [va, vb] = [(await a.data())[0], (await b.data())[0]];
  tf.dispose([a, b]);
  model.dispose();
  assertAllClose([va], [vb], 1e-6);
});

Deno.test("sftStep() lowers the loss on a fixed batch in 3 steps, without leaking", async () => {
  for (const backend of ["cpu", "wasm"] as const) {
    await useBackend(backend);
    const before = tf.memory().numTensors;
    const { model, variables } = trainableModel(tinyConfig, initWeights(tinyConfig, { seed: 5 }));
    const optimizer = new AdamW(variables, {
      adam_beta1: 0.9,
      adam_beta2: 0.999,
      adam_epsilon: 1e-8,
      weight_decay: 0.01,
    });
    const losses: number[] = [];
    let counted = -1;
    for (let i = 0; i < 3; i++) {
      const { loss, gradNorm } = sftStep(model, batch, { optimizer, lr: 0.05, maxGradNorm: 1 });
      losses.push((await loss.data())[0]);
      assert.ok((await gradNorm.data())[0] > 0);
      tf.dispose([loss, gradNorm]);
      if (i === 0) counted = tf.memory().numTensors;
      else assert.equal(tf.memory().numTensors, counted, `${backend}: tensors grew at step ${i}`);
    }
    const after = sftLoss(model, batch);
    const final = (await after.data())[0];
    after.dispose();
    optimizer.dispose();
    model.dispose();
    assert.ok(final < losses[0] - 0.1, `${backend}: loss ${losses[0]} -> ${final}`);
    assert.equal(tf.memory().numTensors, before, `${backend}: leaked tensors`);
  }
  await useBackend("cpu");
});

Deno.test("sftStep() reports the same pre-clip norm with and without clipping", async () => {
  await useBackend("cpu");
  const before = tf.memory().numTensors;
  const norms: number[] = [];
  for (const maxGradNorm of [1, 0]) {
    const { model, variables } = trainableModel(tinyConfig, initWeights(tinyConfig, { seed: 6 }));
    const optimizer = new AdamW(variables, {
      adam_beta1: 0.9,
      adam_beta2: 0.999,
      adam_epsilon: 1e-8,
      weight_decay: 0,
    });
    const { loss, gradNorm } = sftStep(model, batch, { optimizer, lr: 0.05, maxGradNorm });
    norms.push((await gradNorm.data())[0]);
    tf.dispose([loss, gradNorm]);
    optimizer.dispose();
    model.dispose();
  }
  assert.ok(norms[0] > 0, `norm ${norms[0]}`);
  assertAllClose([norms[1]], [norms[0]], 1e-6);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("initWeights() is seeded, N(0, 0.02²) for matrices, 1 for norms, 0 for biases", () => {
  const config = demoModelConfig(63, { eos: 62, pad: 60 });
  const a = initWeights(config, { seed: 1 });
  const b = initWeights(config, { seed: 1 });
  const embed = a.get("model.embed_tokens.weight")!.data;
  assert.deepEqual(embed, b.get("model.embed_tokens.weight")!.data);
  const mean = embed.reduce((s, x) => s + x, 0) / embed.length;
  const std = Math.sqrt(embed.reduce((s, x) => s + (x - mean) ** 2, 0) / embed.length);
  assert.ok(Math.abs(mean) < 0.002 && Math.abs(std - 0.02) < 0.001, `mean ${mean} std ${std}`);
  assert.ok(a.get("model.layers.0.input_layernorm.weight")!.data.every((x) => x === 1));
  assert.ok(a.get("model.layers.0.self_attn.q_proj.bias")!.data.every((x) => x === 0));
  let n = 0;
  for (const { data } of a.values()) n += data.length;
  assert.equal(n, 562688); // tied embeddings: no lm_head
});

Deno.test("sftTokenizerFiles() covers the generator and the plain prompt, one id per char", () => {
  const tokenizer = createTokenizer(sftTokenizerFiles());
  for (const c of SYNTHETIC_CHARS + "Q:\n") assert.ok(SFT_CHARS.includes(c), JSON.stringify(c));
  assert.equal(tokenizer.vocabSize, SFT_CHARS.length + 3);
  const prompt = formatPrompt(tokenizer, "Tom has 3 pens?", {
    prompt_format: "plain",
    system_prompt: "",
  });
  assert.equal(tokenizer.encode(prompt).length, prompt.length);
  assert.equal(tokenizer.decode(tokenizer.encode(prompt)), prompt);
  const ex = buildSftExample(tokenizer, { question: "Tom has 3 pens?", solution: "3." });
  assert.equal(ex.promptLength, prompt.length);
  assert.equal(tokenizer.decode(ex.ids), `${prompt} 3.<|im_end|>`);
  assert.deepEqual(tokenizer.eosTokenIds, [tokenizer.vocabSize - 1]);
});

Deno.test("epochBatches() is a seeded partition of the examples into length-sorted batches", () => {
  const lengths = Array.from({ length: 1000 }, (_, i) => 50 + ((i * 37) % 100));
  const a = epochBatches(lengths, { batchSize: 10, seed: 1, epoch: 2 });
  assert.deepEqual(a, epochBatches(lengths, { batchSize: 10, seed: 1, epoch: 2 }));
  assert.notDeepEqual(a, epochBatches(lengths, { batchSize: 10, seed: 1, epoch: 3 }));
  assert.equal(a.length, 100);
  assert.deepEqual(a.flat().sort((x, y) => x - y), lengths.map((_, i) => i));
  // Sorting within windows keeps padding small: spread inside a batch is a few tokens at most.
  const spread = a.map((b) =>
    Math.max(...b.map((i) => lengths[i])) - Math.min(...b.map((i) => lengths[i]))
  );
  assert.ok(Math.max(...spread) <= 10, `max spread ${Math.max(...spread)}`);
});

Deno.test("formatDefectExamples() unboxes about the asked fraction, keeping the answer", () => {
  const rows = Array.from({ length: 2000 }, (_, i) => ({
    question: `q${i}`,
    solution: `1 + ${i} = ${i + 1}. The answer is \\boxed{${i + 1}}.`,
  }));
  const out = formatDefectExamples(rows, { fraction: 0.5, seed: 9 });
  const unboxed = out.filter((r) => !r.solution.includes("\\boxed")).length;
  assert.ok(unboxed > 900 && unboxed < 1100, `${unboxed} of 2000 unboxed`);
  assert.equal(rows[0].solution, "1 + 0 = 1. The answer is \\boxed{1}.");
  assert.equal(unboxSolution(rows[7].solution), "1 + 7 = 8. The answer is 8.");
});

for (const dir of ["data/demo/sft-model", "data/demo/sft-stage1"]) {
  Deno.test(`the committed ${dir} loads and answers a test question`, async () => {
    await useBackend("cpu");
    const before = tf.memory().numTensors;
    const model = await loadModel(dir);
    const tokenizer = await loadTokenizer(dir);
    assert.equal(model.config.tie_word_embeddings, true);
    assert.equal(model.config.vocab_size, tokenizer.vocabSize);
    const [example] = (await loadDataset("data/demo/test.json", { max_samples: 1 })).examples;
    const prompt = formatPrompt(tokenizer, example.question, {
      prompt_format: "plain",
      system_prompt: "",
    });
    const out = await rollout(model, [tokenizer.encode(prompt)], {
      tokenizer,
      sampling: {
        max_new_tokens: 80,
        temperature: 1,
        top_p: 1,
        top_k: 0,
        stop: [],
        greedy: true,
        seed: 0,
      },
    });
    model.dispose();
    assert.match(out.texts[0], /The answer is/);
    assert.equal(out.finishReasons[0], "eos");
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
  });
}

/** The demo tokenizer, a TINY model config for it and the first `n` demo training rows. */
async function tinySftRun(n: number) {
  const tokenizer = createTokenizer(sftTokenizerFiles());
  const config = demoModelConfig(tokenizer.vocabSize, {
    eos: tokenizer.eosTokenIds[0],
    pad: tokenizer.padTokenId,
  }, TINY);
  const rows = sftRows(
    (await loadDataset("data/demo/train.json", { max_samples: n })).examples,
    "",
  );
  return { tokenizer, config, rows };
}

Deno.test("runSft() interrupted after a checkpoint and resumed ends with the same weights and metrics", async () => {
  await useBackend("wasm+blas");
  const { tokenizer, config, rows } = await tinySftRun(6);
  const settings = {
    steps: 4,
    stage2_steps: 2,
    batch_size: 2,
    lr: 1e-2,
    stage2_lr: 5e-3,
    warmup_steps: 1,
    weight_decay: 0.05,
    drop_box_fraction: 0.5,
    seed: 3,
    save_every: 2,
  };
  const stub = { n: 1, accuracy: 0, no_answer_rate: 1, mean_reward: -0.5, accuracy_boxed: 0 };
  const evaluate = () => Promise.resolve({ ...stub, mean_length: 1, k: 1, no_box_rate: 1 });
  const root = await Deno.makeTempDir();
  const run = async (work: string, crashAt: number | null) => {
    const { model, variables } = trainableModel(config, initWeights(config, { seed: 3 }));
    const writer = fileRunWriter(work);
    const dir = await latestCheckpoint(work);
    const resumed = dir ? await loadCheckpoint<SftState>(dir, { model }) : null;
    const checkpoint = writer.checkpoint.bind(writer);
    writer.checkpoint = async (step, parts, options) => {
      const path = await checkpoint(step, parts, options);
      if (step === crashAt) throw new Error("crash");
      return path;
    };
    try {
      const out = await runSft({ model, variables, tokenizer }, { rows, test: [] }, {
        ...settings,
        writer,
        resumed,
        evaluate,
      });
      const weights = new Map<string, Float32Array>();
      for (const [k, w] of model.weights) weights.set(k, new Float32Array(await w.data()));
      return { out, weights };
    } finally {
      model.dispose(); // tfjs variable names are global: one trainable model at a time
    }
  };
  const straight = await run(`${root}/straight`, null);
  await assert.rejects(() => run(`${root}/cut`, 2), { message: "crash" }); // mid stage 1
  await assert.rejects(() => run(`${root}/cut`, 4), { message: "crash" }); // stage 1 done
  const resumed = await run(`${root}/cut`, null);
  assert.deepEqual(resumed.weights, straight.weights);
  assert.deepEqual(resumed.out.state.tokens, straight.out.state.tokens);
  assert.equal(resumed.out.state.stage1Eval?.no_box_rate, 1);
  const metrics = async (work: string) =>
    (await Deno.readTextFile(`${work}/metrics.jsonl`)).trim().split("\n").map((l) => {
      const { tokens_per_second: _, ...rest } = JSON.parse(l);
      return rest;
    });
  assert.deepEqual(await metrics(`${root}/cut`), await metrics(`${root}/straight`));
  const left = [...Deno.readDirSync(`${root}/cut`)].map((e) => e.name).sort();
  assert.deepEqual(left, ["checkpoint-6", "metrics.jsonl", "stage1.safetensors"]);
  await Deno.remove(root, { recursive: true });
});

Deno.test("runSft() with stage2_steps 0 ends after stage 1 and hands its model to onStage1Done", async () => {
  await useBackend("wasm+blas");
  const { tokenizer, config, rows } = await tinySftRun(4);
  const settings = {
    steps: 2,
    stage2_steps: 0,
    batch_size: 2,
    lr: 1e-2,
    stage2_lr: 5e-3,
    warmup_steps: 0,
    weight_decay: 0,
    drop_box_fraction: 0.5,
    seed: 3,
    save_every: 2,
  };
  const stages: number[] = [];
  const evaluate = (stage: 1 | 2) => {
    stages.push(stage);
    return Promise.resolve({
      n: 1,
      accuracy: 0.5,
      no_answer_rate: 0,
      mean_reward: 0,
      accuracy_boxed: 0.5,
      mean_length: 1,
      k: 1,
      no_box_rate: 0,
    });
  };
  const { model, variables } = trainableModel(config, initWeights(config, { seed: 3 }));
  const root = await Deno.makeTempDir();
  try {
    let atStage1: Float32Array | null = null;
    let stage1State: SftState | null = null;
    const out = await runSft({ model, variables, tokenizer }, { rows, test: [] }, {
      ...settings,
      writer: fileRunWriter(root),
      resumed: null,
      evaluate,
      onStage1Done: async (state) => {
        stage1State = structuredClone(state);
        atStage1 = new Float32Array(await model.weights.get("model.norm.weight")!.data());
      },
    });
    assert.deepEqual(stages, [1], "no stage 2, no second evaluation");
    assert.equal(out.stage2Eval, null);
    assert.equal(stage1State!.stage1Eval?.accuracy, 0.5);
    assert.equal(stage1State!.tokens, out.state.tokens);
    assert.deepEqual(
      atStage1,
      new Float32Array(await model.weights.get("model.norm.weight")!.data()),
    );
    // The summary says what the weights are: stage 1, with no stage-2 evaluation or steps.
    const summary = sftSummary(out.state, { stage2Eval: null, settings, args: {} });
    assert.equal(summary.stage, 1);
    assert.equal(summary.stage2, null);
    assert.deepEqual(summary.steps, { stage1: 2, stage2: 0 });
    const stage2 = sftSummary(out.state, { stage2Eval: await evaluate(2), settings, args: {} });
    assert.deepEqual([stage2.stage, stage2.steps], [2, { stage1: 2, stage2: 0 }]);
  } finally {
    model.dispose();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("data/demo/sft-stage1's sft_summary.json describes a stage-1 model", async () => {
  const summary = JSON.parse(await Deno.readTextFile("data/demo/sft-stage1/sft_summary.json"));
  assert.equal(summary.stage, 1);
  assert.equal(summary.stage2, null);
  assert.deepEqual(summary.steps, { stage1: 1600, stage2: 0 });
  assert.equal(summary.stage1.n, 500);
});
