/** Numeric assertions shared by the tests. */
import assert from "node:assert/strict";

/** Asserts `|actual[i] - expected[i]| <= atol` for every i, naming the worst index. */
export function assertAllClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  atol: number,
  message = "",
): void {
  assert.equal(actual.length, expected.length, `${message} length`);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  assert.ok(
    worst <= atol,
    `${message} max |diff| ${worst} at ${at} (got ${actual[at]}, want ${expected[at]}) > ${atol}`,
  );
}

/** Gradient tolerance of the fixture README: max|got-exp| <= rtol * max|exp|. */
export function assertCloseToMax(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rtol: number,
  message = "",
): void {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  assertAllClose(actual, expected, rtol * scale, message);
}
