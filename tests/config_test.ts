import assert from "node:assert/strict";
import {
  type Config,
  ConfigSchema,
  type ConfigSection,
  defaultConfig,
  FLAT_KEY_ALIASES,
  FLAT_KEY_PRECEDENCE,
  formatConfig,
  grpoConfigWarnings,
  loadConfig,
  nearest,
  parseConfig,
} from "../lib/config.ts";
import { ConfigError } from "../lib/errors.ts";
import { parseYamlTree } from "../lib/yaml.ts";

const FIXTURES = "tests/fixtures/configs";
const SECTIONS = Object.keys(ConfigSchema.shape) as ConfigSection[];

function keysOf(section: ConfigSection): string[] {
  return Object.keys(ConfigSchema.shape[section].unwrap().shape);
}

/** Loads `path` and returns the ConfigError it must throw. */
async function loadError(path: string): Promise<ConfigError> {
  try {
    await loadConfig(path);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${error}`);
    return error;
  }
  assert.fail(`${path} loaded, expected a ConfigError`);
}

Deno.test("defaultConfig() has the seed guide's values", () => {
  const config = defaultConfig();
  // GRPO_TRAINING_GUIDE.md, "Key Hyperparameters", "Troubleshooting" and "Monitor Training".
  assert.equal(config.lora.lora_r, 16);
  assert.equal(config.lora.lora_alpha, 32);
  assert.equal(config.lora.lora_dropout, 0.05);
  assert.equal(config.grpo.num_return_sequences, 2);
  assert.equal(config.reward.reward_correct, 1.0);
  assert.equal(config.reward.reward_wrong, -1.0);
  assert.equal(config.reward.reward_no_answer, -0.5);
  assert.equal(config.grpo.kl_coef, 0.05);
  assert.equal(config.training.num_epochs, 3);
  assert.equal(config.training.per_device_train_batch_size, 4);
  assert.equal(config.training.gradient_accumulation_steps, 4);
  assert.equal(config.training.learning_rate, 5e-6);
  assert.equal(config.generation.max_new_tokens, 2048);
  assert.equal(config.generation.temperature, 0.7);
  assert.equal(config.generation.top_p, 0.9);
  assert.equal(config.training.gradient_checkpointing, true);
  assert.equal(config.training.fp16, false);
  assert.equal(config.logging.logging_steps, 10);
  assert.equal(config.training.save_steps, 500);
});

Deno.test("defaultConfig() matches the defaults in CONTRACTS.md", () => {
  const expected: Config = {
    model: { path: "data/demo/sft-model", adapter_path: null, torch_dtype: "float32" },
    lora: {
      lora_r: 16,
      lora_alpha: 32,
      lora_dropout: 0.05,
      target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"],
    },
    grpo: {
      num_return_sequences: 2,
      kl_coef: 0.05,
      loss_type: "dapo",
      epsilon: 0.2,
      epsilon_high: null,
      scale_rewards: "group",
      num_iterations: 1,
      mask_truncated_completions: false,
      filter_groups: false,
      max_num_gen_batches: 10,
      importance_sampling_level: "token",
      delta: null,
      top_entropy_quantile: 1.0,
      use_bias_correction_kl: false,
      off_policy_mask_threshold: null,
      sapo_temperature_pos: 1.0,
      sapo_temperature_neg: 1.05,
      vespo_k_pos: 2.0,
      vespo_lambda_pos: 3.0,
      vespo_k_neg: 3.0,
      vespo_lambda_neg: 2.0,
      vllm_importance_sampling_correction: false,
      vllm_importance_sampling_mode: "sequence_mask",
      vllm_importance_sampling_clip_min: null,
      vllm_importance_sampling_clip_max: 3.0,
    },
    reward: {
      reward_correct: 1.0,
      reward_wrong: -1.0,
      reward_no_answer: -0.5,
      reward_functions: ["accuracy"],
      reward_weights: null,
    },
    generation: {
      max_new_tokens: 2048,
      temperature: 0.7,
      top_p: 0.9,
      top_k: 0,
      stop: [],
      prompt_format: "chat",
      system_prompt: "Please reason step by step, and put your final answer within \\boxed{}.",
    },
    training: {
      num_epochs: 3,
      max_steps: -1,
      per_device_train_batch_size: 4,
      gradient_accumulation_steps: 4,
      learning_rate: 5e-6,
      weight_decay: 0.0,
      adam_beta1: 0.9,
      adam_beta2: 0.999,
      adam_epsilon: 1e-8,
      max_grad_norm: 1.0,
      lr_scheduler_type: "linear",
      warmup_ratio: 0.0,
      warmup_steps: 0,
      gradient_checkpointing: true,
      fp16: false,
      bf16: false,
      seed: 42,
      output_dir: null,
      save_steps: 500,
      save_total_limit: null,
      max_nonfinite_steps: 3,
    },
    data: {
      train_file: "data/demo/train.json",
      format: "auto",
      max_samples: null,
      shuffle: true,
      gen_batch_size: null,
      skip_easy_prob: 0,
      skip_hard_prob: 0,
      on_bad_row: "error",
    },
    eval: {
      eval_file: "data/demo/test.json",
      eval_max_samples: 500,
      eval_steps: 0,
      eval_batch_size: 64,
      max_new_tokens: null,
      num_samples: 1,
      temperature: null,
    },
    logging: { logging_steps: 10, log_completions: false },
    runtime: { backend: "auto", blas: "auto", num_threads: 2 },
  };
  assert.deepEqual(defaultConfig(), expected);
  assert.deepEqual(SECTIONS, Object.keys(expected));
});

Deno.test("ConfigSchema describes every section and key", () => {
  for (const section of SECTIONS) {
    assert.ok(ConfigSchema.shape[section].description, `${section} has no description`);
    const shape = ConfigSchema.shape[section].unwrap().shape as Record<
      string,
      { description?: string }
    >;
    for (const [key, field] of Object.entries(shape)) {
      assert.ok((field.description ?? "").length >= 10, `${section}.${key} has no description`);
    }
  }
});

Deno.test("README's config reference has a row for every key with the schema's description", async () => {
  // The table is kept by hand from ConfigSchema; this keeps it from drifting.
  const rows = (await Deno.readTextFile("README.md")).split("\n").filter((l) =>
    l.startsWith("| `")
  );
  for (const section of SECTIONS) {
    const shape = ConfigSchema.shape[section].unwrap().shape as Record<
      string,
      { description?: string }
    >;
    for (const [key, field] of Object.entries(shape)) {
      const row = rows.find((l) => l.startsWith(`| \`${section}.${key}\``));
      assert.ok(row, `README has no row for ${section}.${key}`);
      const meaning = row.split(/(?<!\\)\|/)[5].trim().replaceAll("\\|", "|");
      assert.equal(meaning, field.description, `README row of ${section}.${key}`);
    }
  }
});

