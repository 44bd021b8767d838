/**
 * The run writer: the file writer lays out a run directory as the report reads it, the
 * in-memory writer gives the same records back without files, and `train()` sends every record
 * through the writer it is given.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../lib/config.ts";
import type { TrainerContext } from "../lib/context.ts";
import type { Example } from "../lib/data.ts";
import { loadLora } from "../lib/lora.ts";
import { loadModel } from "../lib/model_loader.ts";
import { AdamW } from "../lib/optim.ts";
import { loadRun } from "../lib/report.ts";
import {
  averageRecords,
  evalRecord,
  fileRunWriter,
  formatRecord,
  memoryRunWriter,
  RUN_LOG_FILES,
} from "../lib/run_writer.ts";
import type { RunWriter } from "../lib/run_writer.ts";
import { tf } from "../lib/tf.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { train } from "../lib/trainer.ts";
import { useTestBackend } from "./_backend.ts";

const EXAMPLES: Example[] = Array.from({ length: 4 }, (_, i) => ({
  id: `t${i}`,
  question: `${i} + 1 = ?`,
  answer: String(i + 1),
  source: `test:${i}`,
}));

/** Writes one record of each kind. */
async function writeAll(writer: RunWriter): Promise<void> {
  await writer.config(await loadConfig("configs/demo.yaml"));
  await writer.log("hello");
  await writer.metrics({ step: 1, reward: 0.5 });
  await writer.completions([
    {
      step: 1,
      prompt: "q",
      completion: "c",
      answer: "1",
      predicted: null,
      reward: -1,
      status: "no_answer",
    },
  ]);
  await writer.summary({
    before: null,
    after: null,
    kl: 0,
    steps: 1,
    seconds: 1,
    output_dir: writer.dir,
  });
}

