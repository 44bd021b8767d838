/**
 * The update phase against the fixture's GRPO cases (TRL's loss on PEFT's LoRA, see
 * tests/fixtures/README.md): loss within 1e-5 and every LoRA gradient within 1e-4 of the
 * tensor's max |value|; then the trainer loop: files, exact resume, flat tensor count.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { loadModel } from "../lib/model_loader.ts";
import { loadLora } from "../lib/lora.ts";
import { loadConfig } from "../lib/config.ts";
import type { Config } from "../lib/config.ts";
import type { Example } from "../lib/data.ts";
import type { RewardResult } from "../lib/reward.ts";
import { AdamW } from "../lib/optim.ts";
import { loadTokenizer } from "../lib/tokenizer.ts";
import { memoryRunWriter } from "../lib/run_writer.ts";
import { loadCheckpoint, saveCheckpoint } from "../lib/checkpoint.ts";
import { train, trainStep } from "../lib/trainer.ts";
import { DivergenceError } from "../lib/errors.ts";
import { disposePrepared, prepareBatch } from "../lib/update.ts";
import type { TrainerContext } from "../lib/context.ts";
import { assertGrpoCase } from "./_fixtures.ts";
import { BACKEND_STORAGES, storageLabel, storageOptions, useTestBackend } from "./_backend.ts";

const DIR = new URL("./fixtures/qwen2-tiny", import.meta.url).pathname;
const expected = JSON.parse(await Deno.readTextFile(`${DIR}/expected.json`));
const g = expected.grpo;

for (const [backend, storage] of BACKEND_STORAGES) {
  for (const checkpointing of [false, true]) {
    Deno.test(`LoRA gradients of all 12 GRPO cases match TRL (${backend}, gradient_checkpointing ${checkpointing}${storageLabel(storage)})`, async () => {
      await useTestBackend(backend);
      const model = await loadModel(DIR, storageOptions(storage));
      const lora = await loadLora(model, `${DIR}/adapter`);
      const before = tf.memory().numTensors;
      for (const c of g.cases) {
        await assertGrpoCase(model, lora, g, c, { gradientCheckpointing: checkpointing });
      }
      assert.equal(tf.memory().numTensors, before, "leaked tensors");
      lora.dispose();
      model.dispose();
    });
  }
}

async function testConfig(outputDir: string, extra: string[] = []): Promise<Config> {
  return await loadConfig("configs/rl_grpo_config_test.yaml", {
    flags: { output_dir: outputDir },
    set: [
      "model.adapter_path=tests/fixtures/qwen2-tiny/adapter",
      "generation.prompt_format=plain",
      "generation.max_new_tokens=8",
      "training.learning_rate=0.01",
      "training.lr_scheduler_type=constant",
      "training.gradient_checkpointing=false",
      "runtime.backend=wasm",
      ...extra,
    ],
  });
}

async function context(config: Config): Promise<TrainerContext> {
  const model = await loadModel(config.model.path);
  const tokenizer = await loadTokenizer(config.model.path);
  const adapter = await loadLora(model, config.model.adapter_path!);
  const optimizer = new AdamW([...adapter.variables.values()], config.training);
  return { config, model, tokenizer, adapter, optimizer };
}

function disposeContext(ctx: TrainerContext): void {
  ctx.adapter.dispose();
  ctx.optimizer.dispose();
  ctx.model.dispose();
}

/** Short prompts keep the byte-level fixture model fast. */
const EXAMPLES: Example[] = Array.from({ length: 10 }, (_, i) => ({
  id: `t${i}`,
  question: `${i} + ${i + 1} = ?`,
  answer: String(2 * i + 1),
  source: `test:${i}`,
}));