Deno.test("parseConfig() moves the seed guide's flat snippet into sections", async () => {
  const config = await loadConfig(`${FIXTURES}/seed_flat.yaml`);
  const expected = defaultConfig();
  expected.model.path = "<your_sft_checkpoint>";
  // Every other value in the snippet equals the default, so the whole config must too.
  assert.deepEqual(config, expected);
  const dump = formatConfig(config);
  assert.match(dump, /^model:\n {2}path: <your_sft_checkpoint>\n/);
  assert.match(dump, /^grpo:\n {2}num_return_sequences: 2\n {2}kl_coef: 0.05\n/m);
});

Deno.test("parseConfig() puts each flat key in its section, max_new_tokens in generation", () => {
  const config = parseConfig(
    "lora_r: 8\nkl_coef: 0.01\nlearning_rate: 1e-5\nmax_new_tokens: 64\ntop_k: 5\n" +
      "eval_file: null\nbackend: cpu\nmodel_path: m\nmax_samples: 3\nlogging_steps: 1\n",
    { file: "flat.yaml" },
  );
  assert.equal(config.lora.lora_r, 8);
  assert.equal(config.grpo.kl_coef, 0.01);
  assert.equal(config.training.learning_rate, 1e-5);
  assert.equal(config.generation.max_new_tokens, 64);
  assert.equal(config.eval.max_new_tokens, null);
  assert.equal(config.generation.top_k, 5);
  assert.equal(config.eval.eval_file, null);
  assert.equal(config.runtime.backend, "cpu");
  assert.equal(config.model.path, "m");
  assert.equal(config.data.max_samples, 3);
  assert.equal(config.logging.logging_steps, 1);
});

