/**
 * The phases called as a notebook calls them: plain records built here (model, tokenizer,
 * adapter, optimizer and literal config slices), no trainer context.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import type { GrpoLossOptions, GrpoMetrics } from "../lib/grpo.ts";
import {
  advantagePhase,
  completionLogProbsAndEntropies,
  disposeMetrics,
  GRPO_METRIC_NAMES,
  grpoLossAndGrads,
} from "../lib/grpo.ts";
import { createLora, loadLora } from "../lib/lora.ts";
import { loadModel } from "../lib/model_loader.ts";
import { AdamW } from "../lib/optim.ts";
import type { NamedGrads } from "../lib/optim.ts";
import { scorePhase } from "../lib/reward.ts";
import { generatePhase, toTrainingBatch } from "../lib/rollout.ts";
import type { FinishReason } from "../lib/rollout.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { disposePrepared, prepareMicroBatches, updatePhase } from "../lib/update.ts";
import type { PreparedBatch, UpdateConfig, UpdateMetrics } from "../lib/update.ts";
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
    "entropy",
    "grad_norm",
    "learning_rate",
    "update_skipped",
  ];
  assert.deepEqual(Object.keys(metrics), names);
  for (const name of names) assert.ok(Number.isFinite(metrics[name]), `${name} ${metrics[name]}`);
  assert.ok(metrics.grad_norm > 0);
  assert.equal(metrics.learning_rate, 1e-2);
  assert.equal(metrics.update_skipped, 0);
  const after = await lastB.data();
  assert.ok(after.some((x, i) => x !== start[i]), "lora_B did not change");
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  adapter.dispose();
  optimizer.dispose();
  model.dispose();
});

Deno.test("updatePhase() with the IS correction reweights by perturbed sampler log-probs; tensors stay flat", async () => {
  await useTestBackend("wasm+blas");
  const model = await loadModel(DIR);
  const tokenizer = await loadTokenizer(DIR);
  // No dropout: the trainer's log-probs then equal the sampler's up to float noise.
  const adapter = createLora(model, { ...LORA, lora_dropout: 0 }, { seed: 1 });
  const optimizer = new AdamW([...adapter.variables.values()], {
    adam_beta1: 0.9,
    adam_beta2: 0.999,
    adam_epsilon: 1e-8,
    weight_decay: 0,
  });
  const group = await generatePhase({ model, tokenizer, adapter, config: CONFIG }, EXAMPLES, {
    seed: 1,
  });
  // A rollout engine whose log-probs differ from the trainer's by up to ±0.3 per token.
  const shift = (b: number, t: number) => 0.3 * Math.sin(1 + b + 2 * t);
  const perturbed = {
    ...group,
    samplingLogProbs: group.samplingLogProbs.map((row, b) => row.map((x, t) => x + shift(b, t))),
  };
  const largest = Math.max(
    ...group.completionIds.flatMap((row, b) => row.map((_, t) => Math.abs(shift(b, t)))),
  );
  const advantages = group.texts.map((_, i) => (i % 2 === 0 ? 1 : -1));
  const lastB = [...adapter.variables].filter(([key]) => key.includes("lora_B")).at(-1)![1];
  const start = (await lastB.data()).slice();
  for (const mode of ["token_truncate", "sequence_mask"] as const) {
    const config = {
      ...CONFIG,
      grpo: {
        ...CONFIG.grpo,
        vllm_importance_sampling_correction: true,
        vllm_importance_sampling_mode: mode,
        vllm_importance_sampling_clip_min: null,
        vllm_importance_sampling_clip_max: mode === "token_truncate" ? 1.2 : 3,
      },
    };
    const policy = { model, tokenizer, adapter, config };
    let afterStep1 = 0;
    for (let step = 0; step < 3; step++) {
      const prepared = prepareMicroBatches(policy, perturbed, advantages);
      const metrics = await updatePhase({ model, adapter, optimizer, config }, prepared, {
        learningRate: 1e-2,
        dropoutSeed: step,
      });
      prepared.forEach(disposePrepared);
      if (step === 0 && mode === "token_truncate") {
        // The first update's policy is the sampler's (lora_B = 0): the difference is the shift.
        const diff = metrics["sampling/sampling_logp_difference/max"];
        assert.ok(Math.abs(diff - largest) < 1e-4, `${mode}: max difference ${diff} vs ${largest}`);
      }
      if (step === 0) afterStep1 = tf.memory().numTensors;
      const min = metrics["sampling/importance_sampling_ratio/min"];
      const mean = metrics["sampling/importance_sampling_ratio/mean"];
      const max = metrics["sampling/importance_sampling_ratio/max"];
      assert.ok(min <= mean && mean <= max && min !== max, `${mode}: ${min} ${mean} ${max}`);
      if (mode === "token_truncate") assert.ok(max <= 1.2 + 1e-6, `${mode}: clip_max ${max}`);
    }
    assert.equal(tf.memory().numTensors, afterStep1, `${mode}: tensor count grew over 3 steps`);
  }
  const after = await lastB.data();
  assert.ok(after.some((x, i) => x !== start[i]), "lora_B did not change");
  adapter.dispose();
  optimizer.dispose();
  model.dispose();
});

const extra = JSON.parse(await Deno.readTextFile(`${DIR}/grpo_trl_extra.json`)) as {
  batch: {
    prompt_ids: number[][];
    prompt_mask: number[][];
    completion_ids: number[][];
    completion_mask: number[][];
    old_per_token_logps: number[][];
    ref_per_token_logps: number[][];
    temperature: number;
  };
  cases: {
    name: string;
    effective: Record<string, unknown> & { beta: number; max_completion_length: number };
    advantages: number[];
    sampling_per_token_logps?: number[][];
  }[];
};

/** A fixture case's GRPO options under our config keys (its `effective` TRL values). */
function grpoOf(c: (typeof extra.cases)[number]): UpdateConfig["grpo"] {
  // `effective` uses our key names but for beta and the IS flag; the rest the loss ignores.
  const { beta, vllm_importance_sampling_correction_active, ...rest } = c.effective;
  return {
    ...rest,
    kl_coef: beta,
    vllm_importance_sampling_correction: vllm_importance_sampling_correction_active,
    num_iterations: 1,
    mask_truncated_completions: false,
  } as unknown as UpdateConfig["grpo"];
}

