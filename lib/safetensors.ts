/**
 * Safetensors checkpoint I/O: parse, serialize, stream-load, atomically save, and load a HF model
 * directory (single file or `model.safetensors.index.json` shards).
 *
 * Format (https://github.com/huggingface/safetensors, `safetensors/src/tensor.rs`): an 8-byte
 * little-endian header length N, N bytes of JSON (`{"__metadata__": {...}, name: {dtype, shape,
 * data_offsets: [begin, end]}, ...}`), then the raw little-endian data; offsets are relative to
 * the end of the header and must tile the data region exactly.
 *
 * In memory, floats are always `Float32Array` (tfjs has no bf16/f16): F16 and BF16 are widened
 * exactly on load, and the record keeps the on-disk dtype so that saving narrows them back.
 * I64 comes back as `Int32Array` (range-checked), U8/BOOL as `Uint8Array`.
 *
 * @module
 */
import { CheckpointError } from "./errors.ts";
import { exists, readFailure, readJson } from "./_fs.ts";

/** Dtypes this module reads and writes (safetensors spelling). */
export type DType = "F32" | "F16" | "BF16" | "I32" | "I64" | "U8" | "BOOL";

/** One tensor as held in memory. `data` is row-major, `data.length === product(shape)`. */
export interface TensorData {
  /** On-disk dtype. F16/BF16 data is widened to Float32Array; I64 is held as Int32Array. */
  dtype: DType;
  /** Dimensions; `[]` is a scalar. */
  shape: number[];
  /**
   * F32/F16/BF16: Float32Array; I32/I64: Int32Array; U8/BOOL: Uint8Array. F16/BF16 loaded with
   * `keep16bit` stay their 16-bit patterns in a Uint16Array.
   */
  data: Float32Array | Int32Array | Uint8Array | Uint16Array;
}

/** Options of {@linkcode loadSafetensors} and {@linkcode loadCheckpointTensors}. */
export interface LoadOptions {
  /** Keep F16/BF16 tensors as their 16-bit patterns (Uint16Array) instead of widening them. */
  keep16bit?: boolean;
}

/** A parsed safetensors file: tensors in file (data offset) order, plus `__metadata__`. */
export interface SafetensorsFile {
  /** Tensor name → data, in the order their bytes appear in the file. */
  tensors: Map<string, TensorData>;
  /** The header's `__metadata__` (string → string), `{}` when absent. */
  metadata: Record<string, string>;
}

/** Bytes per element of each supported dtype on disk. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  I32: 4,
  I64: 8,
  U8: 1,
  BOOL: 1,
};

// Dtypes safetensors defines that we refuse with a specific message instead of "unknown".
const UNSUPPORTED_DTYPES = new Set([
  "F64",
  "I8",
  "I16",
  "U16",
  "U32",
  "U64",
  "F8_E5M2",
  "F8_E4M3",
  "F8_E8M0",
  "F6_E2M3",
  "F6_E3M2",
  "F4",
  "C64",
]);

// Rank in safetensors' `Dtype` enum ("MUST be in increasing alignment order"). The Rust writer
// (`tensor.rs` `prepare`) sorts tensors by descending rank, then by name; we do the same so that
// mixed-dtype files come out byte-identical to `safetensors.torch.save_file`.
const DTYPE_RANK: Readonly<Record<DType, number>> = {
  BOOL: 0,
  U8: 1,
  F16: 7,
  BF16: 8,
  I32: 9,
  F32: 11,
  I64: 13,
};

// The Rust reader rejects headers above 100 MB (`MAX_HEADER_SIZE`).
const MAX_HEADER_SIZE = 100_000_000;
// Scratch size for chunked conversions (multiple of 8 so every dtype divides it).
const CHUNK_BYTES = 1 << 22;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------------------------
// Element conversions (bit-exact, on raw bits so NaN payloads survive)
// ---------------------------------------------------------------------------------------------

/**
 * Widens bf16 bit patterns to float32 exactly (`bits << 16`).
 *
 * @param src bf16 bits.
 * @param dst Receives `src.length` floats starting at `offset`.
 * @param offset First index written in `dst`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { bf16ToF32 } from "./safetensors.ts";
 * const out = new Float32Array(2);
 * bf16ToF32(new Uint16Array([0x3f80, 0xc040]), out, 0);
 * assert.deepEqual(Array.from(out), [1, -3]);
 * ```
 */
