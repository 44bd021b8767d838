/** tasks/_main.ts: how every task ends on bad input or a wasm abort. */
import assert from "node:assert/strict";

const MAIN = new URL("../tasks/_main.ts", import.meta.url).href;
const ERRORS = new URL("../lib/errors.ts", import.meta.url).href;

async function runSnippet(body: string): Promise<{ code: number; stderr: string }> {
  const code = `import { runTask } from "${MAIN}";\nimport { ConfigError } from "${ERRORS}";\n` +
    `await runTask(async () => { ${body} });\n`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", code],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("runTask() prints a user error as one line and exits 2", async () => {
  const { code, stderr } = await runSnippet(
    `throw new ConfigError("Cannot load x.yaml:3: lora.lora_r: expected an integer >= 1, got 0", { file: "x.yaml" });`,
  );
  assert.equal(code, 2);
  assert.equal(
    stderr,
    "error: Cannot load x.yaml:3: lora.lora_r: expected an integer >= 1, got 0\n",
  );
});

Deno.test("runTask() turns a wasm abort into advice and exit 3", async () => {
  const { code, stderr } = await runSnippet(
    `throw new WebAssembly.RuntimeError("Aborted(). Build with -sASSERTIONS for more info.");`,
  );
  assert.equal(code, 3);
  assert.match(
    stderr,
    /^error: the wasm backend aborted \(Aborted\(\)\).*per_device_train_batch_size/,
  );
  assert.doesNotMatch(stderr, /^\s+at /m);
});

Deno.test("runTask() lets a bug keep its stack trace", async () => {
  const { code, stderr } = await runSnippet(`throw new TypeError("a bug");`);
  assert.equal(code, 1);
  assert.match(stderr, /TypeError: a bug/);
});

Deno.test("runTask() reports a parseArgs error (unknown flag) as one line, exit 2", async () => {
  const { code, stderr } = await runSnippet(
    `(await import("node:util")).parseArgs({ args: ["--bogus"], options: {} });`,
  );
  assert.equal(code, 2);
  assert.match(stderr, /^error: Unknown option '--bogus'.*; see --help\n$/);
});