Deno.test("trainStep() changes every LoRA tensor and no base weight; tensors stay flat over 20 steps", async () => {
  await useTestBackend("wasm+blas");
  const config = await testConfig("/tmp/unused");
  const ctx = await context(config);
  const examples = EXAMPLES;
  const base = new Map<string, Float32Array>();
  for (const [k, w] of ctx.model.weights) base.set(k, (await w.data()) as Float32Array);
  const start = new Map<string, Float32Array>();
  for (const [k, v] of ctx.adapter.variables) start.set(k, (await v.data()) as Float32Array);
  let afterStep2 = 0;
  for (let step = 0; step < 20; step++) {
    const { metrics } = await trainStep(ctx, examples.slice(0, 2), { step, totalSteps: 20 });
    assert.ok(
      Number.isFinite(metrics.loss) && metrics.kl > 0,
      `step ${step}: ${JSON.stringify(metrics)}`,
    );
    if (step === 1) afterStep2 = tf.memory().numTensors;
  }
  assert.equal(tf.memory().numTensors, afterStep2, "tensor count grew between step 2 and step 20");
  for (const [k, v] of ctx.adapter.variables) {
    const now = await v.data();
    assert.ok(now.some((x, i) => x !== start.get(k)![i]), `${k} did not change`);
  }
  for (const [k, w] of ctx.model.weights) {
    assert.deepEqual(await w.data(), base.get(k), `${k} changed`);
  }
  disposeContext(ctx);
});

async function readMetrics(dir: string): Promise<Record<string, number>[]> {
  const text = await Deno.readTextFile(`${dir}/metrics.jsonl`);
  return text.trim().split("\n").map((l) => JSON.parse(l));
}

Deno.test("train() writes the seed's outputs and a resumed run repeats the uninterrupted one exactly", async () => {
  await useTestBackend("wasm+blas");
  const root = await Deno.makeTempDir();
  const full = `${root}/full`;
  const cut = `${root}/cut`;
  const run = async (outputDir: string, maxSteps: number, resumeFrom: string | null) => {
    const config = await testConfig(outputDir, [
      `training.max_steps=${maxSteps}`,
      "training.save_steps=2",
    ]);
    const ctx = await context(config);
    await train(ctx, { train: EXAMPLES, eval: [] }, { outputDir, resumeFrom });
    disposeContext(ctx);
  };
  await run(full, 4, null);
  for (const f of ["training.log", "metrics.jsonl", "summary.json", "config.yaml"]) {
    await Deno.stat(`${full}/${f}`);
  }
  for (
    const f of [
      "adapter_model.safetensors",
      "adapter_config.json",
      "optimizer.safetensors",
      "trainer_state.json",
      "config.yaml",
    ]
  ) {
    await Deno.stat(`${full}/checkpoint-2/${f}`);
  }
  const fullMetrics = await readMetrics(full);
  assert.deepEqual(fullMetrics.map((m) => m.step), [1, 2, 3, 4]);
  for (
    const key of [
      "reward",
      "accuracy",
      "kl_penalty",
      "loss",
      "grad_norm",
      "learning_rate",
      "clip_ratio/region_mean",
    ]
  ) {
    assert.ok(key in fullMetrics[0], `metrics.jsonl lacks ${key}`);
  }
  // Interrupted after checkpoint-2 (a 2-step run), then resumed to step 4.
  await run(cut, 2, null);
  await run(cut, 4, `${cut}/checkpoint-2`);
  const resumed = (await readMetrics(cut)).filter((m) => m.step > 2);
  const strip = (m: Record<string, number>) => {
    const { step_time: _a, rollout_time: _b, tokens_per_second: _c, ...rest } = m;
    return rest;
  };
  assert.deepEqual(resumed.map(strip), fullMetrics.filter((m) => m.step > 2).map(strip));
  assert.deepEqual(
    await Deno.readFile(`${cut}/checkpoint-4/adapter_model.safetensors`),
    await Deno.readFile(`${full}/checkpoint-4/adapter_model.safetensors`),
  );
  await Deno.remove(root, { recursive: true });
});

/**
 * A verifier for the byte-level fixture model, whose answers are noise: a completion is
 * "correct" when its character codes sum to an even number, so groups of 2 are mixed or flat
 * about half the time each, the same in every process (resume-safe, unlike a counter).
 */
