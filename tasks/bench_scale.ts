/**
 * Can this machine run Qwen2.5-Math-1.5B? Builds a randomly initialised model with its exact
 * config on the wasm backend (+ BLAS when `runtime.blas` finds one), times one forward over a
 * `--batch` × `--seq` batch and a `--new_tokens` KV-cache rollout of the same prompts, and prints
 * peak memory. `--layers` keeps only the first N decoder layers, for a quick check.
 *
 *   deno task bench:scale [--batch 4] [--seq 256] [--new_tokens 16] [--layers 28] [--set runtime.blas=off]
 *
 * NOTE: tfjs-backend-wasm is wasm32: its heap stops at 4 GiB, and every weight and activation
 * lives there. The 28-layer model is 6.2 GB as float32, so only `--layers` ≤ 17 can load at all,
 * and `forward` keeps every layer's intermediates until its outer tidy ends (~0.35 GB per layer
 * at 4 × 256 tokens): measured on a 2-core box, `--layers 4` runs at 4 × 256 and `--layers 6`
 * aborts with the heap exhausted.
 *
 * @module
 */
import { describeBackend, setupBackend } from "../lib/backend.ts";
import { type FlagSpec, formatHelp, parseCommandLine, resolveConfig } from "../lib/cli.ts";
import { COMMAND_LINE } from "../lib/config.ts";
import { BackendError, ConfigError, isUserError } from "../lib/errors.ts";
import { countLoraParameters, trainableParametersLine } from "../lib/lora.ts";
import { expectedWeightShapes, forward, modelFromArrays, parseQwen2Config } from "../lib/model.ts";
import { rollout } from "../lib/rollout.ts";
import { tf } from "../lib/tf.ts";

/** Qwen/Qwen2.5-Math-1.5B `config.json` (the keys we read). */
const QWEN25_MATH_1_5B = {
  model_type: "qwen2",
  vocab_size: 151936,
  hidden_size: 1536,
  intermediate_size: 8960,
  num_hidden_layers: 28,
  num_attention_heads: 12,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  max_position_embeddings: 4096,
  tie_word_embeddings: true,
};
const WASM_HEAP_BYTES = 4 * 1024 ** 3; // wasm32 memory limit (tfjs-backend-wasm: "maximum" 4 GiB)
const GB = 1e9;

const FLAGS: Record<string, FlagSpec> = {
  batch: { type: "string", valueName: "n", default: "4", description: "Prompts per batch" },
  seq: { type: "string", valueName: "n", default: "256", description: "Prompt tokens" },
  new_tokens: { type: "string", valueName: "n", default: "16", description: "Tokens to sample" },
  layers: { type: "string", valueName: "n", default: "28", description: "Decoder layers to keep" },
};

function intFlag(values: Record<string, unknown>, name: string, max = Infinity): number {
  const text = String(values[name]);
  const fail = (why: string) =>
    new ConfigError(
      `Cannot parse ${COMMAND_LINE}: --${name}: expected an integer ${why}, got ${text}`,
      {
        file: COMMAND_LINE,
        key: name,
      },
    );
  if (!/^\d+$/.test(text) || Number(text) < 1) throw fail(">= 1");
  if (Number(text) > max) throw fail(`<= ${max}`);
  return Number(text);
}

/** Peak RSS: sampled `Deno.memoryUsage().rss` and the kernel's high-water mark (VmHWM). */
const peak = { rss: 0 };
function sampleRss(): number {
  const rss = Deno.memoryUsage().rss;
  peak.rss = Math.max(peak.rss, rss);
  return rss;
}
function vmHwm(): number {
  const line = /^VmHWM:\s+(\d+) kB$/m.exec(Deno.readTextFileSync("/proc/self/status"));
  return line ? Number(line[1]) * 1024 : NaN;
}

/** xorshift32 uniform in [-a, a] with a = std·√3, so the std is `std` (fast; not Gaussian). */
function fillRandom(data: Float32Array, seed: number, std: number): void {
  let x = seed >>> 0 || 1;
  const scale = (2 * std * Math.sqrt(3)) / 4294967296;
  const shift = std * Math.sqrt(3);
  for (let i = 0; i < data.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data[i] = (x >>> 0) * scale - shift;
  }
}

