// The layering rules of STYLE.md ("Boundaries"), checked on the source: each test parses the
// files (Deno's lint AST, through Deno.lint.runPlugin) and fails listing file:line of every
// violation.
import assert from "node:assert/strict";
import { dirname, join, relative } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;

/** An import, re-export or dynamic import of a module. */
interface Import {
  file: string;
  line: number;
  specifier: string;
  /** The repo-relative path of a relative specifier, e.g. `lib/tf.ts`; null for a package. */
  target: string | null;
}

/** A call whose callee reads `Deno.readFile`, `tf.setBackend`, ... */
interface Call {
  file: string;
  line: number;
  /** The callee as written, e.g. `Deno.readTextFile`. */
  callee: string;
  /** Names of the functions (declarations, methods, named consts) the call sits in, inner first. */
  enclosing: string[];
}

interface Parsed {
  imports: Import[];
  calls: Call[];
}

async function sourceFiles(dir: string): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(join(ROOT, dir))) {
    if (entry.isFile && entry.name.endsWith(".ts")) files.push(`${dir}/${entry.name}`);
  }
  return files.sort();
}

const parsed = new Map<string, Parsed>();

/** Imports and calls of a repo file (e.g. `lib/model.ts`), parsed once. */
async function parse(file: string): Promise<Parsed> {
  const cached = parsed.get(file);
  if (cached) return cached;
  const source = await Deno.readTextFile(join(ROOT, file));
  const lineOf = (offset: number) => source.slice(0, offset).split("\n").length;
  const result: Parsed = { imports: [], calls: [] };
  const addImport = (node: Deno.lint.Node, source_: Deno.lint.Node | null | undefined) => {
    if (source_?.type !== "Literal" || typeof source_.value !== "string") return;
    const specifier = source_.value;
    const target = specifier.startsWith(".")
      ? relative(ROOT, join(ROOT, dirname(file), specifier))
      : null;
    result.imports.push({ file, line: lineOf(node.range[0]), specifier, target });
  };
  const plugin: Deno.lint.Plugin = {
    name: "layering",
    rules: {
      scan: {
        create(ctx) {
          return {
            ImportDeclaration: (node) => addImport(node, node.source),
            ExportAllDeclaration: (node) => addImport(node, node.source),
            ExportNamedDeclaration: (node) => addImport(node, node.source),
            ImportExpression: (node) => addImport(node, node.source),
            CallExpression(node) {
              const enclosing = ctx.sourceCode.getAncestors(node).reverse()
                .map(functionName)
                .filter((name): name is string => name !== null);
              result.calls.push({
                file,
                line: lineOf(node.range[0]),
                callee: ctx.sourceCode.getText(node.callee),
                enclosing,
              });
            },
          };
        },
      },
    },
  };
  Deno.lint.runPlugin(plugin, file, source);
  parsed.set(file, result);
  return result;
}

/** The name a node gives the function it is or holds, if any. */
function functionName(node: Deno.lint.Node): string | null {
  switch (node.type) {
    case "FunctionDeclaration":
    case "FunctionExpression":
      return node.id?.name ?? null;
    case "MethodDefinition":
    case "Property":
      return node.key.type === "Identifier" ? node.key.name : null;
    case "VariableDeclarator":
      return node.id.type === "Identifier" &&
          (node.init?.type === "ArrowFunctionExpression" ||
            node.init?.type === "FunctionExpression")
        ? node.id.name
        : null;
    default:
      return null;
  }
}

/** Every lib file reachable from `start` through relative imports, with the import that got it. */
async function closure(start: string): Promise<Map<string, Import | null>> {
  const reached = new Map<string, Import | null>([[start, null]]);
  const queue = [start];
  while (queue.length > 0) {
    for (const imp of (await parse(queue.shift()!)).imports) {
      if (imp.target?.startsWith("lib/") && !reached.has(imp.target)) {
        reached.set(imp.target, imp);
        queue.push(imp.target);
      }
    }
  }
  return reached;
}