Deno.test("parseConfig() loads the seed's model: path: snippet and its troubleshooting keys", async () => {
  const section = await loadConfig(`${FIXTURES}/seed_model_section.yaml`);
  assert.equal(section.model.path, "checkpoints/your_sft_checkpoint");
  const tuned = await loadConfig(`${FIXTURES}/seed_troubleshooting.yaml`);
  assert.equal(tuned.training.per_device_train_batch_size, 2);
  assert.equal(tuned.training.gradient_accumulation_steps, 8);
  assert.equal(tuned.training.gradient_checkpointing, true);
  assert.equal(tuned.generation.max_new_tokens, 1024);
  assert.equal(tuned.training.fp16, true);
  assert.equal(tuned.logging.logging_steps, 50);
  assert.equal(tuned.training.learning_rate, 1e-5);
  assert.equal(tuned.grpo.kl_coef, 0.01);
});

Deno.test("FLAT_KEY_PRECEDENCE settles every key name shared by two sections", () => {
  const homes = new Map<string, ConfigSection[]>();
  for (const section of SECTIONS) {
    for (const key of keysOf(section)) homes.set(key, [...(homes.get(key) ?? []), section]);
  }
  const shared = [...homes].filter(([, sections]) => sections.length > 1).map(([key]) => key);
  assert.deepEqual(shared.sort(), Object.keys(FLAT_KEY_PRECEDENCE).sort());
  for (const [key, section] of Object.entries(FLAT_KEY_PRECEDENCE)) {
    assert.ok(homes.get(key)!.includes(section), `${key} is not a key of ${section}`);
  }
  for (const [alias, path] of Object.entries(FLAT_KEY_ALIASES)) {
    const [section, key] = path.split(".") as [ConfigSection, string];
    assert.ok(keysOf(section).includes(key), `${alias} → ${path} names no key`);
    assert.ok(!homes.has(alias), `${alias} is also a key name`);
  }
});

Deno.test("configs/rl_grpo_config.yaml loads with the seed's values and sets every key", async () => {
  const path = "configs/rl_grpo_config.yaml";
  const config = await loadConfig(path);
  const expected = defaultConfig();
  expected.model.path = "checkpoints/Qwen2.5-Math-1.5B";
  expected.data.train_file = "data/gsm8k/train.jsonl";
  expected.data.format = "gsm8k";
  expected.eval.eval_file = "data/gsm8k/test.jsonl";
  assert.deepEqual(config, expected);
  assertWritesEveryKey(path, await Deno.readTextFile(path));
});

