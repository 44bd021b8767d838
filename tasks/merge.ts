/**
 * Merge a LoRA adapter into its base model and write a full Hugging Face checkpoint (PEFT
 * `merge_and_unload` + `save_pretrained`):
 *
 *   deno task merge --model_path DIR --adapter DIR --out DIR
 *
 * @module
 */
import { type FlagSpec, formatHelp, parseCommandLine, resolveConfig } from "../lib/cli.ts";
import { COMMAND_LINE } from "../lib/config.ts";
import { ConfigError } from "../lib/errors.ts";
import { loadLora, saveMerged } from "../lib/lora.ts";
import { loadModel } from "../lib/model_loader.ts";
import { setupBackend } from "../lib/backend.ts";
import { runTask } from "./_main.ts";

const FLAGS: Record<string, FlagSpec> = {
  adapter: {
    type: "string",
    valueName: "dir",
    description: "PEFT LoRA adapter directory (required; sets model.adapter_path)",
    configKey: "model.adapter_path",
  },
  out: { type: "string", valueName: "dir", description: "Where to write the merged checkpoint" },
};

async function main(): Promise<void> {
  const commandLine = parseCommandLine(Deno.args, { extra: FLAGS });
  if (commandLine.help) {
    console.log(formatHelp({
      command: "deno task merge",
      summary: "Merge a LoRA adapter into the base model and write a full HF checkpoint.",
      extra: FLAGS,
    }));
    return;
  }
  const config = await resolveConfig(commandLine, { defaultConfigPath: null });
  const out = commandLine.values.out;
  if (typeof out !== "string" || !config.model.adapter_path) {
    throw new ConfigError(`Cannot parse ${COMMAND_LINE}: --adapter and --out are required`, {
      file: COMMAND_LINE,
      key: typeof out !== "string" ? "out" : "adapter",
    });
  }
  // Merging is a few small matMuls per module; the cpu backend has no 4 GiB heap limit.
  await setupBackend({ ...config.runtime, backend: "cpu", blas: "off" });
  const model = await loadModel(config.model.path);
  const adapter = await loadLora(model, config.model.adapter_path);
  await saveMerged(model, adapter, out);
  console.log(`wrote ${out} (base ${config.model.path} + adapter ${config.model.adapter_path})`);
  adapter.dispose();
  model.dispose();
}
await runTask(main);
