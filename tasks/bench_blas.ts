/**
 * `deno task bench:blas [--runs 5] [--cpu] [--webgpu] [--no-torch]`: times the CPU fast path.
 *
 * Workloads: a linear block like one Qwen2 MLP at toy width, x[16,96,256] @ W1[704,256]^T → silu →
 * @ W2[256,704]^T, forward + backward w.r.t. x, W1 and W2 (tf.grads); and one transposed 1024²
 * matMul (a @ b^T, the layout of every HF weight). Backends: stock wasm, wasm + BLAS on 1 and 2
 * threads, cpu + BLAS on 2 threads (the path for models past the 4 GiB wasm heap), optionally
 * stock tfjs cpu (`--cpu`) and webgpu (any adapter, llvmpipe included); PyTorch
 * (torch.set_num_threads(2)) when `/usr/bin/python3` has torch.
 * Each line names the device and backend next to its number. Median of `--runs`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { tf } from "../lib/tf.ts";
import { type BackendInfo, describeBackend, setupBackend } from "../lib/backend.ts";
import { ConfigError } from "../lib/errors.ts";
import { COMMAND_LINE } from "../lib/config.ts";
import { deviceLine, median } from "../bench/_measure.ts";
import { runTask } from "./_main.ts";

const B = 16; // sequences
const T = 96; // tokens
const H = 256; // hidden_size
const I = 704; // intermediate_size
const N = 1024; // square matMul side

const PYTORCH_SCRIPT = `
import json, sys, time, torch
torch.set_num_threads(2)
torch.manual_seed(0)
runs = int(sys.argv[1])
x = torch.randn(${B}, ${T}, ${H}, requires_grad=True)
w1 = torch.randn(${I}, ${H}, requires_grad=True)
w2 = torch.randn(${H}, ${I}, requires_grad=True)
def block():
    y = torch.nn.functional.silu(x @ w1.T) @ w2.T
    y.sum().backward()
a = torch.randn(${N}, ${N}); b = torch.randn(${N}, ${N})
def square():
    a @ b.T
def median(f):
    f()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter(); f(); times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]
print(json.dumps({"block": median(block), "square": median(square),
                  "version": torch.__version__, "threads": torch.get_num_threads()}))
`;

/**
 * Median wall time of `fn` in ms, output read back included, after one warm-up run (skipped when
 * `runs` is 1).
 */
async function timeIt(
  fn: (inputs: Record<string, tf.Tensor>) => tf.Tensor[],
  inputs: Record<string, tf.Tensor>,
  runs: number,
): Promise<number> {
  const times: number[] = [];
  for (let i = runs > 1 ? -1 : 0; i < runs; i++) {
    const start = performance.now();
    const out = fn(inputs);
    await Promise.all(out.map((t) => t.data())); // sync point: wait for the values
    const ms = performance.now() - start;
    tf.dispose(out);
    if (i >= 0) times.push(ms);
  }
  return median(times);
}

function seeded(shape: number[], seed: number): Float32Array {
  const data = new Float32Array(shape.reduce((p, d) => p * d, 1));
  let s = seed;
  for (let i = 0; i < data.length; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    data[i] = (s / 2147483648 - 0.5) * 0.2;
  }
  return data;
}

const data = {
  x: seeded([B, T, H], 1),
  w1: seeded([I, H], 2),
  w2: seeded([H, I], 3),
  a: seeded([N, N], 4),
  b: seeded([N, N], 5),
};

/** The inputs as tensors on the active backend, made outside the timed region. */
function makeInputs(): Record<keyof typeof data, tf.Tensor> {
  return {
    x: tf.tensor3d(data.x, [B, T, H]),
    w1: tf.tensor2d(data.w1, [I, H]),
    w2: tf.tensor2d(data.w2, [H, I]),
    a: tf.tensor2d(data.a, [N, N]),
    b: tf.tensor2d(data.b, [N, N]),
  };
}