function parityVerify(text: string): RewardResult {
  const correct = [...text].reduce((s, c) => s + c.charCodeAt(0), 0) % 2 === 0;
  return {
    reward: correct ? 1 : -1,
    predicted: "x",
    correct,
    status: correct ? "correct" : "wrong",
  };
}

Deno.test("train() with dynamic sampling and the difficulty-aware order resumes exactly", async () => {
  await useTestBackend("wasm+blas");
  const root = await Deno.makeTempDir();
  const run = async (outputDir: string, maxSteps: number, resumeFrom: string | null) => {
    const config = await testConfig(outputDir, [
      `training.max_steps=${maxSteps}`,
      "training.save_steps=2",
      "training.per_device_train_batch_size=4", // 2 prompts of G = 2 per step
      "grpo.filter_groups=true",
      "grpo.max_num_gen_batches=3",
      "data.gen_batch_size=3",
      "data.skip_easy_prob=0.5",
      "data.skip_hard_prob=0.5",
    ]);
    config.reward = { ...config.reward, verify: parityVerify } as Config["reward"];
    const ctx = await context(config);
    await train(ctx, { train: EXAMPLES, eval: [] }, { outputDir, resumeFrom });
    disposeContext(ctx);
  };
  await run(`${root}/full`, 4, null);
  await run(`${root}/cut`, 2, null);
  await run(`${root}/cut`, 4, `${root}/cut/checkpoint-2`);
  const full = await readMetrics(`${root}/full`);
  const strip = (m: Record<string, number>) => {
    const { step_time: _a, rollout_time: _b, tokens_per_second: _c, ...rest } = m;
    return rest;
  };
  assert.deepEqual(
    (await readMetrics(`${root}/cut`)).filter((m) => m.step > 2).map(strip),
    full.filter((m) => m.step > 2).map(strip),
  );
  // The steps drew different numbers of prompts and skipped some, so the order is not step-wise.
  const drawn = full.map((m) => m["dynamic_sampling/prompts_drawn"]);
  assert.ok(drawn.every((d) => d % 3 === 0 && d >= 3 && d <= 9), `drawn ${drawn}`);
  assert.ok(new Set(drawn).size > 1 || full.some((m) => m["prompt_order/skipped"] > 0));
  for (const m of full) {
    assert.ok(m.num_gen_batches >= 1 && m.num_gen_batches <= 3);
    assert.equal(m.frac_reward_zero_std * 2, m["dynamic_sampling/groups_filled"]);
  }
  const state = JSON.parse(await Deno.readTextFile(`${root}/full/checkpoint-4/trainer_state.json`));
  const positions = full.reduce((s, m) =>
    s + m["dynamic_sampling/prompts_drawn"] +
    m["prompt_order/skipped"], 0);
  assert.equal(state.prompt_order.position, positions);
  assert.ok(Object.keys(state.prompt_order.outcomes).length > 0);
  assert.deepEqual(
    await Deno.readFile(`${root}/cut/checkpoint-4/adapter_model.safetensors`),
    await Deno.readFile(`${root}/full/checkpoint-4/adapter_model.safetensors`),
  );
  await Deno.remove(root, { recursive: true });
});

Deno.test("trainStep() with max_grad_norm 0 skips clipping and still logs the norm", async () => {
  await useTestBackend("wasm+blas");
  const ctx = await context(await testConfig("/tmp/unused", ["training.max_grad_norm=0"]));
  const { metrics } = await trainStep(ctx, EXAMPLES.slice(0, 1), { step: 0, totalSteps: 1 });
  assert.ok(metrics.grad_norm > 0, `grad_norm ${metrics.grad_norm}`);
  disposeContext(ctx);
});

Deno.test("prepareBatch() counts the masked completion tokens on the CPU, as the mask sums them", async () => {
  await useTestBackend("cpu");
  for (const maskTruncated of [false, true]) {
    const ctx = await context(
      await testConfig("/tmp/unused", [`grpo.mask_truncated_completions=${maskTruncated}`]),
    );
    const rows = {
      promptIds: [[72, 105], [72], [65, 66, 67]],
      completionIds: [[1, 2, 257], [3], [4, 5]],
      finishReasons: ["eos", "length", "length"] as ("eos" | "length" | "stop")[],
    };
    const p = prepareBatch(ctx, rows, [1, -1, 0]);
    const sum = p.batch.completionMask.sum();
    assert.equal(p.batch.numTokens, (await sum.data())[0]);
    assert.equal(p.batch.numTokens, maskTruncated ? 3 : 6);
    sum.dispose();
    disposePrepared(p);
    disposeContext(ctx);
  }
});