Deno.test("configs/rl_grpo_config_test.yaml loads as a small run and sets every key", async () => {
  const path = "configs/rl_grpo_config_test.yaml";
  const config = await loadConfig(path);
  assert.equal(config.model.path, "tests/fixtures/qwen2-tiny");
  assert.equal(config.data.train_file, "data/gsm8k/test.jsonl");
  assert.equal(config.generation.max_new_tokens, 16);
  assert.equal(config.grpo.num_return_sequences, 2);
  assert.equal(config.training.per_device_train_batch_size, 2);
  assert.equal(config.training.gradient_accumulation_steps, 1);
  assert.equal(config.logging.logging_steps, 1);
  assert.equal(config.training.save_steps, 2);
  assert.equal(config.eval.eval_file, null);
  assert.equal(config.runtime.backend, "wasm");
  assertWritesEveryKey(path, await Deno.readTextFile(path));
  for (const file of [config.data.train_file, `${config.model.path}/config.json`]) {
    assert.ok((await Deno.stat(file)).isFile, `${file} is missing`);
  }
});

Deno.test("configs/demo_reasoning.yaml loads, sets every key and starts from the stage-1 model", async () => {
  const path = "configs/demo_reasoning.yaml";
  const config = await loadConfig(path);
  assert.equal(config.model.path, "data/demo/sft-stage1");
  assert.equal(config.grpo.filter_groups, true);
  assert.equal(config.eval.num_samples, 8);
  // pass@8 at the temperature the start was measured at (configs/demo.yaml's generation one).
  assert.equal(
    config.eval.temperature,
    (await loadConfig("configs/demo.yaml")).generation.temperature,
  );
  assertWritesEveryKey(path, await Deno.readTextFile(path));
});

function assertWritesEveryKey(path: string, text: string): void {
  const root = parseYamlTree(text, path);
  const written = new Set(
    root.entries!.flatMap((s) => (s.node.entries ?? []).map((k) => `${s.key}.${k.key}`)),
  );
  for (const section of SECTIONS) {
    for (const key of keysOf(section)) {
      assert.ok(written.has(`${section}.${key}`), `${path} does not set ${section}.${key}`);
    }
  }
}

Deno.test("loadConfig() names file, line and key of an out-of-range value", async () => {
  const path = `${FIXTURES}/bad_out_of_range.yaml`;
  const error = await loadError(path);
  assert.equal(
    error.message,
    `Cannot load ${path}:12: grpo.num_return_sequences: expected an integer >= 2, got 1`,
  );
  assert.equal(error.file, path);
  assert.equal(error.key, "grpo.num_return_sequences");
  assert.equal(error.line, 12);
  assert.equal(error.column, 3);
});

Deno.test("loadConfig() reports every wrong type, one per line", async () => {
  const path = `${FIXTURES}/bad_wrong_type.yaml`;
  const error = await loadError(path);
  assert.equal(
    error.message,
    [
      `Cannot load ${path}:3: grpo.kl_coef: expected a number >= 0, got "high"`,
      `Cannot load ${path}:5: training.gradient_checkpointing: expected true or false, got "yes"`,
    ].join("\n"),
  );
  assert.equal(error.key, "grpo.kl_coef");
  assert.equal(error.line, 3);
});

Deno.test("loadConfig() rejects an unknown key with a did-you-mean hint", async () => {
  const path = `${FIXTURES}/bad_unknown_key.yaml`;
  const error = await loadError(path);
  assert.equal(
    error.message,
    `Cannot load ${path}:3: lora.lora_aplha: unknown key (did you mean lora.lora_alpha?)`,
  );
  assert.equal(error.key, "lora.lora_aplha");
  assert.equal(error.line, 3);
});

Deno.test("loadConfig() rejects unknown flat keys, hinting the seed name for TRL's", async () => {
  const path = `${FIXTURES}/bad_unknown_flat_key.yaml`;
  const error = await loadError(path);
  assert.equal(
    error.message,
    [
      `Cannot load ${path}:2: learing_rate: unknown key (did you mean learning_rate?)`,
      `Cannot load ${path}:3: beta: unknown key (did you mean grpo.kl_coef?)`,
    ].join("\n"),
  );
});

