/**
 * Do the experimental wasm kernels of bench/_kernel_patches.ts give the stock kernels' results?
 * Runs the demo model's forward (left-padded batch, LoRA with dropout off) and the gradient of a
 * completion log-prob sum with respect to the LoRA variables, stock then patched, on wasm + BLAS,
 * and asserts they are bit for bit equal. Exits 1 when not.
 *
 *   deno run -A bench/check_kernel_patches.ts
 *
 * @module
 */
import { completionLogProbs, createLora, forward, loadModel, tf, useBackend } from "../lib/mod.ts";
import { PATCHES, patchWasmKernels } from "./_kernel_patches.ts";

async function run(): Promise<Float32Array[]> {
  const model = await loadModel("data/demo/sft-model");
  const lora = createLora(model, {
    lora_r: 16,
    lora_alpha: 32,
    lora_dropout: 0,
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"],
  }, { seed: 1 });
  for (const v of lora.variables.values()) v.assign(tf.randomNormal(v.shape, 0, 0.1, "float32", 7));
  const ids = tf.tensor2d(
    [[60, 60, 29, 53, 38, 51, 52], [29, 53, 38, 51, 52, 42, 47]],
    [2, 7],
    "int32",
  );
  const attentionMask = tf.tensor2d(
    [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]],
    [2, 7],
    "int32",
  );
  const logits = forward(model, ids, { attentionMask, adapter: lora });
  const vars = [...lora.variables.values()];
  const { value, grads } = tf.variableGrads(
    () =>
      tf.sum(completionLogProbs(model, {
        inputIds: ids,
        attentionMask,
        completionLength: 3,
        temperature: 0.8,
      }, { adapter: lora })) as tf.Scalar,
    vars,
  );
  const out = [await logits.data() as Float32Array, await value.data() as Float32Array];
  for (const v of vars) out.push(await grads[v.name].data() as Float32Array);
  tf.dispose([logits, value, ids, attentionMask, ...Object.values(grads)]);
  lora.dispose();
  model.dispose();
  return out.map((a) => new Float32Array(a));
}

await useBackend("wasm+blas");
const stock = await run();
patchWasmKernels([...PATCHES]);
const patched = await run();
let failed = false;
for (const [i, a] of stock.entries()) {
  const b = patched[i];
  const same = a.length === b.length && a.every((x, j) => Object.is(x, b[j]));
  if (!same) {
    failed = true;
    console.log(`FAIL output ${i}: patched kernels differ from stock`);
  }
}
console.log(
  `${failed ? "FAIL" : "ok"}: ${stock.length} outputs (logits, loss, ${
    stock.length - 2
  } LoRA gradients), stock vs patches ${PATCHES.join(", ")}`,
);
if (failed) Deno.exit(1);
