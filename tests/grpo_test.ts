// Expected numbers come from tests/fixtures/qwen2-tiny/expected.json (`grpo` section): an
// independent float32 PyTorch reference of TRL 0.21 GRPOTrainer._compute_loss, cross-checked
// against TRL 1.13 (see tests/fixtures/README.md).
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { useBackend } from "../lib/backend.ts";
import {
  groupRelativeAdvantages,
  groupStats,
  grpoLoss,
  grpoLossAndGrads,
  type GrpoLossInputs,
  type GrpoLossOptions,
  grpoPerToken,
  tokenLogProbs,
} from "../lib/grpo.ts";
import { assertAllClose } from "./_assert.ts";

await useBackend("cpu");

interface FixtureCase {
  name: string;
  loss_type: "grpo" | "bnpo" | "dr_grpo";
  epsilon_low: number;
  epsilon_high: number;
  beta: number;
  scale_rewards: boolean;
  max_completion_length: number;
  advantages: number[];
  coef_2: number[][];
  per_token_loss: number[][];
  loss: number;
  clip_ratio: { low_mean: number; high_mean: number; region_mean: number };
  mean_kl: number | null;
}

const fixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/qwen2-tiny/expected.json", import.meta.url)),
).grpo as {
  num_generations: number;
  max_completion_length: number;
  rewards: number[];
  group_mean_rewards: number[];
  group_std_rewards_unbiased: number[];
  advantages_scale_rewards_true: number[];
  advantages_scale_rewards_false: number[];
  completion_mask: number[][];
  per_token_logps: number[][];
  old_per_token_logps: number[][];
  ref_per_token_logps: number[][];
  per_token_kl: number[][];
  coef_1: number[][];
  cases: FixtureCase[];
};

const mask = fixture.completion_mask.flat();
/** Keeps the entries where completion_mask == 1 (the fixture's rule for per-token tensors). */
function masked(values: ArrayLike<number>): number[] {
  return mask.map((m, i) => (m === 1 ? values[i] : NaN)).filter((_, i) => mask[i] === 1);
}

function scaleRewards(c: FixtureCase): "group" | "none" {
  return c.scale_rewards ? "group" : "none";
}

function optionsOf(c: FixtureCase): GrpoLossOptions {
  return {
    loss_type: c.loss_type,
    epsilon: c.epsilon_low,
    epsilon_high: c.epsilon_high,
    kl_coef: c.beta,
    max_completion_length: c.max_completion_length,
  };
}

/** Fixture inputs for one case as fresh tensors; the caller disposes them. */
function inputsOf(c: FixtureCase, withRef = c.beta !== 0): GrpoLossInputs {
  return {
    per_token_logps: tf.tensor2d(fixture.per_token_logps),
    old_per_token_logps: tf.tensor2d(fixture.old_per_token_logps),
    ref_per_token_logps: withRef ? tf.tensor2d(fixture.ref_per_token_logps) : null,
    advantages: tf.tensor1d(c.advantages),
    completion_mask: tf.tensor2d(fixture.completion_mask, undefined, "int32"),
  };
}

function disposeInputs(inputs: GrpoLossInputs): void {
  tf.dispose(Object.values(inputs).filter((t): t is tf.Tensor => t !== null));
}

async function scalar(t: tf.Tensor): Promise<number> {
  return (await t.data())[0];
}