Deno.test("parseConfig() points a key in the wrong section to its section", () => {
  assert.throws(() => parseConfig("lora:\n  kl_coef: 0.1\n", { file: "x.yaml" }), {
    message: "Cannot load x.yaml:2: lora.kl_coef: unknown key (did you mean grpo.kl_coef?)",
  });
  assert.throws(() => parseConfig("grop:\n  kl_coef: 0.1\n", { file: "x.yaml" }), {
    message: "Cannot load x.yaml:1: grop: unknown key (did you mean grpo?)",
  });
});

Deno.test("loadConfig() gives a YAML syntax error's file, line and column", async () => {
  const path = `${FIXTURES}/bad_syntax.yaml`;
  const error = await loadError(path);
  assert.equal(
    error.message,
    `Cannot load ${path}:4:1: invalid YAML: Flow sequence in block collection must be ` +
      "sufficiently indented and end with a ]",
  );
  assert.equal(error.line, 4);
  assert.equal(error.column, 1);
  assert.throws(() => parseConfig("a: 1\na: 2\n", { file: "dup.yaml" }), {
    message: "Cannot load dup.yaml:2:1: invalid YAML: Map keys must be unique",
  });
});

Deno.test("parseConfig() rejects a flat key found in two sections without precedence", async () => {
  const path = `${FIXTURES}/bad_ambiguous.yaml`;
  const text = await Deno.readTextFile(path);
  // With the shipped precedence list the seed's flat max_new_tokens is generation's.
  assert.equal(parseConfig(text, { file: path }).generation.max_new_tokens, 512);
  let error: unknown;
  try {
    // Keep the seed's flat temperature (line 1) generation's; only max_new_tokens is left open.
    parseConfig(text, { file: path, flatKeyPrecedence: { temperature: "generation" } });
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof ConfigError);
  assert.equal(
    error.message,
    `Cannot load ${path}:2: max_new_tokens: ambiguous flat key: it could be ` +
      "generation.max_new_tokens or eval.max_new_tokens; put it under its section",
  );
  assert.equal(error.line, 2);
  assert.equal(error.key, "max_new_tokens");
});

Deno.test("loadConfig() checks fields against each other", async () => {
  const path = `${FIXTURES}/bad_cross_field.yaml`;
  const error = await loadError(path);
  assert.equal(
    error.message,
    [
      `Cannot load ${path}:3: grpo.epsilon_high: expected a number >= grpo.epsilon (0.2) or null`,
      `Cannot load ${path}:6: reward.reward_weights: expected 2 weight(s), one per ` +
      "reward.reward_functions entry (accuracy, format), or null",
      `Cannot load ${path}:9: training.bf16: expected fp16 and bf16 not both true; pick one`,
    ].join("\n"),
  );
  assert.throws(
    () => parseConfig("num_return_sequences: 3\n", { file: "g.yaml" }),
    {
      message: "Cannot load g.yaml: training.per_device_train_batch_size: expected " +
        "per_device_train_batch_size * gradient_accumulation_steps (4 * 4 = 16) to be a " +
        "multiple of grpo.num_return_sequences (3)",
    },
  );
  assert.throws(() => parseConfig("eval_file: null\neval_steps: 10\n", { file: "e.yaml" }), {
    message: "Cannot load e.yaml:2: eval.eval_steps: expected 0 when eval.eval_file is null " +
      "(evaluation is off)",
  });
});

Deno.test("parseConfig() takes data.gen_batch_size only with grpo.filter_groups", () => {
  assert.throws(() => parseConfig("data:\n  gen_batch_size: 16\n", { file: "d.yaml" }), {
    message: "Cannot load d.yaml:2: data.gen_batch_size: expected null unless " +
      "grpo.filter_groups is true (without it each step generates exactly its own prompts)",
  });
  const config = parseConfig("grpo:\n  filter_groups: true\ndata:\n  gen_batch_size: 16\n", {
    file: "d.yaml",
  });
  assert.equal(config.data.gen_batch_size, 16);
  assert.throws(() => parseConfig("skip_easy_prob: 1\n", { file: "s.yaml" }), {
    message: /data\.skip_easy_prob: expected a number in \[0, 1\)/,
  });
});

