/**
 * Parity on the webgpu backend. Here it runs on Mesa's llvmpipe (a software adapter; real GPUs
 * elsewhere), so it is slow to compile shaders: one test per kind of check, not the full matrix
 * that tests/model_test.ts and tests/trainer_test.ts run on cpu and wasm.
 * NOTE: dataSync() fails on webgpu; everything reads back with `await t.data()`.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { useBackend } from "../lib/backend.ts";
import { BackendError } from "../lib/errors.ts";
import { forward } from "../lib/model.ts";
import { loadModel } from "../lib/model_loader.ts";
import { loadLora } from "../lib/lora.ts";
import { rollout } from "../lib/rollout.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { assertAllClose } from "./_assert.ts";
import { assertGrpoCase } from "./_fixtures.ts";
import { test } from "./_requires.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

await test.webgpu("webgpu: logits, padded batch and greedy ids match the fixture on both models", async () => {
  await useBackend("webgpu");
  for (const name of ["qwen2-tiny", "qwen2-tiny-tied-bf16"]) {
    const dir = `${FIXTURES}${name}`;
    const exp = JSON.parse(await Deno.readTextFile(`${dir}/expected.json`));
    const model = await loadModel(dir);
    for (const seq of exp.forward.sequences) {
      const ids = tf.tensor2d([seq.input_ids], [1, seq.input_ids.length], "int32");
      const logits = forward(model, ids);
      assertAllClose(await logits.data(), seq.logits.flat(), 1e-4, `${name} logits`);
      tf.dispose([ids, logits]);
    }
    const p = exp.padded_batch;
    const [B, T] = [p.input_ids.length, p.input_ids[0].length];
    const ids = tf.tensor2d(p.input_ids, [B, T], "int32");
    const mask = tf.tensor2d(p.attention_mask, [B, T], "int32");
    const logits = forward(model, ids, { attentionMask: mask });
    const got = (await logits.array()) as number[][][];
    for (let b = 0; b < B; b++) {
      const keep = (_: unknown, t: number) => p.attention_mask[b][t] === 1;
      assertAllClose(
        got[b].filter(keep).flat(),
        p.logits[b].filter(keep).flat(),
        1e-4,
        `${name} padded ${b}`,
      );
    }
    tf.dispose([ids, mask, logits]);
    const tokenizer = await loadTokenizer(dir);
    const out = await rollout(model, [exp.greedy.prompt_ids], {
      tokenizer: { ...tokenizer, decode: tokenizer.decode, eosTokenIds: [-1] },
      sampling: {
        max_new_tokens: 20,
        temperature: 1,
        top_p: 1,
        top_k: 0,
        stop: [],
        seed: 0,
        greedy: true,
      },
    });
    assert.deepEqual(out.completionIds[0], exp.greedy.generated_ids, `${name} greedy`);
    model.dispose();
  }
});

await test.webgpu("webgpu: a GRPO case's loss and LoRA gradients match TRL", async () => {
  await useBackend("webgpu");
  const dir = `${FIXTURES}qwen2-tiny`;
  const g = JSON.parse(await Deno.readTextFile(`${dir}/expected.json`)).grpo;
  const model = await loadModel(dir);
  const lora = await loadLora(model, `${dir}/adapter`);
  await assertGrpoCase(model, lora, g, g.cases[0]);
  lora.dispose();
  model.dispose();
});

await test.webgpu("webgpu: the device has the adapter's buffer limits, and a tensor past them is a one-line BackendError", async () => {
  const info = await useBackend("webgpu");
  const adapter = (await navigator.gpu.requestAdapter({ powerPreference: "high-performance" }))!;
  const device = (tf.backend() as unknown as { device: GPUDevice }).device;
  assert.equal(device.limits.maxBufferSize, adapter.limits.maxBufferSize);
  assert.equal(
    device.limits.maxStorageBufferBindingSize,
    adapter.limits.maxStorageBufferBindingSize,
  );
  assert.ok(info.notes.some((n) => /^webgpu limits \(the adapter's\): maxBufferSize/.test(n)));
  // One float more than a storage binding holds. Before the guard, llvmpipe computed on an
  // invalid buffer and returned zeros without an error.
  const floats = Math.min(
        device.limits.maxStorageBufferBindingSize,
        device.limits.maxBufferSize,
      ) / 4 + 1;
  const before = tf.memory().numTensors;
  const x = tf.zeros([floats]);
  assert.throws(() => tf.add(x, 1), (error: unknown) => {
    assert.ok(error instanceof BackendError, String(error));
    assert.match(
      error.message,
      /^runtime\.backend: webgpu: a tensor of \d+ MiB exceeds the adapter's maxStorageBufferBindingSize/,
    );
    assert.ok(!error.message.includes("\n"));
    return true;
  });
  x.dispose();
  assert.equal(tf.memory().numTensors, before, "leaked tensors");
  const ok = tf.add(tf.ones([2]), 1);
  assert.deepEqual(Array.from(await ok.data()), [2, 2], "the backend still works");
  tf.dispose(ok);
  await useBackend("cpu");
});
