import assert from "node:assert/strict";
import {
  COMMON_FLAGS,
  type FlagSpec,
  formatHelp,
  parseCommandLine,
  resolveConfig,
} from "../lib/cli.ts";
import { defaultConfig } from "../lib/config.ts";
import { ConfigError } from "../lib/errors.ts";

const TEST_CONFIG = "configs/rl_grpo_config_test.yaml";

const EXTRA: Record<string, FlagSpec> = {
  eval_file: {
    type: "string",
    valueName: "file",
    description: "Prompts to score (sets eval.eval_file)",
    configKey: "eval_file",
  },
  greedy: { type: "boolean", description: "Decode greedily" },
  n: { type: "string", default: "4", description: "Prompts to show" },
};

Deno.test("parseCommandLine() reads every common flag", () => {
  const commandLine = parseCommandLine([
    "--config",
    "configs/x.yaml",
    "--model_path",
    "checkpoints/m",
    "--output_dir",
    "results/r",
    "--max_samples",
    "10",
    "--resume",
    "latest",
    "--set",
    "grpo.kl_coef=0.04",
    "--set=lora.lora_r=8",
    "--print_config",
  ]);
  assert.equal(commandLine.configPath, "configs/x.yaml");
  assert.deepEqual(commandLine.overrides, {
    flags: { model_path: "checkpoints/m", output_dir: "results/r", max_samples: "10" },
    set: ["grpo.kl_coef=0.04", "lora.lora_r=8"],
  });
  assert.equal(commandLine.resume, "latest");
  assert.equal(commandLine.printConfig, true);
  assert.equal(commandLine.help, false);
  assert.equal(commandLine.values.max_samples, "10");
});

Deno.test("parseCommandLine() without flags leaves the config path to the caller", async () => {
  const commandLine = parseCommandLine([]);
  assert.deepEqual(commandLine, {
    configPath: null,
    overrides: {},
    values: {},
    resume: null,
    printConfig: false,
    help: false,
  });
  const config = await resolveConfig(commandLine, { defaultConfigPath: TEST_CONFIG });
  assert.equal(config.model.path, "tests/fixtures/qwen2-tiny");
  assert.deepEqual(await resolveConfig(commandLine, { defaultConfigPath: null }), defaultConfig());
});

Deno.test("resolveConfig() lets flags and --set override the file", async () => {
  const commandLine = parseCommandLine([
    "--config",
    TEST_CONFIG,
    "--model_path",
    "checkpoints/other",
    "--max_samples",
    "3",
    "--output_dir",
    "results/run1",
    "--set",
    "grpo.kl_coef=0.04",
    "--set",
    "lora.target_modules=[q_proj, v_proj]",
  ]);
  const config = await resolveConfig(commandLine, { defaultConfigPath: "configs/no_such.yaml" });
  assert.equal(config.model.path, "checkpoints/other");
  assert.equal(config.data.max_samples, 3);
  assert.equal(config.training.output_dir, "results/run1");
  assert.equal(config.grpo.kl_coef, 0.04);
  assert.deepEqual(config.lora.target_modules, ["q_proj", "v_proj"]);
  assert.equal(config.generation.max_new_tokens, 16); // from the file
});

Deno.test("resolveConfig() names the flag of a bad value", async () => {
  const bad = parseCommandLine(["--config", TEST_CONFIG, "--set", "grpo.kl_coef=abc"]);
  await assert.rejects(resolveConfig(bad, { defaultConfigPath: null }), {
    name: "ConfigError",
    message: "Cannot load <command line> --set grpo.kl_coef=abc: grpo.kl_coef: expected a " +
      'number >= 0, got "abc"',
  });
  const zero = parseCommandLine(["--max_samples", "0"]);
  await assert.rejects(resolveConfig(zero, { defaultConfigPath: null }), {
    message: "Cannot load <command line> --max_samples 0: data.max_samples: expected an " +
      "integer >= 1 or null, got 0",
  });
});

