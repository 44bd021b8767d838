/**
 * The run configuration: one zod schema ({@linkcode ConfigSchema}) with every key of the seed guide
 * (GRPO_TRAINING_GUIDE.md) and its default, grouped in sections named after the upstream class each
 * mirrors (PEFT `LoraConfig`, TRL `GRPOConfig`, transformers `TrainingArguments`).
 *
 * A YAML file may use sections (`lora: { lora_r: 16 }`) or the seed guide's flat keys (`lora_r: 16`,
 * `model_path: ...`), or both; {@linkcode parseConfig} moves each flat key to its section. Every
 * error names the file, the line and the key path:
 * `Cannot load configs/x.yaml:12: grpo.num_return_sequences: expected an integer >= 2, got 1`.
 *
 * @module
 */

import { z } from "zod";
import { ConfigError } from "./errors.ts";
import { readText } from "./_fs.ts";
import { stringifyYaml } from "./yaml.ts";
import {
  COMMAND_LINE,
  type ConfigOverrides,
  parseSectioned,
  sectionKeys,
} from "./_config_parse.ts";

export { COMMAND_LINE, nearest } from "./_config_parse.ts";
export type { ConfigOverrides } from "./_config_parse.ts";

const modelSection = z.object({
  path: z.string({ error: "expected a non-empty string (a model directory)" }).min(1)
    .default("data/demo/sft-model")
    .describe(
      "Hugging Face model directory (config.json, tokenizer.json, model.safetensors) of the " +
        "policy; the frozen reference model is the same weights without the adapter. " +
        "Seed flat key and flag: model_path.",
    ),
  adapter_path: z.string({ error: "expected a directory path or null" }).min(1).nullable()
    .default(null)
    .describe(
      "PEFT adapter directory (adapter_config.json, adapter_model.safetensors) to start from; " +
        "null starts a fresh LoRA adapter.",
    ),
  torch_dtype: z.enum(["float32", "auto"], { error: "expected float32 or auto" })
    .default("float32")
    .describe(
      "Dtype of the base weights in memory (HF from_pretrained `torch_dtype`, TRL ModelConfig): " +
        "float32 widens BF16/F16 checkpoints on load; auto keeps them 16-bit (half the memory) " +
        "where the base weights live outside the wasm heap (models over 2 GiB on wasm + BLAS), " +
        "widened inside each matMul (BF16 by SIMD: as fast as float32 on the 1.5B forward, " +
        "faster when decoding, which reads every weight per token).",
    ),
}).strict();

const loraSection = z.object({
  lora_r: z.number({ error: "expected an integer >= 1" }).int().min(1).default(16)
    .describe("LoRA rank r (PEFT `r`): lora_A is [r, in_features], lora_B is [out_features, r]."),
  lora_alpha: z.number({ error: "expected a number > 0" }).gt(0).default(32)
    .describe(
      "LoRA scaling numerator (PEFT `lora_alpha`): the update is scaled by lora_alpha / r.",
    ),
  lora_dropout: z.number({ error: "expected a number in [0, 1)" }).min(0).lt(1).default(0.05)
    .describe("Dropout on the LoRA input during training (PEFT `lora_dropout`); 0 turns it off."),
  target_modules: z.array(
    z.string({ error: "expected a module name such as q_proj" }).min(1),
    { error: "expected a list of module names" },
  ).min(1, { error: "expected at least one module name" })
    .default(["q_proj", "k_proj", "v_proj", "o_proj"])
    .describe(
      "Linear layers that get an adapter (PEFT `target_modules`), by Qwen2 module name: " +
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.",
    ),
}).strict();

