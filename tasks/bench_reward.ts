/**
 * `deno task bench:reward`: verifier throughput on MATH-500 and GSM8K, and the worst case on
 * hostile inputs. Single-threaded (one core); each timed loop runs for at least --seconds.
 */
import { parseArgs } from "node:util";
import { computeReward, formatReward } from "../lib/reward.ts";
import { hostileInputs, throughput, verifierSuites } from "../bench/_verifier.ts";
import { deviceLine } from "../bench/_measure.ts";
import { ConfigError } from "../lib/errors.ts";
import { COMMAND_LINE } from "../lib/config.ts";
import { runTask } from "./_main.ts";

function main(): void {
  const { values } = parseArgs({
    args: Deno.args,
    options: { seconds: { type: "string", default: "2" } },
  });
  const seconds = Number(values.seconds);
  if (!(seconds > 0) || !Number.isFinite(seconds)) {
    throw new ConfigError(
      `Cannot parse ${COMMAND_LINE}: --seconds: expected a number > 0, got ${values.seconds}`,
      { file: COMMAND_LINE, key: "seconds" },
    );
  }
  console.log(`device: ${deviceLine()}; verifier on 1 thread, V8 ${Deno.version.v8}`);

  const suites = verifierSuites();
  for (const [name, pairs] of suites) {
    throughput(pairs, 0.2); // warm-up (JIT)
    const { perSecond, n } = throughput(pairs, seconds);
    console.log(
      `${name}: ${Math.round(perSecond).toLocaleString("en-US")} completions/s (${n} calls)`,
    );
  }

  let worst = { ms: 0, name: "" };
  for (const [name, text] of hostileInputs()) {
    for (const truth of ["1", "x^{99999998}", "(1,2)", "\\{x+1, x+2\\}"]) {
      const start = performance.now();
      computeReward(text, truth);
      formatReward([text]);
      const ms = performance.now() - start;
      if (ms > worst.ms) worst = { ms, name: `${name} (truth ${truth})` };
    }
  }
  console.log(`hostile inputs: worst case ${worst.ms.toFixed(1)} ms, on ${worst.name}`);
}

await runTask(() => Promise.resolve(main()));
