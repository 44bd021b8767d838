/**
 * `deno task reward:selftest`: the seed's `python utils/reward_utils.py` self-test. Prints one
 * block per case of `REWARD_SELF_TEST_CASES` and exits 1 if any reward differs from the expected.
 */
import { computeReward, REWARD_SELF_TEST_CASES } from "../lib/reward.ts";

// Python's repr of a float, as the seed prints it: 1.0, -0.5.
function pyFloat(x: number): string {
  return Number.isInteger(x) ? x.toFixed(1) : String(x);
}

function main(): number {
  let failed = 0;
  REWARD_SELF_TEST_CASES.forEach((testCase, i) => {
    const result = computeReward(testCase.generated, testCase.truth);
    const ok = result.reward === testCase.expected;
    if (!ok) failed++;
    console.log(`Test ${i + 1} ${ok ? "✓" : "✗"}`);
    console.log(`  Generated: ${testCase.generated}`);
    console.log(`  Truth: ${testCase.truth}`);
    console.log(`  Predicted: ${result.predicted ?? "None"}`);
    console.log(`  Correct: ${result.correct ? "True" : "False"}`);
    console.log(`  Reward: ${pyFloat(result.reward)} (expected: ${pyFloat(testCase.expected)})`);
  });
  const total = REWARD_SELF_TEST_CASES.length;
  console.log(
    failed === 0 ? `\nAll ${total} tests passed` : `\n${failed} of ${total} tests FAILED`,
  );
  return failed === 0 ? 0 : 1;
}

Deno.exit(main());
