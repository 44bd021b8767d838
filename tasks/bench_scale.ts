/**
 * Can this machine run Qwen2.5-Math-1.5B? Builds a randomly initialised model with its exact
 * config, times one forward over a `--batch` × `--seq` batch and a `--new_tokens` KV-cache
 * rollout of the same prompts, and prints peak memory. `--layers` keeps only the first N decoder
 * layers, for a quick check.
 *
 *   deno task bench:scale [--batch 4] [--seq 256] [--new_tokens 16] [--layers 28]
 *                         [--set runtime.backend=cpu] [--set runtime.blas=off]
 *
 * Backend: `runtime.backend: auto` (the default) is `setupBackend`'s rule, as in training: webgpu
 * on a hardware adapter, else wasm, or cpu when the float32 weights exceed
 * `WASM_WEIGHT_LIMIT_BYTES`; wasm and cpu with their matMuls on BLAS when `runtime.blas` finds one
 * (`lib/backend.ts`). An explicit `runtime.backend` is used as given.
 *
 * NOTE: tfjs-backend-wasm is wasm32: its heap stops at 4 GiB, and every weight and activation
 * lives there. The 28-layer model is 6.2 GB as float32, so it runs on cpu + BLAS, whose tensors
 * are plain typed arrays (no 4 GiB limit) but whose non-matMul ops are plain JS. Before `forward`
 * tidied per layer, `--layers 4` was the most that ran on wasm at 4 × 256 tokens.
 *
 * Measured (defaults, 28 layers, cpu + OpenBLAS 0.3.21 on 2 threads, 2-core AMD EPYC shared with
 * other jobs, load average ~7): fill 35 s, forward 277 s, rollout 294 s, VmHWM 8.30 GB. A
 * `tf.profile` of 2 layers on a quieter box: per layer ~1.2 s in BLAS matMuls and ~4 s in plain-JS
 * cpu kernels (Softmax, SplitV from RoPE, Multiply, broadcast Add), plus 5.6 s for the LM head.
 *
 * @module
 */
import { describeBackend, setupBackend } from "../lib/backend.ts";
import { type FlagSpec, formatHelp, parseCommandLine, resolveConfig } from "../lib/cli.ts";
import { COMMAND_LINE } from "../lib/config.ts";
import { BackendError, ConfigError } from "../lib/errors.ts";
import { countLoraParameters, trainableParametersLine } from "../lib/lora.ts";
import { forward } from "../lib/model.ts";
import { modelFromArrays } from "../lib/model_loader.ts";
import { expectedWeightShapes, parseQwen2Config, weightBytes } from "../lib/qwen2_config.ts";
import { rollout } from "../lib/rollout.ts";
import { tf } from "../lib/tf.ts";
import { runTask } from "./_main.ts";

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

/** Random values are generated for this many floats per tensor; the rest repeats them. */
const RANDOM_BLOCK = 1 << 20;

/**
 * xorshift32 uniform in [-a, a] with a = std·√3, so the std is `std` (not Gaussian). Only the
 * first {@linkcode RANDOM_BLOCK} values are drawn; the rest of `data` repeats them by doubling
 * `copyWithin` (memcpy speed: the timings below do not depend on the values).
 */
function fillRandom(data: Float32Array, seed: number, std: number): void {
  let x = seed >>> 0 || 1;
  const scale = (2 * std * Math.sqrt(3)) / 4294967296;
  const shift = std * Math.sqrt(3);
  const drawn = Math.min(data.length, RANDOM_BLOCK);
  for (let i = 0; i < drawn; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data[i] = (x >>> 0) * scale - shift;
  }
  for (let filled = drawn; filled < data.length; filled *= 2) data.copyWithin(filled, 0, filled);
}

async function main(): Promise<void> {
  const commandLine = parseCommandLine(Deno.args, { extra: FLAGS });
  if (commandLine.help) {
    console.log(formatHelp({
      command: "deno task bench:scale",
      summary:
        "Forward and KV-cache sampling on a random Qwen2.5-Math-1.5B (wasm, or cpu + BLAS when it does not fit wasm).",
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

  const lora = { lora_r: 16, target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"] };
  const fullCounts = countLoraParameters(full, lora);
  console.log(
    `LoRA r16 q/k/v/o on 28 layers: ${
      trainableParametersLine(fullCounts.trainable, fullCounts.all)
    }`,
  );
  const bytes = weightBytes(config);
  console.log(
    `model: ${layers} of 28 layers, ${(bytes / 4).toLocaleString("en-US")} ` +
      `params, ${(bytes / GB).toFixed(2)} GB f32; batch ${batch} × ${seq} tokens, ` +
      `${newTokens} new tokens`,
  );
  const backend = await setupBackend(settings.runtime, { weightBytes: bytes });
  console.log(describeBackend(backend));
  for (const note of backend.notes) console.log(`note: ${note}`);

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
  const model = modelFromArrays(config, arrays, { weightStorage: backend.weightStorage });
  // wasm copied the weights into its heap; the cpu backend keeps these very arrays (no copy).
  arrays.clear();
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
      `wasm heap (4 GiB) exhausted during the run (${error.message}); try fewer --layers, a ` +
        `smaller --batch/--seq, or --set runtime.backend=cpu`,
      { cause: error },
    );
  } finally {
    clearInterval(timer);
    model.dispose();
  }
  sampleRss();
  console.log(
    `peak rss: sampled ${(peak.rss / GB).toFixed(2)} GB, VmHWM ${(vmHwm() / GB).toFixed(2)} GB` +
      (backend.name === "wasm" ? " (wasm heap stays allocated once grown)" : ""),
  );
}

if (import.meta.main) await runTask(main);