const grpoSection = z.object({
  num_return_sequences: z.number({ error: "expected an integer >= 2" }).int().min(2).default(2)
    .describe(
      "Completions sampled per prompt, the group G (TRL `num_generations`); GRPO needs >= 2 " +
        "to compare completions within a group.",
    ),
  kl_coef: z.number({ error: "expected a number >= 0" }).min(0).default(0.05)
    .describe(
      "Weight of the KL penalty to the reference model (TRL `beta`); 0 skips the reference " +
        "forward pass.",
    ),
  loss_type: z.enum(["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"], {
    error: "expected one of grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo",
  }).default("dapo")
    .describe(
      "The policy loss and how per-token losses are aggregated (TRL `loss_type`). Clipped " +
        "surrogate: grpo = mean per sequence then batch; bnpo = mean over the batch's tokens; " +
        "dr_grpo = sum / (batch * max_new_tokens) (Dr. GRPO, arXiv:2503.20783); dapo = sum / " +
        "tokens in the whole accumulated batch (DAPO, arXiv:2503.14476); luspo = sum per " +
        "sequence, mean over the batch (LUSPO; use importance_sampling_level sequence). Other " +
        "objectives: cispo = detached ratio capped at epsilon_high times A·log-prob (MiniMax-M1, " +
        "ScaleRL), normalised as dapo; sapo = sigmoid soft gate instead of the clip (SAPO, " +
        "arXiv:2511.20347), normalised as grpo; vespo = sequence-level gamma weight times " +
        "A·log-prob (VESPO), normalised as dapo.",
    ),
  epsilon: z.number({ error: "expected a number > 0" }).gt(0).default(0.2)
    .describe("Lower clip range of the importance ratio, 1 - epsilon (TRL `epsilon`)."),
  epsilon_high: z.number({ error: "expected a number > 0 or null" }).gt(0).nullable()
    .default(null)
    .describe(
      "Upper clip range, 1 + epsilon_high (TRL `epsilon_high`, DAPO's clip-higher); null " +
        "uses epsilon. Must be >= epsilon. With loss_type cispo it is the cap on the ratio " +
        "itself (not 1 + epsilon_high), so null caps every ratio at epsilon: set it (ScaleRL " +
        "uses 5).",
    ),
  scale_rewards: z.enum(["group", "batch", "none"], {
    error: "expected one of group, batch, none",
  }).default("group")
    .describe(
      "Divisor of the centred rewards (TRL `scale_rewards`): group = std of the group, " +
        "batch = std of the batch, none = no scaling (Dr. GRPO).",
    ),
  num_iterations: z.number({ error: "expected an integer >= 1" }).int().min(1).default(1)
    .describe(
      "Optimisation passes over each generated batch (TRL `num_iterations`, GRPO's mu); " +
        "> 1 makes the clipped ratio matter.",
    ),
  mask_truncated_completions: z.boolean({ error: "expected true or false" }).default(false)
    .describe(
      "Leave completions that hit max_new_tokens without EOS out of the loss " +
        "(TRL `mask_truncated_completions`, DAPO).",
    ),
  filter_groups: z.boolean({ error: "expected true or false" }).default(false)
    .describe(
      "Dynamic sampling (DAPO arXiv:2503.14476 §3.2; verl `algorithm.filter_groups.enable`): " +
        "drop groups whose rewards are all equal (they carry no signal) and generate more " +
        "batches of data.gen_batch_size prompts until the step's prompts are filled, at most " +
        "max_num_gen_batches batches.",
    ),
  max_num_gen_batches: z.number({ error: "expected an integer >= 0" }).int().min(0).default(10)
    .describe(
      "With filter_groups: most generation batches per step (verl " +
        "`algorithm.filter_groups.max_num_gen_batches`); 0 = no limit. At the limit the batch " +
        "is filled with the zero-std groups drawn last (verl raises an error instead).",
    ),
  importance_sampling_level: z.enum(["token", "sequence"], {
    error: "expected token or sequence",
  }).default("token")
    .describe(
      "Importance ratio per token, or one per sequence from the mean log-ratio of its tokens " +
        "(TRL `importance_sampling_level`; sequence = GSPO, arXiv:2507.18071). Clip ratios are " +
        "then shares of sequences, not tokens.",
    ),
  delta: z.number({ error: "expected a number > 0 or null" }).gt(0).nullable().default(null)
    .describe(
      "Two-sided clipping (TRL `delta`, INTELLECT-2): also cap the ratio at delta, which " +
        "bounds the loss of negative-advantage tokens; null turns it off. TRL recommends " +
        "delta > 1 + epsilon_high.",
    ),
  top_entropy_quantile: z.number({ error: "expected a number in [0, 1]" }).min(0).max(1)
    .default(1.0)
    .describe(
      "Train the policy loss only on the tokens whose entropy is in this top quantile of the " +
        "micro-batch (TRL `top_entropy_quantile`, arXiv:2506.01939, which recommends 0.2); " +
        "1 keeps every token. Entropies come from the temperature-scaled logits; the KL term " +
        "is not masked.",
    ),
  use_bias_correction_kl: z.boolean({ error: "expected true or false" }).default(false)
    .describe(
      "Multiply the per-token KL by the importance ratio (TRL `use_bias_correction_kl`, " +
        "DeepSeek-V3.2). TRL's default is true; ours stays false so existing runs keep their " +
        "loss. Needs kl_coef > 0 to have an effect.",
    ),
  off_policy_mask_threshold: z.number({ error: "expected a number >= 0 or null" }).min(0)
    .nullable().default(null)
    .describe(
      "Drop a negative-advantage sequence from the policy loss when the mean of (sampler " +
        "log-prob - policy log-prob) over its tokens exceeds this (TRL " +
        "`off_policy_mask_threshold`, DeepSeek-V3.2's off-policy sequence mask); null turns it " +
        "off.",
    ),
  sapo_temperature_pos: z.number({ error: "expected a number > 0" }).gt(0).default(1.0)
    .describe("SAPO gate temperature for positive advantages (TRL `sapo_temperature_pos`)."),
  sapo_temperature_neg: z.number({ error: "expected a number > 0" }).gt(0).default(1.05)
    .describe("SAPO gate temperature for negative advantages (TRL `sapo_temperature_neg`)."),
  vespo_k_pos: z.number({ error: "expected a number >= 0" }).min(0).default(2.0)
    .describe(
      "VESPO gamma shape k for advantages >= 0 (TRL `vespo_k_pos`): the weight is " +
        "e^lambda · w^k · e^(-lambda·w) of the sequence ratio w.",
    ),
  vespo_lambda_pos: z.number({ error: "expected a number >= 0" }).min(0).default(3.0)
    .describe("VESPO gamma rate lambda for advantages >= 0 (TRL `vespo_lambda_pos`)."),
  vespo_k_neg: z.number({ error: "expected a number >= 0" }).min(0).default(3.0)
    .describe("VESPO gamma shape k for negative advantages (TRL `vespo_k_neg`)."),
  vespo_lambda_neg: z.number({ error: "expected a number >= 0" }).min(0).default(2.0)
    .describe("VESPO gamma rate lambda for negative advantages (TRL `vespo_lambda_neg`)."),
  vllm_importance_sampling_correction: z.boolean({ error: "expected true or false" })
    .default(false)
    .describe(
      "Weight the policy loss by exp(trainer log-prob - sampler log-prob) to correct for a " +
        "rollout engine whose log-probs differ from the trainer's (TRL " +
        "`vllm_importance_sampling_correction`). TRL's default is true but applies only with " +
        "vLLM; our rollout samples from the trainer's own model, so it is off here.",
    ),
  vllm_importance_sampling_mode: z.enum(
    ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"],
    { error: "expected one of token_truncate, token_mask, sequence_truncate, sequence_mask" },
  ).default("sequence_mask")
    .describe(
      "How the correction ratio is formed (TRL `vllm_importance_sampling_mode`): per token or " +
        "one per sequence (the exp of the summed log-ratios); truncate clamps it to " +
        "[clip_min, clip_max], mask sets it to 0 outside that range.",
    ),
  vllm_importance_sampling_clip_min: z.number({ error: "expected a number >= 0 or null" })
    .min(0).nullable().default(null)
    .describe(
      "Lower bound of the correction ratio (TRL `vllm_importance_sampling_clip_min`); null = " +
        "none.",
    ),
  vllm_importance_sampling_clip_max: z.number({ error: "expected a number > 0 or null" })
    .gt(0).nullable().default(3.0)
    .describe(
      "Upper bound of the correction ratio (TRL `vllm_importance_sampling_clip_max`); null = " +
        "none.",
    ),
}).strict();