Deno.test("fileRunWriter() writes a run directory that loadRun() reads back; clear() empties it", async () => {
  const dir = await Deno.makeTempDir();
  const writer = fileRunWriter(`${dir}/run`);
  await writeAll(writer);
  await writeAll(writer); // JSONL and the log append; summary and config are replaced
  const run = await loadRun(`${dir}/run`);
  assert.deepEqual(run.metrics, [{ step: 1, reward: 0.5 }, { step: 1, reward: 0.5 }]);
  assert.equal(run.completions?.length, 2);
  assert.equal(run.summary?.output_dir, `${dir}/run`);
  assert.match(run.config!, /^model:/m);
  const log = (await Deno.readTextFile(`${dir}/run/training.log`)).trim().split("\n");
  assert.equal(log.length, 2);
  assert.match(log[0], /^\d{4}-\d\d-\d\dT[\d:.]+Z hello$/);
  await writer.clear();
  for (const file of Object.values(RUN_LOG_FILES)) {
    await assert.rejects(() => Deno.stat(`${dir}/run/${file}`), Deno.errors.NotFound);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("memoryRunWriter() keeps the same records and writes nothing", async () => {
  const writer = memoryRunWriter();
  await writeAll(writer);
  assert.equal(writer.dir, null);
  assert.deepEqual(writer.records.log, ["hello"]);
  assert.deepEqual(writer.records.metrics, [{ step: 1, reward: 0.5 }]);
  assert.equal(writer.records.completions[0].status, "no_answer");
  assert.equal(writer.records.summary?.output_dir, null);
  assert.equal(writer.records.config?.model.path, "data/demo/sft-model");
  await writer.clear();
  assert.deepEqual(writer.records.metrics, []);
});

/** Two steps before a checkpoint's mark and two after, as a run killed after step 4 left them. */
async function writeSteps(writer: RunWriter): Promise<Record<string, number>> {
  const completion = (step: number) => ({
    step,
    prompt: "q",
    completion: "c",
    answer: "1",
    predicted: null,
    reward: -1,
    status: "no_answer" as const,
  });
  let mark: Record<string, number> = {};
  for (const step of [1, 2, 3, 4]) {
    await writer.log(`step=${step}`);
    await writer.metrics({ step, reward: step });
    await writer.completions([completion(step)]);
    if (step === 2) mark = await writer.mark();
  }
  return mark;
}

Deno.test("fileRunWriter() rewinds to a checkpoint's mark: later records, checkpoints and leftovers go", async () => {
  const dir = await Deno.makeTempDir();
  const writer = fileRunWriter(dir);
  const mark = await writeSteps(writer);
  assert.deepEqual(Object.keys(mark), ["metrics.jsonl", "training.log", "completions.jsonl"]);
  for (const name of ["checkpoint-2", "checkpoint-4", "checkpoint-6.tmp-0a1b-2c"]) {
    await Deno.mkdir(`${dir}/${name}`);
  }
  await Deno.writeTextFile(`${dir}/summary.json.tmp-1f2e`, "{");
  await Deno.writeTextFile(`${dir}/summary.json`, "{}");
  await Deno.writeTextFile(`${dir}/eval_results.jsonl`, "{}\n");
  const names = async () => {
    const out = [];
    for await (const e of Deno.readDir(dir)) out.push(e.name);
    return out.sort();
  };
  // A fresh start removes only what interrupted writes left.
  await writer.rewind(null);
  assert.deepEqual(await names(), [
    "checkpoint-2",
    "checkpoint-4",
    "completions.jsonl",
    "eval_results.jsonl",
    "metrics.jsonl",
    "summary.json",
    "training.log",
  ]);
  await writer.rewind({ step: 2, mark });
  assert.deepEqual(await names(), [
    "checkpoint-2",
    "completions.jsonl",
    "metrics.jsonl",
    "training.log",
  ]);
  const run = await loadRun(dir);
  assert.deepEqual(run.metrics, [{ step: 1, reward: 1 }, { step: 2, reward: 2 }]);
  assert.deepEqual(run.completions?.map((c) => c.step), [1, 2]);
  const log = (await Deno.readTextFile(`${dir}/training.log`)).trim().split("\n");
  assert.deepEqual(log.map((l) => l.split(" ")[1]), ["step=1", "step=2"]);
  // A checkpoint without a mark (written before marks existed): JSONL rows by step.
  await writer.metrics({ step: 3, reward: 3 });
  await writer.rewind({ step: 1, mark: null });
  assert.deepEqual((await loadRun(dir)).metrics, [{ step: 1, reward: 1 }]);
  await writer.clear();
  assert.deepEqual(await names(), []);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("memoryRunWriter() rewinds to a checkpoint's mark like the file writer", async () => {
  const writer = memoryRunWriter();
  const mark = await writeSteps(writer);
  writer.records.checkpoints.push({ step: 2, state: {} }, { step: 4, state: {} });
  await writer.rewind({ step: 2, mark });
  assert.deepEqual(writer.records.metrics, [{ step: 1, reward: 1 }, { step: 2, reward: 2 }]);
  assert.deepEqual(writer.records.log, ["step=1", "step=2"]);
  assert.deepEqual(writer.records.completions.map((c) => c.step), [1, 2]);
  assert.deepEqual(writer.records.checkpoints.map((c) => c.step), [2]);
});

Deno.test("averageRecords() and formatRecord() give TRL's window mean and the log line", () => {
  const mean = averageRecords([{ step: 1, loss: 1, kl: 0 }, { step: 2, loss: 2, kl: 1e-4 }]);
  assert.deepEqual(mean, { step: 1.5, loss: 1.5, kl: 5e-5 });
  assert.equal(formatRecord({ kl: 5e-5, loss: 1.5, step: 2 }), "step=2 loss=1.5000 kl=5.00e-5");
  assert.deepEqual(averageRecords([]), {});
});

Deno.test("evalRecord() logs pass@k, maj@k and pass@1 under eval/ when k samples were drawn", () => {
  const greedy = {
    n: 4,
    accuracy: 0.25,
    no_answer_rate: 0,
    mean_reward: -0.5,
    accuracy_boxed: 0.25,
    mean_length: 9,
    k: 1,
  };
  assert.deepEqual(Object.keys(evalRecord(3, greedy)), [
    "step",
    "eval/accuracy",
    "eval/no_answer_rate",
    "eval/mean_reward",
    "eval/accuracy_boxed",
    "eval/n",
  ]);
  const sampled = evalRecord(3, {
    ...greedy,
    k: 8,
    pass_at_k: 0.5,
    maj_at_k: 0.25,
    pass_at_1: 0.2,
  });
  assert.equal(sampled["eval/accuracy"], 0.25);
  assert.equal(sampled["eval/pass@8"], 0.5);
  assert.equal(sampled["eval/maj@8"], 0.25);
  assert.equal(sampled["eval/pass@1"], 0.2);
});

Deno.test("train() with an in-memory writer returns every record and creates no file", async () => {
  await useTestBackend("wasm+blas");
  const config = await loadConfig("configs/rl_grpo_config_test.yaml", {
    set: [
      "model.adapter_path=tests/fixtures/qwen2-tiny/adapter",
      "generation.prompt_format=plain",
      "generation.max_new_tokens=8",
      "training.max_steps=2",
      "training.save_steps=1",
      "logging.logging_steps=1",
      "logging.log_completions=true",
    ],
  });
  const model = await loadModel(config.model.path);
  const adapter = await loadLora(model, config.model.adapter_path!);
  const optimizer = new AdamW([...adapter.variables.values()], config.training);
  const ctx: TrainerContext = {
    config,
    model,
    tokenizer: await loadTokenizer(config.model.path),
    adapter,
    optimizer,
  };
  // Every file-writing call of Deno counts while train() runs (this test module's own Deno).
  const writes: string[] = [];
  const saved = new Map<string, unknown>();
  const deno = Deno as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (const name of ["writeTextFile", "writeFile", "mkdir", "open", "rename", "remove"]) {
    const original = deno[name];
    saved.set(name, original);
    deno[name] = (...args: unknown[]) => {
      // open() counts when it may write (train() reads the model's files for its identity).
      const flags = (args[1] ?? {}) as Deno.OpenOptions;
      if (name !== "open" || flags.write || flags.append || flags.create || flags.truncate) {
        writes.push(`${name} ${args[0]}`);
      }
      return original(...args);
    };
  }
  const before = tf.memory().numTensors;
  try {
    const writer = memoryRunWriter();
    const summary = await train(ctx, { train: EXAMPLES, eval: EXAMPLES.slice(0, 1) }, { writer });
    const { records } = writer;
    assert.equal(summary.output_dir, null);
    assert.deepEqual(records.summary, summary);
    assert.deepEqual(records.metrics.map((m) => m.step), [0, 1, 2, 2]); // eval, 2 steps, eval
    assert.equal(records.completions.length, 2 * 2); // 2 steps × 1 prompt × G=2
    assert.deepEqual(records.checkpoints.map((c) => c.step), [1, 2]);
    assert.equal(records.evalResults.length, 1);
    assert.ok(records.log.some((l) => l.startsWith("eval after training: accuracy")));
    assert.equal(records.config?.training.max_steps, 2);
    assert.deepEqual(writes, []);
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
  } finally {
    for (const [name, original] of saved) deno[name] = original as (...args: unknown[]) => unknown;
    adapter.dispose();
    optimizer.dispose();
    model.dispose();
  }
});
