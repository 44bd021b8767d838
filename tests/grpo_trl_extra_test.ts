/**
 * TRL 1.13's GRPO options (issue 14) against the values TRL itself computed:
 * tests/fixtures/qwen2-tiny/grpo_trl_extra.json, made by make_grpo_trl_extra.py with a real
 * `trl.GRPOTrainer` per case on the tiny Qwen2 and its LoRA adapter (tests/fixtures/README.md,
 * section "grpo_trl_extra.json": formulas, shared settings, tolerances). Losses within 1e-5
 * absolute or 1e-4 relative, LoRA gradients within 1e-4 of each tensor's max |value|, masks and
 * clip ratios exact.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import {
  completionLogProbs,
  completionLogProbsAndEntropies,
  disposeMetrics,
  GRPO_METRIC_NAMES,
  grpoLoss,
  grpoLossAndGrads,
  type GrpoLossInputs,
  type GrpoLossOptions,
  type GrpoMetrics,
  grpoPerToken,
} from "../lib/grpo.ts";
import { loadLora } from "../lib/lora.ts";
import { loadModel } from "../lib/model_loader.ts";
import { assertAllClose, assertCloseToMax } from "./_assert.ts";
import { useTestBackend } from "./_backend.ts";
import { type GrpoFixture, grpoTensors } from "./_fixtures.ts";

const DIR = new URL("./fixtures/qwen2-tiny", import.meta.url).pathname;
const extra = JSON.parse(await Deno.readTextFile(`${DIR}/grpo_trl_extra.json`)) as {
  batch: GrpoFixture & { per_token_logps: number[][]; advantages_scale_rewards_true: number[] };
  sampling_logps_perturbation: number[][];
  cases: ExtraCase[];
};
const batch = extra.batch;

/** The resolved GRPOConfig values of a case (`effective` in the fixture). */
interface Effective {
  loss_type: GrpoLossOptions["loss_type"];
  beta: number;
  epsilon: number;
  epsilon_high: number;
  importance_sampling_level: "token" | "sequence";
  delta: number | null;
  top_entropy_quantile: number;
  use_bias_correction_kl: boolean;
  off_policy_mask_threshold: number | null;
  max_completion_length: number;
  sapo_temperature_pos: number;
  sapo_temperature_neg: number;
  vespo_k_pos: number;
  vespo_lambda_pos: number;
  vespo_k_neg: number;
  vespo_lambda_neg: number;
  vllm_importance_sampling_correction_active: boolean;
  vllm_importance_sampling_mode?: GrpoLossOptions["vllm_importance_sampling_mode"];
  vllm_importance_sampling_clip_min?: number | null;
  vllm_importance_sampling_clip_max?: number | null;
}

/** One of the 30 cases; optional fields exist only where the case has them. */
interface ExtraCase {
  name: string;
  effective: Effective;
  loss: number;
  per_token_loss: number[][];
  coef_1: number[][];
  coef_2?: number[][];
  per_token_kl_as_used?: number[][];
  advantages: number[];
  metrics: Record<string, number>;
  grads: Record<string, number[][]>;
  dapo_normalizer?: number;
  entropies?: number[][];
  entropy_mask?: number[][];
  off_policy_mask?: number[];
  importance_sampling_ratio?: number[][];
  sampling_per_token_logps?: number[][];
  cispo_clamped_ratios?: number[][];
  vespo_phi_seq?: number[];
}

function optionsOf(c: ExtraCase): GrpoLossOptions {
  const e = c.effective;
  const is = e.vllm_importance_sampling_correction_active;
  return {
    loss_type: e.loss_type,
    epsilon: e.epsilon,
    epsilon_high: e.epsilon_high,
    kl_coef: e.beta,
    max_completion_length: e.max_completion_length,
    importance_sampling_level: e.importance_sampling_level,
    delta: e.delta,
    top_entropy_quantile: e.top_entropy_quantile,
    use_bias_correction_kl: e.use_bias_correction_kl,
    off_policy_mask_threshold: e.off_policy_mask_threshold,
    sapo_temperature_pos: e.sapo_temperature_pos,
    sapo_temperature_neg: e.sapo_temperature_neg,
    vespo_k_pos: e.vespo_k_pos,
    vespo_lambda_pos: e.vespo_lambda_pos,
    vespo_k_neg: e.vespo_k_neg,
    vespo_lambda_neg: e.vespo_lambda_neg,
    vllm_importance_sampling_correction: is,
    ...(is
      ? {
        vllm_importance_sampling_mode: e.vllm_importance_sampling_mode,
        vllm_importance_sampling_clip_min: e.vllm_importance_sampling_clip_min ?? null,
        vllm_importance_sampling_clip_max: e.vllm_importance_sampling_clip_max ?? null,
      }
      : {}),
  };
}