const rewardSection = z.object({
  reward_correct: z.number({ error: "expected a number" }).default(1.0)
    .describe("Reward when the \\boxed{} answer equals the ground truth."),
  reward_wrong: z.number({ error: "expected a number" }).default(-1.0)
    .describe("Reward when the \\boxed{} answer differs from the ground truth."),
  reward_no_answer: z.number({ error: "expected a number" }).default(-0.5)
    .describe("Reward when the completion has no \\boxed{} answer."),
  reward_functions: z.array(
    z.enum(["accuracy", "format"], {
      error: "expected accuracy or format",
    }),
    { error: "expected a list of reward functions" },
  )
    .min(1, { error: "expected at least one reward function" })
    .default(["accuracy"])
    .describe(
      "Reward functions summed per completion (TRL `reward_funcs`): accuracy = the three " +
        "rewards above; format = 1 when the completion ends with one \\boxed{} answer, else 0.",
    ),
  reward_weights: z.array(z.number({ error: "expected a number" }), {
    error: "expected a list of numbers or null",
  }).nullable().default(null)
    .describe(
      "Weight of each reward function, same length as reward_functions (TRL " +
        "`reward_weights`); null weights each 1.",
    ),
}).strict();

const generationSection = z.object({
  max_new_tokens: z.number({ error: "expected an integer >= 1" }).int().min(1).default(2048)
    .describe("Most tokens sampled per completion (TRL `max_completion_length`)."),
  temperature: z.number({ error: "expected a number > 0" }).gt(0).default(0.7)
    .describe("Sampling temperature; logits are divided by it, also when scoring log-probs."),
  top_p: z.number({ error: "expected a number in (0, 1]" }).gt(0).max(1).default(0.9)
    .describe("Nucleus sampling: keep the smallest set of tokens with probability >= top_p."),
  top_k: z.number({ error: "expected an integer >= 0" }).int().min(0).default(0)
    .describe("Keep only the top_k most likely tokens before top_p; 0 turns it off."),
  stop: z.array(z.string({ error: "expected a non-empty string" }).min(1), {
    error: "expected a list of strings",
  }).default([])
    .describe("Extra stop strings; generation always stops at the tokenizer's EOS tokens."),
  prompt_format: z.enum(["chat", "plain"], { error: "expected chat or plain" }).default("chat")
    .describe(
      "chat = the tokenizer's chat template with system_prompt; plain = " +
        "`Question: <question>\\nAnswer:` (lib/tokenizer.ts PLAIN_PROMPT_TEMPLATE).",
    ),
  system_prompt: z.string({ error: "expected a string" })
    .default("Please reason step by step, and put your final answer within \\boxed{}.")
    .describe("System message for prompt_format chat (Qwen2.5-Math's own CoT prompt)."),
}).strict();

