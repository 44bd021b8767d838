/**
 * The phases called as a notebook calls them: plain records built here (model, tokenizer,
 * adapter, optimizer and literal config slices), no trainer context.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { advantagePhase } from "../lib/grpo.ts";
import { createLora } from "../lib/lora.ts";
import { loadModel } from "../lib/model_loader.ts";
import { AdamW } from "../lib/optim.ts";
import { scorePhase } from "../lib/reward.ts";
import { generatePhase } from "../lib/rollout.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { disposePrepared, prepareMicroBatches, updatePhase } from "../lib/update.ts";
import type { UpdateMetrics } from "../lib/update.ts";
import { useTestBackend } from "./_backend.ts";

const DIR = new URL("./fixtures/qwen2-tiny", import.meta.url).pathname;
const LORA = {
  lora_r: 4,
  lora_alpha: 8,
  lora_dropout: 0.5,
  target_modules: ["q_proj", "v_proj"],
};
const CONFIG = {
  generation: {
    max_new_tokens: 6,
    temperature: 0.7,
    top_p: 1,
    top_k: 0,
    stop: [] as string[],
    prompt_format: "plain",
    system_prompt: "",
  },
  grpo: {
    num_return_sequences: 2,
    scale_rewards: "group",
    loss_type: "dapo",
    epsilon: 0.2,
    epsilon_high: null,
    kl_coef: 0.05,
    num_iterations: 1,
    mask_truncated_completions: false,
  },
  training: { per_device_train_batch_size: 2, gradient_checkpointing: false, max_grad_norm: 1 },
} as const;
const REWARD = {
  reward_functions: ["accuracy" as const],
  reward_weights: null,
  reward_correct: 1,
  reward_wrong: -1,
  reward_no_answer: -0.5,
};
const EXAMPLES = [1, 2].map((i) => ({
  id: `q${i}`,
  question: `${i} + ${i} = ?`,
  answer: String(2 * i),
  source: `test:${i}`,
}));

Deno.test("the phases run on plain records: generate → score → advantages → update", async () => {
  await useTestBackend("wasm+blas");
  const model = await loadModel(DIR);
  const tokenizer = await loadTokenizer(DIR);
  const adapter = createLora(model, LORA, { seed: 1 });
  const optimizer = new AdamW([...adapter.variables.values()], {
    adam_beta1: 0.9,
    adam_beta2: 0.999,
    adam_epsilon: 1e-8,
    weight_decay: 0,
  });
  const before = tf.memory().numTensors;
  const lastB = [...adapter.variables].filter(([key]) => key.includes("lora_B")).at(-1)![1];
  const start = (await lastB.data()).slice(); // lora_B starts at zero and moves first

  const group = await generatePhase({ model, tokenizer, adapter, config: CONFIG }, EXAMPLES, {
    seed: 1,
  });
  assert.equal(group.texts.length, 4);
  assert.deepEqual(group.answers, ["2", "2", "4", "4"]);
  const scores = scorePhase(group, REWARD);
  const advantages = await advantagePhase(scores.rewards, CONFIG.grpo);
  // Prepare reads the tokenizer's pad id only; update needs no tokenizer.
  const prepared = prepareMicroBatches(
    { model, tokenizer: { padTokenId: tokenizer.padTokenId }, adapter, config: CONFIG },
    group,
    advantages.map((a, i) => a + (i % 2 === 0 ? 1 : -1)), // non-zero, so the update moves
  );
  assert.equal(prepared.length, 2);
  const metrics = await updatePhase({ model, adapter, optimizer, config: CONFIG }, prepared, {
    learningRate: 1e-2,
    dropoutSeed: 5,
  });
  prepared.forEach(disposePrepared);
  const names: (keyof UpdateMetrics)[] = [
    "loss",
    "policy_loss",
    "kl",
    "kl_penalty",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "grad_norm",
    "learning_rate",
  ];
  assert.deepEqual(Object.keys(metrics), names);
  for (const name of names) assert.ok(Number.isFinite(metrics[name]), `${name} ${metrics[name]}`);
  assert.ok(metrics.grad_norm > 0);
  assert.equal(metrics.learning_rate, 1e-2);
  const after = await lastB.data();
  assert.ok(after.some((x, i) => x !== start[i]), "lora_B did not change");
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  adapter.dispose();
  optimizer.dispose();
  model.dispose();
});