/** The fixture inputs of a case except the policy log-probs, as fresh tensors. */
function batchOf(c: ExtraCase): Omit<GrpoLossInputs, "per_token_logps"> {
  return {
    old_per_token_logps: tf.tensor2d(batch.old_per_token_logps),
    ref_per_token_logps: c.effective.beta === 0 ? null : tf.tensor2d(batch.ref_per_token_logps),
    advantages: tf.tensor1d(c.advantages),
    completion_mask: tf.tensor2d(batch.completion_mask),
    sampling_per_token_logps: c.sampling_per_token_logps
      ? tf.tensor2d(c.sampling_per_token_logps)
      : null,
    entropies: c.entropies ? tf.tensor2d(c.entropies) : null,
  };
}

function disposeAll(x: object): void {
  tf.dispose(Object.values(x).filter((t): t is tf.Tensor => t instanceof tf.Tensor));
}

const mask = batch.completion_mask;
/** Entries of a [B, C] (or [B, 1], broadcast) tensor where completion_mask == 1. */
function masked(rows: ArrayLike<number>[] | number[][]): number[] {
  return mask.flatMap((row, b) =>
    row.flatMap((m, t) => (m === 1 ? [rows[b][rows[b].length === 1 ? 0 : t]] : []))
  );
}

async function rowsOf(t: tf.Tensor): Promise<number[][]> {
  return (await t.array()) as number[][];
}

/**
 * The loss error on the README's scale: <= 1e-5 when within 1e-5 absolute or 1e-4 relative
 * (relative errors count a tenth, since small losses carry float32 noise of ~1e-7 absolute).
 */
function lossError(got: number, want: number): number {
  const abs = Math.abs(got - want);
  return Math.min(abs, abs / Math.abs(want) / 10);
}

/** The metrics TRL logged for the case, read from ours by TRL name; clip ratios exact. */
async function assertMetrics(c: ExtraCase, metrics: GrpoMetrics, entropyTol: number) {
  const ours = new Map<string, number>();
  for (const [key, value] of Object.entries(metrics)) {
    if (value) ours.set(GRPO_METRIC_NAMES[key as keyof GrpoMetrics], (await value.data())[0]);
  }
  for (const [name, want] of Object.entries(c.metrics)) {
    // TRL's per-sequence clip_ratio/low_min and /high_max are not computed here (grpoLoss doc).
    if (name === "clip_ratio/low_min" || name === "clip_ratio/high_max") continue;
    if (name === "entropy" && !ours.has(name)) continue; // the loss-level run has no entropies
    assert.ok(ours.has(name), `${c.name}: metric ${name} missing`);
    const got = ours.get(name)!;
    const tol = name.startsWith("clip_ratio") || name === "cispo_clip_ratio"
      ? 1e-7 // token counts / 21 or sequence counts / 6: exact in float32
      : name === "entropy"
      ? entropyTol
      : 1e-5 * Math.max(1, Math.abs(want));
    assert.ok(Math.abs(got - want) <= tol, `${c.name}: ${name} ${got} vs ${want}`);
  }
  // Ours logs no clip ratio where TRL logs none (cispo, sapo, vespo): they stay 0.
  if (!("clip_ratio/region_mean" in c.metrics)) {
    assert.equal(ours.get("clip_ratio/region_mean"), 0, c.name);
  }
}

Deno.test("the fixture has TRL's 30 cases, each option covered", () => {
  assert.equal(extra.cases.length, 30);
  const groups = new Set(extra.cases.map((c) => c.name.split("/")[0]));
  assert.deepEqual([...groups].sort(), [
    "bias_correction_kl",
    "cispo",
    "dapo",
    "delta",
    "entropy_mask",
    "gspo",
    "luspo",
    "off_policy_mask",
    "off_policy_mask+vllm_is",
    "sapo",
    "vespo",
    "vllm_is",
  ]);
});