/** How `file` is reached from the closure's start, e.g. `lib/a.ts:3 -> lib/b.ts:7 -> lib/c.ts`. */
function chain(reached: Map<string, Import | null>, file: string): string {
  const steps: string[] = [];
  for (let imp = reached.get(file); imp; imp = reached.get(imp.file)) {
    steps.unshift(`${imp.file}:${imp.line}`);
  }
  return [...steps, file].join(" -> ");
}

function assertNone(violations: string[], rule: string): void {
  assert.deepEqual(violations, [], `${rule}:\n  ${violations.join("\n  ")}`);
}

const LIB = await sourceFiles("lib");
const ALL = [...LIB, ...await sourceFiles("tasks"), ...await sourceFiles("tests")];

Deno.test("lib never imports tasks", async () => {
  const violations: string[] = [];
  for (const file of LIB) {
    for (const imp of (await parse(file)).imports) {
      if (imp.target?.startsWith("tasks/")) {
        violations.push(`${imp.file}:${imp.line} imports ${imp.specifier}`);
      }
    }
  }
  assertNone(violations, "lib/ imports from tasks/");
});

Deno.test("reward.ts and the modules it imports use no tensor library", async () => {
  const reached = await closure("lib/reward.ts");
  const violations: string[] = [];
  for (const file of reached.keys()) {
    for (const imp of (await parse(file)).imports) {
      if (imp.target === "lib/tf.ts" || imp.specifier.includes("@tensorflow/")) {
        violations.push(`${chain(reached, file)}:${imp.line} imports ${imp.specifier}`);
      }
    }
  }
  assertNone(violations, "the verifier reaches a tensor library");
});

Deno.test("model code knows nothing of GRPO", async () => {
  const model = ["lib/model.ts", "lib/model_loader.ts", "lib/qwen2_config.ts"];
  const grpo = [
    "lib/grpo.ts",
    "lib/rollout.ts",
    "lib/update.ts",
    "lib/trainer.ts",
    "lib/reward.ts",
  ];
  const violations: string[] = [];
  for (const start of model) {
    const reached = await closure(start);
    for (const file of grpo) {
      if (reached.has(file)) violations.push(chain(reached, file));
    }
  }
  assertNone(violations, "model code imports GRPO code");
});

Deno.test("only lib/backend.ts and its kernel modules set up tfjs backends (tests use useBackend)", async () => {
  const owners = ["lib/backend.ts", "lib/_blas.ts", "lib/_external_weights.ts"];
  const setup =
    /(^|\.)(setBackend|registerBackend|removeBackend|registerKernel|unregisterKernel|setWasmPaths?)$/;
  const violations: string[] = [];
  for (const file of ALL.filter((f) => !owners.includes(f))) {
    const { imports, calls } = await parse(file);
    for (const call of calls) {
      if (setup.test(call.callee)) violations.push(`${file}:${call.line} calls ${call.callee}`);
    }
    for (const imp of imports) {
      if (imp.specifier.startsWith("@tensorflow/tfjs-backend-")) {
        violations.push(`${file}:${imp.line} imports ${imp.specifier}`);
      }
    }
  }
  assertNone(violations, "backend set up outside lib/backend.ts");
});

Deno.test("lib touches files only in load*/save*/read*/write* functions, _fs.ts and writers", async () => {
  const io =
    /^Deno\.(readFile|readTextFile|writeFile|writeTextFile|open|create|readDir|mkdir|remove|rename|copyFile|stat|lstat|makeTempDir|makeTempFile|truncate|link|symlink|chmod|chown|utime|realPath|readLink)(Sync)?$/;
  const named = /^(load|save|read|write)([A-Z_]|$)/;
  const violations: string[] = [];
  for (const file of LIB) {
    if (file === "lib/_fs.ts" || file.endsWith("_writer.ts")) continue;
    for (const call of (await parse(file)).calls) {
      if (io.test(call.callee) && !call.enclosing.some((name) => named.test(name))) {
        const where = call.enclosing.length > 0 ? `in ${call.enclosing[0]}()` : "at top level";
        violations.push(`${file}:${call.line} ${call.callee} ${where}`);
      }
    }
  }
  assertNone(violations, "file I/O outside load*/save*/read*/write* functions");
});