Deno.test("parseConfig() puts a flat temperature in generation, eval.temperature apart", () => {
  const config = parseConfig("temperature: 1.2\neval:\n  temperature: 0.8\n", { file: "t.yaml" });
  assert.equal(config.generation.temperature, 1.2);
  assert.equal(config.eval.temperature, 0.8);
});

Deno.test("parseConfig() rejects the GRPO option combinations TRL rejects, naming the fix", () => {
  // TRL GRPOTrainer.__init__ raises for vespo with a sequence-level vLLM IS mode.
  const vespo = "grpo:\n  loss_type: vespo\n  vllm_importance_sampling_correction: true\n";
  assert.throws(() => parseConfig(vespo, { file: "v.yaml" }), {
    message: "Cannot load v.yaml: grpo.vllm_importance_sampling_mode: expected token_truncate " +
      "or token_mask with loss_type vespo and vllm_importance_sampling_correction (VESPO folds " +
      "a per-token ratio into its weights), got sequence_mask",
  });
  const ok = parseConfig(vespo + "  vllm_importance_sampling_mode: token_mask\n", {
    file: "v.yaml",
  });
  assert.equal(ok.grpo.vllm_importance_sampling_mode, "token_mask");
  // Without the correction the mode is unused, so any value loads.
  assert.equal(
    parseConfig("grpo:\n  loss_type: vespo\n", { file: "v.yaml" }).grpo.loss_type,
    "vespo",
  );
  assert.throws(
    () =>
      parseConfig(
        "grpo:\n  vllm_importance_sampling_clip_min: 2\n  vllm_importance_sampling_clip_max: 1.5\n",
        { file: "c.yaml" },
      ),
    {
      message: "Cannot load c.yaml:2: grpo.vllm_importance_sampling_clip_min: expected a number " +
        "<= grpo.vllm_importance_sampling_clip_max (1.5) or null",
    },
  );
  const ranges: [string, string][] = [
    [
      "top_entropy_quantile: 1.5",
      "grpo.top_entropy_quantile: expected a number in [0, 1], got 1.5",
    ],
    [
      "importance_sampling_level: seq",
      'grpo.importance_sampling_level: expected token or sequence, got "seq"',
    ],
    ["delta: 0", "grpo.delta: expected a number > 0 or null, got 0"],
    ["sapo_temperature_neg: 0", "grpo.sapo_temperature_neg: expected a number > 0, got 0"],
    [
      "off_policy_mask_threshold: -1",
      "grpo.off_policy_mask_threshold: expected a number >= 0 or null, got -1",
    ],
  ];
  for (const [line, message] of ranges) {
    assert.throws(() => parseConfig(`grpo:\n  ${line}\n`, { file: "r.yaml" }), {
      message: `Cannot load r.yaml:2: ${message}`,
    });
  }
});

Deno.test("grpoConfigWarnings() warns where TRL does, and about cispo without epsilon_high", () => {
  const warn = (text: string) => grpoConfigWarnings(parseConfig(text, { file: "w.yaml" }).grpo);
  assert.deepEqual(warn(""), []);
  assert.match(warn("loss_type: cispo\n")[0], /epsilon_high .*ScaleRL uses 5/);
  assert.deepEqual(warn("loss_type: cispo\nepsilon_high: 5\n"), []);
  assert.match(warn("loss_type: luspo\n")[0], /importance_sampling_level: sequence/);
  assert.deepEqual(warn("loss_type: luspo\nimportance_sampling_level: sequence\n"), []);
  assert.match(warn("loss_type: vespo\nimportance_sampling_level: sequence\n")[0], /vespo/);
  assert.match(warn("importance_sampling_level: sequence\n")[0], /loss_type dapo/);
  assert.match(warn("use_bias_correction_kl: true\nkl_coef: 0\n")[0], /no effect/);
  assert.match(warn("delta: 1.1\n")[0], /TRL recommends delta > 1 \+ epsilon_high/);
  assert.match(warn("loss_type: sapo\ndelta: 2\n")[0], /ignores it/);
  assert.deepEqual(warn("loss_type: grpo\ndelta: 1.5\n"), []);
});

