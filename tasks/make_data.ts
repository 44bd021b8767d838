/**
 * Writes the synthetic demo datasets in the seed guide's format (a JSON array of
 * `{question, ground_truth, solution}`), one record per line:
 *
 *   deno task make_data [--seed 42] [--train 20000] [--test 500] [--out data/demo]
 *                       [--drop-box-fraction 0] [--add-range 2,50] [--mul-range 2,10]
 *
 * Train and test share no question (see `generateSplits`). Same flags, same bytes.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DEFAULT_RANGES, generateSplits, type SyntheticProblem } from "../lib/synthetic.ts";
import { ConfigError } from "../lib/errors.ts";
import { runTask } from "./_main.ts";

function intFlag(values: Record<string, unknown>, key: string): number {
  const text = String(values[key]);
  const value = Number(text);
  if (!/^-?\d+$/.test(text) || !Number.isSafeInteger(value)) {
    throw new ConfigError(`Cannot use --${key}: expected an integer, got ${text}`, {
      file: "<command line>",
      key,
    });
  }
  return value;
}

function rangeFlag(values: Record<string, unknown>, key: string): [number, number] {
  const text = String(values[key]);
  const match = /^(\d+),(\d+)$/.exec(text);
  if (!match) {
    throw new ConfigError(`Cannot use --${key}: expected "lo,hi", got ${text}`, {
      file: "<command line>",
      key,
    });
  }
  return [Number(match[1]), Number(match[2])];
}

/** The seed guide's row, plus our worked solution. */
function toSeedJson(problems: SyntheticProblem[]): string {
  const rows = problems.map((p) =>
    JSON.stringify({ question: p.question, ground_truth: String(p.answer), solution: p.solution })
  );
  return `[\n${rows.join(",\n")}\n]\n`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      seed: { type: "string", default: "42" },
      train: { type: "string", default: "20000" },
      test: { type: "string", default: "500" },
      out: { type: "string", default: "data/demo" },
      "drop-box-fraction": { type: "string", default: "0" },
      "add-range": { type: "string", default: DEFAULT_RANGES.add.join(",") },
      "mul-range": { type: "string", default: DEFAULT_RANGES.mul.join(",") },
    },
  });
  const dropBoxFraction = Number(values["drop-box-fraction"]);
  const options = {
    seed: intFlag(values, "seed"),
    ranges: { add: rangeFlag(values, "add-range"), mul: rangeFlag(values, "mul-range") },
    dropBoxFraction,
  };
  const sizes = { train: intFlag(values, "train"), test: intFlag(values, "test") };
  let splits;
  try {
    splits = generateSplits(sizes, options);
  } catch (error) {
    if (error instanceof RangeError) {
      throw new ConfigError(`Cannot generate data: ${error.message}`, { file: "<command line>" });
    }
    throw error;
  }
  await Deno.mkdir(values.out, { recursive: true });
  for (const split of ["train", "test"] as const) {
    const path = `${values.out}/${split}.json`;
    const text = toSeedJson(splits[split]);
    await Deno.writeTextFile(path, text);
    const unboxed = splits[split].filter((p) => !p.boxed).length;
    console.log(
      `wrote ${path}: ${splits[split].length} problems, ${text.length} bytes, ${unboxed} unboxed`,
    );
  }
  console.log(
    `seed ${options.seed}, ranges add [${options.ranges.add}] mul [${options.ranges.mul}]`,
  );
}

if (import.meta.main) await runTask(main);
