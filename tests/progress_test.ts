import assert from "node:assert/strict";
import {
  formatDuration,
  formatProgress,
  formatValue,
  ProgressBar,
  type ProgressWriter,
} from "../lib/progress.ts";

Deno.test("formatProgress() shows percent, bar, counts, elapsed<eta, rate and fields", () => {
  const state = {
    label: "train",
    step: 4,
    total: 10,
    startedAt: 1000,
    fields: { reward: 0.51234, kl: 0.0012346, step_time: 2, tag: "ok" },
  };
  assert.equal(
    formatProgress(state, 9000),
    "train  40%|████████            | 4/10 [0:08<0:12, 0.50 it/s] reward=0.5123 kl=0.001235 step_time=2 tag=ok",
  );
  // Partial blocks: 1/3 of 10 chars = 3.33 chars -> 3 full + round(0.33*8)=3 eighths.
  assert.equal(
    formatProgress({ label: "eval", step: 1, total: 3, startedAt: 0 }, 500, { barWidth: 10 }),
    "eval  33%|███▍      | 1/3 [0:00<0:01, 2.00 it/s]",
  );
  // Finished: ETA 0, full bar; fast rates lose decimals.
  assert.equal(
    formatProgress({ label: "gen", step: 1500, total: 1500, startedAt: 0, unit: "tok" }, 10_000, {
      barWidth: 4,
    }),
    "gen 100%|████| 1500/1500 [0:10<0:00, 150 tok/s]",
  );
});

Deno.test("formatProgress() handles step 0, unknown totals and slow steps", () => {
  assert.equal(
    formatProgress({ label: "train", step: 0, total: 5, startedAt: 0 }, 0, { barWidth: 5 }),
    "train   0%|     | 0/5 [0:00<?, ? it/s]",
  );
  assert.equal(
    formatProgress({ label: "generate", step: 7, total: null, startedAt: 0 }, 3_500),
    "generate 7 [0:03, 2.00 it/s]",
  );
  // 1 step in 95 s: 0.0105 it/s is shown as seconds per step; ETA 2 steps * 95 s.
  assert.equal(
    formatProgress({ label: "train", step: 1, total: 3, startedAt: 0 }, 95_000, { barWidth: 3 }),
    "train  33%|█  | 1/3 [1:35<3:10, 95.0 s/it]",
  );
  assert.equal(
    formatProgress({ label: "x", step: 12, total: 10, startedAt: 0 }, 1_000, { barWidth: 2 }),
    "x 100%|██| 12/10 [0:01<0:00, 12.0 it/s]",
    "overshoot is clamped",
  );
});

Deno.test("formatDuration() and formatValue() format exactly", () => {
  assert.equal(formatDuration(0), "0:00");
  assert.equal(formatDuration(59.99), "0:59");
  assert.equal(formatDuration(3599), "59:59");
  assert.equal(formatDuration(36_000 + 61), "10:01:01");
  assert.equal(formatDuration(NaN), "?");
  assert.equal(formatDuration(-1), "?");
  assert.equal(formatValue(-0.25), "-0.25");
  assert.equal(formatValue(123456.789), "123500");
  assert.equal(formatValue(1.23456e-7), "1.235e-7");
  assert.equal(formatValue(NaN), "NaN");
  assert.equal(formatValue("cpu"), "cpu");
});

function capture(terminal?: boolean): { writer: ProgressWriter; text: () => string } {
  const decoder = new TextDecoder();
  let out = "";
  return {
    writer: {
      writeSync(bytes: Uint8Array): number {
        // Accept at most 7 bytes per call: the bar must loop on partial writes.
        const n = Math.min(7, bytes.length);
        out += decoder.decode(bytes.subarray(0, n), { stream: true });
        return n;
      },
      isTerminal: terminal === undefined ? undefined : () => terminal,
    },
    text: () => out,
  };
}