Deno.test("grpoPerToken() and grpoLoss() match TRL's tensors, losses and metrics for all 30 cases (fixture log-probs)", async () => {
  await useTestBackend("cpu");
  const before = tf.memory().numTensors;
  for (const c of extra.cases) {
    const inputs = { ...batchOf(c), per_token_logps: tf.tensor2d(batch.per_token_logps) };
    const options = optionsOf(c);
    const t = grpoPerToken(inputs, options);
    // The fixture's log-probs differ from TRL's own forward by up to 2.9e-6 (batch_checks),
    // VESPO's sequence weight sums them over a row, hence 1e-4 as for log-probs.
    assertAllClose(masked(await rowsOf(t.coef_1)), masked(c.coef_1), 1e-4, `${c.name} coef_1`);
    if (c.coef_2) {
      assertAllClose(masked(await rowsOf(t.coef_2!)), masked(c.coef_2), 1e-4, `${c.name} coef_2`);
    } else {
      assert.equal(t.coef_2, null, c.name);
    }
    if (c.per_token_kl_as_used) {
      assertAllClose(
        masked(await rowsOf(t.per_token_kl!)),
        masked(c.per_token_kl_as_used),
        1e-4,
        `${c.name} kl`,
      );
    }
    assert.deepEqual(t.per_token_loss.shape[1], c.per_token_loss[0].length, c.name);
    assertAllClose(
      masked(await rowsOf(t.per_token_loss)),
      masked(c.per_token_loss),
      1e-4,
      `${c.name} per_token_loss`,
    );
    if (c.entropy_mask) assert.deepEqual(await t.entropy_mask!.array(), c.entropy_mask, c.name);
    else assert.equal(t.entropy_mask, null, c.name);
    if (c.off_policy_mask) {
      assert.deepEqual((await t.off_policy_mask!.data()).join(), c.off_policy_mask.join(), c.name);
    } else {
      assert.equal(t.off_policy_mask, null, c.name);
    }
    if (c.importance_sampling_ratio) {
      const got = await rowsOf(t.importance_sampling_ratio!);
      assert.equal(got[0].length, c.importance_sampling_ratio[0].length, c.name);
      assertAllClose(got.flat(), c.importance_sampling_ratio.flat(), 1e-5, `${c.name} IS ratio`);
    }
    if (c.cispo_clamped_ratios) {
      const got = masked(await rowsOf(t.clamped_ratios!));
      assertAllClose(got, masked(c.cispo_clamped_ratios), 1e-4, `${c.name} clamped`);
    }
    if (c.vespo_phi_seq) {
      assertAllClose(await t.phi_seq!.data(), c.vespo_phi_seq, 1e-4, `${c.name} phi`);
    }
    disposeAll(t);
    const { loss, metrics } = grpoLoss(inputs, options);
    const got = (await loss.data())[0];
    assert.ok(lossError(got, c.loss) <= 1e-5, `${c.name}: loss ${got} vs ${c.loss}`);
    await assertMetrics(c, metrics, 1e-5);
    loss.dispose();
    disposeMetrics(metrics);
    disposeAll(inputs);
  }
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() dapo divides by num_items_in_batch: TRL's normaliser of both dapo cases", async () => {
  await useTestBackend("cpu");
  const before = tf.memory().numTensors;
  const tokens = mask.flat().reduce((a, b) => a + b, 0);
  for (const c of extra.cases.filter((x) => x.effective.loss_type === "dapo")) {
    // TRL: num_items_in_batch / num_processes · GA / steps_per_generation = the 21 tokens here.
    assert.equal(c.dapo_normalizer, tokens, c.name);
    const inputs = { ...batchOf(c), per_token_logps: tf.tensor2d(batch.per_token_logps) };
    const sum = masked(c.per_token_loss).reduce((a, b) => a + b, 0);
    for (const items of [undefined, 21, 42]) {
      const { loss, metrics } = grpoLoss(inputs, { ...optionsOf(c), num_items_in_batch: items });
      const got = (await loss.data())[0];
      assert.ok(Math.abs(got - sum / (items ?? tokens)) <= 1e-5, `${c.name} ${items}: ${got}`);
      if (items !== 42) assert.ok(lossError(got, c.loss) <= 1e-5, c.name);
      loss.dispose();
      disposeMetrics(metrics);
    }
    disposeAll(inputs);
  }
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() IS correction: sampler log-probs perturbed from the trainer's reweight the loss as TRL", async () => {
  await useTestBackend("cpu");
  const before = tf.memory().numTensors;
  // A rollout engine whose log-probs differ from the trainer's by a known perturbation.
  const pert = extra.sampling_logps_perturbation;
  const logps = batch.per_token_logps;
  const sampling = logps.map((row, b) => row.map((x, t) => mask[b][t] ? x + pert[b][t] : 0));
  const base = {
    loss_type: "bnpo",
    epsilon: 0.2,
    epsilon_high: null,
    kl_coef: 0,
    vllm_importance_sampling_correction: true,
    vllm_importance_sampling_mode: "token_truncate",
    vllm_importance_sampling_clip_min: null,
    vllm_importance_sampling_clip_max: null,
  } as const;
  const inputs: GrpoLossInputs = {
    per_token_logps: tf.tensor2d(logps),
    old_per_token_logps: null, // num_iterations 1: old = the current log-probs, detached
    ref_per_token_logps: null,
    advantages: tf.tensor1d(batch.advantages_scale_rewards_true),
    completion_mask: tf.tensor2d(mask),
    sampling_per_token_logps: tf.tensor2d(sampling),
  };
  const { loss, metrics } = grpoLoss(inputs, base);
  // coef_1 = 1, so the per-token loss is -A · exp(-perturbation), averaged over the 21 tokens.
  const a = batch.advantages_scale_rewards_true;
  const ratios = masked(pert).map((p) => Math.exp(-p));
  const tokenRow = mask.flatMap((row, b) => row.flatMap((m) => (m === 1 ? [b] : [])));
  const want = -ratios.reduce((s, r, i) => s + a[tokenRow[i]] * r, 0) / ratios.length;
  assert.ok(Math.abs((await loss.data())[0] - want) < 1e-6);
  const abs = masked(pert).map(Math.abs);
  const read = async (m: tf.Scalar | null | undefined) => (await m!.data())[0];
  assert.ok(
    Math.abs(await read(metrics.samplingLogpDifferenceMean) - abs.reduce((s, x) => s + x) / 21) <
      1e-6,
  );
  assert.ok(Math.abs(await read(metrics.samplingLogpDifferenceMax) - 0.3) < 1e-6);
  assert.ok(Math.abs(await read(metrics.importanceSamplingRatioMin) - Math.exp(-0.3)) < 1e-6);
  assert.ok(Math.abs(await read(metrics.importanceSamplingRatioMax) - Math.exp(0.3)) < 1e-6);
  tf.dispose(loss);
  disposeMetrics(metrics);
  // Sampler log-probs equal to the trainer's: ratio 1, the loss without correction.
  const same = grpoLoss({ ...inputs, sampling_per_token_logps: inputs.per_token_logps }, base);
  const plain = grpoLoss(inputs, { ...base, vllm_importance_sampling_correction: false });
  assert.equal((await same.loss.data())[0], (await plain.loss.data())[0]);
  assert.equal(await read(same.metrics.importanceSamplingRatioMean), 1);
  assert.equal(plain.metrics.importanceSamplingRatioMean, undefined, "no sampling/* without it");
  for (const r of [same, plain]) {
    r.loss.dispose();
    disposeMetrics(r.metrics);
  }
  disposeAll(inputs);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() names what an option needs: entropies, sampler log-probs", () => {
  const c = extra.cases.find((x) => x.name.startsWith("entropy_mask/grpo"))!;
  const inputs = {
    ...batchOf(c),
    entropies: null,
    per_token_logps: tf.tensor2d(batch.per_token_logps),
  };
  assert.throws(() => grpoLoss(inputs, optionsOf(c)), {
    name: "TypeError",
    message: /top_entropy_quantile=0.2 needs entropies.*completionLogProbsAndEntropies/,
  });
  assert.throws(
    () =>
      grpoLoss(inputs, {
        ...optionsOf(c),
        top_entropy_quantile: 1,
        vllm_importance_sampling_correction: true,
      }),
    { name: "TypeError", message: /needs sampling_per_token_logps/ },
  );
  disposeAll(inputs);
});

