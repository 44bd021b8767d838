/**
 * What gradient checkpointing saves: peak tensor memory and time of one GRPO gradient step
 * (policy log-probs → loss → LoRA gradients) with and without it, on a random Qwen2 model.
 *
 *   deno task bench:checkpointing [--hidden 256] [--layers 6] [--batch 8] [--seq 256]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { tf } from "../lib/tf.ts";
import { describeBackend, setupBackend } from "../lib/backend.ts";
import { completionLogProbs } from "../lib/grpo.ts";
import { modelFromArrays } from "../lib/model_loader.ts";
import { parseQwen2Config } from "../lib/qwen2_config.ts";
import { createLora } from "../lib/lora.ts";
import { grpoLoss } from "../lib/grpo.ts";
import { mulberry32 } from "../lib/data.ts";
import { ConfigError } from "../lib/errors.ts";
import { COMMAND_LINE } from "../lib/config.ts";
import { runTask } from "./_main.ts";
import { initWeights } from "../lib/sft.ts";

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      hidden: { type: "string", default: "256" },
      layers: { type: "string", default: "6" },
      batch: { type: "string", default: "8" },
      seq: { type: "string", default: "256" },
      vocab: { type: "string", default: "2000" },
    },
  });
  const int = (key: keyof typeof values, min: number): number => {
    const n = Number(values[key]);
    if (!Number.isInteger(n) || n < min) {
      throw new ConfigError(
        `Cannot parse ${COMMAND_LINE}: --${key}: expected an integer >= ${min}, got ${values[key]}`,
        { file: COMMAND_LINE, key },
      );
    }
    return n;
  };
  const [H, L, B, T, V] = [
    int("hidden", 1),
    int("layers", 1),
    int("batch", 1),
    int("seq", 2),
    int("vocab", 1),
  ];
  const C = Math.floor(T / 2);

  const info = await setupBackend({ backend: "wasm", blas: "auto", num_threads: 2 });
  console.log(describeBackend(info));
  const config = parseQwen2Config({
    model_type: "qwen2",
    vocab_size: V,
    hidden_size: H,
    intermediate_size: Math.round(H * 2.75),
    num_hidden_layers: L,
    num_attention_heads: H / 32,
    num_key_value_heads: Math.max(1, H / 128),
    tie_word_embeddings: true,
  }, "bench");
  const arrays = initWeights(config, { seed: 1 });
  const random = mulberry32(1);
  const model = modelFromArrays(config, arrays);
  const lora = createLora(model, {
    lora_r: 16,
    lora_alpha: 32,
    lora_dropout: 0,
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"],
  }, { seed: 1 });
  const ids = Array.from(
    { length: B },
    () => Array.from({ length: T }, () => Math.floor(random() * V)),
  );
  const inputIds = tf.tensor2d(ids, [B, T], "int32");
  const attentionMask = tf.ones([B, T], "int32") as tf.Tensor2D;
  const completionMask = tf.ones([B, C]) as tf.Tensor2D;
  const advantages = tf.tensor1d(Array.from({ length: B }, (_, i) => (i % 2 ? 1 : -1)));
  const vars = [...lora.variables.values()];

  console.log(
    `model: hidden ${H}, ${L} layers, vocab ${V}; batch ${B} × ${T} tokens (${C} completion); LoRA r16 q/k/v/o`,
  );
  console.log("gradient_checkpointing | peak tensor memory | step time");
  for (const checkpointing of [false, true, false, true]) {
    const t0 = performance.now();
    const profile = await tf.profile(() => {
      const { value, grads } = tf.variableGrads(() => {
        const logps = completionLogProbs(model, {
          inputIds,
          attentionMask,
          completionLength: C,
          temperature: 1,
        }, {
          adapter: lora,
          gradientCheckpointing: checkpointing,
        });
        const out = grpoLoss({
          per_token_logps: logps,
          old_per_token_logps: null,
          ref_per_token_logps: null,
          advantages,
          completion_mask: completionMask,
        }, { loss_type: "dapo", epsilon: 0.2, epsilon_high: null, kl_coef: 0 });
        tf.dispose(Object.values(out.metrics).filter((t): t is tf.Scalar => t !== null));
        return out.loss;
      }, vars);
      tf.dispose([value, ...Object.values(grads)]);
    });
    const ms = performance.now() - t0;
    console.log(
      `${String(checkpointing).padEnd(22)} | ${
        (profile.peakBytes / 2 ** 20).toFixed(0).padStart(10)
      } MiB    | ${ms.toFixed(0)} ms`,
    );
  }
  tf.dispose([inputIds, attentionMask, completionMask, advantages]);
  lora.dispose();
  model.dispose();
}

await runTask(main);