const trainingSection = z.object({
  num_epochs: z.number({ error: "expected an integer >= 1" }).int().min(1).default(3)
    .describe("Passes over the training prompts (TRL/HF `num_train_epochs`)."),
  max_steps: z.number({ error: "expected -1 or an integer >= 1" }).int().min(-1)
    .refine((steps) => steps !== 0, {
      error: "expected -1 or an integer >= 1",
      params: { showValue: true },
    })
    .default(-1)
    .describe("Stop after this many optimizer steps (HF `max_steps`); -1 runs num_epochs."),
  per_device_train_batch_size: z.number({ error: "expected an integer >= 1" }).int().min(1)
    .default(4)
    .describe(
      "Completions per micro-batch (HF `per_device_train_batch_size`; as in TRL it counts " +
        "completions, not prompts).",
    ),
  gradient_accumulation_steps: z.number({ error: "expected an integer >= 1" }).int().min(1)
    .default(4)
    .describe(
      "Micro-batches per optimizer step (HF `gradient_accumulation_steps`); one step sees " +
        "per_device_train_batch_size * gradient_accumulation_steps completions.",
    ),
  learning_rate: z.number({ error: "expected a number > 0" }).gt(0).default(5e-6)
    .describe("Peak AdamW learning rate of the LoRA weights (HF `learning_rate`)."),
  weight_decay: z.number({ error: "expected a number >= 0" }).min(0).default(0.0)
    .describe("Decoupled AdamW weight decay (HF `weight_decay`)."),
  adam_beta1: z.number({ error: "expected a number in [0, 1)" }).min(0).lt(1).default(0.9)
    .describe("AdamW beta1 (HF `adam_beta1`)."),
  adam_beta2: z.number({ error: "expected a number in [0, 1)" }).min(0).lt(1).default(0.999)
    .describe("AdamW beta2 (HF `adam_beta2`)."),
  adam_epsilon: z.number({ error: "expected a number > 0" }).gt(0).default(1e-8)
    .describe("AdamW epsilon (HF `adam_epsilon`)."),
  max_grad_norm: z.number({ error: "expected a number >= 0" }).min(0).default(1.0)
    .describe("Clip the global gradient norm to this (HF `max_grad_norm`); 0 turns it off."),
  lr_scheduler_type: z.enum(["constant", "linear", "cosine"], {
    error: "expected one of constant, linear, cosine",
  }).default("linear")
    .describe(
      "Learning-rate schedule after warmup (HF `lr_scheduler_type`): linear and cosine " +
        "decay to 0 at the last step.",
    ),
  warmup_ratio: z.number({ error: "expected a number in [0, 1]" }).min(0).max(1).default(0.0)
    .describe("Fraction of the steps spent warming up linearly from 0 (HF `warmup_ratio`)."),
  warmup_steps: z.number({ error: "expected an integer >= 0" }).int().min(0).default(0)
    .describe("Warmup steps (HF `warmup_steps`); when > 0 it overrides warmup_ratio."),
  gradient_checkpointing: z.boolean({ error: "expected true or false" }).default(true)
    .describe(
      "Recompute each decoder layer's activations in the backward pass instead of keeping " +
        "them (HF `gradient_checkpointing`): less memory, about one more forward pass.",
    ),
  fp16: z.boolean({ error: "expected true or false" }).default(false)
    .describe("Compute in float16 where the backend supports it (HF `fp16`)."),
  bf16: z.boolean({ error: "expected true or false" }).default(false)
    .describe("Compute in bfloat16 where the backend supports it (HF `bf16`)."),
  seed: z.number({ error: "expected an integer >= 0" }).int().min(0).default(42)
    .describe("Seed for shuffling, sampling, dropout and LoRA init (HF `seed`)."),
  output_dir: z.string({ error: "expected a directory path or null" }).min(1).nullable()
    .default(null)
    .describe(
      "Where checkpoints, metrics.jsonl and the final adapter go (HF `output_dir`); null " +
        "means results/rl_grpo_<timestamp>. Flag: --output_dir.",
    ),
  save_steps: z.number({ error: "expected an integer >= 1" }).int().min(1).default(500)
    .describe("Save a checkpoint-<step>/ every save_steps optimizer steps (HF `save_steps`)."),
  save_total_limit: z.number({ error: "expected an integer >= 1 or null" }).int().min(1)
    .nullable().default(null)
    .describe(
      "Keep only the newest this many checkpoints (HF `save_total_limit`); null keeps all.",
    ),
  max_nonfinite_steps: z.number({ error: "expected an integer >= 1" }).int().min(1).default(3)
    .describe(
      "A step whose loss or gradients are not finite skips its update; after this many in a " +
        "row the run saves a checkpoint and stops (lower learning_rate or kl_coef).",
    ),
}).strict();