Deno.test("parseCommandLine() reads --max_samples -3 as --max_samples=-3: one error line for both", async () => {
  const messages: string[] = [];
  for (const args of [["--max_samples", "-3"], ["--max_samples=-3"]]) {
    const commandLine = parseCommandLine(args);
    assert.equal(commandLine.values.max_samples, "-3");
    const error = await resolveConfig(commandLine, { defaultConfigPath: null }).catch((e) => e);
    assert.ok(error instanceof ConfigError);
    messages.push(error.message);
  }
  assert.equal(messages[0], messages[1]);
  assert.equal(
    messages[0],
    "Cannot load <command line> --max_samples -3: data.max_samples: expected an integer >= 1 " +
      "or null, got -3",
  );
  // A flag-like value is still ambiguous, now on one line.
  const error = (() => {
    try {
      parseCommandLine(["--output_dir", "--resume", "latest"]);
    } catch (e) {
      return e as Error;
    }
  })();
  assert.ok(error instanceof ConfigError);
  assert.doesNotMatch(error.message, /\n/);
  assert.match(error.message, /--output_dir.*ambiguous/);
});

Deno.test("parseCommandLine() routes an extra flag with a configKey into the config", async () => {
  const commandLine = parseCommandLine(["--eval_file", "data/math500/test.jsonl", "--greedy"], {
    extra: EXTRA,
  });
  assert.equal(commandLine.values.greedy, true);
  assert.equal(commandLine.values.n, "4"); // default
  assert.deepEqual(commandLine.overrides, { flags: { eval_file: "data/math500/test.jsonl" } });
  const config = await resolveConfig(commandLine, { defaultConfigPath: TEST_CONFIG });
  assert.equal(config.eval.eval_file, "data/math500/test.jsonl");
  assert.throws(
    () => parseCommandLine([], { extra: { set: { type: "string", description: "x" } } }),
    { name: "TypeError", message: "Cannot add flag --set: it is one of the common flags" },
  );
});

Deno.test("parseCommandLine() rejects unknown flags with a did-you-mean hint", () => {
  const cases: [string[], string][] = [
    [["--model-path", "m"], "unknown flag --model-path (did you mean --model_path?); see --help"],
    [["--max_sample", "3"], "unknown flag --max_sample (did you mean --max_samples?); see --help"],
    [["--lr", "1"], "unknown flag --lr; see --help"],
    [["x.yaml"], "unexpected argument x.yaml: every value follows a flag, e.g. --config x.yaml"],
    [["--max_samples"], "flag '--max_samples <value>' argument missing"],
  ];
  for (const [args, message] of cases) {
    let error: unknown;
    try {
      parseCommandLine(args);
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof ConfigError, `${args.join(" ")} did not throw a ConfigError`);
    assert.equal(error.message, `Cannot parse <command line>: ${message}`);
    assert.equal(error.file, "<command line>");
  }
});

Deno.test("formatHelp() lists every flag on one line each", () => {
  const help = formatHelp({
    command: "deno task eval",
    summary: "Score a model on held-out prompts.",
    defaultConfigPath: "configs/demo.yaml",
    extra: EXTRA,
  });
  const lines = help.trimEnd().split("\n");
  assert.equal(lines[0], "Usage: deno task eval [flags]");
  assert.equal(lines[2], "Score a model on held-out prompts.");
  const flagLines = lines.slice(lines.indexOf("Flags:") + 1);
  const names = [...Object.keys(COMMON_FLAGS), ...Object.keys(EXTRA)];
  assert.equal(flagLines.length, names.length);
  names.forEach((name, i) => {
    const spec = { ...COMMON_FLAGS, ...EXTRA }[name];
    assert.match(flagLines[i], new RegExp(`^ {2}(-\\w, )?--${name}\\b`), flagLines[i]);
    assert.ok(flagLines[i].includes(spec.description), flagLines[i]);
  });
  assert.match(help, / {2}--config <file> +YAML config file.*\(default: configs\/demo\.yaml\)\n/);
  assert.match(help, / {2}--resume <dir\|latest> +Resume/);
  assert.match(help, / {2}-h, --help +Show this help and exit\n/);
  assert.match(help, / {2}--n <value> +Prompts to show \(default: 4\)\n/);
  // Descriptions start in one column.
  const columns = new Set(names.map((name, i) => {
    return flagLines[i].indexOf({ ...COMMON_FLAGS, ...EXTRA }[name].description);
  }));
  assert.equal(columns.size, 1);
});

Deno.test("parseCommandLine() sees --help and -h", () => {
  assert.equal(parseCommandLine(["--help"]).help, true);
  assert.equal(parseCommandLine(["-h", "--config", "x.yaml"]).help, true);
});
