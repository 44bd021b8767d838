import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { loadModel } from "../lib/model_loader.ts";
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

Deno.test("sampleTokens() never leaves the top_p nucleus", async () => {
  await useTestBackend("cpu");
  // probs 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0, 1} (0.5 < 0.7, then 0.8 reached).
  const p = [0.5, 0.3, 0.15, 0.05];
  const logits = tf.tensor2d([p.map(Math.log)]);
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < 400; i++) {
    const u = (i + 0.5) / 400;
    const t = sampleTokens(logits, [u], { temperature: 1, top_p: 0.7, top_k: 0 });
    counts[(await t.data())[0]]++;
    t.dispose();
  }
  logits.dispose();
  assert.equal(counts[2] + counts[3], 0);
  // Renormalised nucleus: 0.5/0.8 and 0.3/0.8 of uniform u.
  assert.equal(counts[0], 250);
  assert.equal(counts[1], 150);
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
  assert.deepEqual([...await greedy.data()], [1, 2]);
  const k1 = sampleTokens(logits, [0.99, 0.99], { temperature: 5, top_p: 1, top_k: 1 });
  assert.deepEqual([...await k1.data()], [1, 2]);
  tf.dispose([logits, greedy, k1]);
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
  disposeBatch(batch);
});