Deno.test("loadConfig() lists several problems in line order, list items by their line", async () => {
  const path = `${FIXTURES}/bad_many.yaml`;
  const error = await loadError(path);
  assert.deepEqual(error.message.split("\n"), [
    `Cannot load ${path}:2: lora.lora_r: expected an integer >= 1, got 0`,
    `Cannot load ${path}:3: lora.target_modules.1: expected a module name such as q_proj, got 7`,
    `Cannot load ${path}:5: grpo.loss_type: expected one of grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo, got "ppo"`,
    `Cannot load ${path}:7: generation.top_p: expected a number in (0, 1], got 1.5`,
    `Cannot load ${path}:8: generation.temprature: unknown key (did you mean generation.temperature?)`,
  ]);
});

Deno.test("parseConfig() rejects a key set twice, flat and in its section", async () => {
  const path = `${FIXTURES}/bad_set_twice.yaml`;
  const error = await loadError(path);
  assert.equal(error.message, `Cannot load ${path}:3: model.path: set twice (also at line 1)`);
});

Deno.test("parseConfig() checks ranges of the seed's keys", () => {
  const cases: [string, string][] = [
    ["temperature: 0", "generation.temperature: expected a number > 0, got 0"],
    ["top_p: 0", "generation.top_p: expected a number in (0, 1], got 0"],
    ["lora_r: 2.5", "lora.lora_r: expected an integer >= 1, got 2.5"],
    ["learning_rate: 0", "training.learning_rate: expected a number > 0, got 0"],
    ["lora_dropout: 1", "lora.lora_dropout: expected a number in [0, 1), got 1"],
    ["kl_coef: -0.1", "grpo.kl_coef: expected a number >= 0, got -0.1"],
    ["max_steps: 0", "training.max_steps: expected -1 or an integer >= 1, got 0"],
    ["num_epochs: null", "training.num_epochs: expected an integer >= 1, got null"],
    ["lora: 16", "lora: expected a mapping of lora keys, got 16"],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseConfig(`${text}\n`, { file: "r.yaml" }), {
      name: "ConfigError",
      message: `Cannot load r.yaml:1: ${message}`,
    });
  }
  assert.throws(() => parseConfig("- lora_r\n", { file: "r.yaml" }), {
    message: 'Cannot load r.yaml:1: expected a mapping of sections or seed keys, got ["lora_r"]',
  });
});

Deno.test("parseConfig() reads an empty file or empty section as the defaults", () => {
  assert.deepEqual(parseConfig("", { file: "e.yaml" }), defaultConfig());
  assert.deepEqual(parseConfig("# nothing\nlora:\n", { file: "e.yaml" }), defaultConfig());
});

Deno.test("parseConfig() types --set values by the schema", () => {
  const config = parseConfig("", {
    file: "x.yaml",
    overrides: {
      set: [
        "grpo.kl_coef=0.04",
        "lora.target_modules=[q_proj, v_proj]",
        "training.output_dir=results/run1",
        "model.path=123",
        "eval.eval_file=null",
        'generation.stop=["\\n\\n"]',
        "training.fp16=true",
        "lora_r=8",
      ],
    },
  });
  assert.equal(config.grpo.kl_coef, 0.04);
  assert.deepEqual(config.lora.target_modules, ["q_proj", "v_proj"]);
  assert.equal(config.training.output_dir, "results/run1");
  assert.equal(config.model.path, "123"); // a string key keeps the text
  assert.equal(config.eval.eval_file, null);
  assert.deepEqual(config.generation.stop, ["\n\n"]);
  assert.equal(config.training.fp16, true);
  assert.equal(config.lora.lora_r, 8);
});