export function bf16ToF32(src: Uint16Array, dst: Float32Array, offset: number): void {
  const out = new Uint32Array(dst.buffer, dst.byteOffset + 4 * offset, src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i] << 16;
}

/**
 * Narrows float32 to bf16 with round-to-nearest-even, as torch's `.to(torch.bfloat16)`
 * (c10 `round_to_nearest_even`). NaN becomes the canonical 0x7fc0 like torch, except a NaN whose
 * low 16 bits are zero (i.e. one that came from a bf16 file) keeps its bits, so save(load(x)) is
 * bit-exact.
 *
 * @param src float32 values.
 * @returns bf16 bits.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { f32ToBf16 } from "./safetensors.ts";
 * // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0 = 0x3f80).
 * assert.deepEqual(Array.from(f32ToBf16(new Float32Array([1, 1 + 2 ** -8]))), [0x3f80, 0x3f80]);
 * ```
 */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i];
    if ((u & 0x7fffffff) > 0x7f800000) {
      out[i] = (u & 0xffff) === 0 ? u >>> 16 : 0x7fc0;
    } else {
      // Adding 0x7fff plus the lowest kept bit rounds half to even; overflow carries into the
      // exponent, which correctly rounds the largest finite values up to inf.
      out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}

/**
 * Widens IEEE half-precision bit patterns to float32 exactly, subnormals, infinities and NaN
 * payloads included.
 *
 * @param src f16 bits.
 * @param dst Receives `src.length` floats starting at `offset`.
 * @param offset First index written in `dst`.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { f16ToF32 } from "./safetensors.ts";
 * const out = new Float32Array(3);
 * f16ToF32(new Uint16Array([0x3c00, 0x0001, 0xfc00]), out, 0);
 * assert.deepEqual(Array.from(out), [1, 2 ** -24, -Infinity]);
 * ```
 */
export function f16ToF32(src: Uint16Array, dst: Float32Array, offset: number): void {
  const out = new Uint32Array(dst.buffer, dst.byteOffset + 4 * offset, src.length);
  for (let i = 0; i < src.length; i++) {
    const h = src[i];
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    let man = h & 0x3ff;
    if (exp === 0x1f) {
      out[i] = (sign | 0x7f800000 | (man << 13)) >>> 0;
    } else if (exp !== 0) {
      out[i] = (sign | ((exp + 112) << 23) | (man << 13)) >>> 0;
    } else if (man === 0) {
      out[i] = sign >>> 0;
    } else {
      // Subnormal m * 2^-24: shift the leading 1 into the implicit-bit position.
      let e = 113;
      while ((man & 0x400) === 0) {
        man <<= 1;
        e--;
      }
      out[i] = (sign | (e << 23) | ((man & 0x3ff) << 13)) >>> 0;
    }
  }
}

/**
 * Narrows float32 to IEEE half precision with round-to-nearest-even (overflow → ±inf, gradual
 * underflow to subnormals). NaN keeps its top payload bits (quiet bit forced if they are all zero),
 * so f16 values widened by {@linkcode f16ToF32} come back bit-exact.
 *
 * @param src float32 values.
 * @returns f16 bits.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { f32ToF16 } from "./safetensors.ts";
 * assert.deepEqual(Array.from(f32ToF16(new Float32Array([1, 65520, 2 ** -25]))), [0x3c00, 0x7c00, 0]);
 * ```
 */