Deno.test("updatePhase() computes grpoLossAndGrads' gradients and metrics for each TRL 1.13 fixture case's options", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const lora = await loadLora(model, `${DIR}/adapter`); // lora_dropout 0
  const vars = [...lora.variables.values()];
  const b = extra.batch;
  // The fixture's rows as a rollout gives them: completions cut after their EOS.
  const lengths = b.completion_mask.map((row) => row.reduce((s, x) => s + x, 0));
  const rows = {
    promptIds: b.prompt_ids.map((row, i) => row.filter((_, t) => b.prompt_mask[i][t] === 1)),
    completionIds: b.completion_ids.map((row, i) => row.slice(0, lengths[i])),
    finishReasons: lengths.map(() => "eos" as FinishReason),
  };
  const before = tf.memory().numTensors;
  for (const c of extra.cases) {
    const grpo = grpoOf(c);
    const sampling = c.sampling_per_token_logps?.map((row, i) => row.slice(0, lengths[i]));
    const p: PreparedBatch = {
      batch: toTrainingBatch({ ...rows, samplingLogProbs: sampling }, 256),
      advantages: tf.tensor1d(c.advantages),
      ref: c.effective.beta === 0 ? null : tf.tensor2d(b.ref_per_token_logps),
      old: tf.tensor2d(b.old_per_token_logps),
    };
    const config = {
      grpo,
      generation: { temperature: b.temperature, max_new_tokens: c.effective.max_completion_length },
      training: { per_device_train_batch_size: 6, gradient_checkpointing: false, max_grad_norm: 0 },
    };
    // An optimizer that only keeps the gradients it is given.
    let got: NamedGrads = {};
    const keep = {
      step(grads: NamedGrads) {
        got = Object.fromEntries(Object.entries(grads).map(([k, g]) => [k, g.clone()]));
      },
    } as unknown as AdamW;
    const metrics = await updatePhase({ model, adapter: lora, optimizer: keep, config }, [p], {
      learningRate: 0,
      dropoutSeed: 0,
    });
    const direct = grpoLossAndGrads(
      () =>
        completionLogProbsAndEntropies(model, {
          inputIds: p.batch.inputIds,
          attentionMask: p.batch.attentionMask,
          completionLength: p.batch.completionLength,
          temperature: b.temperature,
        }, { adapter: lora }),
      {
        old_per_token_logps: p.old,
        ref_per_token_logps: p.ref,
        advantages: p.advantages,
        completion_mask: p.batch.completionMask,
        sampling_per_token_logps: p.batch.samplingPerTokenLogps,
      },
      {
        ...(grpo as GrpoLossOptions),
        max_completion_length: c.effective.max_completion_length,
        num_items_in_batch: p.batch.numTokens,
        varList: vars,
      },
    );
    for (const v of vars) {
      assert.deepEqual(await got[v.name].data(), await direct.grads[v.name].data(), c.name);
    }
    assert.equal(metrics.loss, (await direct.loss.data())[0], c.name);
    const noClip = ["cispo", "sapo", "vespo"].includes(grpo.loss_type);
    for (const [key, value] of Object.entries(direct.metrics)) {
      const name = GRPO_METRIC_NAMES[key as keyof GrpoMetrics];
      if (value === null || (noClip && name.startsWith("clip_ratio/"))) {
        assert.ok(key === "kl" || !(name in metrics), `${c.name}: ${name} logged`);
        continue;
      }
      assert.equal(metrics[name], (await value.data())[0], `${c.name}: ${name}`);
    }
    tf.dispose([direct.loss, ...Object.values(direct.grads), ...Object.values(got)]);
    disposeMetrics(direct.metrics);
    disposePrepared(p);
  }
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  lora.dispose();
  model.dispose();
});
