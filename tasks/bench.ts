/**
 * `deno task bench`: our workloads (bench/workloads.ts) and the PyTorch peer's
 * (bench/peer_torch.py) side by side, one child process at a time (never ours and the peer's
 * 1.5B model in memory together), as JSON lines and a markdown table. Issue #11's workloads: (1)
 * demo GRPO step, (2) rollout, (3) 1.5B-shaped forward and decode, (4) 1.5B-shaped GRPO update,
 * (5) the verifier (no peer). The peer runs when `--python` has torch, at each `--peer-threads`,
 * and its fastest counts.
 *
 *   deno task bench [--workload all|1-5|names] [--repeats 5] [--large-repeats 3] [--warmup 1]
 *     [--skip-large] [--layers 28] [--torch-dtype float32|auto] [--threads 2]
 *     [--peer-threads 1,2] [--no-peer] [--python /usr/bin/python3]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ConfigError } from "../lib/errors.ts";
import { COMMAND_LINE } from "../lib/config.ts";
import { parseQwen2Config, weightBytes } from "../lib/qwen2_config.ts";
import { compare, formatTable, type Line } from "../bench/_compare.ts";
import { deviceLine, loadAverage, memAvailableBytes } from "../bench/_measure.ts";
import { LARGE, parseWorkloads, QWEN25_MATH_1_5B, type Workload } from "../bench/workloads.ts";
import { runTask } from "./_main.ts";

const HELP = `deno task bench: our workloads and PyTorch's, side by side (issue #11)

  --workload LIST     all (default), the issue's numbers 1-5, or names: grpo_step, rollout,
                      forward_1.5b, decode_1.5b, grpo_update_1.5b, verifier
  --repeats N         timed runs per workload, medians (default 5)
  --large-repeats N   timed runs of the 1.5B-shaped workloads, minutes each (default 3)
  --warmup N          untimed runs first (default 1)
  --skip-large        leave out the 1.5B-shaped workloads (3) and (4)
  --layers N          decoder layers of the 1.5B-shaped model (default 28)
  --torch-dtype D     float32 (default) or auto: the 1.5B weights stored as BF16
  --threads N         our BLAS threads (default 2)
  --peer-threads L    PyTorch's thread counts, its best counts (default 1,2)
  --no-peer           do not run PyTorch
  --python PATH       the Python with torch (default /usr/bin/python3)`;

const GROUPS: Workload[][] = [
  ["grpo_step", "rollout"],
  ["verifier"],
  ["forward_1.5b", "decode_1.5b"],
  ["grpo_update_1.5b"],
];

function fail(key: string, why: string): never {
  throw new ConfigError(`Cannot parse ${COMMAND_LINE}: --${key}: ${why}`, {
    file: COMMAND_LINE,
    key,
  });
}

function int(values: Record<string, unknown>, key: string, min: number): number {
  const n = Number(values[key]);
  if (!Number.isInteger(n) || n < min) {
    fail(key, `expected an integer >= ${min}, got ${values[key]}`);
  }
  return n;
}

/** Runs a child, passing its stderr (progress) through; its stdout's JSON lines. */
async function child(command: string, args: string[]): Promise<{ lines: Line[]; error: string }> {
  const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "inherit" })
    .output();
  const lines = new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Line);
  return { lines, error: out.success ? "" : `exited with code ${out.code}` };
}