export function f32ToF16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < bits.length; i++) {
    const x = bits[i];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    const man = x & 0x7fffff;
    if (exp === 0xff) {
      const payload = man >>> 13;
      out[i] = sign | 0x7c00 | (man === 0 ? 0 : payload === 0 ? 0x200 : payload);
    } else if (exp >= 143) {
      out[i] = sign | 0x7c00; // >= 2^16: beyond f16 range even before rounding
    } else if (exp >= 113) {
      // Normal f16. A mantissa carry bumps the exponent, up to 0x7c00 (inf) for values >= 65520.
      let half = ((exp - 112) << 10) | (man >>> 13);
      const rest = man & 0x1fff;
      if (rest > 0x1000 || (rest === 0x1000 && (half & 1) === 1)) half++;
      out[i] = sign | half;
    } else if (exp >= 102) {
      // Subnormal f16: value = (man | 2^23) * 2^(exp-150) = m16 * 2^-24, m16 = M >> (126 - exp).
      const full = man | 0x800000;
      const shift = 126 - exp; // 14..24
      let half = full >>> shift;
      const rest = full & ((1 << shift) - 1);
      const halfway = 1 << (shift - 1);
      if (rest > halfway || (rest === halfway && (half & 1) === 1)) half++;
      out[i] = sign | half;
    } else {
      out[i] = sign; // below half the smallest subnormal: rounds to ±0
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Header parsing and validation
// ---------------------------------------------------------------------------------------------

interface HeaderEntry {
  name: string;
  dtype: DType;
  shape: number[];
  count: number;
  begin: number;
  end: number;
}

interface ParsedHeader {
  entries: HeaderEntry[]; // sorted by data offset
  metadata: Record<string, string>;
}

function fail(file: string, key: string, problem: string): CheckpointError {
  const where = key === "" ? "" : `${key}: `;
  return new CheckpointError(`Cannot load ${file}: ${where}${problem}`, { file, key });
}

function formatShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function product(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Reads N from the 8-byte prefix and checks it against the file size. */
function readHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8) {
    throw fail(file, "", `file is ${fileSize} bytes, shorter than the 8-byte header length`);
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_SIZE)) {
    throw fail(file, "", `header length ${n} is larger than ${MAX_HEADER_SIZE} bytes`);
  }
  if (n < 2n) throw fail(file, "", `header length ${n} is too small for a JSON object`);
  if (8n + n > BigInt(fileSize)) {
    throw fail(
      file,
      "",
      `header length ${n} runs past the end of the file (${fileSize} bytes): truncated file or bad header length`,
    );
  }
  return Number(n);
}

function isDType(s: string): s is DType {
  return Object.hasOwn(DTYPE_SIZE, s);
}

/** Parses and validates the JSON header; `dataSize` is file size minus 8 + N. */
function parseHeader(
  headerBytes: Uint8Array,
  dataSize: number,
  file: string,
): ParsedHeader {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch (cause) {
    throw new CheckpointError(`Cannot load ${file}: header is not valid UTF-8`, { file, cause });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    throw new CheckpointError(`Cannot load ${file}: header is not valid JSON (${reason})`, {
      file,
      cause,
    });
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw fail(file, "", "header is not a JSON object");
  }

  const metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, info] of Object.entries(json)) {
    if (name === "__metadata__") {
      if (typeof info !== "object" || info === null || Array.isArray(info)) {
        throw fail(file, name, "expected an object of strings");
      }
      for (const [k, v] of Object.entries(info)) {
        if (typeof v !== "string") {
          throw fail(file, `__metadata__.${k}`, `expected a string, got ${JSON.stringify(v)}`);
        }
        metadata[k] = v;
      }
      continue;
    }
    entries.push(parseEntry(name, info, file));
  }

  // Offsets must tile [0, dataSize) exactly, like the Rust reader's `Metadata::validate`.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i];
    if (e.begin < expected) {
      const prev = entries[i - 1];
      throw fail(
        file,
        e.name,
        `data_offsets [${e.begin}, ${e.end}] overlap ${prev.name} [${prev.begin}, ${prev.end}]`,
      );
    }
    if (e.begin > expected) {
      throw fail(
        file,
        e.name,
        `data_offsets [${e.begin}, ${e.end}] leave a gap: the previous tensor ends at ${expected}`,
      );
    }
    if (e.end > dataSize) {
      throw fail(
        file,
        e.name,
        `data_offsets [${e.begin}, ${e.end}] run past the end of the data (${dataSize} bytes): truncated file or a header that lies`,
      );
    }
    expected = e.end;
  }
  if (expected !== dataSize) {
    throw fail(
      file,
      "",
      `tensors cover ${expected} data bytes but the file has ${dataSize} after the header`,
    );
  }
  return { entries, metadata };
}

