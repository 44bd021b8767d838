/**
 * What every benchmark here prints next to its numbers, and how it measures: the device line,
 * medians, the load average, peak RSS (the kernel's VmHWM, resettable per workload as
 * bench/peer_torch.py does), available memory.
 *
 * @module
 */
/** CPU model, cores, OS and Deno version, e.g. `AMD EPYC, 2 cores, linux, deno 2.9.6`. */
export function deviceLine(): string {
  let cpu: string = Deno.build.arch;
  try {
    cpu = /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? cpu;
  } catch { /* not Linux */ }
  return `${cpu}, ${navigator.hardwareConcurrency} cores, ${Deno.build.os}, deno ${Deno.version.deno}`;
}

/** The median (the mean of the middle two for an even count). */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** The 1-minute load average, or null where the OS does not say. */
export function loadAverage(): number | null {
  try {
    return Deno.loadavg()[0];
  } catch {
    return null;
  }
}

/**
 * Resets the kernel's RSS high-water mark (VmHWM), so the next {@linkcode peakRssBytes} is the
 * coming workload's own peak (Linux `/proc/self/clear_refs`; a no-op elsewhere).
 */
export function resetPeakRss(): void {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
  } catch { /* not Linux, or not allowed */ }
}

/** Peak resident memory of this process since start or {@linkcode resetPeakRss}, in bytes. */
export function peakRssBytes(): number {
  try {
    const kb = /^VmHWM:\s+(\d+) kB$/m.exec(Deno.readTextFileSync("/proc/self/status"))?.[1];
    if (kb) return Number(kb) * 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss;
}

/** `MemAvailable` of /proc/meminfo in bytes, or null where there is none. */
export function memAvailableBytes(): number | null {
  try {
    const kb = /^MemAvailable:\s+(\d+) kB$/m.exec(Deno.readTextFileSync("/proc/meminfo"))?.[1];
    return kb ? Number(kb) * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * CPU time of this process so far (user + system, all threads), in seconds: on a machine shared
 * with other jobs it moves far less with the load than wall time does. NaN where /proc is absent.
 */
export function cpuSeconds(): number {
  try {
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // clock ticks, USER_HZ = 100
  } catch {
    return NaN;
  }
}