const dataSection = z.object({
  train_file: z.string({ error: "expected a non-empty string (a data file)" }).min(1)
    .default("data/demo/train.json")
    .describe("Training prompts: a JSON array or JSONL file (question + answer per row)."),
  format: z.enum(["auto", "seed", "gsm8k", "math"], {
    error: "expected one of auto, seed, gsm8k, math",
  }).default("auto")
    .describe(
      "Row format: seed = {question, ground_truth}; gsm8k = {question, answer '... #### 42'}; " +
        "math = {problem, answer|solution}; auto = detect from the first row.",
    ),
  max_samples: z.number({ error: "expected an integer >= 1 or null" }).int().min(1).nullable()
    .default(null)
    .describe(
      "Use only the first max_samples rows of the file; null uses all. Flag: --max_samples.",
    ),
  shuffle: z.boolean({ error: "expected true or false" }).default(true)
    .describe("Walk the prompts in a seeded shuffle (training.seed), reshuffled each epoch."),
  gen_batch_size: z.number({ error: "expected an integer >= 1 or null" }).int().min(1)
    .nullable().default(null)
    .describe(
      "Prompts per generation batch with grpo.filter_groups (verl `data.gen_batch_size`); " +
        "null = the step's prompts; more over-samples.",
    ),
  skip_easy_prob: z.number({ error: "expected a number in [0, 1)" }).min(0).lt(1).default(0)
    .describe(
      "Difficulty-aware order: skip a prompt whose last group was all correct with this " +
        "probability when the order reaches it (after GRESO); 0 = off.",
    ),
  skip_hard_prob: z.number({ error: "expected a number in [0, 1)" }).min(0).lt(1).default(0)
    .describe(
      "Difficulty-aware order: skip a prompt whose last group had no correct completion with " +
        "this probability; 0 = off.",
    ),
  on_bad_row: z.enum(["error", "skip"], { error: "expected error or skip" }).default("error")
    .describe(
      "What a malformed row does: error stops with its file:line; skip counts and drops it.",
    ),
}).strict();

const evalSection = z.object({
  eval_file: z.string({ error: "expected a data file path or null" }).min(1).nullable()
    .default("data/demo/test.json")
    .describe("Held-out prompts scored before and after training; null turns evaluation off."),
  eval_max_samples: z.number({ error: "expected an integer >= 1" }).int().min(1).default(500)
    .describe("Score at most this many eval rows (the first ones; eval rows are not shuffled)."),
  eval_steps: z.number({ error: "expected an integer >= 0" }).int().min(0).default(0)
    .describe(
      "Also evaluate every eval_steps optimizer steps (HF `eval_steps`); 0 = only before and after.",
    ),
  eval_batch_size: z.number({ error: "expected an integer >= 1" }).int().min(1).default(64)
    .describe("Prompts generated at once during evaluation (HF `per_device_eval_batch_size`)."),
  max_new_tokens: z.number({ error: "expected an integer >= 1 or null" }).int().min(1)
    .nullable().default(null)
    .describe(
      "Most tokens per eval completion; null uses generation.max_new_tokens. A flat " +
        "max_new_tokens goes to generation, not here.",
    ),
  num_samples: z.number({ error: "expected an integer >= 1" }).int().min(1).default(1)
    .describe(
      "Samples per problem (verl `val_kwargs.n`): 1 = greedy only; k > 1 adds eval/pass@k, " +
        "eval/maj@k, eval/pass@1.",
    ),
  temperature: z.number({ error: "expected a number > 0 or null" }).gt(0).nullable()
    .default(null)
    .describe(
      "Temperature of the k samples (verl `val_kwargs.temperature`); null = " +
        "generation.temperature. Flat temperature: generation.",
    ),
}).strict();

const loggingSection = z.object({
  logging_steps: z.number({ error: "expected an integer >= 1" }).int().min(1).default(10)
    .describe(
      "Read metrics back and append a metrics.jsonl line every logging_steps steps (HF `logging_steps`).",
    ),
  log_completions: z.boolean({ error: "expected true or false" }).default(false)
    .describe(
      "Also write every step's prompts, completions and rewards to completions.jsonl (TRL `log_completions`).",
    ),
}).strict();