Deno.test("train() resumed after checkpoint-1 still reports the evaluation from before training", async () => {
  await useTestBackend("wasm+blas");
  const dir = await Deno.makeTempDir();
  const run = async (maxSteps: number, resumeFrom: string | null) => {
    const config = await testConfig(dir, [
      `training.max_steps=${maxSteps}`,
      "training.save_steps=1",
    ]);
    const ctx = await context(config);
    const summary = await train(ctx, { train: EXAMPLES, eval: EXAMPLES.slice(0, 2) }, {
      outputDir: dir,
      resumeFrom,
    });
    disposeContext(ctx);
    return summary;
  };
  const first = await run(1, null);
  const resumed = await run(2, `${dir}/checkpoint-1`);
  assert.ok(first.before !== null && first.before.n === 2);
  assert.deepEqual(resumed.before, first.before);
  assert.equal(resumed.after?.n, 2);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train() resumed from its last checkpoint reports the KL of the last step, not 0", async () => {
  await useTestBackend("wasm+blas");
  const dir = await Deno.makeTempDir();
  const run = async (resumeFrom: string | null) => {
    const config = await testConfig(dir, ["training.max_steps=1", "training.save_steps=1"]);
    const ctx = await context(config);
    const summary = await train(ctx, { train: EXAMPLES, eval: [] }, { outputDir: dir, resumeFrom });
    disposeContext(ctx);
    return summary;
  };
  const first = await run(null);
  assert.ok(first.kl !== 0);
  const resumed = await run(`${dir}/checkpoint-1`);
  assert.equal(resumed.kl, first.kl);
  const written = JSON.parse(await Deno.readTextFile(`${dir}/summary.json`));
  assert.equal(written.kl, first.kl);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train() refuses a checkpoint past its last step and leaves the run's records alone", async () => {
  await useTestBackend("wasm+blas");
  const dir = await Deno.makeTempDir();
  const run = async (maxSteps: number, resumeFrom: string | null) => {
    const config = await testConfig(dir, [
      `training.max_steps=${maxSteps}`,
      "training.save_steps=1",
    ]);
    const ctx = await context(config);
    try {
      return await train(ctx, { train: EXAMPLES, eval: [] }, { outputDir: dir, resumeFrom });
    } finally {
      disposeContext(ctx);
    }
  };
  await run(2, null);
  const files = ["summary.json", "metrics.jsonl", "training.log"];
  const before = await Promise.all(files.map((f) => Deno.readTextFile(`${dir}/${f}`)));
  await assert.rejects(() => run(1, `${dir}/checkpoint-2`), {
    name: "CheckpointError",
    message: /past this run's 1 steps/,
  });
  const after = await Promise.all(files.map((f) => Deno.readTextFile(`${dir}/${f}`)));
  assert.deepEqual(after, before);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train() resumes a checkpoint without prompt_order at one step's prompts per step, whatever data.gen_batch_size now is", async () => {
  await useTestBackend("wasm+blas");
  const root = await Deno.makeTempDir();
  const base = ["training.save_steps=1", "training.per_device_train_batch_size=4"]; // 2 prompts
  const config = await testConfig(`${root}/a`, [...base, "training.max_steps=1"]);
  let ctx = await context(config);
  await train(ctx, { train: EXAMPLES, eval: [] }, { outputDir: `${root}/a` });
  // checkpoint-1 as the trainer wrote it before prompt_order existed.
  const into = { adapter: ctx.adapter, optimizer: ctx.optimizer };
  const { state } = await loadCheckpoint<Record<string, unknown>>(`${root}/a/checkpoint-1`, into);
  assert.equal((state.prompt_order as { position: number }).position, 2);
  delete state.prompt_order;
  await saveCheckpoint(`${root}/b/checkpoint-1`, { state, ...into, baseModel: ctx.model.dir });
  disposeContext(ctx);
  const resumed = await testConfig(`${root}/b`, [
    ...base,
    "training.max_steps=2",
    "grpo.filter_groups=true",
    "data.gen_batch_size=3",
  ]);
  ctx = await context(resumed);
  await train(ctx, { train: EXAMPLES, eval: [] }, {
    outputDir: `${root}/b`,
    resumeFrom: `${root}/b/checkpoint-1`,
  });
  disposeContext(ctx);
  const after = JSON.parse(await Deno.readTextFile(`${root}/b/checkpoint-2/trainer_state.json`));
  assert.equal(after.prompt_order.position % 3, 2); // 2 + 3k: on from prompt 2, not 3
  await Deno.remove(root, { recursive: true });
});