Deno.test("parseConfig() names the --set argument in its errors", () => {
  const cases: [string, string][] = [
    ["grpo.kl_coef=abc", 'grpo.kl_coef: expected a number >= 0, got "abc"'],
    ["grpo.kl_cof=1", "grpo.kl_cof: unknown key (did you mean grpo.kl_coef?)"],
    ["lroa.lora_r=3", "lroa.lora_r: unknown key (did you mean lora.lora_r?)"],
    ["grpo.kl_coef=[1", "grpo.kl_coef: invalid YAML value: Flow sequence must end with a ]"],
    ["grpo", "expected section.key=value"],
  ];
  for (const [set, message] of cases) {
    assert.throws(() => parseConfig("", { file: "x.yaml", overrides: { set: [set] } }), {
      name: "ConfigError",
      message: `Cannot load <command line> --set ${set}: ${message}`,
    });
  }
  let error: unknown;
  try {
    parseConfig("", { file: "x.yaml", overrides: { set: ["grpo.kl_coef=abc"] } });
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof ConfigError);
  assert.equal(error.file, "<command line>");
  assert.equal(error.key, "grpo.kl_coef");
  assert.equal(error.line, undefined);
});

Deno.test("parseConfig() reports a flag value that is not valid YAML as a ConfigError", () => {
  // Regression: this was a bare SyntaxError (a stack trace from the tasks).
  assert.throws(
    () => parseConfig("", { file: "x.yaml", overrides: { flags: { max_samples: "[1" } } }),
    {
      name: "ConfigError",
      message: "Cannot load <command line> --max_samples [1: data.max_samples: invalid YAML " +
        "value: Flow sequence must end with a ]",
    },
  );
});

Deno.test("loadConfig() applies flags over the file, then --set over flags", async () => {
  const path = "configs/rl_grpo_config_test.yaml";
  const config = await loadConfig(path, {
    flags: { model_path: "checkpoints/other", max_samples: "3", output_dir: undefined },
    set: ["grpo.kl_coef=0.0", "data.max_samples=4"],
  });
  assert.equal(config.model.path, "checkpoints/other");
  assert.equal(config.data.max_samples, 4);
  assert.equal(config.grpo.kl_coef, 0);
  assert.equal(config.training.output_dir, null);
  assert.equal(config.generation.max_new_tokens, 16); // untouched file value
  await assert.rejects(loadConfig(path, { flags: { max_samples: "ten" } }), {
    message: "Cannot load <command line> --max_samples ten: data.max_samples: expected an " +
      'integer >= 1 or null, got "ten"',
  });
});

Deno.test("loadConfig() says when the file is missing", async () => {
  await assert.rejects(loadConfig("configs/no_such.yaml"), {
    name: "ConfigError",
    message: "Cannot load configs/no_such.yaml: no such file",
  });
  assert.deepEqual(await loadConfig(null), defaultConfig());
});

Deno.test("formatConfig() dumps sections that load back into the same config", async () => {
  const config = await loadConfig("configs/rl_grpo_config.yaml");
  const text = formatConfig(config);
  const root = parseYamlTree(text, "dump.yaml");
  assert.deepEqual(root.entries!.map((e) => e.key), SECTIONS);
  assert.deepEqual(parseConfig(text, { file: "dump.yaml" }), config);
  assert.match(text, /^ {2}learning_rate: 0\.000005$/m);
});

Deno.test("nearest() finds keys one swap or two edits away", () => {
  assert.equal(nearest("lora_aplha", ["lora_r", "lora_alpha"]), "lora_alpha");
  assert.equal(nearest("num_return_sequence", ["num_return_sequences"]), "num_return_sequences");
  assert.equal(nearest("lr", ["lora_r", "seed"]), null);
});
