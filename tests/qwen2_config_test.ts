import assert from "node:assert/strict";
import { CheckpointError } from "../lib/errors.ts";
import { loadModelConfig } from "../lib/model_loader.ts";
import { parseQwen2Config } from "../lib/qwen2_config.ts";

const TINY = {
  model_type: "qwen2",
  vocab_size: 10,
  hidden_size: 8,
  intermediate_size: 16,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  num_key_value_heads: 1,
};

Deno.test("parseQwen2Config() accepts hidden_act silu, and its absence (HF's default)", () => {
  assert.equal(parseQwen2Config({ ...TINY, hidden_act: "silu" }, "config.json").hidden_act, "silu");
  assert.equal(parseQwen2Config(TINY, "config.json").hidden_act, undefined);
});

Deno.test("parseQwen2Config() rejects a hidden_act other than silu, naming the file and key", () => {
  for (const act of ["gelu", "relu", null]) {
    assert.throws(() => parseQwen2Config({ ...TINY, hidden_act: act }, "m/config.json"), {
      name: "CheckpointError",
      message: `Cannot load m/config.json: hidden_act: expected "silu" (the only activation ` +
        `implemented), got ${JSON.stringify(act)}`,
      file: "m/config.json",
      key: "hidden_act",
    });
  }
});

Deno.test("loadModelConfig() reports a gelu config.json by file and key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...TINY, hidden_act: "gelu" }));
    await assert.rejects(() => loadModelConfig(dir), (error: unknown) => {
      assert.ok(error instanceof CheckpointError);
      assert.equal(error.file, `${dir}/config.json`);
      assert.equal(error.key, "hidden_act");
      assert.match(error.message, /hidden_act: expected "silu" .*, got "gelu"$/);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