async function main(): Promise<void> {
  const commandLine = parseCommandLine(Deno.args, { extra: FLAGS });
  if (commandLine.help) {
    console.log(formatHelp({
      command: "deno task bench:scale",
      summary: "Forward and KV-cache sampling on a random Qwen2.5-Math-1.5B (wasm backend).",
      extra: FLAGS,
    }));
    return;
  }
  const { values } = commandLine;
  const [batch, seq, newTokens] = ["batch", "seq", "new_tokens"].map((n) => intFlag(values, n));
  const layers = intFlag(values, "layers", QWEN25_MATH_1_5B.num_hidden_layers);
  const settings = await resolveConfig(commandLine, { defaultConfigPath: null });
  const full = parseQwen2Config(QWEN25_MATH_1_5B, "Qwen2.5-Math-1.5B config.json");
  const config = { ...full, num_hidden_layers: layers };

  const backend = await setupBackend({ ...settings.runtime, backend: "wasm" });
  console.log(describeBackend(backend));
  for (const note of backend.notes) console.log(`note: ${note}`);
  const lora = { lora_r: 16, target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"] };
  const fullCounts = countLoraParameters(full, lora);
  console.log(
    `LoRA r16 q/k/v/o on 28 layers: ${
      trainableParametersLine(fullCounts.trainable, fullCounts.all)
    }`,
  );
  const counts = countLoraParameters(config, lora);
  const weightBytes = 4 * (counts.all - counts.trainable);
  console.log(
    `model: ${layers} of 28 layers, ${(counts.all - counts.trainable).toLocaleString("en-US")} ` +
      `params, ${(weightBytes / GB).toFixed(2)} GB f32; batch ${batch} × ${seq} tokens, ` +
      `${newTokens} new tokens`,
  );
  if (weightBytes > WASM_HEAP_BYTES) {
    throw new BackendError(
      `${layers} layers need ${(weightBytes / GB).toFixed(2)} GB of f32 weights, more than the ` +
        `wasm32 heap of ${(WASM_HEAP_BYTES / GB).toFixed(2)} GB; pass --layers 17 or fewer ` +
        `(activations need room too: 4 layers is the most that ran at --batch 4 --seq 256)`,
    );
  }

  let t = performance.now();
  const arrays = new Map<string, { shape: number[]; data: Float32Array }>();
  let seed = 1;
  for (const [name, shape] of expectedWeightShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("norm.weight")) data.fill(1); // RMSNorm weights start at 1 (HF init)
    else fillRandom(data, seed++, 0.02);
    arrays.set(name, { shape, data });
  }
  const fillSeconds = (performance.now() - t) / 1000;
  t = performance.now();
  const model = modelFromArrays(config, arrays);
  arrays.clear(); // the weights now live in the wasm heap
  console.log(
    `build: fill ${fillSeconds.toFixed(1)} s, upload ${
      ((performance.now() - t) / 1000).toFixed(1)
    } s, ` +
      `rss ${(sampleRss() / GB).toFixed(2)} GB`,
  );

  const random = (() => {
    let x = 12345;
    return () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) % config.vocab_size;
  })();
  const prompts = Array.from({ length: batch }, () => Array.from({ length: seq }, random));
  const timer = setInterval(sampleRss, 50);
  try {
    t = performance.now();
    const ids = tf.tensor2d(prompts, [batch, seq], "int32");
    const logits = forward(model, ids);
    await logits.data(); // sync point: waits for the whole forward
    const forwardSeconds = (performance.now() - t) / 1000;
    sampleRss();
    tf.dispose([ids, logits]);
    console.log(
      `forward [${batch}, ${seq}] → logits [${logits.shape}]: ${forwardSeconds.toFixed(2)} s ` +
        `(${((batch * seq) / forwardSeconds).toFixed(1)} tokens/s)`,
    );

    t = performance.now();
    const out = await rollout(model, prompts, {
      tokenizer: { decode: () => "", eosTokenIds: [], padTokenId: 0 },
      sampling: {
        max_new_tokens: newTokens,
        temperature: 1,
        top_p: 1,
        top_k: 0,
        stop: [],
        seed: 0,
      },
    });
    const rolloutSeconds = (performance.now() - t) / 1000;
    console.log(
      `rollout prefill + ${newTokens} tokens × ${batch} rows (KV cache): ${
        rolloutSeconds.toFixed(2)
      } s ` +
        `(${(out.numTokens / rolloutSeconds).toFixed(2)} new tokens/s)`,
    );
  } catch (error) {
    if (!(error instanceof WebAssembly.RuntimeError)) throw error;
    throw new BackendError(
      `wasm heap (4 GiB) exhausted during the run (${error.message}); try fewer --layers or a smaller --batch/--seq`,
      { cause: error },
    );
  } finally {
    clearInterval(timer);
    model.dispose();
  }
  sampleRss();
  console.log(
    `peak rss: sampled ${(peak.rss / GB).toFixed(2)} GB, VmHWM ${(vmHwm() / GB).toFixed(2)} GB ` +
      `(wasm heap stays allocated once grown)`,
  );
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    if (!isUserError(error)) throw error;
    console.error(`error: ${error.message}`);
    Deno.exit(2);
  }
}
