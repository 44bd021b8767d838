/**
 * Try a model from the terminal: one prompt in, one completion out.
 *
 *   deno task generate --model_path DIR [--adapter DIR] (--prompt TEXT | --question TEXT)
 *                      [--max_new_tokens N] [--greedy] [--temperature T --top_p P --seed S]
 *                      [--chat] [--json]
 *
 * `--prompt` is the raw prompt, tokenized as it is (special tokens such as `<|endoftext|>`
 * included), as HF `generate`, llama.cpp `-p` and vLLM completions take it. `--question` formats
 * a question as training does (`generation.prompt_format`: `Question: ...\nAnswer:` or the chat
 * template). `--chat` puts either text into the tokenizer's chat template with the config's system
 * prompt. The backend line goes to stderr, the completion to stdout; `--json` prints
 * `{prompt_ids, completion_ids, text, finish_reason}` only.
 *
 * @module
 */
import { describeBackend, setupBackend } from "../lib/backend.ts";
import type { FlagSpec } from "../lib/cli.ts";
import { COMMAND_LINE } from "../lib/config.ts";
import { ConfigError } from "../lib/errors.ts";
import { loadLora } from "../lib/lora.ts";
import { loadModel, loadModelConfig } from "../lib/model_loader.ts";
import { weightBytes } from "../lib/qwen2_config.ts";
import { rollout } from "../lib/rollout.ts";
import { formatPrompt, loadTokenizer } from "../lib/tokenizer.ts";
import { fileExists, runTask, startTask } from "./_main.ts";

const DEFAULT_CONFIG = "configs/demo.yaml";

const FLAGS: Record<string, FlagSpec> = {
  prompt: {
    type: "string",
    valueName: "text",
    description: "The raw prompt, tokenized as it is (or give --question)",
  },
  question: {
    type: "string",
    valueName: "text",
    description: "A question, formatted as in training (generation.prompt_format)",
  },
  adapter: {
    type: "string",
    valueName: "dir",
    description: "PEFT LoRA adapter directory (sets model.adapter_path)",
    configKey: "model.adapter_path",
  },
  max_new_tokens: {
    type: "string",
    valueName: "n",
    description: "Most tokens to generate (sets generation.max_new_tokens)",
    configKey: "generation.max_new_tokens",
  },
  greedy: { type: "boolean", description: "Argmax decoding (ignores temperature and top_p)" },
  temperature: {
    type: "string",
    valueName: "t",
    description: "Sampling temperature (sets generation.temperature)",
    configKey: "generation.temperature",
  },
  top_p: {
    type: "string",
    valueName: "p",
    description: "Nucleus sampling mass (sets generation.top_p)",
    configKey: "generation.top_p",
  },
  seed: { type: "string", valueName: "n", description: "Sampling seed (default: training.seed)" },
  chat: {
    type: "boolean",
    description: "Put the prompt or question in the chat template with the config's system prompt",
  },
  json: {
    type: "boolean",
    description: "Print {prompt_ids, completion_ids, text, finish_reason} as JSON only",
  },
};

/** An integer flag value, or `fallback` when the flag is absent. */
function intFlag(value: unknown, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^-?\d+$/.test(String(value))) {
    throw new ConfigError(
      `Cannot parse ${COMMAND_LINE}: --${name}: expected an integer, got ${value}`,
      { file: COMMAND_LINE, key: name },
    );
  }
  return Number(value);
}

async function main(): Promise<void> {
  const defaultConfigPath = await fileExists(DEFAULT_CONFIG) ? DEFAULT_CONFIG : null;
  const started = await startTask(Deno.args, {
    command: "deno task generate",
    summary: "Generates one completion for --prompt (raw) or --question (formatted) and prints it.",
    defaultConfigPath,
    extra: FLAGS,
  });
  if (started === null) return;
  const { commandLine, config } = started;
  const { values } = commandLine;
  const given = ["prompt", "question"].filter((name) => typeof values[name] === "string");
  if (given.length !== 1) {
    throw new ConfigError(
      `Cannot parse ${COMMAND_LINE}: give --prompt TEXT (the raw prompt) or --question TEXT ` +
        `(formatted as in training), ${
          given.length === 0 ? "not neither" : "not both"
        }; see --help`,
      { file: COMMAND_LINE, key: "prompt" },
    );
  }
  const seed = intFlag(values.seed, "seed", config.training.seed);

  // Sized first: under runtime.backend auto, weights too big for the wasm heap go to cpu + BLAS.
  const modelBytes = weightBytes(await loadModelConfig(config.model.path));
  const backend = await setupBackend(config.runtime, { weightBytes: modelBytes });
  console.error(describeBackend(backend));
  for (const note of backend.notes) console.error(`note: ${note}`);

  const model = await loadModel(config.model.path, {
    weightStorage: backend.weightStorage,
    torch_dtype: config.model.torch_dtype,
  });
  const tokenizer = await loadTokenizer(config.model.path, { vocabSize: model.config.vocab_size });
  const adapter = config.model.adapter_path === null
    ? null
    : await loadLora(model, config.model.adapter_path);
  const text = (values.prompt ?? values.question) as string;
  const promptText = values.chat === true
    ? formatPrompt(tokenizer, text, { ...config.generation, prompt_format: "chat" })
    : values.question !== undefined
    ? formatPrompt(tokenizer, text, config.generation)
    : text;
  const out = await rollout(model, [tokenizer.encode(promptText)], {
    tokenizer,
    adapter,
    sampling: { ...config.generation, greedy: values.greedy === true, seed },
  });
  adapter?.dispose();
  model.dispose();

  if (values.json === true) {
    console.log(JSON.stringify({
      prompt_ids: out.promptIds[0],
      completion_ids: out.completionIds[0],
      text: out.texts[0],
      finish_reason: out.finishReasons[0],
    }));
    return;
  }
  console.log(out.texts[0]);
  console.error(`[${out.completionIds[0].length} tokens, finish_reason ${out.finishReasons[0]}]`);
}

if (import.meta.main) await runTask(main);
