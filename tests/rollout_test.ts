import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { loadModel } from "../lib/model_loader.ts";
import { completionLogProbs } from "../lib/grpo.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import {
  disposeBatch,
  repeatGroups,
  rollout,
  sampleTokens,
  toTrainingBatch,
} from "../lib/rollout.ts";
import type { SamplingOptions } from "../lib/rollout.ts";
import { BACKENDS, useTestBackend } from "./_backend.ts";
import { assertAllClose } from "./_assert.ts";

const DIR = new URL("./fixtures/qwen2-tiny", import.meta.url).pathname;
const expected = JSON.parse(await Deno.readTextFile(`${DIR}/expected.json`));

const SAMPLING: SamplingOptions = {
  max_new_tokens: 12,
  temperature: 0.7,
  top_p: 0.9,
  top_k: 0,
  stop: [],
  seed: 7,
};

for (const backend of BACKENDS) {
  Deno.test(`rollout() greedy with the KV cache equals the fixture's greedy ids (${backend})`, async () => {
    await useTestBackend(backend);
    const model = await loadModel(DIR);
    const tokenizer = await loadTokenizer(DIR);
    const before = tf.memory().numTensors;
    // The fixture's greedy run never stops at EOS; give the sampler an EOS it never meets.
    const out = await rollout(model, [expected.greedy.prompt_ids], {
      tokenizer: { ...tokenizer, decode: tokenizer.decode, eosTokenIds: [-1] },
      sampling: { ...SAMPLING, max_new_tokens: 20, greedy: true },
    });
    assert.deepEqual(out.completionIds[0], expected.greedy.generated_ids);
    assert.deepEqual(out.finishReasons, ["length"]);
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    model.dispose();
  });

  Deno.test(`rollout() with a seed repeats exactly; another seed differs (${backend})`, async () => {
    await useTestBackend(backend);
    const model = await loadModel(DIR);
    const tokenizer = await loadTokenizer(DIR);
    const prompts = repeatGroups([tokenizer.encode("Hi"), tokenizer.encode("The answer")], 3);
    const a = await rollout(model, prompts, { tokenizer, sampling: SAMPLING });
    const b = await rollout(model, prompts, { tokenizer, sampling: SAMPLING });
    const c = await rollout(model, prompts, { tokenizer, sampling: { ...SAMPLING, seed: 8 } });
    assert.deepEqual(a.completionIds, b.completionIds);
    assert.notDeepEqual(a.completionIds, c.completionIds);
    assert.equal(a.completionIds.length, 6);
    for (let i = 0; i < 6; i++) {
      const ids = a.completionIds[i];
      const eosAt = ids.findIndex((t) => tokenizer.eosTokenIds.includes(t));
      if (a.finishReasons[i] === "eos") assert.equal(eosAt, ids.length - 1);
      else assert.equal(ids.length, SAMPLING.max_new_tokens);
      assert.equal(a.texts[i], tokenizer.decode(ids, { skipSpecialTokens: true }));
    }
    model.dispose();
  });
}

for (const backend of ["cpu", "wasm+blas"] as const) {
  Deno.test(`rollout() sampler log-probs equal the trainer's at top_p 1, and exceed them in a nucleus (${backend})`, async () => {
    await useTestBackend(backend);
    const model = await loadModel(DIR);
    const tokenizer = await loadTokenizer(DIR);
    const before = tf.memory().numTensors;
    const prompts = repeatGroups([tokenizer.encode("Hi"), tokenizer.encode("The answer")], 2);
    for (const top_p of [1, 0.9]) {
      const out = await rollout(model, prompts, {
        tokenizer,
        sampling: { ...SAMPLING, top_p, max_new_tokens: 8 },
      });
      assert.deepEqual(
        out.samplingLogProbs.map((r) => r.length),
        out.completionIds.map((c) => c.length),
      );
      const batch = toTrainingBatch(out, tokenizer.padTokenId);
      const logps = completionLogProbs(model, { ...batch, temperature: SAMPLING.temperature });
      const trainer = await logps.array();
      const sampler = await batch.samplingPerTokenLogps!.array();
      tf.dispose(logps);
      disposeBatch(batch);
      let largest = 0;
      for (let b = 0; b < prompts.length; b++) {
        const n = out.completionIds[b].length;
        if (top_p === 1) {
          // The KV-cache decode and the full forward agree to float noise (README: 1e-4).
          assertAllClose(sampler[b].slice(0, n), trainer[b].slice(0, n), 1e-4, `row ${b}`);
        } else {
          // Renormalised over the nucleus, a token's probability can only grow.
          for (let t = 0; t < n; t++) {
            assert.ok(sampler[b][t] >= trainer[b][t] - 1e-4);
            largest = Math.max(largest, sampler[b][t] - trainer[b][t]);
          }
        }
        assert.ok(sampler[b].slice(n).every((x) => x === 0), "padding is 0");
      }
      if (top_p < 1) assert.ok(largest > 1e-2, `the nucleus changed nothing (${largest})`);
    }
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    model.dispose();
  });
}

