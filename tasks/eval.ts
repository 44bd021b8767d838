/**
 * Scores a model (with or without a LoRA adapter) on held-out problems with the training verifier.
 *
 *   deno task eval --model_path DIR [--adapter DIR] --data FILE [--samples k] [--max_samples N]
 *                  [--batch_size B] [--max_new_tokens N] [--output_dir DIR] [--config FILE]
 *
 * Greedy accuracy, no-answer rate, mean reward and accuracy among boxed answers; with `--samples
 * k` (k > 1) also a sampled pass (the config's eval.temperature or generation.temperature, and
 * top_p) with pass@k, maj@k and pass@1, as training logs them with eval.num_samples. Writes one line per
 * problem to `<output_dir>/eval_results.jsonl` and the summary to `<output_dir>/eval_summary.json`
 * (default output_dir: `results/eval_<timestamp>`). Prompt format and generation settings come
 * from the config (`configs/demo.yaml` when it exists, else the schema defaults).
 *
 * @module
 */
import { describeBackend, setupBackend } from "../lib/backend.ts";
import type { FlagSpec } from "../lib/cli.ts";
import { COMMAND_LINE } from "../lib/config.ts";
import { loadDataset } from "../lib/data.ts";
import { ConfigError } from "../lib/errors.ts";
import { evalOptions, evaluateGreedyAndSampled } from "../lib/evaluate.ts";
import { loadLora } from "../lib/lora.ts";
import { loadModel, loadModelConfig } from "../lib/model_loader.ts";
import { weightBytes } from "../lib/qwen2_config.ts";
import { ProgressBar } from "../lib/progress.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { fileExists, runTask, startTask } from "./_main.ts";

const DEFAULT_CONFIG = "configs/demo.yaml";

const FLAGS: Record<string, FlagSpec> = {
  adapter: {
    type: "string",
    valueName: "dir",
    description: "PEFT LoRA adapter directory (sets model.adapter_path)",
    configKey: "model.adapter_path",
  },
  data: {
    type: "string",
    valueName: "file",
    description: "Problems: seed JSON, GSM8K or MATH JSONL (sets eval.eval_file)",
    configKey: "eval.eval_file",
  },
  samples: {
    type: "string",
    valueName: "k",
    default: "1",
    description: "Samples per problem: 1 = greedy; k > 1 adds pass@k and maj@k",
  },
  batch_size: {
    type: "string",
    valueName: "n",
    description: "Sequences per generation batch (sets eval.eval_batch_size)",
    configKey: "eval.eval_batch_size",
  },
  max_new_tokens: {
    type: "string",
    valueName: "n",
    description: "Most tokens per completion (sets eval.max_new_tokens)",
    configKey: "eval.max_new_tokens",
  },
};