function parseEntry(name: string, info: unknown, file: string): HeaderEntry {
  if (typeof info !== "object" || info === null || Array.isArray(info)) {
    throw fail(file, name, "header entry is not an object");
  }
  const { dtype, shape, data_offsets: offsets } = info as Record<string, unknown>;
  if (typeof dtype !== "string") throw fail(file, name, `dtype is ${JSON.stringify(dtype)}`);
  if (!isDType(dtype)) {
    const kind = UNSUPPORTED_DTYPES.has(dtype) ? "unsupported" : "unknown";
    throw fail(
      file,
      name,
      `${kind} dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_SIZE).join(", ")})`,
    );
  }
  if (
    !Array.isArray(shape) ||
    !shape.every((d): d is number => Number.isSafeInteger(d) && d >= 0)
  ) {
    throw fail(file, name, `shape ${JSON.stringify(shape)} is not a list of integers >= 0`);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((o): o is number => Number.isSafeInteger(o) && o >= 0) ||
    offsets[1] < offsets[0]
  ) {
    throw fail(file, name, `data_offsets ${JSON.stringify(offsets)} is not [begin, end]`);
  }
  const count = product(shape);
  const nbytes = count * DTYPE_SIZE[dtype];
  if (!Number.isSafeInteger(nbytes) || offsets[1] - offsets[0] !== nbytes) {
    throw fail(
      file,
      name,
      `data_offsets [${offsets[0]}, ${offsets[1]}] hold ${
        offsets[1] - offsets[0]
      } bytes but shape ${formatShape(shape)} × ${dtype} (${
        DTYPE_SIZE[dtype]
      } bytes) needs ${nbytes}`,
    );
  }
  return { name, dtype, shape: [...shape], count, begin: offsets[0], end: offsets[1] };
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

function allocate(
  entry: HeaderEntry,
  keep16bit = false,
): Float32Array | Int32Array | Uint8Array | Uint16Array {
  if (keep16bit && (entry.dtype === "F16" || entry.dtype === "BF16")) {
    return new Uint16Array(entry.count);
  }
  switch (entry.dtype) {
    case "F32":
    case "F16":
    case "BF16":
      return new Float32Array(entry.count);
    case "I32":
    case "I64":
      return new Int32Array(entry.count);
    case "U8":
    case "BOOL":
      return new Uint8Array(entry.count);
  }
}

/** True when the file bytes can be copied straight into the destination's buffer. */
function isRaw(dtype: DType): boolean {
  return dtype === "F32" || dtype === "I32" || dtype === "U8" || dtype === "BOOL";
}

/**
 * Converts `src` (whole elements of `entry.dtype`, 8-byte aligned) into `dst` from element
 * `start`. Only for the dtypes `isRaw` rejects.
 */
function decodeChunk(
  entry: HeaderEntry,
  src: Uint8Array,
  dst: Float32Array | Int32Array | Uint8Array,
  start: number,
  file: string,
): void {
  if (entry.dtype === "BF16" || entry.dtype === "F16") {
    const bits = new Uint16Array(src.buffer, src.byteOffset, src.byteLength / 2);
    const convert = entry.dtype === "BF16" ? bf16ToF32 : f16ToF32;
    convert(bits, dst as Float32Array, start);
    return;
  }
  // I64 → Int32: the high word must be the sign extension of the low word.
  const words = new Int32Array(src.buffer, src.byteOffset, src.byteLength / 4);
  const out = dst as Int32Array;
  for (let i = 0, j = 0; j < words.length; i++, j += 2) {
    const lo = words[j];
    if (words[j + 1] !== (lo >> 31)) {
      const value = new BigInt64Array(src.buffer, src.byteOffset + 4 * j, 1)[0];
      throw fail(
        file,
        entry.name,
        `I64 value ${value} at flat index ${start + i} is outside the int32 range`,
      );
    }
    out[start + i] = lo;
  }
}

function checkHost(file: string): void {
  // NOTE: typed arrays use host byte order and safetensors is little-endian.
  if (!LITTLE_ENDIAN) throw fail(file, "", "big-endian hosts are not supported");
}

/**
 * Parses a whole safetensors file held in memory. Each tensor gets its own buffer (one copy of
 * its bytes); `bytes` is not retained.
 *
 * @param bytes The file's contents.
 * @param file Name used in error messages.
 * @returns Tensors in file order and `__metadata__`.
 * @throws {CheckpointError} A truncated file, bad header, unknown dtype or inconsistent offsets.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseSafetensors, serializeSafetensors } from "./safetensors.ts";
 * const bytes = serializeSafetensors({ w: { dtype: "BF16", shape: [2], data: new Float32Array([1, -2]) } });
 * const parsed = parseSafetensors(bytes, "w.safetensors");
 * assert.deepEqual(Array.from(parsed.tensors.get("w")!.data), [1, -2]);
 * assert.deepEqual(parsed.metadata, { format: "pt" });
 * ```
 */
export function parseSafetensors(bytes: Uint8Array, file: string): SafetensorsFile {
  checkHost(file);
  const n = readHeaderLength(bytes.subarray(0, 8), bytes.byteLength, file);
  const dataStart = 8 + n;
  const { entries, metadata } = parseHeader(
    bytes.subarray(8, dataStart),
    bytes.byteLength - dataStart,
    file,
  );
  const tensors = new Map<string, TensorData>();
  for (const entry of entries) {
    // slice() copies into a fresh, aligned buffer.
    const raw = bytes.slice(dataStart + entry.begin, dataStart + entry.end);
    let data: TensorData["data"];
    if (entry.dtype === "F32") data = new Float32Array(raw.buffer, 0, entry.count);
    else if (entry.dtype === "I32") data = new Int32Array(raw.buffer, 0, entry.count);
    else if (isRaw(entry.dtype)) data = raw;
    else {
      data = allocate(entry) as Float32Array | Int32Array;
      decodeChunk(entry, raw, data, 0, file);
    }
    tensors.set(entry.name, { dtype: entry.dtype, shape: entry.shape, data });
  }
  return { tensors, metadata };
}

async function readFully(
  f: Deno.FsFile,
  into: Uint8Array,
  position: number,
  file: string,
  key: string,
): Promise<void> {
  await f.seek(position, Deno.SeekMode.Start);
  let done = 0;
  while (done < into.byteLength) {
    const got = await f.read(into.subarray(done));
    if (got === null || got === 0) {
      throw fail(
        file,
        key,
        `unexpected end of file at byte ${position + done} (file shrank while reading?)`,
      );
    }
    done += got;
  }
}

/**
 * Loads a safetensors file by streaming: reads the 8-byte length and the header, then reads each
 * tensor's bytes straight into its destination typed array (F32/I32/U8/BOOL) or through a 4 MiB
 * scratch buffer (BF16/F16 widening, I64 narrowing). Peak memory is the tensors themselves plus
 * the scratch buffer, never a copy of the file.
 *
 * @param path A `.safetensors` file.
 * @param options `keep16bit`: F16/BF16 tensors stay 16-bit (Uint16Array), read straight in.
 * @returns Tensors in file order and `__metadata__`.
 * @throws {CheckpointError} A missing or truncated file, bad header, unknown dtype or inconsistent
 * offsets; the message names the file and tensor.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadSafetensors } from "./safetensors.ts";
 * const adapter = await loadSafetensors("tests/fixtures/qwen2-tiny/adapter/adapter_model.safetensors");
 * assert.equal(adapter.tensors.size, 16);
 * ```
 */
export async function loadSafetensors(
  path: string,
  options: LoadOptions = {},
): Promise<SafetensorsFile> {
  const keep16bit = options.keep16bit ?? false;
  checkHost(path);
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch (cause) {
    throw new CheckpointError(`Cannot load ${path}: ${readFailure(cause)}`, { file: path, cause });
  }
  try {
    const fileSize = (await f.stat()).size;
    const prefix = new Uint8Array(8);
    if (fileSize >= 8) await readFully(f, prefix, 0, path, "");
    const n = readHeaderLength(prefix, fileSize, path);
    const headerBytes = new Uint8Array(n);
    await readFully(f, headerBytes, 8, path, "");
    const dataStart = 8 + n;
    const { entries, metadata } = parseHeader(headerBytes, fileSize - dataStart, path);

    const tensors = new Map<string, TensorData>();
    let scratch: Uint8Array | null = null;
    for (const entry of entries) {
      const data = allocate(entry, keep16bit);
      const position = dataStart + entry.begin;
      if (isRaw(entry.dtype) || data instanceof Uint16Array) {
        await readFully(f, new Uint8Array(data.buffer), position, path, entry.name);
      } else {
        scratch ??= new Uint8Array(CHUNK_BYTES);
        const size = DTYPE_SIZE[entry.dtype];
        const perChunk = CHUNK_BYTES / size;
        for (let i = 0; i < entry.count; i += perChunk) {
          const count = Math.min(perChunk, entry.count - i);
          const chunk = scratch.subarray(0, count * size);
          await readFully(f, chunk, position + i * size, path, entry.name);
          decodeChunk(entry, chunk, data as Float32Array | Int32Array, i, path);
        }
      }
      tensors.set(entry.name, { dtype: entry.dtype, shape: entry.shape, data });
    }
    return { tensors, metadata };
  } finally {
    f.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints
// ---------------------------------------------------------------------------------------------

/**
 * Loads a HF model directory's weights: `model.safetensors`, or the shards listed in
 * `model.safetensors.index.json` (`weight_map`: tensor name → shard file). Every shard must exist,
 * every listed tensor must be in its shard, and no shard may hold a tensor the index does not
 * assign to it. Metadata is the first shard's `__metadata__`.
 *
 * @param dir The model directory.
 * @param options As {@linkcode loadSafetensors}.
 * @returns All tensors (shard by shard, file order within each) and metadata.
 * @throws {CheckpointError} Missing files, a bad index, or any {@linkcode loadSafetensors} error.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadCheckpointTensors } from "./safetensors.ts";
 * const bf16 = await loadCheckpointTensors("tests/fixtures/qwen2-tiny-tied-bf16");
 * assert.equal(bf16.tensors.get("model.norm.weight")!.dtype, "BF16");
 * ```
 */
export async function loadCheckpointTensors(
  dir: string,
  options: LoadOptions = {},
): Promise<SafetensorsFile> {
  const single = `${dir}/model.safetensors`;
  const indexPath = `${dir}/model.safetensors.index.json`;
  if (!(await exists(indexPath))) {
    if (!(await exists(single))) {
      throw new CheckpointError(
        `Cannot load ${dir}: no model.safetensors or model.safetensors.index.json`,
        { file: dir },
      );
    }
    return await loadSafetensors(single, options);
  }

  const index = await readJson(indexPath, { error: CheckpointError });
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw fail(indexPath, "weight_map", "missing or not an object of tensor name → shard file");
  }
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (
      typeof shard !== "string" || shard === "" || shard.startsWith("/") ||
      shard.split("/").includes("..")
    ) {
      throw fail(indexPath, `weight_map.${name}`, `expected a shard file name, got ${shard}`);
    }
    const names = byShard.get(shard) ?? [];
    names.push(name);
    byShard.set(shard, names);
  }
  // Check every shard exists before loading any (a missing shard fails fast).
  for (const [shard, names] of byShard) {
    if (!(await exists(`${dir}/${shard}`))) {
      throw new CheckpointError(
        `Cannot load ${dir}/${shard}: shard listed in ${indexPath} (for ${names[0]}${
          names.length > 1 ? ` and ${names.length - 1} more` : ""
        }) does not exist`,
        { file: `${dir}/${shard}`, key: names[0] },
      );
    }
  }

  const tensors = new Map<string, TensorData>();
  let metadata: Record<string, string> | null = null;
  for (const [shard, names] of byShard) {
    const path = `${dir}/${shard}`;
    const loaded = await loadSafetensors(path, options);
    metadata ??= loaded.metadata;
    for (const name of names) {
      if (!loaded.tensors.has(name)) {
        throw fail(path, name, `tensor listed in ${indexPath} is not in this shard`);
      }
    }
    const listed = new Set(names);
    for (const [name, tensor] of loaded.tensors) {
      if (!listed.has(name)) {
        throw fail(
          path,
          name,
          `tensor is in this shard but ${indexPath} maps it to ${
            (weightMap as Record<string, unknown>)[name] ?? "nothing"
          }`,
        );
      }
      tensors.set(name, tensor);
    }
  }
  return { tensors, metadata: metadata ?? {} };
}

/**
 * Checks tensor names and shapes against what a model expects (e.g. shapes derived from
 * config.json). Reports every mismatching, missing and unexpected tensor in one message.
 *
 * @param file Loaded tensors.
 * @param expected Tensor name → expected shape.
 * @param fileLabel Where the tensors came from (file or directory), for the error.
 * @throws {CheckpointError} `key` is the first offending tensor (shape mismatches first, then
 * missing, then unexpected).
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkShapes } from "./safetensors.ts";
 * const file = { tensors: new Map([["w", { dtype: "F32" as const, shape: [2, 3], data: new Float32Array(6) }]]), metadata: {} };
 * checkShapes(file, { w: [2, 3] }, "m.safetensors");
 * assert.throws(() => checkShapes(file, { w: [3, 2] }, "m.safetensors"), /w: expected shape \[3, 2\], got \[2, 3\]/);
 * ```
 */
export function checkShapes(
  file: SafetensorsFile,
  expected: Map<string, number[]> | Record<string, number[]>,
  fileLabel: string,
): void {
  const want = expected instanceof Map ? expected : new Map(Object.entries(expected));
  const wrong: string[] = [];
  const missing: string[] = [];
  for (const [name, shape] of want) {
    const got = file.tensors.get(name);
    if (got === undefined) missing.push(name);
    else if (got.shape.length !== shape.length || got.shape.some((d, i) => d !== shape[i])) {
      wrong.push(name);
    }
  }
  const unexpected = [...file.tensors.keys()].filter((name) => !want.has(name));
  if (wrong.length + missing.length + unexpected.length === 0) return;

  const list = (names: string[]) =>
    names.slice(0, 5).join(", ") + (names.length > 5 ? ` and ${names.length - 5} more` : "");
  const problems = wrong.slice(0, 5).map((name) =>
    `${name}: expected shape ${formatShape(want.get(name)!)}, got ${
      formatShape(file.tensors.get(name)!.shape)
    }`
  );
  if (wrong.length > 5) problems.push(`${wrong.length - 5} more shape mismatches`);
  if (missing.length > 0) problems.push(`missing tensors: ${list(missing)}`);
  if (unexpected.length > 0) problems.push(`unexpected tensors: ${list(unexpected)}`);
  const key = wrong[0] ?? missing[0] ?? unexpected[0];
  throw new CheckpointError(`Cannot load ${fileLabel}: ${problems.join("; ")}`, {
    file: fileLabel,
    key,
  });
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

interface Prepared {
  header: Uint8Array; // 8-byte length + padded JSON
  order: [string, TensorData][];
  dataSize: number;
}

function arrayFits(dtype: DType, data: unknown): boolean {
  switch (dtype) {
    case "F32":
    case "F16":
    case "BF16":
      return data instanceof Float32Array;
    case "I32":
    case "I64":
      return data instanceof Int32Array;
    case "U8":
    case "BOOL":
      return data instanceof Uint8Array;
  }
}

const ARRAY_FOR: Readonly<Record<DType, string>> = {
  F32: "Float32Array",
  F16: "Float32Array",
  BF16: "Float32Array",
  I32: "Int32Array",
  I64: "Int32Array",
  U8: "Uint8Array",
  BOOL: "Uint8Array",
};

function prepare(
  tensors: Map<string, TensorData> | Record<string, TensorData>,
  metadata: Record<string, string> | null,
): Prepared {
  const order: [string, TensorData][] = [];
  for (const [name, given] of tensors instanceof Map ? tensors : Object.entries(tensors)) {
    // Read each field once, so what is validated is what gets written.
    const t: TensorData = { dtype: given.dtype, shape: [...given.shape], data: given.data };
    order.push([name, t]);
    if (name === "__metadata__") throw new RangeError(`Tensor name "__metadata__" is reserved`);
    if (!isDType(t.dtype)) throw new TypeError(`${name}: unsupported dtype ${t.dtype}`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new RangeError(`${name}: shape ${JSON.stringify(t.shape)} is not integers >= 0`);
    }
    if (!arrayFits(t.dtype, t.data)) {
      throw new TypeError(
        `${name}: dtype ${t.dtype} needs a ${ARRAY_FOR[t.dtype]}, got ${
          Object.prototype.toString.call(t.data)
        }`,
      );
    }
    if (t.data.length !== product(t.shape)) {
      throw new RangeError(
        `${name}: shape ${formatShape(t.shape)} needs ${
          product(t.shape)
        } elements, data has ${t.data.length}`,
      );
    }
  }
  if (metadata !== null) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw new TypeError(`__metadata__.${k} must be a string`);
    }
  }
  // Like safetensors' Rust `prepare`: descending dtype rank, then name (byte order, as Rust's
  // String Ord; JS `<` compares UTF-16 units, which differs only outside the BMP).
  order.sort(([a, ta], [b, tb]) =>
    DTYPE_RANK[tb.dtype] - DTYPE_RANK[ta.dtype] || (a < b ? -1 : a > b ? 1 : 0)
  );

  const parts: string[] = [];
  if (metadata !== null) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  let offset = 0;
  for (const [name, t] of order) {
    const end = offset + t.data.length * DTYPE_SIZE[t.dtype];
    parts.push(
      `${JSON.stringify(name)}:{"dtype":"${t.dtype}","shape":[${
        t.shape.join(",")
      }],"data_offsets":[${offset},${end}]}`,
    );
    offset = end;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const padded = json.byteLength + ((8 - (json.byteLength % 8)) % 8);
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + json.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, order, dataSize: offset };
}