const runtimeSection = z.object({
  backend: z.enum(["auto", "wasm", "webgpu", "cpu", "tensorflow"], {
    error: "expected one of auto, wasm, webgpu, cpu, tensorflow",
  }).default("auto")
    .describe("TensorFlow.js backend; auto picks webgpu on a hardware GPU adapter, else wasm."),
  blas: z.string({ error: "expected auto, off or a library path" }).min(1).default("auto")
    .describe(
      "matMuls of the wasm and cpu backends through native BLAS (FFI): auto = OpenBLAS when " +
        "found, off = the stock tfjs kernels, or the path of a shared library exporting " +
        "cblas_sgemm. cpu + BLAS has no 4 GiB heap limit: use it for models too big for wasm.",
    ),
  num_threads: z.number({ error: "expected an integer >= 1" }).int().min(1).default(2)
    .describe("OpenBLAS threads behind the matMuls (the wasm backend itself runs one thread)."),
}).strict();

/**
 * The whole configuration. Sections are `.strict()` so a typo is an error, every key has its
 * default here, and cross-field rules live in the `superRefine` at the end.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { ConfigSchema } from "./config.ts";
 * const config = ConfigSchema.parse({ grpo: { kl_coef: 0.04 } });
 * assert.equal(config.grpo.kl_coef, 0.04);
 * assert.equal(config.lora.lora_r, 16);
 * ```
 */
export const ConfigSchema = z.object({
  model: modelSection.prefault({}).describe("The policy model and an optional starting adapter."),
  lora: loraSection.prefault({}).describe("LoRA adapter (PEFT LoraConfig; seed keys)."),
  grpo: grpoSection.prefault({}).describe("GRPO objective (TRL GRPOConfig; seed keys first)."),
  reward: rewardSection.prefault({}).describe("Rule-based rewards of the seed's reward_utils.py."),
  generation: generationSection.prefault({}).describe("Sampling of completions during training."),
  training: trainingSection.prefault({}).describe("Optimizer and loop (HF TrainingArguments)."),
  data: dataSection.prefault({}).describe("Training data."),
  eval: evalSection.prefault({}).describe("Evaluation before, during and after training."),
  logging: loggingSection.prefault({}).describe("metrics.jsonl logging."),
  runtime: runtimeSection.prefault({}).describe("TensorFlow.js backend and threads."),
}).strict().superRefine((config, ctx) => {
  const { grpo, reward, training, eval: evaluation } = config;
  if (grpo.epsilon_high !== null && grpo.epsilon_high < grpo.epsilon) {
    ctx.addIssue({
      code: "custom",
      path: ["grpo", "epsilon_high"],
      message: `expected a number >= grpo.epsilon (${grpo.epsilon}) or null`,
    });
  }
  // TRL GRPOTrainer.__init__: VESPO folds a per-token correction ratio into its weights.
  if (
    grpo.loss_type === "vespo" && grpo.vllm_importance_sampling_correction &&
    grpo.vllm_importance_sampling_mode.startsWith("sequence")
  ) {
    ctx.addIssue({
      code: "custom",
      path: ["grpo", "vllm_importance_sampling_mode"],
      message: `expected token_truncate or token_mask with loss_type vespo and ` +
        `vllm_importance_sampling_correction (VESPO folds a per-token ratio into its weights), ` +
        `got ${grpo.vllm_importance_sampling_mode}`,
    });
  }
  const { vllm_importance_sampling_clip_min: clipMin, vllm_importance_sampling_clip_max: clipMax } =
    grpo;
  if (clipMin !== null && clipMax !== null && clipMin > clipMax) {
    ctx.addIssue({
      code: "custom",
      path: ["grpo", "vllm_importance_sampling_clip_min"],
      message: `expected a number <= grpo.vllm_importance_sampling_clip_max (${clipMax}) or null`,
    });
  }
  if (
    reward.reward_weights !== null &&
    reward.reward_weights.length !== reward.reward_functions.length
  ) {
    ctx.addIssue({
      code: "custom",
      path: ["reward", "reward_weights"],
      message:
        `expected ${reward.reward_functions.length} weight(s), one per reward.reward_functions ` +
        `entry (${reward.reward_functions.join(", ")}), or null`,
    });
  }
  if (new Set(reward.reward_functions).size !== reward.reward_functions.length) {
    ctx.addIssue({
      code: "custom",
      path: ["reward", "reward_functions"],
      message: "expected each reward function at most once",
    });
  }
  if (training.fp16 && training.bf16) {
    ctx.addIssue({
      code: "custom",
      path: ["training", "bf16"],
      message: "expected fp16 and bf16 not both true; pick one",
    });
  }
  // TRL GRPOConfig.__post_init__: generation_batch_size = per_device_train_batch_size *
  // num_processes * steps_per_generation (default gradient_accumulation_steps) must be divisible by
  // num_generations, so every group of completions lands in one optimizer step. One process here.
  const generationBatch = training.per_device_train_batch_size *
    training.gradient_accumulation_steps;
  if (generationBatch % grpo.num_return_sequences !== 0) {
    ctx.addIssue({
      code: "custom",
      path: ["training", "per_device_train_batch_size"],
      message: `expected per_device_train_batch_size * gradient_accumulation_steps ` +
        `(${training.per_device_train_batch_size} * ${training.gradient_accumulation_steps} = ` +
        `${generationBatch}) to be a multiple of grpo.num_return_sequences ` +
        `(${grpo.num_return_sequences})`,
    });
  }
  if (config.data.gen_batch_size !== null && !grpo.filter_groups) {
    ctx.addIssue({
      code: "custom",
      path: ["data", "gen_batch_size"],
      message: "expected null unless grpo.filter_groups is true (without it each step " +
        "generates exactly its own prompts)",
    });
  }
  if (evaluation.eval_steps > 0 && evaluation.eval_file === null) {
    ctx.addIssue({
      code: "custom",
      path: ["eval", "eval_steps"],
      message: "expected 0 when eval.eval_file is null (evaluation is off)",
    });
  }
});