Deno.test("train() stops when its signal aborts: mid-rollout or between steps, with a checkpoint that resumes exactly", async () => {
  await useTestBackend("wasm+blas");
  const root = await Deno.makeTempDir();
  const settings = [
    "training.max_steps=5",
    "training.save_steps=10",
    "logging.log_completions=true",
  ];
  const run = async (
    outputDir: string,
    options: { resumeFrom?: string; abortAt?: { step: number; phase: string } } = {},
  ) => {
    const ctx = await context(await testConfig(outputDir, settings));
    const controller = new AbortController();
    const before = tf.memory().numTensors;
    const summary = await train(ctx, { train: EXAMPLES, eval: EXAMPLES.slice(0, 2) }, {
      outputDir,
      resumeFrom: options.resumeFrom,
      signal: controller.signal,
      callbacks: {
        progress: ({ phase, step }) => {
          const at = options.abortAt;
          if (at && phase === at.phase && step === at.step) controller.abort("SIGINT");
        },
      },
    });
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    disposeContext(ctx);
    return summary;
  };
  const full = await run(`${root}/full`);
  assert.equal(full.stopped, undefined);
  const cut = `${root}/cut`;
  // Aborted while step 3's completions are sampled (0-based step 2): abandoned, nothing changed.
  const first = await run(cut, { abortAt: { step: 2, phase: "rollout" } });
  assert.deepEqual(first.stopped, { reason: "SIGINT", step: 2, checkpoint: `${cut}/checkpoint-2` });
  await assert.rejects(() => Deno.stat(`${cut}/summary.json`), Deno.errors.NotFound);
  assert.deepEqual((await readMetrics(cut)).map((m) => m.step), [0, 1, 2]);
  // Aborted after step 4's update ("step" progress comes once it is done): step 4 finishes.
  const second = await run(cut, {
    resumeFrom: `${cut}/checkpoint-2`,
    abortAt: { step: 4, phase: "step" },
  });
  assert.deepEqual(second.stopped?.step, 4);
  const last = await run(cut, { resumeFrom: `${cut}/checkpoint-4` });
  const strip = (m: Record<string, number>) => {
    const { step_time: _a, rollout_time: _b, tokens_per_second: _c, ...rest } = m;
    return rest;
  };
  assert.deepEqual(
    (await readMetrics(cut)).map(strip),
    (await readMetrics(`${root}/full`)).map(strip),
  );
  assert.deepEqual(
    await Deno.readTextFile(`${cut}/completions.jsonl`),
    await Deno.readTextFile(`${root}/full/completions.jsonl`),
  );
  assert.deepEqual(
    await Deno.readFile(`${cut}/checkpoint-5/adapter_model.safetensors`),
    await Deno.readFile(`${root}/full/checkpoint-5/adapter_model.safetensors`),
  );
  assert.deepEqual({ ...last, seconds: 0, output_dir: "" }, {
    ...full,
    seconds: 0,
    output_dir: "",
  });
  // summary.json's time counts the segments before the last one.
  const state4 = JSON.parse(await Deno.readTextFile(`${cut}/checkpoint-4/trainer_state.json`));
  assert.ok(last.seconds > state4.seconds, `${last.seconds} <= ${state4.seconds}`);
  await Deno.remove(root, { recursive: true });
});