/** Yields a tensor's on-disk bytes in pieces of at most CHUNK_BYTES. */
function* encodeChunks(t: TensorData): Generator<Uint8Array> {
  const size = DTYPE_SIZE[t.dtype];
  if (isRaw(t.dtype)) {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    for (let i = 0; i < bytes.byteLength; i += CHUNK_BYTES) {
      yield bytes.subarray(i, i + CHUNK_BYTES);
    }
    return;
  }
  const perChunk = CHUNK_BYTES / size;
  for (let i = 0; i < t.data.length; i += perChunk) {
    const piece = t.data.subarray(i, i + perChunk);
    if (t.dtype === "BF16" || t.dtype === "F16") {
      const bits = t.dtype === "BF16"
        ? f32ToBf16(piece as Float32Array)
        : f32ToF16(piece as Float32Array);
      yield new Uint8Array(bits.buffer);
    } else {
      // I64: sign-extend each int32.
      const words = new Int32Array(2 * piece.length);
      for (let j = 0; j < piece.length; j++) {
        words[2 * j] = piece[j];
        words[2 * j + 1] = piece[j] >> 31;
      }
      yield new Uint8Array(words.buffer);
    }
  }
}

/**
 * Serializes tensors to safetensors bytes the way `safetensors.torch.save_file` (and so HF
 * `save_pretrained`, PEFT `save_pretrained`) writes them: `__metadata__` first, tensors sorted by
 * descending dtype alignment then name (just "by name" when all share a dtype), data in that
 * order, compact JSON padded with spaces to a multiple of 8. F16/BF16 records holding float32 are
 * narrowed with round-to-nearest-even; I64 records are sign-extended.
 *
 * @param tensors Name → tensor.
 * @param metadata `__metadata__` (default `{ format: "pt" }`); `null` omits it.
 * @returns The file's bytes.
 * @throws {TypeError} A data array that does not match its dtype.
 * @throws {RangeError} A shape that does not match the data length.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { serializeSafetensors } from "./safetensors.ts";
 * const bytes = serializeSafetensors({ b: { dtype: "I64", shape: [1], data: new Int32Array([-1]) } });
 * assert.equal(bytes.byteLength % 8, 0);
 * assert.deepEqual(Array.from(bytes.slice(-8)), [255, 255, 255, 255, 255, 255, 255, 255]);
 * ```
 */