Deno.test("groupRelativeAdvantages() matches TRL on a hand-worked batch", async () => {
  const before = tf.memory().numTensors;
  // Group [1, 0]: mean 0.5, Bessel std 0.7071. Group [0, 0]: std 0, so 0.
  const rewards = tf.tensor1d([1, 0, 0, 0]);
  const advantages = groupRelativeAdvantages(rewards, {
    num_return_sequences: 2,
    scale_rewards: "group",
  });
  const got = await advantages.data();
  tf.dispose([rewards, advantages]);
  assertAllClose(got, [0.7070, -0.7070, 0, 0], 1e-3);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("groupRelativeAdvantages() matches the fixture for scale_rewards group and none", async () => {
  const before = tf.memory().numTensors;
  const rewards = tf.tensor1d(fixture.rewards);
  for (
    const [scale, want] of [
      ["group", fixture.advantages_scale_rewards_true],
      ["none", fixture.advantages_scale_rewards_false],
    ] as const
  ) {
    const a = groupRelativeAdvantages(rewards, {
      num_return_sequences: fixture.num_generations,
      scale_rewards: scale,
    });
    const got = await a.data();
    a.dispose();
    assertAllClose(got, want, 1e-6, scale);
    // The all-equal second group carries no signal: exactly 0, not just small.
    assert.deepEqual(Array.from(got.slice(3)), [0, 0, 0], scale);
  }
  for (const c of fixture.cases) {
    const a = groupRelativeAdvantages(rewards, {
      num_return_sequences: fixture.num_generations,
      scale_rewards: scaleRewards(c),
    });
    assertAllClose(await a.data(), c.advantages, 1e-6, c.name);
    a.dispose();
  }
  rewards.dispose();
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test('groupRelativeAdvantages() with "batch" divides by the Bessel std of the whole batch', async () => {
  const before = tf.memory().numTensors;
  const r = fixture.rewards;
  const mean = r.reduce((a, b) => a + b, 0) / r.length;
  const std = Math.sqrt(r.reduce((a, x) => a + (x - mean) ** 2, 0) / (r.length - 1));
  const groupMean = fixture.group_mean_rewards;
  const want = r.map((x, i) => (x - groupMean[Math.floor(i / 3)]) / (std + 1e-4));
  const rewards = tf.tensor1d(r);
  const a = groupRelativeAdvantages(rewards, { num_return_sequences: 3, scale_rewards: "batch" });
  assertAllClose(await a.data(), want, 1e-6);
  tf.dispose([rewards, a]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("groupRelativeAdvantages() rejects incomplete groups", () => {
  const rewards = tf.tensor1d([1, 0, 1]);
  assert.throws(
    () => groupRelativeAdvantages(rewards, { num_return_sequences: 2, scale_rewards: "group" }),
    { name: "RangeError", message: /num_return_sequences=2/ },
  );
  rewards.dispose();
});

Deno.test("groupStats() matches the fixture's group mean, Bessel std and zero-std share", () => {
  const stats = groupStats(fixture.rewards, { num_return_sequences: 3 });
  assertAllClose(stats.groupMean, fixture.group_mean_rewards, 1e-7);
  assertAllClose(stats.groupStd, fixture.group_std_rewards_unbiased, 1e-6);
  assert.equal(stats.fracRewardZeroStd, 0.5);
  assert.ok(Math.abs(stats.rewardMean - 2.5 / 6) < 1e-12);
  assert.ok(Math.abs(stats.rewardStd - 1.040833 / 2) < 1e-6);
  assert.throws(() => groupStats([1, NaN], { num_return_sequences: 2 }), RangeError);
});

Deno.test("grpoPerToken() matches coef_1, coef_2, KL and per_token_loss for all 12 cases", async () => {
  const before = tf.memory().numTensors;
  assert.equal(fixture.cases.length, 12);
  for (const c of fixture.cases) {
    const inputs = inputsOf(c, true);
    const t = grpoPerToken(inputs, optionsOf(c));
    assertAllClose(masked(await t.coef_1.data()), masked(fixture.coef_1.flat()), 1e-6, c.name);
    assertAllClose(masked(await t.coef_2!.data()), masked(c.coef_2.flat()), 1e-6, c.name);
    assertAllClose(
      masked(await t.per_token_kl!.data()),
      masked(fixture.per_token_kl.flat()),
      1e-5,
      c.name,
    );
    assertAllClose(
      masked(await t.per_token_loss.data()),
      masked(c.per_token_loss.flat()),
      1e-5,
      c.name,
    );
    tf.dispose(Object.values(t).filter((x): x is tf.Tensor => x !== null));
    disposeInputs(inputs);
  }
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() matches loss, clip ratios and mean KL for all 12 cases", async () => {
  const before = tf.memory().numTensors;
  for (const c of fixture.cases) {
    const inputs = inputsOf(c);
    const { loss, metrics } = grpoLoss(inputs, optionsOf(c));
    assert.ok(Math.abs(await scalar(loss) - c.loss) <= 1e-5, `${c.name}: ${loss} vs ${c.loss}`);
    // Clip ratios are token counts / 21: exact in float32.
    assert.deepEqual(
      {
        low_mean: await scalar(metrics.clipLow),
        high_mean: await scalar(metrics.clipHigh),
        region_mean: await scalar(metrics.clipRegion),
      },
      c.clip_ratio,
      c.name,
    );
    if (c.mean_kl === null) {
      assert.equal(metrics.kl, null, c.name);
    } else {
      assert.ok(Math.abs(await scalar(metrics.kl!) - c.mean_kl) <= 1e-5, c.name);
    }
    // policyLoss is the loss without its β·KL term: the beta-0 sibling case's loss.
    const sibling = fixture.cases.find((x) =>
      x.loss_type === c.loss_type && x.beta === 0 && x.scale_rewards === c.scale_rewards &&
      x.epsilon_high === c.epsilon_high
    );
    if (sibling !== undefined) {
      assert.ok(Math.abs(await scalar(metrics.policyLoss) - sibling.loss) <= 1e-5, c.name);
    }
    tf.dispose([loss, ...Object.values(metrics).filter((x): x is tf.Scalar => x !== null)]);
    disposeInputs(inputs);
  }
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() reports KL with a reference but kl_coef 0, without adding it", async () => {
  const before = tf.memory().numTensors;
  const c = fixture.cases.find((x) => x.name === "grpo/eps0.2_beta0")!;
  const inputs = inputsOf(c, true);
  const { loss, metrics } = grpoLoss(inputs, optionsOf(c));
  assert.ok(Math.abs(await scalar(loss) - c.loss) <= 1e-5);
  assert.ok(Math.abs(await scalar(metrics.kl!) - fixture.cases[0].mean_kl!) <= 1e-5);
  tf.dispose([loss, ...Object.values(metrics).filter((x): x is tf.Scalar => x !== null)]);
  disposeInputs(inputs);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() dapo equals bnpo for one accumulation step and scales by num_items_in_batch", async () => {
  const before = tf.memory().numTensors;
  for (const c of fixture.cases.filter((x) => x.loss_type === "bnpo")) {
    const inputs = inputsOf(c);
    const dapo = grpoLoss(inputs, { ...optionsOf(c), loss_type: "dapo" });
    assert.ok(Math.abs(await scalar(dapo.loss) - c.loss) <= 1e-5, c.name);
    // Twice the tokens in the accumulated batch (21 here, 42 overall) halves this micro-batch's loss.
    const half = grpoLoss(inputs, { ...optionsOf(c), loss_type: "dapo", num_items_in_batch: 42 });
    assert.ok(Math.abs(await scalar(half.loss) - c.loss / 2) <= 1e-5, c.name);
    for (const r of [dapo, half]) {
      tf.dispose([r.loss, ...Object.values(r.metrics).filter((x): x is tf.Scalar => x !== null)]);
    }
    disposeInputs(inputs);
  }
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() divides grpo/bnpo/dr_grpo by gradient_accumulation_steps, not dapo", async () => {
  const before = tf.memory().numTensors;
  for (const c of fixture.cases.filter((x) => x.name.endsWith("eps0.2_beta0.04"))) {
    const inputs = inputsOf(c);
    for (const lossType of [c.loss_type, "dapo"] as const) {
      const r = grpoLoss(inputs, {
        ...optionsOf(c),
        loss_type: lossType,
        gradient_accumulation_steps: 4,
      });
      const one = grpoLoss(inputs, { ...optionsOf(c), loss_type: lossType });
      const ratio = (await scalar(one.loss)) / (await scalar(r.loss));
      assert.ok(Math.abs(ratio - (lossType === "dapo" ? 1 : 4)) < 1e-5, `${c.name} ${lossType}`);
      for (const x of [r, one]) {
        tf.dispose([x.loss, ...Object.values(x.metrics).filter((m): m is tf.Scalar => m !== null)]);
      }
    }
    disposeInputs(inputs);
  }
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() gradient w.r.t. per_token_logps matches central differences", async () => {
  const before = tf.memory().numTensors;
  const h = 1e-3; // float32: loss noise ~1e-8, so the difference quotient is good to ~1e-5
  for (const c of fixture.cases) {
    const inputs = inputsOf(c);
    const options = optionsOf(c);
    const lossAt = (logps: tf.Tensor2D): tf.Scalar => {
      const { loss, metrics } = grpoLoss({ ...inputs, per_token_logps: logps }, options);
      tf.dispose(Object.values(metrics).filter((x): x is tf.Scalar => x !== null));
      return loss;
    };
    const grad = tf.grad((x: tf.Tensor) => lossAt(x as tf.Tensor2D))(inputs.per_token_logps);
    const got = await grad.data();
    grad.dispose();
    const base = fixture.per_token_logps.flat();
    const want: number[] = [];
    for (let i = 0; i < base.length; i++) {
      const values = tf.tidy(() => {
        const shifted = (d: number) => {
          const x = base.slice();
          x[i] += d;
          return lossAt(tf.tensor2d(x, [6, 6]));
        };
        return tf.stack([shifted(h), shifted(-h)]);
      });
      const [up, down] = await values.data();
      values.dispose();
      want.push((up - down) / (2 * h));
    }
    assertAllClose(got, want, 2e-4, c.name);
    // Padding carries no gradient at all.
    for (let i = 0; i < mask.length; i++) {
      if (mask[i] === 0) assert.ok(got[i] === 0, `${c.name} masked entry ${i}: ${got[i]}`);
    }
    disposeInputs(inputs);
  }
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() with old_per_token_logps null has coef_1 = 1 and gradient -A / (B·len)", async () => {
  const before = tf.memory().numTensors;
  const c = fixture.cases.find((x) => x.name === "grpo/eps0.2_beta0")!;
  const fromFixture = inputsOf(c);
  fromFixture.old_per_token_logps!.dispose();
  const inputs = { ...fromFixture, old_per_token_logps: null };
  const t = grpoPerToken(inputs, optionsOf(c));
  assert.ok((await t.coef_1.data()).every((x) => x === 1));
  tf.dispose(Object.values(t).filter((x): x is tf.Tensor => x !== null));
  let out: ReturnType<typeof grpoLoss> | undefined;
  const logps = tf.variable(inputs.per_token_logps);
  const { value, grads } = tf.variableGrads(() => {
    out = grpoLoss({ ...inputs, per_token_logps: logps }, optionsOf(c));
    return out.loss;
  }, [logps]);
  assert.equal(value, out!.loss, "variableGrads returns the loss tensor itself");
  const grad = grads[logps.name];
  const lengths = fixture.completion_mask.map((row) => row.reduce((a, b) => a + b, 0));
  const want = fixture.completion_mask.flatMap((row, b) =>
    row.map((m) => (m * -c.advantages[b]) / (6 * lengths[b]))
  );
  assertAllClose(await grad.data(), want, 1e-7);
  // Loss = -mean over rows of A (each row's mean of -A·1).
  const wantLoss = -c.advantages.reduce((a, b) => a + b, 0) / 6;
  assert.ok(Math.abs(await scalar(out!.loss) - wantLoss) < 1e-7);
  // metrics survived variableGrads' tidy because grpoLoss keeps them
  assert.equal(await scalar(out!.metrics.clipRegion), 0);
  tf.dispose([grad, logps, out!.loss, ...Object.values(out!.metrics).filter((x) => x !== null)]);
  disposeInputs(inputs);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("grpoLoss() rejects a missing reference, bad shapes and dr_grpo without a length", () => {
  const c = fixture.cases[0];
  const inputs = inputsOf(c, false);
  assert.throws(() => grpoLoss(inputs, optionsOf(c)), { name: "TypeError", message: /kl_coef/ });
  assert.throws(
    () =>
      grpoLoss(inputs, {
        ...optionsOf(c),
        kl_coef: 0,
        max_completion_length: undefined,
        loss_type: "dr_grpo",
      }),
    { name: "RangeError", message: /max_completion_length/ },
  );
  const short = tf.tensor1d([1, 2]);
  assert.throws(
    () => grpoLoss({ ...inputs, advantages: short }, { ...optionsOf(c), kl_coef: 0 }),
    { name: "RangeError", message: /advantages/ },
  );
  assert.throws(
    () => grpoLoss(inputs, { ...optionsOf(c), kl_coef: 0, loss_type: "ppo" as "grpo" }),
    { name: "RangeError", message: /Unknown loss type: ppo/ },
  );
  short.dispose();
  disposeInputs(inputs);
});

Deno.test("tokenLogProbs() equals log_softmax(logits / T) at ids, value and gradient", async () => {
  const before = tf.memory().numTensors;
  const [b, c, v] = [2, 3, 7];
  const logits = tf.randomNormal([b, c, v], 0, 2, "float32", 7) as tf.Tensor3D;
  const ids = tf.tensor2d([[0, 6, 3], [2, 2, 5]], [b, c], "int32");
  const weights = tf.tensor2d([[1, -2, 0.5], [3, 0, -1]]); // a non-uniform upstream gradient
  const temperature = 0.7;
  const naive = (x: tf.Tensor) =>
    tf.sum(tf.mul(tf.logSoftmax(tf.div(x, temperature)), tf.oneHot(ids, v)), -1);
  const [want, got] = [tf.tidy(() => naive(logits)), tokenLogProbs(logits, ids, { temperature })];
  assertAllClose(await got.data(), await want.data(), 1e-5);
  const gWant = tf.grad((x: tf.Tensor) => tf.sum(tf.mul(naive(x), weights)))(logits);
  const gGot = tf.grad((x: tf.Tensor) =>
    tf.sum(tf.mul(tokenLogProbs(x as tf.Tensor3D, ids, { temperature }), weights))
  )(logits);
  assert.deepEqual(gGot.shape, [b, c, v]);
  assertAllClose(await gGot.data(), await gWant.data(), 1e-5);
  tf.dispose([logits, ids, weights, want, got, gWant, gGot]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("tokenLogProbs() rejects mismatched shapes and temperature <= 0", () => {
  const logits = tf.zeros([1, 2, 3]) as tf.Tensor3D;
  const ids = tf.zeros([1, 3], "int32") as tf.Tensor2D;
  assert.throws(() => tokenLogProbs(logits, ids, { temperature: 1 }), RangeError);
  assert.throws(
    () => tokenLogProbs(logits, ids.slice([0, 0], [1, 2]), { temperature: 0 }),
    { name: "RangeError", message: /temperature/ },
  );
  tf.dispose([logits, ids]);
});

Deno.test("grpoLossAndGrads() differentiates through tokenLogProbs to the variables", async () => {
  const before = tf.memory().numTensors;
  // A tiny "policy": logits = hidden @ W, W [H, V] the only variable.
  const [b, c, h, v] = [6, 6, 4, 9];
  const hidden = tf.randomNormal([b * c, h], 0, 1, "float32", 1);
  const w = tf.tidy(() => tf.variable(tf.randomNormal([h, v], 0, 0.5, "float32", 2), true, "fd/W"));
  const ids = tf.tidy(() =>
    tf.cast(tf.randomUniform([b, c], 0, v, "float32", 3), "int32")
  ) as tf.Tensor2D;
  const temperature = 0.7;
  const logpsOf = (weights: tf.Tensor) =>
    tokenLogProbs(tf.reshape(tf.matMul(hidden, weights), [b, c, v]) as tf.Tensor3D, ids, {
      temperature,
    });
  const c0 = fixture.cases[0];
  // Central differences see old_per_token_logps as a constant, so pass the current log-probs
  // explicitly: at this point the gradient equals the detached (null) one, checked below.
  const batch = {
    old_per_token_logps: tf.tidy(() => logpsOf(w)) as tf.Tensor2D,
    // a reference close to the policy so the KL is small but nonzero
    ref_per_token_logps: tf.tidy(() =>
      tf.add(logpsOf(w), tf.randomNormal([b, c], 0, 0.1, "float32", 4))
    ) as tf.Tensor2D,
    advantages: tf.tensor1d(c0.advantages),
    completion_mask: tf.tensor2d(fixture.completion_mask),
  } as const;
  const options = { ...optionsOf(c0), varList: [w] };
  const { loss, grads, metrics } = grpoLossAndGrads(() => logpsOf(w), batch, options);
  const got = await grads["fd/W"].data();
  // Central differences in float32 on every entry of W.
  const base = await w.data();
  const eps = 1e-2;
  const want: number[] = [];
  for (let i = 0; i < base.length; i++) {
    const values = tf.tidy(() => {
      const at = (d: number) => {
        const x = Float32Array.from(base);
        x[i] += d;
        const r = grpoLoss({ ...batch, per_token_logps: logpsOf(tf.tensor2d(x, [h, v])) }, options);
        tf.dispose(Object.values(r.metrics).filter((m): m is tf.Scalar => m !== null));
        return r.loss;
      };
      return tf.stack([at(eps), at(-eps)]);
    });
    const [up, down] = await values.data();
    values.dispose();
    want.push((up - down) / (2 * eps));
  }
  const scale = Math.max(...want.map(Math.abs));
  assert.ok(scale > 1e-3, "the check is not vacuous");
  assertAllClose(got, want, 2e-3 * scale);
  assert.ok((await metrics.kl!.data())[0] > 0);
  const detached = grpoLossAndGrads(
    () => logpsOf(w),
    { ...batch, old_per_token_logps: null },
    options,
  );
  assertAllClose(await detached.grads["fd/W"].data(), got, 1e-7, "old = null");
  for (const r of [{ loss, grads, metrics }, detached]) {
    tf.dispose([r.loss, ...Object.values(r.grads)]);
    tf.dispose(Object.values(r.metrics).filter((m): m is tf.Scalar => m !== null));
  }
  tf.dispose([hidden, w, ids, ...Object.values(batch)]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});