/** `torch.__version__` of `python`, or why there is none. */
async function torchVersion(python: string): Promise<{ version: string } | { missing: string }> {
  try {
    const out = await new Deno.Command(python, {
      args: ["-c", "import torch; print(torch.__version__)"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (out.success) return { version: new TextDecoder().decode(out.stdout).trim() };
    const why = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1);
    return { missing: `${python}: ${why}` };
  } catch (error) {
    return { missing: `${python}: ${(error as Error).message.split("\n")[0]}` };
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      workload: { type: "string", default: "all" },
      repeats: { type: "string", default: "5" },
      "large-repeats": { type: "string", default: "3" },
      warmup: { type: "string", default: "1" },
      "skip-large": { type: "boolean", default: false },
      layers: { type: "string", default: "28" },
      "torch-dtype": { type: "string", default: "float32" },
      threads: { type: "string", default: "2" },
      "peer-threads": { type: "string", default: "1,2" },
      "no-peer": { type: "boolean", default: false },
      python: { type: "string", default: "/usr/bin/python3" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  let want: Workload[];
  try {
    want = parseWorkloads(values.workload);
  } catch (error) {
    fail("workload", (error as Error).message.replace(/^--workload: /, ""));
  }
  if (values["skip-large"]) want = want.filter((w) => !LARGE.has(w));
  if (want.length === 0) fail("workload", `no workload left to run from ${values.workload}`);
  const repeats = int(values, "repeats", 1);
  const largeRepeats = int(values, "large-repeats", 1);
  const warmup = int(values, "warmup", 0);
  const layers = int(values, "layers", 1);
  const threads = String(int(values, "threads", 1));
  const torchDtype = values["torch-dtype"];
  if (torchDtype !== "float32" && torchDtype !== "auto") {
    fail("torch-dtype", `expected float32 or auto, got ${torchDtype}`);
  }
  const peerThreads = values["peer-threads"].split(",").map((t) => Number(t));
  if (peerThreads.some((t) => !Number.isInteger(t) || t < 1)) {
    fail("peer-threads", `expected integers >= 1, got ${values["peer-threads"]}`);
  }
  const torch = values["no-peer"] ? { missing: "--no-peer" } : await torchVersion(values.python);

  console.log(
    `device: ${deviceLine()}; ${new Date().toISOString()}, load ${loadAverage()?.toFixed(2)}`,
  );
  console.log(
    `ours: deno run bench/workloads.ts, BLAS threads ${threads}, 1.5B-shaped model ${layers} ` +
      `layers, torch_dtype ${torchDtype}; medians of ${repeats} runs after ${warmup} warm-up` +
      (want.some((w) => LARGE.has(w))
        ? ` (1.5B workloads: ${largeRepeats} runs, minutes each)`
        : ""),
  );
  console.log(
    "version" in torch
      ? `peer: ${values.python} bench/peer_torch.py, torch ${torch.version}, threads ${
        peerThreads.join(" and ")
      } (torch and OpenBLAS), best counts`
      : `peer: none (${torch.missing}); PyTorch columns empty. Install Debian's python3-torch for them`,
  );

  const bytes = weightBytes(
    parseQwen2Config({ ...QWEN25_MATH_1_5B, num_hidden_layers: layers }, "1.5B"),
  );
  const ours: Line[] = [];
  const peers: Line[] = [];
  const notes: string[] = [];
  for (const group of GROUPS) {
    const names = group.filter((w) => want.includes(w));
    if (names.length === 0) continue;
    const large = names.some((w) => LARGE.has(w));
    const n = String(large ? largeRepeats : repeats);
    // Peak memory of each side (measured: ours ~weights + 2 GB, the peer's update ~2 × weights).
    const update = names.includes("grpo_update_1.5b");
    const need = {
      ours: (torchDtype === "auto" ? bytes / 2 : bytes) + 3e9,
      peer: update ? 2.2 * bytes : bytes + 2e9,
    };
    const enough = (side: "ours" | "peer") => {
      const free = memAvailableBytes();
      if (!large || free === null || free >= need[side]) return true;
      notes.push(
        `${names.join(", ")} (${side}): skipped, ${(free / 1e9).toFixed(1)} GB available, needs ~${
          (need[side] / 1e9).toFixed(0)
        } GB`,
      );
      return false;
    };
    if (enough("ours")) {
      const r = await child(Deno.execPath(), [
        "run",
        "-A",
        "bench/workloads.ts",
        "--workload",
        names.join(","),
        "--repeats",
        n,
        "--warmup",
        String(warmup),
        "--threads",
        threads,
        "--layers",
        String(layers),
        "--torch-dtype",
        torchDtype,
      ]);
      ours.push(...r.lines);
      if (r.error) notes.push(`ours, ${names.join(", ")}: ${r.error}`);
    }
    const peerNames = names.filter((w) => w !== "verifier");
    if (!("version" in torch) || peerNames.length === 0) continue;
    for (const threads of peerThreads) {
      if (!enough("peer")) continue;
      const r = await child(values.python, [
        "bench/peer_torch.py",
        "--threads",
        String(threads),
        "--workload",
        peerNames.join(","),
        "--repeats",
        n,
        "--warmup",
        String(warmup),
        "--layers",
        String(layers),
      ]);
      peers.push(...r.lines);
      if (r.error) notes.push(`PyTorch ${threads} threads, ${peerNames.join(", ")}: ${r.error}`);
    }
  }

  const rows = compare(want, ours, peers);
  for (const r of rows) {
    console.log(JSON.stringify({
      workload: r.workload,
      unit: r.unit,
      ours: r.ours,
      pytorch: r.peer,
      pytorch_threads: r.peerThreads,
      ratio: r.ratio,
      pytorch_runs: r.peerRuns,
      ours_line: r.oursLine,
      pytorch_line: r.peerLine,
    }));
  }
  console.log("");
  for (const line of formatTable(rows)) console.log(line);
  for (const note of notes) console.log(`note: ${note}`);
  const backend = ours.find((l) =>
    typeof l.backend === "string" && l.backend !== "none (plain JS)"
  );
  if (backend) console.log(`ours: ${backend.backend}, tfjs ${backend.tfjs}`);
}

if (import.meta.main) await runTask(main);