export function serializeSafetensors(
  tensors: Map<string, TensorData> | Record<string, TensorData>,
  metadata: Record<string, string> | null = { format: "pt" },
): Uint8Array {
  const { header, order, dataSize } = prepare(tensors, metadata);
  const out = new Uint8Array(header.byteLength + dataSize);
  out.set(header, 0);
  let at = header.byteLength;
  for (const [, t] of order) {
    for (const chunk of encodeChunks(t)) {
      out.set(chunk, at);
      at += chunk.byteLength;
    }
  }
  return out;
}

async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) done += await f.write(bytes.subarray(done));
}

/**
 * Writes a safetensors file atomically: streams the bytes of {@linkcode serializeSafetensors}
 * (same layout, converted chunk by chunk, no whole-file buffer) to `<path>.tmp-<random>` in the
 * same directory, fsyncs and closes it, then renames it over `path`. On any error the temporary
 * file is removed and an existing `path` is left untouched.
 *
 * @param path Destination file.
 * @param tensors Name → tensor.
 * @param metadata `__metadata__` (default `{ format: "pt" }`); `null` omits it.
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadSafetensors, saveSafetensors } from "./safetensors.ts";
 * const dir = await Deno.makeTempDir();
 * await saveSafetensors(`${dir}/a.safetensors`, { x: { dtype: "F32", shape: [1], data: new Float32Array([0.5]) } });
 * assert.equal((await loadSafetensors(`${dir}/a.safetensors`)).tensors.get("x")!.data[0], 0.5);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function saveSafetensors(
  path: string,
  tensors: Map<string, TensorData> | Record<string, TensorData>,
  metadata: Record<string, string> | null = { format: "pt" },
): Promise<void> {
  const { header, order } = prepare(tensors, metadata);
  const suffix = crypto.getRandomValues(new Uint32Array(2)).reduce(
    (s, x) => s + x.toString(16).padStart(8, "0"),
    "",
  );
  const tmp = `${path}.tmp-${suffix}`;
  const f = await Deno.open(tmp, { write: true, createNew: true });
  let closed = false;
  try {
    await writeAll(f, header);
    for (const [, t] of order) {
      for (const chunk of encodeChunks(t)) await writeAll(f, chunk);
    }
    await f.sync();
    f.close();
    closed = true;
    await Deno.rename(tmp, path);
  } catch (error) {
    if (!closed) f.close();
    // The original error is the one to report; a failed cleanup must not mask it.
    await Deno.remove(tmp).catch(() => {});
    throw error;
  }
}