Deno.test("sampleTokens() never leaves the top_p nucleus", async () => {
  await useTestBackend("cpu");
  // probs 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0, 1} (0.5 < 0.7, then 0.8 reached).
  const p = [0.5, 0.3, 0.15, 0.05];
  const logits = tf.tensor2d([p.map(Math.log)]);
  const counts = [0, 0, 0, 0];
  const logps = [NaN, NaN];
  for (let i = 0; i < 400; i++) {
    const u = (i + 0.5) / 400;
    const t = sampleTokens(logits, [u], { temperature: 1, top_p: 0.7, top_k: 0 });
    const id = (await t.ids.data())[0];
    counts[id]++;
    logps[id] = (await t.logps.data())[0];
    tf.dispose([t.ids, t.logps]);
  }
  logits.dispose();
  assert.equal(counts[2] + counts[3], 0);
  // Renormalised nucleus: 0.5/0.8 and 0.3/0.8 of uniform u, and those are the log-probs returned.
  assert.equal(counts[0], 250);
  assert.equal(counts[1], 150);
  assertAllClose(logps, [Math.log(0.5 / 0.8), Math.log(0.3 / 0.8)], 1e-6);
});

Deno.test("sampleTokens() on non-finite logits picks a valid id and a NaN log-prob (no gather out of range)", async () => {
  await useTestBackend("cpu");
  const before = tf.memory().numTensors;
  // A diverged policy: NaN and Inf logits. The NaN log-prob reads back, and the update skips.
  const logits = tf.tensor2d([[NaN, NaN, NaN], [Infinity, 0, -Infinity], [0, 5, 0]]);
  const { ids, logps } = sampleTokens(logits, [0.5, 0.5, 0.5], {
    temperature: 1,
    top_p: 0.9,
    top_k: 0,
  });
  const picked = Array.from(await ids.data());
  assert.ok(picked.every((id) => id >= 0 && id < 3), `ids ${picked}`);
  const lp = Array.from(await logps.data());
  assert.ok(Number.isNaN(lp[0]) && Number.isNaN(lp[1]), `log-probs ${lp}`);
  assert.equal(picked[2], 1);
  tf.dispose([logits, ids, logps]);
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
});

Deno.test("sampleTokens() applies top_k and temperature, and greedy takes the argmax", async () => {
  await useTestBackend("cpu");
  const logits = tf.tensor2d([[1, 3, 2, 0], [0, 0, 9, 0]]);
  const greedy = sampleTokens(logits, [0.9, 0.9], {
    temperature: 1,
    top_p: 1,
    top_k: 0,
    greedy: true,
  });
  assert.deepEqual([...await greedy.ids.data()], [1, 2]);
  assert.deepEqual([...await greedy.logps.data()], [0, 0]); // a point mass
  const k1 = sampleTokens(logits, [0.99, 0.99], { temperature: 5, top_p: 1, top_k: 1 });
  assert.deepEqual([...await k1.ids.data()], [1, 2]);
  assert.deepEqual([...await k1.logps.data()], [0, 0]); // top_k 1 keeps one token
  const full = sampleTokens(logits, [0.5, 0.5], { temperature: 2, top_p: 1, top_k: 0 });
  // top_p 1, top_k 0: the log-prob is log_softmax(logits / T) at the id, what the trainer scores.
  const row = [1, 3, 2, 0];
  const id = (await full.ids.data())[0];
  const want = row[id] / 2 - Math.log(row.reduce((a, x) => a + Math.exp(x / 2), 0));
  assertAllClose([(await full.logps.data())[0]], [want], 1e-6);
  tf.dispose([logits, greedy.ids, greedy.logps, k1.ids, k1.logps, full.ids, full.logps]);
});

Deno.test("toTrainingBatch() left-pads prompts, right-pads completions, masks through EOS", async () => {
  await useTestBackend("cpu");
  const batch = toTrainingBatch(
    {
      promptIds: [[5, 6], [7]],
      completionIds: [[1, 2, 9], [3]],
      finishReasons: ["eos", "length"],
    },
    0,
    { maskTruncated: true },
  );
  assert.deepEqual(await batch.inputIds.array(), [[5, 6, 1, 2, 9], [0, 7, 3, 0, 0]]);
  assert.deepEqual(await batch.attentionMask.array(), [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]);
  assert.deepEqual(await batch.completionMask.array(), [[1, 1, 1], [0, 0, 0]]);
  assert.equal(batch.completionLength, 3);
  assert.equal(batch.samplingPerTokenLogps, null);
  disposeBatch(batch);
});