function blockFn(inputs: Record<string, tf.Tensor>): tf.Tensor[] {
  // NOTE: 2-D matMuls: tfjs's BatchMatMul gradient does not sum over a broadcast batch dim, so a
  // [B,T,H] @ [I,H]^T weight gradient would come back [B,I,H] and fail its shape check.
  const f = (x: tf.Tensor, w1: tf.Tensor, w2: tf.Tensor) => {
    const h = tf.matMul(tf.reshape(x, [B * T, H]), w1, false, true); // [B*T, I]
    const y = tf.matMul(tf.mul(h, tf.sigmoid(h)), w2, false, true); // [B*T, H]
    return tf.sum(y);
  };
  return tf.tidy(() => tf.grads(f)([inputs.x, inputs.w1, inputs.w2])); // dx, dW1, dW2
}

function squareFn(inputs: Record<string, tf.Tensor>): tf.Tensor[] {
  return [tf.matMul(inputs.a, inputs.b, false, true)]; // [N, N]
}

async function pytorch(runs: number): Promise<Record<string, number | string> | string> {
  try {
    const out = await new Deno.Command("/usr/bin/python3", {
      args: ["-c", PYTORCH_SCRIPT, String(runs)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      return new TextDecoder().decode(out.stderr).trim().split("\n").at(-1) ?? "failed";
    }
    return JSON.parse(new TextDecoder().decode(out.stdout));
  } catch (error) {
    return (error as Error).message;
  }
}

function row(what: string, ms: number, label: string): void {
  console.log(`${what.padEnd(34)} ${ms.toFixed(1).padStart(9)} ms   ${label}`);
}

async function main(): Promise<void> {
  const args = parseArgs({
    args: Deno.args,
    options: {
      runs: { type: "string", default: "5" },
      cpu: { type: "boolean", default: false },
      webgpu: { type: "boolean", default: false },
      "no-torch": { type: "boolean", default: false },
    },
  }).values;
  const runs = Number(args.runs);
  if (!Number.isInteger(runs) || runs < 1) {
    throw new ConfigError(
      `Cannot parse ${COMMAND_LINE}: --runs: expected an integer >= 1, got ${args.runs}`,
      { file: COMMAND_LINE, key: "runs" },
    );
  }
  const device = `${deviceLine()}, tfjs ${tf.version.tfjs}`;
  console.log(`device: ${device}`);
  const blockName = `block ${B}x${T}x${H}->${I}->${H} fwd+bwd`;
  const squareName = `matMul ${N}x${N} @ ${N}x${N}^T`;

  const setups: { options: Parameters<typeof setupBackend>[0]; slow: boolean }[] = [
    { options: { backend: "wasm", blas: "off", num_threads: 1 }, slow: true },
    { options: { backend: "wasm", blas: "auto", num_threads: 1 }, slow: false },
    { options: { backend: "wasm", blas: "auto", num_threads: 2 }, slow: false },
    { options: { backend: "cpu", blas: "auto", num_threads: 2 }, slow: false },
  ];
  if (args.cpu) {
    setups.push({ options: { backend: "cpu", blas: "off", num_threads: 1 }, slow: true });
  }
  if (args.webgpu) {
    setups.push({ options: { backend: "webgpu", blas: "off", num_threads: 1 }, slow: false });
  }
  for (const { options, slow } of setups) {
    const info: BackendInfo = await setupBackend(options);
    const label = describeBackend(info);
    for (const line of info.notes) console.log(`note: ${line}`);
    // Stock kernels take seconds here: a single timed run keeps the task short.
    const n = slow ? 1 : runs;
    const inputs = makeInputs();
    row(blockName, await timeIt(blockFn, inputs, n), label);
    row(squareName, await timeIt(squareFn, inputs, n), label);
    tf.dispose(Object.values(inputs));
  }
  if (!args["no-torch"]) {
    const torch = await pytorch(runs);
    if (typeof torch === "string") console.log(`pytorch: skipped (${torch})`);
    else {
      const label = `pytorch ${torch.version} cpu (${torch.threads} threads)`;
      row(blockName, torch.block as number, label);
      row(squareName, torch.square as number, label);
    }
  }
}

await runTask(main);
