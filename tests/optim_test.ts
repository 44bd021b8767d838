// AdamW numbers come from tests/fixtures/qwen2-tiny/expected.json (`adamw`): torch.optim.AdamW
// (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01) for 2 steps, with and without
// clip_grad_norm_(max_norm=1.0). Schedule values are worked by hand from transformers'
// get_{linear,cosine,constant}_schedule_with_warmup formulas.
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { useBackend } from "../lib/backend.ts";
import {
  accumulateGrads,
  AdamW,
  type AdamWOptions,
  clipGradNorm,
  globalGradNorm,
  learningRateAt,
  type ScheduleOptions,
  warmupStepsFor,
} from "../lib/optim.ts";
import { assertAllClose } from "./_assert.ts";

await useBackend("cpu");

type Nested = number | Nested[];
type Named = Record<string, Nested>;
const adamw = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/qwen2-tiny/expected.json", import.meta.url)),
).adamw as {
  lr: number;
  betas: [number, number];
  eps: number;
  weight_decay: number;
  params_init: Named;
  grads_step1: Named;
  grads_step2: Named;
  no_clip: Record<string, Named>;
  "clip_grad_norm_max_norm_1.0": Record<string, Named | number>;
};
const names = ["w1", "b1", "w2"];
const options: AdamWOptions = {
  adam_beta1: adamw.betas[0],
  adam_beta2: adamw.betas[1],
  adam_epsilon: adamw.eps,
  weight_decay: adamw.weight_decay,
};

function flat(x: Nested): number[] {
  return Array.isArray(x) ? x.flatMap(flat) : [x];
}

/** Fixture tensors keyed `${prefix}/${name}` (variable names are global in tfjs). */
function namedTensors(values: Named, prefix: string): tf.NamedTensorMap {
  return Object.fromEntries(names.map((n) => [`${prefix}/${n}`, tf.tensor(values[n] as number[])]));
}

function makeVariables(prefix: string, values: Named = adamw.params_init): tf.Variable[] {
  // tidy disposes the initial tensor; variables survive it.
  return tf.tidy(() =>
    names.map((n) => tf.variable(tf.tensor(values[n] as number[]), true, `${prefix}/${n}`))
  );
}

async function assertParams(vars: tf.Variable[], want: Named, label: string): Promise<void> {
  for (let i = 0; i < names.length; i++) {
    assertAllClose(await vars[i].data(), flat(want[names[i]]), 1e-6, `${label} ${names[i]}`);
  }
}

async function assertMoments(
  optimizer: AdamW,
  prefix: string,
  expAvg: Named,
  expAvgSq: Named,
  label: string,
): Promise<void> {
  const state = await optimizer.state();
  for (const n of names) {
    assertAllClose(state.exp_avg[`${prefix}/${n}`], flat(expAvg[n]), 1e-6, `${label} m ${n}`);
    assertAllClose(state.exp_avg_sq[`${prefix}/${n}`], flat(expAvgSq[n]), 1e-6, `${label} v ${n}`);
  }
}