for (
  const [lr, why] of [["1e30", /loss NaN, grad_norm NaN: not finite/], [
    "1e6",
    /grad_norm 0 while kl is .*: the forward pass overflowed float32/,
  ]] as const
) {
  Deno.test(`train() with learning_rate ${lr} skips non-finite updates and stops after max_nonfinite_steps with a checkpoint`, async () => {
    // The stock kernels' float32 RMSNorm overflows at lr 1e6 (the fused wasm one sums squares in
    // float64 and does not): stock cpu keeps that case.
    await useTestBackend(lr === "1e6" ? "cpu" : "wasm+blas");
    const ctx = await context(
      await testConfig("/tmp/unused", [`training.learning_rate=${lr}`, "training.max_steps=8"]),
    );
    const writer = memoryRunWriter();
    const adapterAfter: Float32Array[][] = [];
    const before = tf.memory().numTensors;
    await assert.rejects(
      () =>
        train(ctx, { train: EXAMPLES, eval: [] }, {
          writer,
          callbacks: {
            metrics: async () => {
              adapterAfter.push(
                await Promise.all([...ctx.adapter.variables.values()].map(async (v) =>
                  (await v.data()) as Float32Array
                )),
              );
            },
          },
        }),
      (error: unknown) => {
        assert.ok(error instanceof DivergenceError, String(error));
        assert.match(
          error.message,
          new RegExp(
            `^training diverged: steps 2 to 4 in a row skipped their update \\(${why.source}\\); ` +
              "training\\.max_nonfinite_steps is 3\\. checkpoint-4 .*holds the adapter as last " +
              "updated \\(step 1\\)\\. Lower training\\.learning_rate \\(now .*\\) or " +
              "grpo\\.kl_coef \\(now 0\\.05\\) and start again$",
          ),
        );
        assert.equal(error.step, 4);
        return true;
      },
    );
    assert.equal(tf.memory().numTensors, before, "leaked tensors");
    const { records } = writer;
    assert.deepEqual(records.metrics.map((m) => m.update_skipped), [0, 1, 1, 1]);
    assert.deepEqual(records.checkpoints.map((c) => c.step), [2, 4]);
    // Skipped updates leave the adapter (and AdamW) as they were: every value finite.
    for (const step of [1, 2, 3]) assert.deepEqual(adapterAfter[step], adapterAfter[0]);
    assert.ok(adapterAfter[3].every((a) => a.every(Number.isFinite)));
    assert.equal(
      records.log.filter((l) => /^step \d: update skipped/.test(l)).length,
      3,
      records.log.join("\n"),
    );
    disposeContext(ctx);
  });
}

Deno.test("train() with eval.num_samples 2 logs greedy accuracy next to pass@2, maj@2 and pass@1", async () => {
  await useTestBackend("wasm+blas");
  const config = await testConfig("/tmp/unused", [
    "training.max_steps=2",
    "training.save_steps=10",
    "eval.eval_steps=1",
    "eval.eval_file=data/demo/test.json",
    "eval.num_samples=2",
    "eval.temperature=1.5",
  ]);
  const ctx = await context(config);
  const writer = memoryRunWriter();
  const summary = await train(ctx, { train: EXAMPLES, eval: EXAMPLES.slice(0, 3) }, { writer });
  disposeContext(ctx);
  const evals = writer.records.metrics.filter((m) => "eval/accuracy" in m);
  assert.deepEqual(evals.map((m) => m.step), [0, 1, 2]);
  for (const m of evals) {
    for (const key of ["eval/pass@2", "eval/maj@2", "eval/pass@1", "eval/accuracy_boxed"]) {
      assert.ok(m[key] >= 0 && m[key] <= 1, `${key} = ${m[key]}`);
    }
    assert.ok(m["eval/pass@2"] >= m["eval/pass@1"]);
  }
  assert.equal(summary.before?.k, 2);
  assert.equal(typeof summary.after?.pass_at_k, "number");
  assert.match(writer.records.log.join("\n"), /eval before training: .* \| pass@2 /);
});

