/**
 * The fixture's GRPO case as tensors, and one case's loss and LoRA gradients, shared by the
 * trainer, model and webgpu tests (tests/fixtures/README.md, section "grpo").
 */
import assert from "node:assert/strict";
import { tf } from "../lib/tf.ts";
import { grpoLoss } from "../lib/grpo.ts";
import type { LoraAdapter } from "../lib/lora.ts";
import { completionLogProbs } from "../lib/grpo.ts";
import type { Qwen2Model } from "../lib/model.ts";
import { assertCloseToMax } from "./_assert.ts";

/** The fields of expected.json's `grpo` section the tests read. */
export interface GrpoFixture {
  input_ids: number[][];
  attention_mask: number[][];
  position_ids: number[][];
  completion_ids: number[][];
  completion_mask: number[][];
  old_per_token_logps: number[][];
  ref_per_token_logps: number[][];
  temperature: number;
  cases: GrpoCase[];
}

/** One of the 12 loss cases. */
export interface GrpoCase {
  name: string;
  loss_type: "grpo" | "bnpo" | "dr_grpo";
  epsilon_low: number;
  epsilon_high: number;
  beta: number;
  max_completion_length: number;
  advantages: number[];
  loss: number;
  grads: Record<string, number[][]>;
}

/** The batch of the GRPO fixture as tensors; `dispose()` frees them. */
export function grpoTensors(g: GrpoFixture) {
  const [B, T] = [g.input_ids.length, g.input_ids[0].length];
  const C = g.completion_ids[0].length;
  const t = {
    C,
    inputIds: tf.tensor2d(g.input_ids, [B, T], "int32"),
    attentionMask: tf.tensor2d(g.attention_mask, [B, T], "int32"),
    positionIds: tf.tensor2d(g.position_ids, [B, T], "int32"),
    completionMask: tf.tensor2d(g.completion_mask, [B, C]),
    old: tf.tensor2d(g.old_per_token_logps, [B, C]),
    ref: tf.tensor2d(g.ref_per_token_logps, [B, C]),
    dispose() {
      tf.dispose([t.inputIds, t.attentionMask, t.positionIds, t.completionMask, t.old, t.ref]);
    },
  };
  return t;
}

/**
 * Computes case `c`'s loss and LoRA gradients (policy = base + adapter, TRL's loss) and asserts
 * them against the fixture: loss within 1e-5, gradients within 1e-4 of each tensor's max.
 */
export async function assertGrpoCase(
  model: Qwen2Model,
  lora: LoraAdapter,
  g: GrpoFixture,
  c: GrpoCase,
  options: { gradientCheckpointing?: boolean } = {},
): Promise<void> {
  const t = grpoTensors(g);
  const advantages = tf.tensor1d(c.advantages);
  const { value, grads } = tf.variableGrads(() => {
    const logps = completionLogProbs(model, {
      inputIds: t.inputIds,
      attentionMask: t.attentionMask,
      positionIds: t.positionIds,
      completionLength: t.C,
      temperature: g.temperature,
    }, { adapter: lora, gradientCheckpointing: options.gradientCheckpointing });
    const out = grpoLoss({
      per_token_logps: logps,
      old_per_token_logps: t.old,
      ref_per_token_logps: c.beta === 0 ? null : t.ref,
      advantages,
      completion_mask: t.completionMask,
    }, {
      loss_type: c.loss_type,
      epsilon: c.epsilon_low,
      epsilon_high: c.epsilon_high,
      kl_coef: c.beta,
      max_completion_length: c.max_completion_length,
    });
    tf.dispose(Object.values(out.metrics).filter((m): m is tf.Scalar => m !== null));
    return out.loss;
  }, [...lora.variables.values()]);
  const loss = (await value.data())[0];
  assert.ok(Math.abs(loss - c.loss) <= 1e-5, `${c.name}: loss ${loss} vs ${c.loss}`);
  for (const [key, v] of lora.variables) {
    assertCloseToMax(await grads[v.name].data(), c.grads[key].flat(), 1e-4, `${c.name} ${key}`);
  }
  tf.dispose([value, advantages, ...Object.values(grads)]);
  t.dispose();
}