Deno.test("completionLogProbsAndEntropies() gives completionLogProbs' values, TRL's entropies, no entropy gradient", async () => {
  await useTestBackend("cpu");
  const model = await loadModel(DIR);
  const lora = await loadLora(model, `${DIR}/adapter`);
  const t = grpoTensors(batch);
  const before = tf.memory().numTensors;
  const input = {
    inputIds: t.inputIds,
    attentionMask: t.attentionMask,
    positionIds: t.positionIds,
    completionLength: t.C,
    temperature: batch.temperature,
  };
  const logps = completionLogProbs(model, input, { adapter: lora });
  const out = completionLogProbsAndEntropies(model, input, { adapter: lora });
  assert.deepEqual(await out.per_token_logps.data(), await logps.data());
  // TRL's entropy_from_logits on the temperature-scaled logits (the entropy_mask cases).
  const want = extra.cases.find((c) => c.entropies)!.entropies!;
  assertAllClose(masked(await rowsOf(out.entropies)), masked(want), 1e-4, "entropies");
  tf.dispose([logps, out.per_token_logps, out.entropies]);
  // The entropies add nothing to the gradient: it is the log-probs' alone.
  const vars = [...lora.variables.values()];
  const alone = tf.variableGrads(
    () => tf.sum(completionLogProbs(model, input, { adapter: lora })),
    vars,
  );
  const both = tf.variableGrads(() => {
    const o = completionLogProbsAndEntropies(model, input, { adapter: lora });
    return tf.add(tf.sum(o.per_token_logps), tf.sum(o.entropies)) as tf.Scalar;
  }, vars);
  for (const [key, v] of lora.variables) {
    assert.deepEqual(await both.grads[v.name].data(), await alone.grads[v.name].data(), key);
  }
  tf.dispose([
    alone.value,
    both.value,
    ...Object.values(alone.grads),
    ...Object.values(both.grads),
  ]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  t.dispose();
  lora.dispose();
  model.dispose();
});

for (const backend of ["cpu", "wasm+blas"] as const) {
  Deno.test(`LoRA gradients of all 30 TRL 1.13 cases match TRL (${backend})`, async () => {
    await useTestBackend(backend);
    const model = await loadModel(DIR);
    const lora = await loadLora(model, `${DIR}/adapter`);
    const t = grpoTensors(batch);
    const vars = [...lora.variables.values()];
    const before = tf.memory().numTensors;
    const forward = () =>
      completionLogProbsAndEntropies(model, {
        inputIds: t.inputIds,
        attentionMask: t.attentionMask,
        positionIds: t.positionIds,
        completionLength: t.C,
        temperature: batch.temperature,
      }, { adapter: lora });
    // Worst |loss - TRL| and gradient error / tensor max per option, for the record.
    const worst = new Map<string, { loss: number; grad: number }>();
    for (const c of extra.cases) {
      const inputs = batchOf(c);
      const { loss, grads, metrics } = grpoLossAndGrads(forward, inputs, {
        ...optionsOf(c),
        varList: vars,
      });
      const got = (await loss.data())[0];
      const error = lossError(got, c.loss);
      assert.ok(error <= 1e-5, `${c.name}: loss ${got} vs ${c.loss}`);
      const option = c.name.split("/")[0];
      const w = worst.get(option) ?? { loss: 0, grad: 0 };
      w.loss = Math.max(w.loss, Math.abs(got - c.loss));
      worst.set(option, w);
      for (const [key, v] of lora.variables) {
        const want = c.grads[key].flat();
        const have = await grads[v.name].data();
        assertCloseToMax(have, want, 1e-4, `${c.name} ${key}`);
        const scale = Math.max(...want.map(Math.abs));
        for (let i = 0; i < want.length; i++) {
          w.grad = Math.max(w.grad, Math.abs(have[i] - want[i]) / scale);
        }
      }
      await assertMetrics(c, metrics, 1e-4);
      tf.dispose([loss, ...Object.values(grads)]);
      disposeMetrics(metrics);
      if (c.entropy_mask) {
        // The mask is a decision: with the model's own entropies it must be TRL's exactly.
        const out = forward();
        assertAllClose(
          masked(await rowsOf(out.entropies)),
          masked(c.entropies!),
          1e-4,
          `${c.name} entropies`,
        );
        const per = grpoPerToken({ ...inputs, ...out }, optionsOf(c));
        assert.deepEqual(await per.entropy_mask!.array(), c.entropy_mask, c.name);
        disposeAll(per);
        disposeAll(out);
      }
      disposeAll(inputs);
    }
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    for (const [option, w] of worst) {
      console.log(
        `${backend} ${option}: loss ${w.loss.toExponential(1)}, grad ${w.grad.toExponential(1)}`,
      );
    }
    t.dispose();
    lora.dispose();
    model.dispose();
  });
}
