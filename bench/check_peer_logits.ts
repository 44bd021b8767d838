/**
 * Is `bench/peer_torch.py` the same model as ours? Runs the peer's `--check-logits` (the demo
 * model's logits for two left-padded prompts, adapter off and with fixed LoRA values) and compares
 * them with `forward()` of lib/model.ts on the same ids, on stock cpu and on wasm + BLAS.
 * Also checks that our tokenizer gives the peer's ids. Exits 1 when a logit differs by more than
 * `--atol` (default 1e-4).
 *
 *   deno run -A bench/check_peer_logits.ts [--atol 1e-4] [--python /usr/bin/python3]
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  createLora,
  describeBackend,
  formatPrompt,
  forward,
  loadModel,
  loadTokenizer,
  tf,
  useBackend,
} from "../lib/mod.ts";

const MODEL_DIR = "data/demo/sft-model";
const PEER = new URL("./peer_torch.py", import.meta.url).pathname;

/** What `peer_torch.py --check-logits` prints. */
interface PeerLogits {
  questions: string[];
  input_ids: number[][];
  attention_mask: number[][];
  lora: { lora_r: number; lora_alpha: number; keys: string[] };
  /** [B, T, V] */
  logits: number[][][];
  /** [B, T, V] with the fixed LoRA values. */
  logits_lora: number[][][];
  kv_cache_max_abs_diff: number;
  torch: string;
}

/** The peer's `check_lora_value`: the same float64 arithmetic, rounded to float32 on assignment. */
function checkLoraValue(moduleIndex: number, flatIndex: number): number {
  return (((flatIndex * 7919 + moduleIndex * 104729) % 1000) / 1000.0 - 0.5) * 0.2;
}

async function runPeer(python: string): Promise<PeerLogits> {
  const out = await new Deno.Command(python, {
    args: [PEER, "--check-logits"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `${python} ${PEER} --check-logits failed:\n${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** Max |a - b| over every logit, and where. */
function maxAbsDiff(ours: Float32Array, peer: number[][][]): { diff: number; at: string } {
  let diff = 0;
  let at = "";
  const [T, V] = [peer[0].length, peer[0][0].length];
  for (let b = 0; b < peer.length; b++) {
    for (let t = 0; t < T; t++) {
      for (let v = 0; v < V; v++) {
        const d = Math.abs(ours[(b * T + t) * V + v] - peer[b][t][v]);
        if (!(d <= diff)) {
          diff = d;
          at = `[${b}, ${t}, ${v}]`;
        }
      }
    }
  }
  return { diff, at };
}

async function main(): Promise<void> {
  const args = parseArgs({
    args: Deno.args,
    options: {
      atol: { type: "string", default: "1e-4" },
      python: { type: "string", default: "/usr/bin/python3" },
    },
  }).values;
  const atol = Number(args.atol);
  const peer = await runPeer(args.python);
  console.log(
    `peer: torch ${peer.torch}, KV-cache decode vs full forward max |diff| ${
      peer.kv_cache_max_abs_diff.toExponential(2)
    }`,
  );
  let failed = peer.kv_cache_max_abs_diff > atol;

  const tokenizer = await loadTokenizer(MODEL_DIR);
  for (const [b, question] of peer.questions.entries()) {
    const ids = tokenizer.encode(
      formatPrompt(tokenizer, question, { prompt_format: "plain", system_prompt: "" }),
    );
    const peerIds = peer.input_ids[b].filter((_, t) => peer.attention_mask[b][t] === 1);
    if (ids.join() !== peerIds.join()) {
      console.log(`FAIL tokenizer: prompt ${b} encodes to different ids than the peer's`);
      failed = true;
    }
  }

  const [B, T] = [peer.input_ids.length, peer.input_ids[0].length];
  for (const name of ["cpu", "wasm+blas"] as const) {
    const info = await useBackend(name);
    const model = await loadModel(MODEL_DIR);
    const ids = tf.tensor2d(peer.input_ids, [B, T], "int32");
    const attentionMask = tf.tensor2d(peer.attention_mask, [B, T], "int32");
    const lora = createLora(model, {
      lora_r: peer.lora.lora_r,
      lora_alpha: peer.lora.lora_alpha,
      lora_dropout: 0,
      target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"],
    });
    for (const [moduleIndex, key] of peer.lora.keys.entries()) {
      const v = lora.variables.get(key);
      if (v === undefined) throw new Error(`our LoRA has no variable ${key}`);
      const values = new Float32Array(v.size);
      for (let k = 0; k < v.size; k++) values[k] = checkLoraValue(moduleIndex, k);
      v.assign(tf.tensor(values, v.shape));
    }
    for (
      const [label, adapter, expected] of [["adapter off", null, peer.logits], [
        "LoRA",
        lora,
        peer.logits_lora,
      ]] as const
    ) {
      const logits = forward(model, ids, { attentionMask, adapter });
      const { diff, at } = maxAbsDiff(await logits.data() as Float32Array, expected); // sync point
      logits.dispose();
      const ok = diff <= atol;
      failed ||= !ok;
      console.log(
        `${ok ? "ok  " : "FAIL"} ${describeBackend(info)}, ${label}: logits [${B}, ${T}, ${
          expected[0][0].length
        }] max |ours - peer| ${diff.toExponential(2)} at ${at} (atol ${atol})`,
      );
    }
    tf.dispose([ids, attentionMask]);
    lora.dispose();
    model.dispose();
  }
  if (failed) Deno.exit(1);
}

await main();