/** The typed configuration every phase reads from (`config.grpo.kl_coef`, ...). */
export type Config = z.infer<typeof ConfigSchema>;

/**
 * Warnings about `grpo` settings that TRL accepts but that may not do what the user wants (TRL
 * logs the same ones); the trainer prints them at start. Combinations TRL rejects are schema
 * errors instead.
 *
 * @param grpo The `grpo` section.
 * @returns One sentence per problem, naming the fix.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { defaultConfig, grpoConfigWarnings } from "./config.ts";
 * const grpo = { ...defaultConfig().grpo, loss_type: "cispo" as const };
 * assert.match(grpoConfigWarnings(grpo)[0], /epsilon_high/);
 * ```
 */
export function grpoConfigWarnings(grpo: Config["grpo"]): string[] {
  const out: string[] = [];
  const lossType = grpo.loss_type;
  if (lossType === "cispo" && grpo.epsilon_high === null) {
    out.push(
      `grpo.loss_type cispo caps the importance ratio at epsilon_high, which defaults to epsilon ` +
        `(${grpo.epsilon}), so almost every token is capped. Set grpo.epsilon_high (ScaleRL uses 5).`,
    );
  }
  if (lossType === "luspo" && grpo.importance_sampling_level !== "sequence") {
    out.push(
      "grpo.loss_type luspo is defined with sequence-level ratios (TRL warns too). Set " +
        "grpo.importance_sampling_level: sequence.",
    );
  }
  if (lossType === "vespo" && grpo.importance_sampling_level !== "token") {
    out.push(
      "grpo.loss_type vespo computes its own sequence-level weights (TRL warns too). Set " +
        "grpo.importance_sampling_level: token.",
    );
  }
  if (
    grpo.importance_sampling_level === "sequence" &&
    ["dapo", "bnpo", "dr_grpo", "cispo"].includes(lossType)
  ) {
    out.push(
      `grpo.importance_sampling_level sequence with loss_type ${lossType} sums a sequence's ` +
        `ratio once per token, so long sequences weigh more (TRL warns too). GSPO uses ` +
        `loss_type grpo; LUSPO uses luspo.`,
    );
  }
  if (grpo.use_bias_correction_kl && grpo.kl_coef === 0) {
    out.push(
      "grpo.use_bias_correction_kl has no effect with grpo.kl_coef 0 (there is no KL term). Set " +
        "kl_coef > 0 or leave it false.",
    );
  }
  if (grpo.delta !== null) {
    const high = grpo.epsilon_high ?? grpo.epsilon;
    if (["cispo", "sapo", "vespo"].includes(lossType)) {
      out.push(
        `grpo.delta applies only to the clipped losses; loss_type ${lossType} ignores it. Set ` +
          `delta: null.`,
      );
    } else if (grpo.delta <= 1 + high) {
      out.push(
        `grpo.delta (${grpo.delta}) <= 1 + epsilon_high (${1 + high}) caps ratios that the clip ` +
          `would keep. TRL recommends delta > 1 + epsilon_high.`,
      );
    }
  }
  return out;
}

/** A section name of {@linkcode Config}. */
export type ConfigSection = keyof Config;

/**
 * Where a flat key that exists in several sections goes. The seed guide lists `max_new_tokens`
 * and `temperature` under "# Generation", so a flat `max_new_tokens` is
 * `generation.max_new_tokens`; write `eval: { max_new_tokens: N }` for the other one. A name shared by two sections that is not
 * listed here is an error when written flat.
 */
export const FLAT_KEY_PRECEDENCE: Readonly<Record<string, ConfigSection>> = Object.freeze({
  max_new_tokens: "generation",
  temperature: "generation",
});

/**
 * Flat names that are not a key name: the seed guide's `model_path` (its YAML snippet and its
 * `--model_path` flag) is `model.path`.
 */
export const FLAT_KEY_ALIASES: Readonly<Record<string, string>> = Object.freeze({
  model_path: "model.path",
});