Deno.test("AdamW matches torch.optim.AdamW for two steps without clipping", async () => {
  const before = tf.memory().numTensors;
  const p = "noclip";
  const vars = makeVariables(p);
  const optimizer = new AdamW(vars, options);
  const want = adamw.no_clip;
  for (const step of [1, 2]) {
    const grads = namedTensors(step === 1 ? adamw.grads_step1 : adamw.grads_step2, p);
    optimizer.step(grads, adamw.lr);
    tf.dispose(Object.values(grads));
    await assertParams(vars, want[`params_after_step${step}`], `step ${step}`);
    await assertMoments(
      optimizer,
      p,
      want[`exp_avg_after_step${step}`],
      want[`exp_avg_sq_after_step${step}`],
      `step ${step}`,
    );
  }
  assert.equal(optimizer.stepCount, 2);
  optimizer.dispose();
  tf.dispose(vars);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("clipGradNorm() + AdamW match clip_grad_norm_(1.0) then torch AdamW", async () => {
  const before = tf.memory().numTensors;
  const p = "clip";
  const vars = makeVariables(p);
  const optimizer = new AdamW(vars, options);
  const want = adamw["clip_grad_norm_max_norm_1.0"];
  for (const step of [1, 2]) {
    const grads = namedTensors(step === 1 ? adamw.grads_step1 : adamw.grads_step2, p);
    const clipped = clipGradNorm(grads, 1.0);
    const norm = (await clipped.norm.data())[0];
    assert.ok(Math.abs(norm - (want[`step${step}_total_norm_before_clip`] as number)) < 1e-6);
    const wantClipped = want[`step${step}_clipped_grads`] as Named;
    for (const n of names) {
      assertAllClose(await clipped.grads[`${p}/${n}`].data(), flat(wantClipped[n]), 1e-7, n);
    }
    optimizer.step(clipped.grads, adamw.lr);
    tf.dispose([...Object.values(grads), ...Object.values(clipped.grads), clipped.norm]);
    await assertParams(vars, want[`params_after_step${step}`] as Named, `step ${step}`);
    await assertMoments(
      optimizer,
      p,
      want[`exp_avg_after_step${step}`] as Named,
      want[`exp_avg_sq_after_step${step}`] as Named,
      `step ${step}`,
    );
  }
  // Step 1's norm 3.24 gives coefficient 0.3086; step 2 (0.567) is not clipped.
  assert.ok(Math.abs((want.step1_clip_coef as number) - 1 / (3.2407586574554443 + 1e-6)) < 1e-7);
  optimizer.dispose();
  tf.dispose(vars);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("AdamW state() → loadState() resumes bit-identically", async () => {
  const before = tf.memory().numTensors;
  // Continuous run: two steps.
  const straight = makeVariables("straight");
  const a = new AdamW(straight, options);
  for (const g of [adamw.grads_step1, adamw.grads_step2]) {
    const grads = namedTensors(g, "straight");
    a.step(grads, adamw.lr);
    tf.dispose(Object.values(grads));
  }
  // Interrupted run: one step, export, throw everything away, rebuild, load, one more step.
  let vars = makeVariables("resumed");
  let b = new AdamW(vars, options);
  const grads1 = namedTensors(adamw.grads_step1, "resumed");
  b.step(grads1, adamw.lr);
  const saved = await b.state();
  const params: Named = {};
  for (let i = 0; i < names.length; i++) {
    params[names[i]] = (await vars[i].array()) as Nested;
  }
  b.dispose();
  tf.dispose(vars);
  vars = makeVariables("resumed", params);
  b = new AdamW(vars, options);
  b.loadState(saved);
  assert.equal(b.stepCount, 1);
  const grads2 = namedTensors(adamw.grads_step2, "resumed");
  b.step(grads2, adamw.lr);
  for (let i = 0; i < names.length; i++) {
    assert.deepEqual(await vars[i].data(), await straight[i].data(), names[i]);
  }
  const [sa, sb] = [await a.state(), await b.state()];
  for (const n of names) {
    assert.deepEqual(sb.exp_avg[`resumed/${n}`], sa.exp_avg[`straight/${n}`]);
    assert.deepEqual(sb.exp_avg_sq[`resumed/${n}`], sa.exp_avg_sq[`straight/${n}`]);
  }
  await assertParams(vars, adamw.no_clip.params_after_step2, "resumed");
  // The exported arrays are copies: later steps do not change them.
  const snapshot = Array.from(saved.exp_avg["resumed/w1"]);
  b.step(grads2, adamw.lr);
  assert.deepEqual(Array.from(saved.exp_avg["resumed/w1"]), snapshot);
  tf.dispose([...Object.values(grads1), ...Object.values(grads2), ...vars, ...straight]);
  a.dispose();
  b.dispose();
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("AdamW rejects missing, unknown and misshapen gradients and bad state", async () => {
  const vars = makeVariables("reject");
  const optimizer = new AdamW(vars, options);
  const grads = namedTensors(adamw.grads_step1, "reject");
  const { "reject/b1": b1, ...partial } = grads;
  assert.throws(() => optimizer.step(partial, 1e-3), { name: "TypeError", message: /reject\/b1/ });
  const extra = tf.zeros([1]);
  assert.throws(() => optimizer.step({ ...grads, other: extra }, 1e-3), {
    name: "TypeError",
    message: /unknown variable other/,
  });
  const wrong = tf.zeros([3, 2]);
  assert.throws(() => optimizer.step({ ...grads, "reject/w1": wrong }, 1e-3), RangeError);
  assert.throws(() => optimizer.step(grads, NaN), RangeError);
  assert.equal(optimizer.stepCount, 0, "a rejected step changes nothing");
  const state = await optimizer.state();
  state.exp_avg["reject/w1"] = new Float32Array(5);
  assert.throws(() => optimizer.loadState(state), { name: "RangeError", message: /reject\/w1/ });
  assert.throws(() => new AdamW(vars, { ...options, adam_beta1: 1 }), RangeError);
  tf.dispose([...Object.values(grads), b1, extra, wrong, ...vars]);
  optimizer.dispose();
});

Deno.test("AdamW accepts a Map of gradients", async () => {
  const vars = makeVariables("map");
  const optimizer = new AdamW(vars, options);
  const grads = namedTensors(adamw.grads_step1, "map");
  optimizer.step(new Map(Object.entries(grads)), adamw.lr);
  await assertParams(vars, adamw.no_clip.params_after_step1, "map");
  tf.dispose([...Object.values(grads), ...vars]);
  optimizer.dispose();
});

Deno.test("globalGradNorm() and clipGradNorm() follow torch; small norms pass unchanged", async () => {
  const before = tf.memory().numTensors;
  const grads = { a: tf.tensor1d([3, 0]), b: tf.tensor2d([[0, 4]]) };
  const norm = globalGradNorm(grads);
  assert.equal((await norm.data())[0], 5);
  const big = clipGradNorm(grads, 10);
  // coef = min(1, 10 / 5.000001) = 1
  assert.deepEqual(Array.from(await big.grads.a.data()), [3, 0]);
  const small = clipGradNorm(new Map(Object.entries(grads)), 1);
  assertAllClose(await small.grads.b.data(), [0, 4 / (5 + 1e-6)], 1e-7);
  assert.deepEqual(small.grads.b.shape, [1, 2]);
  assert.throws(() => clipGradNorm(grads, 0), RangeError);
  tf.dispose([
    norm,
    big.norm,
    small.norm,
    ...Object.values(big.grads),
    ...Object.values(small.grads),
    ...Object.values(grads),
  ]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("accumulateGrads() sums micro-batches and disposes the old sum", async () => {
  const before = tf.memory().numTensors;
  const g1 = { a: tf.tensor1d([1, 2]), b: tf.scalar(3) };
  const g2 = { a: tf.tensor1d([0.5, -2]), b: tf.scalar(1) };
  let sum = accumulateGrads(null, g1);
  const first = sum;
  sum = accumulateGrads(sum, new Map(Object.entries(g2)));
  assert.ok(first.a.isDisposed && first.b.isDisposed, "old sum disposed");
  assert.ok(!g1.a.isDisposed && !g2.a.isDisposed, "inputs kept");
  assert.deepEqual(Array.from(await sum.a.data()), [1.5, 0]);
  assert.deepEqual(Array.from(await sum.b.data()), [4]);
  assert.throws(() => accumulateGrads(sum, { a: g1.a }), RangeError);
  tf.dispose([...Object.values(g1), ...Object.values(g2), ...Object.values(sum)]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("learningRateAt() matches HF schedules at hand-worked points", () => {
  const base: ScheduleOptions = {
    learning_rate: 1e-3,
    lr_scheduler_type: "linear",
    warmup_steps: 10,
    warmup_ratio: 0.5, // ignored: warmup_steps > 0 wins
    totalSteps: 100,
  };
  const at = (step: number, type: ScheduleOptions["lr_scheduler_type"]) =>
    learningRateAt(step, { ...base, lr_scheduler_type: type });
  const close = (got: number, want: number, label: string) =>
    assert.ok(Math.abs(got - want) < 1e-15, `${label}: ${got} vs ${want}`);
  for (const type of ["constant", "linear", "cosine"] as const) {
    close(at(0, type), 0, `${type} 0`); // HF warmup starts at 0
    close(at(5, type), 5e-4, `${type} 5`);
    close(at(10, type), 1e-3, `${type} 10`);
  }
  close(at(55, "linear"), 5e-4, "linear 55"); // (100 - 55) / 90
  close(at(99, "linear"), 1e-3 / 90, "linear 99");
  close(at(100, "linear"), 0, "linear 100");
  close(at(120, "linear"), 0, "linear past the end");
  close(at(55, "cosine"), 5e-4, "cosine 55"); // progress 0.5
  close(at(28, "cosine"), 1e-3 * 0.5 * (1 + Math.cos(0.2 * Math.PI)), "cosine 28"); // 0.904508
  close(at(100, "cosine"), 0, "cosine 100");
  close(at(77, "constant"), 1e-3, "constant 77");
  // warmup_ratio when warmup_steps is 0: ceil(0.05 * 30) = 2 steps.
  const ratio = { ...base, warmup_steps: 0, warmup_ratio: 0.05, totalSteps: 30 };
  assert.equal(warmupStepsFor(30, ratio), 2);
  close(learningRateAt(1, ratio), 5e-4, "ratio warmup 1");
  close(learningRateAt(2, ratio), 1e-3, "ratio warmup 2");
  close(learningRateAt(16, ratio), 1e-3 * 14 / 28, "ratio linear 16");
  // No warmup at all: step 0 has the full rate.
  close(learningRateAt(0, { ...ratio, warmup_ratio: 0 }), 1e-3, "no warmup");
  assert.throws(() => learningRateAt(-1, base), RangeError);
  assert.throws(() => learningRateAt(1.5, base), RangeError);
  assert.throws(
    () => learningRateAt(1, { ...base, lr_scheduler_type: "polynomial" as "linear" }),
    { name: "RangeError", message: /polynomial/ },
  );
});
