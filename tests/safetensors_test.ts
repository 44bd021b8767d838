/**
 * Tests for lib/safetensors.ts. Golden values come from tests/fixtures (written by
 * tests/fixtures/make_qwen2_tiny.py with PyTorch/numpy) and from the byte vectors in
 * huggingface/safetensors `safetensors/src/tensor.rs` tests (`test_serialization`,
 * `test_serialization_forced_alignement`, `test_empty`).
 */
import assert from "node:assert/strict";
import { CheckpointError } from "../lib/errors.ts";
import {
  bf16ToF32,
  checkShapes,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  loadCheckpointTensors,
  loadSafetensors,
  parseSafetensors,
  saveSafetensors,
  serializeSafetensors,
  type TensorData,
} from "../lib/safetensors.ts";

const F32_DIR = "tests/fixtures/qwen2-tiny";
const BF16_DIR = "tests/fixtures/qwen2-tiny-tied-bf16";
const F32_FILE = `${F32_DIR}/model.safetensors`;
const ADAPTER_FILE = `${F32_DIR}/adapter/adapter_model.safetensors`;
const FIXTURE_FILES = [
  F32_FILE,
  ADAPTER_FILE,
  `${BF16_DIR}/model-00001-of-00002.safetensors`,
  `${BF16_DIR}/model-00002-of-00002.safetensors`,
];

const expected = JSON.parse(await Deno.readTextFile(`${F32_DIR}/expected.json`));
const expectedBf16 = JSON.parse(await Deno.readTextFile(`${BF16_DIR}/expected.json`));

function bitsOf(data: Float32Array): Uint32Array {
  return new Uint32Array(data.buffer, data.byteOffset, data.length);
}

function floatsFromBits(bits: number[] | Uint32Array): Float32Array {
  return new Float32Array(Uint32Array.from(bits).buffer);
}

/** A safetensors file with a hand-written header, for the error cases. */
function rawFile(header: unknown, dataBytes: number, headerLength?: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength ?? json.byteLength), true);
  out.set(json, 8);
  return out;
}