Deno.test("ProgressBar on a TTY redraws in place, throttled, and ends with a newline", () => {
  const { writer, text } = capture(true);
  let t = 0;
  const bar = new ProgressBar({ label: "t", total: 4, writer, now: () => t, redrawMs: 100 });
  t = 1000;
  bar.update(1, { loss: 0.5 });
  t = 1050; // within 100 ms of the last draw: no redraw
  bar.update(2);
  t = 2000;
  bar.update(3);
  bar.log("step 3: saved");
  t = 4000;
  bar.update(4);
  bar.done(); // the line already shows step 4: only the newline is added
  const line = (step: number, rest: string) =>
    `\r\x1b[K${
      formatProgress({ label: "t", step, total: 4, startedAt: 0 }, 0)
        .replace(/ \[.*$/, "")
    } ${rest}`;
  assert.equal(
    text(),
    line(1, "[0:01<0:03, 1.00 it/s] loss=0.5") +
      line(3, "[0:02<0:00, 1.50 it/s] loss=0.5") +
      "\r\x1b[Kstep 3: saved\n" +
      line(3, "[0:02<0:00, 1.50 it/s] loss=0.5") +
      line(4, "[0:04<0:00, 1.00 it/s] loss=0.5") + "\n",
  );
  assert.equal(bar.state.step, 4);
  assert.throws(() => bar.update(5), /already done/);
});

Deno.test("ProgressBar without a TTY prints a plain line every 10% and at the end", () => {
  const { writer, text } = capture(false);
  let t = 0;
  const bar = new ProgressBar({ label: "eval", total: 20, writer, now: () => t });
  for (let step = 1; step <= 20; step++) {
    t = step * 1000;
    bar.update(step);
  }
  bar.done({ accuracy: 0.5 });
  const lines = text().split("\n");
  assert.equal(lines.pop(), "", "ends with a newline");
  assert.equal(lines.length, 10, "steps 2, 4, ..., 18 and the final line");
  assert.deepEqual(lines.map((l) => l.match(/\| (\d+)\/20/)?.[1]), [
    "2",
    "4",
    "6",
    "8",
    "10",
    "12",
    "14",
    "16",
    "18",
    "20",
  ]);
  assert.ok(!text().includes("\r"));
  assert.match(lines[9], /\[0:20<0:00, 1\.00 it\/s\] accuracy=0\.5$/);
});

Deno.test("ProgressBar without a TTY and total prints at most every plainEveryMs", () => {
  const { writer, text } = capture(); // no isTerminal(): treated as not a terminal
  let t = 0;
  const bar = new ProgressBar({
    label: "gen",
    total: null,
    writer,
    now: () => t,
    plainEveryMs: 10,
  });
  for (let step = 1; step <= 30; step++) {
    t = step * 4; // 4 ms per step: a line every 3rd step (12 ms > 10 ms)
    bar.update(step);
  }
  bar.done();
  assert.deepEqual(text().trim().split("\n").map((l) => l.split(" ")[1]), [
    "3",
    "6",
    "9",
    "12",
    "15",
    "18",
    "21",
    "24",
    "27",
    "30",
    "30",
  ]);
  assert.throws(
    () => new ProgressBar({ label: "x", total: -1, writer }),
    { name: "RangeError", message: /found -1/ },
  );
});

Deno.test("ProgressBar cuts TTY lines to columns - 1 and draws once on done() when idle", () => {
  const { writer, text } = capture(true);
  const bar = new ProgressBar({ label: "train", total: 10, writer, now: () => 0, columns: 12 });
  bar.done();
  assert.equal(text(), "\r\x1b[Ktrain   0%|\n", "11 characters");
});

Deno.test("formatProgress() of a resumed bar counts the rate from its initial step", () => {
  const line = formatProgress(
    { label: "sft", step: 520, total: 1300, startedAt: 0, initial: 500, unit: "step" },
    10_000,
  );
  assert.equal(line, "sft  40%|████████            | 520/1300 [0:10<6:30, 2.00 step/s]");
});
