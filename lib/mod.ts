/**
 * grpo-deno: GRPO + LoRA fine-tuning of Qwen2 math models on TensorFlow.js.
 *
 * The public API, one module per phase: config, data and context (load), model, LoRA and
 * tokenizer, rollout (generate), reward (score), dynamic_sampling (generate and score until
 * the groups have signal), grpo (advantages, loss), update and optim
 * (update), trainer (the loop), run_writer and checkpoint (outputs), evaluate, plot and report.
 * Notebooks import this file; tasks import the modules they use.
 *
 * @module
 */
export * from "./tf.ts";
export * from "./errors.ts";
export * from "./config.ts";
export * from "./cli.ts";
export * from "./backend.ts";
export * from "./data.ts";
export * from "./synthetic.ts";
export * from "./safetensors.ts";
export * from "./qwen2_config.ts";
export * from "./model.ts";
export * from "./model_loader.ts";
export * from "./lora.ts";
export * from "./tokenizer.ts";
export * from "./rollout.ts";
export * from "./reward.ts";
export * from "./dynamic_sampling.ts";
export * from "./grpo.ts";
export * from "./optim.ts";
export * from "./update.ts";
export * from "./context.ts";
export * from "./checkpoint.ts";
export * from "./run_writer.ts";
export * from "./trainer.ts";
export * from "./evaluate.ts";
export * from "./plot.ts";
export * from "./progress.ts";
export * from "./report.ts";
export * from "./sft.ts";
export * from "./inspect.ts";