/** Asserts parse and streaming load both throw a CheckpointError naming file and key. */
async function assertBadFile(
  bytes: Uint8Array,
  key: string,
  pattern: RegExp,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/bad.safetensors`;
  await Deno.writeFile(path, bytes);
  try {
    for (
      const [file, run] of [
        [
          "mem.safetensors",
          // A throw inside the executor becomes a rejection.
          () => new Promise((resolve) => resolve(parseSafetensors(bytes, "mem.safetensors"))),
        ],
        [path, () => loadSafetensors(path)],
      ] as const
    ) {
      await assert.rejects(run, (error: unknown) => {
        assert.ok(error instanceof CheckpointError, `not a CheckpointError: ${error}`);
        assert.equal(error.file, file);
        assert.equal(error.key, key);
        assert.ok(error.message.includes(file), `message lacks file: ${error.message}`);
        if (key !== "") assert.ok(error.message.includes(key), `lacks key: ${error.message}`);
        assert.match(error.message, pattern);
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Independent bf16 round-to-nearest-even in float64: returns bf16 bits of a finite f32. */
function referenceBf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0];
  const down = u >>> 16; // truncation toward zero in magnitude
  const lo = floatsFromBits([down << 16])[0];
  // Next magnitude up. Past the largest finite bf16 the grid continues at 2^128, so a value
  // that rounds there becomes inf (IEEE 754 overflow under round-to-nearest).
  const hi = (down & 0x7fff) === 0x7f7f
    ? Math.sign(x) * 2 ** 128
    : floatsFromBits([((down + 1) << 16) >>> 0])[0];
  const dLo = Math.abs(x - lo);
  const dHi = Math.abs(hi - x);
  if (dLo < dHi) return down;
  if (dHi < dLo) return down + 1;
  return (down & 1) === 0 ? down : down + 1;
}

Deno.test("loadSafetensors() reads the 27 F32 tensors of qwen2-tiny", async () => {
  const file = await loadSafetensors(F32_FILE);
  assert.equal(file.tensors.size, 27);
  assert.deepEqual(file.metadata, { format: "pt" });
  const names = [...file.tensors.keys()];
  assert.deepEqual(names, [...names].sort(), "file order is name order");
  for (const t of file.tensors.values()) {
    assert.equal(t.dtype, "F32");
    assert.ok(t.data instanceof Float32Array);
  }
  const { vocab_size: V, hidden_size: H, intermediate_size: I } = expected.config;
  assert.deepEqual(file.tensors.get("lm_head.weight")!.shape, [V, H]);
  assert.deepEqual(file.tensors.get("model.layers.1.mlp.down_proj.weight")!.shape, [H, I]);
  assert.deepEqual(file.tensors.get("model.layers.0.self_attn.k_proj.bias")!.shape, [16]);

  // debug_sequence0.embeddings are rows of embed_tokens for sequence 0's ids, 9 significant
  // digits, so they round-trip to the exact float32.
  const ids: number[] = expected.forward.sequences[0].input_ids;
  const rows: number[][] = expected.forward.debug_sequence0.embeddings;
  const embed = file.tensors.get("model.embed_tokens.weight")!.data;
  assert.equal(rows.length, ids.length);
  ids.forEach((id, t) => {
    assert.deepEqual(Array.from(embed.subarray(id * H, (id + 1) * H)), rows[t].map(Math.fround));
  });
});

Deno.test("loadSafetensors() reads the PEFT adapter with its names and shapes", async () => {
  const file = await loadSafetensors(ADAPTER_FILE);
  const want: { name: string; shape: number[] }[] = expected.lora.tensors;
  assert.equal(want.length, 16);
  assert.deepEqual([...file.tensors.keys()], want.map((t) => t.name));
  for (const { name, shape } of want) assert.deepEqual(file.tensors.get(name)!.shape, shape);
  const b = file.tensors.get("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")!;
  assert.ok(b.data.some((x) => x !== 0), "lora_B is nonzero in the fixture");
});

Deno.test("loadCheckpointTensors() reads model.safetensors when there is no index", async () => {
  const file = await loadCheckpointTensors(F32_DIR);
  assert.equal(file.tensors.size, 27);
});

Deno.test("loadCheckpointTensors() joins bf16 shards, equal to the f32 weights rounded to bf16", async () => {
  const f32 = await loadSafetensors(F32_FILE);
  const bf16 = await loadCheckpointTensors(BF16_DIR);
  const index = JSON.parse(await Deno.readTextFile(`${BF16_DIR}/model.safetensors.index.json`));
  assert.deepEqual([...bf16.tensors.keys()].sort(), Object.keys(index.weight_map).sort());
  assert.equal(bf16.tensors.size, 26);
  assert.ok(!bf16.tensors.has("lm_head.weight"), "tied model has no lm_head");
  let total = 0;
  for (const [name, t] of bf16.tensors) {
    assert.equal(t.dtype, "BF16", name);
    assert.ok(t.data instanceof Float32Array);
    const ref = f32.tensors.get(name)!;
    assert.deepEqual(t.shape, ref.shape, name);
    total += t.data.length * 2;
    const got = bitsOf(t.data as Float32Array);
    for (let i = 0; i < got.length; i++) {
      assert.equal(got[i] & 0xffff, 0, `${name}[${i}] is a widened bf16`);
      assert.equal(got[i] >>> 16, referenceBf16(ref.data[i]), `${name}[${i}]`);
    }
  }
  assert.equal(total, index.metadata.total_size);
  // The bf16 fixture's own expected embeddings are those bf16 values widened to f32.
  const H = expectedBf16.config.hidden_size;
  const ids: number[] = expectedBf16.forward.sequences[0].input_ids;
  const embed = bf16.tensors.get("model.embed_tokens.weight")!.data;
  ids.forEach((id, t) => {
    assert.deepEqual(
      Array.from(embed.subarray(id * H, (id + 1) * H)),
      expectedBf16.forward.debug_sequence0.embeddings[t].map(Math.fround),
    );
  });
});

Deno.test("serializeSafetensors(parseSafetensors(x)) reproduces every fixture file byte for byte", async () => {
  for (const path of FIXTURE_FILES) {
    const bytes = await Deno.readFile(path);
    const file = parseSafetensors(bytes, path);
    assert.deepEqual(serializeSafetensors(file.tensors, file.metadata), bytes, path);
    const streamed = await loadSafetensors(path);
    assert.deepEqual(serializeSafetensors(streamed.tensors, streamed.metadata), bytes, path);
  }
});

Deno.test("serializeSafetensors() matches the byte vectors of safetensors' Rust tests", () => {
  const data = new Float32Array([0, 1, 2, 3, 4, 5]);
  // test_serialization: 'attn.0' [1, 2, 3] F32, no metadata; header 64 bytes, no padding needed.
  const out = serializeSafetensors({ "attn.0": { dtype: "F32", shape: [1, 2, 3], data } }, null);
  assert.deepEqual(
    Array.from(out.subarray(0, 8 + 64)),
    [
      ...[64, 0, 0, 0, 0, 0, 0, 0],
      ...new TextEncoder().encode(
        '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}',
      ),
    ],
  );
  assert.deepEqual(out.subarray(72), new Uint8Array(data.buffer));
  // test_serialization_forced_alignement: 'attn0' [1, 1, 2, 3]: 65 bytes + 7 spaces = 72.
  const aligned = serializeSafetensors(
    { attn0: { dtype: "F32", shape: [1, 1, 2, 3], data } },
    null,
  );
  assert.deepEqual(Array.from(aligned.subarray(0, 8)), [72, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(new TextDecoder().decode(aligned.subarray(8 + 65, 80)), "       ");
  // test_empty: no tensors, with and without metadata.
  assert.deepEqual(
    Array.from(serializeSafetensors({}, null)),
    [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32],
  );
  assert.deepEqual(
    serializeSafetensors({}, { framework: "pt" }),
    new Uint8Array([
      ...[40, 0, 0, 0, 0, 0, 0, 0],
      ...new TextEncoder().encode('{"__metadata__":{"framework":"pt"}}     '),
    ]),
  );
});

Deno.test("serializeSafetensors() orders mixed dtypes like the Rust writer: dtype rank desc, then name", () => {
  const bytes = serializeSafetensors({
    a_bf16: { dtype: "BF16", shape: [1], data: new Float32Array([1]) },
    b_f32: { dtype: "F32", shape: [1], data: new Float32Array([2]) },
    c_i64: { dtype: "I64", shape: [1], data: new Int32Array([3]) },
    d_u8: { dtype: "U8", shape: [1], data: new Uint8Array([4]) },
    e_f32: { dtype: "F32", shape: [1], data: new Float32Array([5]) },
  });
  const file = parseSafetensors(bytes, "mixed.safetensors");
  assert.deepEqual([...file.tensors.keys()], ["c_i64", "b_f32", "e_f32", "a_bf16", "d_u8"]);
});

Deno.test("saveSafetensors() then loadSafetensors() is bit-exact for every bf16 and f16 bit pattern", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const asBf16 = new Float32Array(65536);
    bf16ToF32(all, asBf16, 0);
    const asF16 = new Float32Array(65536);
    f16ToF32(all, asF16, 0);
    const path = `${dir}/all.safetensors`;
    await saveSafetensors(path, {
      bf16: { dtype: "BF16", shape: [256, 256], data: asBf16 },
      f16: { dtype: "F16", shape: [65536], data: asF16 },
    });
    // On disk: exactly the 16-bit patterns we started from.
    const bytes = await Deno.readFile(path);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const disk = new Uint16Array(bytes.slice(8 + n).buffer);
    assert.deepEqual(disk.subarray(0, 65536), all, "bf16 bits");
    assert.deepEqual(disk.subarray(65536), all, "f16 bits");
    const loaded = await loadSafetensors(path);
    assert.deepEqual(bitsOf(loaded.tensors.get("bf16")!.data as Float32Array), bitsOf(asBf16));
    assert.deepEqual(bitsOf(loaded.tensors.get("f16")!.data as Float32Array), bitsOf(asF16));
    assert.deepEqual(serializeSafetensors(loaded.tensors, loaded.metadata), bytes);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("saveSafetensors() then loadSafetensors() is bit-exact for F32, I64, I32, U8 and BOOL", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // -0, subnormal, inf, a NaN with a payload, max finite.
    const f32 = floatsFromBits([
      0x80000000,
      0x00000001,
      0x7f800000,
      0x7fa00001,
      0x7f7fffff,
      0x3f800000,
    ]);
    const tensors: Record<string, TensorData> = {
      f32: { dtype: "F32", shape: [2, 3], data: f32 },
      scalar: { dtype: "F32", shape: [], data: new Float32Array([Math.PI]) },
      empty: { dtype: "F32", shape: [0, 4], data: new Float32Array(0) },
      i64: { dtype: "I64", shape: [5], data: new Int32Array([0, -1, 2147483647, -2147483648, 7]) },
      i32: { dtype: "I32", shape: [2], data: new Int32Array([-5, 5]) },
      u8: { dtype: "U8", shape: [3], data: new Uint8Array([0, 128, 255]) },
      mask: { dtype: "BOOL", shape: [2], data: new Uint8Array([1, 0]) },
    };
    const path = `${dir}/x.safetensors`;
    await saveSafetensors(path, tensors, { format: "pt", note: "ünïcode" });
    const loaded = await loadSafetensors(path);
    assert.deepEqual(loaded.metadata, { format: "pt", note: "ünïcode" });
    for (const [name, t] of Object.entries(tensors)) {
      const got = loaded.tensors.get(name)!;
      assert.equal(got.dtype, t.dtype, name);
      assert.deepEqual(got.shape, t.shape, name);
      assert.equal(got.data.constructor, t.data.constructor, name);
      const bytes = (a: TensorData["data"]) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      assert.deepEqual(bytes(got.data), bytes(t.data), name);
    }
    // I64 on disk is the sign-extended 8-byte value.
    const file = await Deno.readFile(path);
    const n = Number(new DataView(file.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n)));
    const [begin] = header.i64.data_offsets;
    assert.deepEqual(
      Array.from(new BigInt64Array(file.slice(8 + n + begin, 8 + n + begin + 40).buffer)),
      [0n, -1n, 2147483647n, -2147483648n, 7n],
    );
    assert.deepEqual(
      await Deno.readFile(path),
      serializeSafetensors(loaded.tensors, loaded.metadata),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadSafetensors() streams tensors bigger than its scratch buffer without Deno.readFile", async () => {
  const dir = await Deno.makeTempDir();
  const readFile = Deno.readFile;
  try {
    const n = (1 << 21) + 12345; // > 4 MiB of bf16
    const big = new Float32Array(n);
    for (let i = 0; i < n; i++) big[i] = Math.fround((i % 1000) / 7 - 60);
    const ids = new Int32Array(600_000).map((_, i) => i * 3001 - 900_000_000);
    const path = `${dir}/big.safetensors`;
    await saveSafetensors(path, {
      big: { dtype: "BF16", shape: [n], data: big },
      ids: { dtype: "I64", shape: [600_000], data: ids },
    });
    Deno.readFile = () => Promise.reject(new Error("loadSafetensors must not read whole files"));
    const loaded = await loadSafetensors(path);
    Deno.readFile = readFile;
    const got = bitsOf(loaded.tensors.get("big")!.data as Float32Array);
    const want = f32ToBf16(big);
    for (let i = 0; i < n; i++) {
      if (got[i] !== (want[i] << 16) >>> 0) assert.fail(`big[${i}]: ${got[i]} != ${want[i]}`);
    }
    assert.deepEqual(loaded.tensors.get("ids")!.data, ids);
  } finally {
    Deno.readFile = readFile;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("f32ToBf16() rounds to nearest even like torch", () => {
  const cases: [number, number][] = [
    [0x3f800000, 0x3f80], // 1
    [0x3f808000, 0x3f80], // 1 + 2^-8: tie, down to even
    [0x3f818000, 0x3f82], // 1 + 3*2^-8: tie, up to even
    [0x3f808001, 0x3f81], // just above the tie
    [0xbf80ffff, 0xbf81], // negative, rounds away from zero in magnitude
    [0x7f7fffff, 0x7f80], // max finite f32 rounds to +inf, as torch
    [0x00000001, 0x0000], // smallest subnormal
    [0xff800000, 0xff80], // -inf
    [0x7fa00001, 0x7fc0], // NaN with low payload bits: torch's canonical NaN
    [0xffc10000, 0xffc1], // NaN widened from bf16: kept, so bf16 files round-trip
  ];
  const got = f32ToBf16(floatsFromBits(cases.map(([x]) => x)));
  assert.deepEqual(Array.from(got), cases.map(([, y]) => y));
  // And against the float64 reference on pseudo-random finite values.
  const bits = new Uint32Array(20000);
  let s = 12345;
  for (let i = 0; i < bits.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    bits[i] = (s & 0x7f7fffff) | (i & 1 ? 0x80000000 : 0);
  }
  const values = new Float32Array(bits.buffer);
  const rounded = f32ToBf16(values);
  for (let i = 0; i < values.length; i++) {
    if (rounded[i] !== referenceBf16(values[i])) assert.fail(`bits ${bits[i].toString(16)}`);
  }
});

Deno.test("f16ToF32() and f32ToF16() agree with V8's Float16Array and Math.f16round", () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const ours = new Float32Array(65536);
  f16ToF32(all, ours, 0);
  const native = new Float16Array(all.buffer);
  for (let i = 0; i < 65536; i++) {
    if (Number.isNaN(native[i])) assert.ok(Number.isNaN(ours[i]), `0x${i.toString(16)}`);
    else {assert.ok(
        Object.is(ours[i], native[i]),
        `0x${i.toString(16)}: ${ours[i]} vs ${native[i]}`,
      );}
  }
  assert.deepEqual(f32ToF16(ours), all, "f16 → f32 → f16 keeps every bit pattern");

  const bits = new Uint32Array(50000);
  let s = 987654321;
  for (let i = 0; i < bits.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    // Bias exponents toward the f16 range (incl. subnormals and overflow).
    bits[i] = i % 2 === 0 ? s : (s & 0x807fffff) | (((s >>> 23) % 40 + 95) << 23);
  }
  const values = new Float32Array(bits.buffer);
  const narrowed = new Float16Array(f32ToF16(values).buffer);
  for (let i = 0; i < values.length; i++) {
    const want = Math.f16round(values[i]);
    if (Number.isNaN(want)) assert.ok(Number.isNaN(narrowed[i]));
    else if (!Object.is(narrowed[i], want)) {
      assert.fail(`0x${bits[i].toString(16)}: ${narrowed[i]} != ${want}`);
    }
  }
});

Deno.test("parse and load name the file and tensor for a truncated file", async () => {
  const bytes = await Deno.readFile(F32_FILE);
  // The last tensor in data order is model.norm.weight; cut into it.
  await assertBadFile(bytes.slice(0, bytes.length - 10), "model.norm.weight", /run past the end/);
  // Cut inside the header.
  await assertBadFile(bytes.slice(0, 100), "", /header length 2720 runs past the end/);
  await assertBadFile(bytes.slice(0, 5), "", /shorter than the 8-byte header length/);
});

Deno.test("parse and load reject headers that lie about sizes", async () => {
  const t = (dtype: string, shape: number[], offsets: number[]) => ({
    dtype,
    shape,
    data_offsets: offsets,
  });
  await assertBadFile(
    rawFile({ a: t("F32", [2], [0, 8]), b: t("F32", [2], [8, 16]) }, 12),
    "b",
    /\[8, 16\] run past the end of the data \(12 bytes\)/,
  );
  await assertBadFile(
    rawFile({ a: t("F32", [2], [0, 8]), b: t("F32", [2], [4, 12]) }, 12),
    "b",
    /overlap a \[0, 8\]/,
  );
  await assertBadFile(
    rawFile({ a: t("F32", [2], [0, 8]), b: t("F32", [2], [12, 20]) }, 20),
    "b",
    /leave a gap/,
  );
  await assertBadFile(
    rawFile({ w: t("F32", [3, 2], [0, 16]) }, 16),
    "w",
    /hold 16 bytes but shape \[3, 2\] × F32 \(4 bytes\) needs 24/,
  );
  await assertBadFile(rawFile({ w: t("F32", [2], [0, 8]) }, 12), "", /cover 8 data bytes/);
  await assertBadFile(rawFile({ w: t("F32", [2], [8]) }, 8), "w", /not \[begin, end\]/);
  await assertBadFile(rawFile({ w: t("F32", [-2], [0, 8]) }, 8), "w", /shape \[-2\]/);
});

Deno.test("parse and load reject a bad header length, bad JSON and unknown dtypes", async () => {
  await assertBadFile(rawFile({}, 0, 2 ** 40), "", /larger than 100000000 bytes/);
  await assertBadFile(rawFile({}, 0, 200), "", /runs past the end of the file/);
  const badJson = rawFile({ a: 1 }, 0);
  badJson[badJson.length - 1] = 0x2c; // '}' → ','
  await assertBadFile(badJson, "", /header is not valid JSON/);
  const badUtf8 = rawFile({ aa: {} }, 0);
  badUtf8[10] = 0xff;
  await assertBadFile(badUtf8, "", /not valid UTF-8/);
  await assertBadFile(rawFile([1, 2], 0), "", /not a JSON object/);
  await assertBadFile(
    rawFile({ q: { dtype: "Q4_K", shape: [2], data_offsets: [0, 1] } }, 1),
    "q",
    /unknown dtype "Q4_K"/,
  );
  await assertBadFile(
    rawFile({ d: { dtype: "F64", shape: [1], data_offsets: [0, 8] } }, 8),
    "d",
    /unsupported dtype "F64"/,
  );
  await assertBadFile(
    rawFile({ __metadata__: { step: 3 } }, 0),
    "__metadata__.step",
    /expected a string/,
  );
});

Deno.test("parse and load reject I64 values outside int32", async () => {
  const bytes = serializeSafetensors({
    ids: { dtype: "I64", shape: [3], data: new Int32Array(3) },
  });
  const view = new DataView(bytes.buffer);
  view.setBigInt64(bytes.length - 8, 2n ** 31n, true);
  await assertBadFile(bytes, "ids", /I64 value 2147483648 at flat index 2 is outside the int32/);
  view.setBigInt64(bytes.length - 8, -(2n ** 40n), true);
  await assertBadFile(bytes, "ids", /I64 value -1099511627776/);
});

Deno.test("loadSafetensors() names a missing file", async () => {
  await assert.rejects(() => loadSafetensors("tests/fixtures/nope.safetensors"), {
    name: "CheckpointError",
    message: "Cannot load tests/fixtures/nope.safetensors: file not found",
  });
});

Deno.test("loadCheckpointTensors() names a missing shard, a tensor absent from its shard and an empty dir", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const shard1 = "model-00001-of-00002.safetensors";
    const shard2 = "model-00002-of-00002.safetensors";
    const indexText = await Deno.readTextFile(`${BF16_DIR}/model.safetensors.index.json`);
    await Deno.copyFile(`${BF16_DIR}/${shard1}`, `${dir}/${shard1}`);
    await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, indexText);
    await assert.rejects(() => loadCheckpointTensors(dir), (error: unknown) => {
      assert.ok(error instanceof CheckpointError);
      assert.equal(error.file, `${dir}/${shard2}`);
      assert.equal(error.key, "model.layers.1.input_layernorm.weight");
      assert.match(
        error.message,
        /model-00002-of-00002\.safetensors: shard listed in .* does not exist/,
      );
      return true;
    });

    await Deno.copyFile(`${BF16_DIR}/${shard2}`, `${dir}/${shard2}`);
    const index = JSON.parse(indexText);
    index.weight_map["lm_head.weight"] = shard2;
    await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify(index));
    await assert.rejects(() => loadCheckpointTensors(dir), (error: unknown) => {
      assert.ok(error instanceof CheckpointError);
      assert.equal(error.file, `${dir}/${shard2}`);
      assert.equal(error.key, "lm_head.weight");
      assert.match(error.message, /lm_head\.weight: tensor listed in .* is not in this shard/);
      return true;
    });

    delete index.weight_map["lm_head.weight"];
    delete index.weight_map["model.norm.weight"];
    await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify(index));
    await assert.rejects(() => loadCheckpointTensors(dir), {
      name: "CheckpointError",
      message:
        /model-00002-of-00002\.safetensors: model\.norm\.weight: tensor is in this shard but/,
    });

    await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, "{");
    await assert.rejects(() => loadCheckpointTensors(dir), {
      name: "CheckpointError",
      message: /model\.safetensors\.index\.json: /,
    });

    const empty = `${dir}/empty`;
    await Deno.mkdir(empty);
    await assert.rejects(() => loadCheckpointTensors(empty), {
      name: "CheckpointError",
      message: `Cannot load ${empty}: no model.safetensors or model.safetensors.index.json`,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkShapes() names mismatching, missing and unexpected tensors", async () => {
  const file = await loadSafetensors(ADAPTER_FILE);
  const shapes: Record<string, number[]> = Object.fromEntries(
    expected.lora.tensors.map((t: { name: string; shape: number[] }) => [t.name, t.shape]),
  );
  checkShapes(file, shapes, ADAPTER_FILE);
  checkShapes(file, new Map(Object.entries(shapes)), ADAPTER_FILE);

  const qA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  const vB = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
  assert.throws(() => checkShapes(file, { ...shapes, [qA]: [8, 32] }, ADAPTER_FILE), {
    name: "CheckpointError",
    key: qA,
    message: `Cannot load ${ADAPTER_FILE}: ${qA}: expected shape [8, 32], got [4, 32]`,
  });
  const fewer: Record<string, number[]> = { ...shapes, "extra.weight": [1] };
  delete fewer[vB];
  assert.throws(() => checkShapes(file, fewer, ADAPTER_FILE), {
    name: "CheckpointError",
    key: "extra.weight",
    message:
      `Cannot load ${ADAPTER_FILE}: missing tensors: extra.weight; unexpected tensors: ${vB}`,
  });
});

Deno.test("saveSafetensors() is atomic: no temp file left, old file kept when writing fails", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/adapter_model.safetensors`;
    const good = { w: { dtype: "F32" as const, shape: [2], data: new Float32Array([1, 2]) } };
    await saveSafetensors(path, good);
    const before = await Deno.readFile(path);
    assert.deepEqual(before, serializeSafetensors(good));
    const listing = async () => {
      const names: string[] = [];
      for await (const e of Deno.readDir(dir)) names.push(e.name);
      return names.sort();
    };
    assert.deepEqual(await listing(), ["adapter_model.safetensors"]);

    // Serialization throws (shape does not match data): the old file is untouched.
    await assert.rejects(
      () =>
        saveSafetensors(path, { w: { dtype: "F32", shape: [3], data: new Float32Array([9, 9]) } }),
      { name: "RangeError", message: /w: shape \[3\] needs 3 elements, data has 2/ },
    );
    await assert.rejects(
      () => saveSafetensors(path, { w: { dtype: "BF16", shape: [2], data: new Int32Array(2) } }),
      { name: "TypeError", message: /w: dtype BF16 needs a Float32Array/ },
    );
    assert.deepEqual(await Deno.readFile(path), before);
    assert.deepEqual(await listing(), ["adapter_model.safetensors"]);

    // The final rename fails (the target is a directory): the temp file is removed.
    await Deno.mkdir(`${dir}/taken`);
    await Deno.writeTextFile(`${dir}/taken/keep`, "x");
    await assert.rejects(() => saveSafetensors(`${dir}/taken`, good));
    assert.deepEqual(await listing(), ["adapter_model.safetensors", "taken"]);
    assert.equal(await Deno.readTextFile(`${dir}/taken/keep`), "x");

    // Overwriting replaces the content.
    const next = { w: { dtype: "F32" as const, shape: [2], data: new Float32Array([3, 4]) } };
    await saveSafetensors(path, next);
    assert.deepEqual(await Deno.readFile(path), serializeSafetensors(next));
    assert.deepEqual(await listing(), ["adapter_model.safetensors", "taken"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadCheckpointTensors() with keep16bit holds BF16 tensors as their bits, across shards", async () => {
  const dir = "tests/fixtures/qwen2-tiny-tied-bf16";
  const widened = await loadCheckpointTensors(dir);
  const kept = await loadCheckpointTensors(dir, { keep16bit: true });
  assert.deepEqual([...kept.tensors.keys()], [...widened.tensors.keys()]);
  for (const [name, t] of kept.tensors) {
    assert.equal(t.dtype, "BF16", name);
    assert.ok(t.data instanceof Uint16Array, name);
    const back = new Float32Array(t.data.length);
    bf16ToF32(t.data, back, 0);
    assert.deepEqual(back, widened.tensors.get(name)!.data, name);
  }
});