/** The `sampling/*` metrics of the IS correction (TRL's names). */
const SAMPLING_METRICS = [
  "sampling/sampling_logp_difference/mean",
  "sampling/sampling_logp_difference/max",
  "sampling/importance_sampling_ratio/min",
  "sampling/importance_sampling_ratio/mean",
  "sampling/importance_sampling_ratio/max",
];
const CLIP_RATIOS = ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"];

/**
 * TRL 1.13's options (issue 14), a group per test: the `--set` lines, the metrics a step must log
 * and those it must not (TRL `_compute_loss` logs no clip ratio for cispo, sapo and vespo).
 */
const OPTION_GROUPS: { name: string; set: string[]; logs: string[]; absent: string[] }[] = [
  {
    name: "loss_type cispo",
    set: ["grpo.loss_type=cispo", "grpo.epsilon_high=5"],
    logs: ["cispo_clip_ratio", "entropy"],
    absent: [...CLIP_RATIOS, "vespo/phi_seq_mean"],
  },
  {
    name: "loss_type sapo",
    set: ["grpo.loss_type=sapo"],
    logs: ["entropy"],
    absent: [...CLIP_RATIOS, "cispo_clip_ratio"],
  },
  {
    name: "loss_type vespo",
    set: ["grpo.loss_type=vespo"],
    logs: ["vespo/phi_seq_mean", "entropy"],
    absent: [...CLIP_RATIOS, "cispo_clip_ratio"],
  },
  {
    name: "sequence level (luspo), delta and the bias-corrected KL",
    set: [
      "grpo.loss_type=luspo",
      "grpo.importance_sampling_level=sequence",
      "grpo.delta=1.5",
      "grpo.use_bias_correction_kl=true",
    ],
    logs: [...CLIP_RATIOS, "entropy"],
    absent: SAMPLING_METRICS,
  },
  {
    name: "top_entropy_quantile and the off-policy mask",
    set: ["grpo.top_entropy_quantile=0.2", "grpo.off_policy_mask_threshold=0.05"],
    logs: [...CLIP_RATIOS, "entropy"],
    absent: SAMPLING_METRICS,
  },
  {
    name: "IS correction against the rollout's own log-probs",
    set: [
      "grpo.vllm_importance_sampling_correction=true",
      "grpo.vllm_importance_sampling_mode=token_truncate",
      "grpo.vllm_importance_sampling_clip_max=2",
    ],
    logs: [...CLIP_RATIOS, "entropy", ...SAMPLING_METRICS],
    absent: [],
  },
];

for (const group of OPTION_GROUPS) {
  Deno.test(`trainStep() with ${group.name}: logs its metrics, moves the adapter, tensors stay flat`, async () => {
    await useTestBackend("wasm+blas");
    const ctx = await context(await testConfig("/tmp/unused", group.set));
    const start = new Map<string, Float32Array>();
    for (const [k, v] of ctx.adapter.variables) start.set(k, (await v.data()) as Float32Array);
    let afterStep1 = 0;
    for (let step = 0; step < 3; step++) {
      const { metrics } = await trainStep(ctx, EXAMPLES.slice(0, 2), { step, totalSteps: 3 });
      for (const name of ["loss", "policy_loss", "kl", "grad_norm", ...group.logs]) {
        assert.ok(Number.isFinite(metrics[name]), `step ${step}: ${name} = ${metrics[name]}`);
      }
      for (const name of group.absent) assert.ok(!(name in metrics), `step ${step} logs ${name}`);
      if (step === 0) afterStep1 = tf.memory().numTensors;
    }
    assert.equal(tf.memory().numTensors, afterStep1, "tensor count grew between step 1 and 3");
    let moved = 0;
    for (const [k, v] of ctx.adapter.variables) {
      if ((await v.data()).some((x, i) => x !== start.get(k)![i])) moved++;
    }
    assert.equal(moved, ctx.adapter.variables.size, "some LoRA tensors did not change");
    disposeContext(ctx);
  });
}