/**
 * Upstream names (TRL `GRPOConfig`, PEFT `LoraConfig`, HF `TrainingArguments`) that differ from
 * ours. They are not accepted as keys (seed names are canonical); an unknown key that is one of
 * them gets a hint naming our key.
 */
export const UPSTREAM_NAMES: Readonly<Record<string, string>> = Object.freeze({
  num_generations: "grpo.num_return_sequences",
  beta: "grpo.kl_coef",
  r: "lora.lora_r",
  reward_funcs: "reward.reward_functions",
  max_completion_length: "generation.max_new_tokens",
  num_train_epochs: "training.num_epochs",
  model_name_or_path: "model.path",
  per_device_eval_batch_size: "eval.eval_batch_size",
});

/** Options of {@linkcode parseConfig}. */
export interface ParseConfigOptions {
  /** The file name used in error messages. */
  file: string;
  /** Command-line values applied over the file. */
  overrides?: ConfigOverrides;
  /** Where a flat key found in several sections goes; defaults to {@linkcode FLAT_KEY_PRECEDENCE}. */
  flatKeyPrecedence?: Readonly<Record<string, ConfigSection>>;
}

const SECTIONS = Object.keys(ConfigSchema.shape) as ConfigSection[];

/**
 * Parses YAML text into a {@linkcode Config}: flat seed keys move to their sections, overrides
 * apply, and the schema validates the result. Pure; {@linkcode loadConfig} reads the file.
 *
 * @param text The YAML text (sections, flat seed keys, or both).
 * @param options The file name for messages, overrides and flat-key precedence.
 * @returns The validated config with every default filled in.
 * @throws {ConfigError} Listing every problem, one per line, each naming the file, the line and
 * the key path.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseConfig } from "./config.ts";
 * const config = parseConfig("lora_r: 8\nkl_coef: 0.01\n", {
 *   file: "x.yaml",
 *   overrides: { set: ["generation.temperature=1.0"] },
 * });
 * assert.equal(config.lora.lora_r, 8);
 * assert.equal(config.grpo.kl_coef, 0.01);
 * assert.equal(config.generation.temperature, 1.0);
 * assert.throws(() => parseConfig("grpo:\n  num_return_sequences: 1\n", { file: "x.yaml" }), {
 *   message: "Cannot load x.yaml:2: grpo.num_return_sequences: expected an integer >= 2, got 1",
 * });
 * ```
 */
export function parseConfig(text: string, options: ParseConfigOptions): Config {
  return parseSectioned(text, {
    file: options.file,
    schema: ConfigSchema,
    overrides: options.overrides,
    aliases: FLAT_KEY_ALIASES,
    precedence: options.flatKeyPrecedence ?? FLAT_KEY_PRECEDENCE,
    upstreamNames: UPSTREAM_NAMES,
  });
}

/**
 * Reads and parses a config file (see {@linkcode parseConfig}). With `path` null, only the
 * defaults and the overrides apply.
 *
 * @param path A YAML file, or null for the defaults.
 * @param overrides Command-line values applied over the file.
 * @returns The validated config.
 * @throws {ConfigError} When the file is missing or unreadable, or the config is not valid.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadConfig } from "./config.ts";
 * const config = await loadConfig(null, { flags: { model_path: "checkpoints/m" } });
 * assert.equal(config.model.path, "checkpoints/m");
 * ```
 */
export async function loadConfig(
  path: string | null,
  overrides: ConfigOverrides = {},
): Promise<Config> {
  if (path === null) return parseConfig("", { file: COMMAND_LINE, overrides });
  const text = await readText(path, {
    error: ConfigError,
    notFound: "no such file",
    isDirectory: "is a directory, expected a YAML file",
  });
  return parseConfig(text, { file: path, overrides });
}

/**
 * The config with every default ({@linkcode ConfigSchema} applied to `{}`).
 *
 * @returns A fresh default config.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { defaultConfig } from "./config.ts";
 * assert.equal(defaultConfig().grpo.num_return_sequences, 2);
 * ```
 */
export function defaultConfig(): Config {
  return ConfigSchema.parse({});
}

/**
 * Dumps a config as sectioned YAML (what `--print_config` shows); the text loads back into the
 * same config.
 *
 * @param config A config.
 * @returns YAML text, sections in schema order.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { defaultConfig, formatConfig, parseConfig } from "./config.ts";
 * const text = formatConfig(defaultConfig());
 * assert.match(text, /^lora:\n  lora_r: 16\n/m);
 * assert.deepEqual(parseConfig(text, { file: "dump.yaml" }), defaultConfig());
 * ```
 */
export function formatConfig(config: Config): string {
  const ordered: Record<string, Record<string, unknown>> = {};
  for (const section of SECTIONS) {
    ordered[section] = {};
    for (const key of sectionKeys(ConfigSchema, section)) {
      ordered[section][key] = (config[section] as Record<string, unknown>)[key];
    }
  }
  return stringifyYaml(ordered);
}