/** `results/eval_20250131_154502` for the current local time. */
function defaultOutputDir(): string {
  const d = new Date();
  const p = (n: number) => String(n).padStart(2, "0");
  const stamp = `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}_` +
    `${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
  return `results/eval_${stamp}`;
}

async function main(): Promise<void> {
  const defaultConfigPath = await fileExists(DEFAULT_CONFIG) ? DEFAULT_CONFIG : null;
  const task = await startTask(Deno.args, {
    command: "deno task eval",
    summary: "Evaluates a model on a problem file (--max_samples limits the problems; " +
      "--output_dir defaults to results/eval_<timestamp>).",
    defaultConfigPath,
    extra: FLAGS,
  });
  if (task === null) return;
  const { commandLine, config } = task;
  const { values } = commandLine;
  const samples = Number(values.samples);
  if (!/^\d+$/.test(String(values.samples)) || samples < 1) {
    throw new ConfigError(
      `Cannot parse ${COMMAND_LINE}: --samples: expected an integer >= 1, got ${values.samples}`,
      { file: COMMAND_LINE, key: "samples" },
    );
  }
  const dataFile = config.eval.eval_file;
  if (dataFile === null) {
    throw new ConfigError(`Cannot evaluate: eval.eval_file is null; pass --data FILE`, {
      file: COMMAND_LINE,
      key: "eval.eval_file",
    });
  }
  // --max_samples limits the problems here (it sets data.max_samples, validated by the schema).
  const maxSamples = values.max_samples !== undefined
    ? config.data.max_samples
    : config.eval.eval_max_samples;
  const outputDir = (values.output_dir as string | undefined) ?? defaultOutputDir();
  const options = evalOptions(config);
  const { generation } = options;

  // Sized first: under runtime.backend auto, weights too big for the wasm heap go to cpu + BLAS.
  const modelBytes = weightBytes(await loadModelConfig(config.model.path));
  const backend = await setupBackend(config.runtime, { weightBytes: modelBytes });
  console.error(describeBackend(backend));
  for (const note of backend.notes) console.error(`note: ${note}`);
  const { examples, skipped } = await loadDataset(dataFile, {
    max_samples: maxSamples,
    on_bad_row: config.data.on_bad_row,
  });
  if (skipped > 0) console.error(`note: skipped ${skipped} bad rows of ${dataFile}`);
  const model = await loadModel(config.model.path, {
    weightStorage: backend.weightStorage,
    torch_dtype: config.model.torch_dtype,
  });
  const tokenizer = await loadTokenizer(config.model.path, { vocabSize: model.config.vocab_size });
  const adapter = config.model.adapter_path === null
    ? null
    : await loadLora(model, config.model.adapter_path);

  const started = performance.now();
  const bar = new ProgressBar({
    label: "eval",
    total: samples > 1 ? 2 * examples.length : examples.length, // greedy, then sampled
    writer: Deno.stderr,
    unit: "problems",
  });
  const { results, summary } = await evaluateGreedyAndSampled(model, tokenizer, examples, {
    ...options,
    samples,
    seed: config.training.seed,
    adapter,
    onProgress: (done) => bar.update(done),
  });
  bar.done({ accuracy: summary.accuracy });
  const seconds = (performance.now() - started) / 1000;
  adapter?.dispose();
  model.dispose();

  await Deno.mkdir(outputDir, { recursive: true });
  const resultsPath = `${outputDir}/eval_results.jsonl`;
  const summaryPath = `${outputDir}/eval_summary.json`;
  await Deno.writeTextFile(resultsPath, results.map((r) => JSON.stringify(r) + "\n").join(""));
  const record = {
    ...summary,
    model: config.model.path,
    adapter: config.model.adapter_path,
    data: dataFile,
    prompt_format: generation.prompt_format,
    max_new_tokens: generation.max_new_tokens,
    backend: describeBackend(backend),
    seconds,
  };
  await Deno.writeTextFile(summaryPath, JSON.stringify(record, null, 2) + "\n");

  const mode = samples === 1
    ? "greedy"
    : `greedy and ${samples} samples, temperature ${generation.temperature}`;
  const rows: [string, string][] = [
    ["problems", String(summary.n)],
    ["accuracy", summary.accuracy.toFixed(4)],
    ["no_answer_rate", summary.no_answer_rate.toFixed(4)],
    ["mean_reward", summary.mean_reward.toFixed(4)],
    ["accuracy_boxed", summary.accuracy_boxed.toFixed(4)],
    ["mean_length", summary.mean_length.toFixed(1)],
  ];
  if (summary.pass_at_k !== undefined) rows.push([`pass@${samples}`, summary.pass_at_k.toFixed(4)]);
  if (summary.maj_at_k !== undefined) rows.push([`maj@${samples}`, summary.maj_at_k.toFixed(4)]);
  if (summary.pass_at_1 !== undefined) rows.push(["pass@1", summary.pass_at_1.toFixed(4)]);
  console.log(`eval ${config.model.path} on ${dataFile} (${mode}, ${seconds.toFixed(1)} s)`);
  for (const [name, value] of rows) console.log(`  ${name.padEnd(16)}${value.padStart(10)}`);
  console.log(`wrote ${resultsPath} and ${summaryPath}`);
}

if (import.meta.main) await runTask(main);
