/**
 * Private helpers of lib/reward.ts: a bounded parser and evaluator for the LaTeX subset that math
 * answers use (numbers, `+ - * / ^ !`, implicit products, `\frac`, `\sqrt[n]{}`, `\pi`, `e`,
 * `\infty`, trig/log functions, `\binom`, floor/ceil, `|x|`, variables with subscripts).
 *
 * Values are exact rationals (BigInt numerator/denominator) while the arithmetic stays rational
 * (integers, decimals, fractions, integer powers, roots of perfect powers), and IEEE doubles once
 * something irrational (`\pi`, `\sqrt2`, `\sin`) enters. Exact rationals let us say "13535 is not
 * 13536" without any tolerance; doubles are compared with the tolerances in {@linkcode numbersEqual}.
 *
 * Everything here is bounded: the parser caps its recursion depth, rationals that outgrow
 * {@linkcode MAX_BITS} bits fall back to doubles (or NaN), and overflow becomes NaN ("unknown"), never a
 * spurious Infinity that would compare equal to another overflow.
 *
 * @module
 */

/** An exact rational n/d with d > 0 and gcd(|n|, d) = 1. */
export class Exact {
  constructor(readonly n: bigint, readonly d: bigint) {}
}

/** A value: exact rational, or a double once the computation became irrational. */
export type Value = Exact | number;

/** Exact rationals larger than 2^MAX_BITS (numerator or denominator) fall back to doubles. */
// 1024 bits (~308 digits) is the double range: an exact value too big to keep is also too big for
// a double, so it becomes NaN (unknown), never a rounded value that could match a neighbour.
// subtle: it also bounds the cost of the gcd in every operation (Euclid on 4096-bit numbers made
// a 1000-character product like `x9x9x9...` take 0.3 s).
const MAX_BITS = 1024;
const LIMIT = 1n << BigInt(MAX_BITS);

/** Relative tolerance for comparing non-integer values (see `isEquivalent` in lib/reward.ts). */
export const RELATIVE_TOLERANCE = 1e-6;
/** Relative tolerance between an exact integer and an irrational (double) value: round-off only. */
const INTEGER_TOLERANCE = 1e-9;

function abs(n: bigint): bigint {
  return n < 0n ? -n : n;
}

function gcd(a: bigint, b: bigint): bigint {
  a = abs(a);
  b = abs(b);
  while (b !== 0n) [a, b] = [b, a % b];
  return a;
}

function bitLength(n: bigint): number {
  n = abs(n);
  if (n < 9007199254740992n) return Math.ceil(Math.log2(Number(n) + 1));
  return n.toString(16).length * 4;
}

/** Builds n/d in lowest terms; NaN for d = 0, a double when the parts outgrow MAX_BITS. */
export function exact(n: bigint, d: bigint = 1n): Value {
  if (d === 0n) return NaN;
  if (d < 0n) {
    n = -n;
    d = -d;
  }
  const g = d === 1n ? 1n : gcd(n, d);
  if (g !== 1n) {
    n /= g;
    d /= g;
  }
  if (abs(n) > LIMIT || d > LIMIT) {
    const f = ratioToFloat(n, d);
    return Number.isFinite(f) ? f : NaN; // overflow is "unknown", not Infinity
  }
  return new Exact(n, d);
}

function ratioToFloat(n: bigint, d: bigint): number {
  const f = Number(n) / Number(d);
  if (Number.isFinite(f) && (f !== 0 || n === 0n)) return f;
  // subtle: both parts beyond 2^1024 give Infinity/Infinity; shift them into range first.
  const shift = Math.max(bitLength(n), bitLength(d)) - 1000;
  if (shift <= 0) return f;
  return Number(n >> BigInt(shift)) / Number(d >> BigInt(shift));
}

/** The value as a double. */
export function toFloat(v: Value): number {
  return typeof v === "number" ? v : ratioToFloat(v.n, v.d);
}

/** True when the value is an exact integer. */
function isExactInteger(v: Value): v is Exact {
  return typeof v !== "number" && v.d === 1n;
}

// A double result that overflowed from finite operands carries no information: make it NaN.
function floatResult(r: number, a: number, b: number): number {
  return Number.isFinite(r) || !Number.isFinite(a) || !Number.isFinite(b) ? r : NaN;
}

/** a + b. */
export function add(a: Value, b: Value): Value {
  if (typeof a !== "number" && typeof b !== "number") {
    return exact(a.n * b.d + b.n * a.d, a.d * b.d);
  }
  const x = toFloat(a), y = toFloat(b);
  return floatResult(x + y, x, y);
}

/** -a. */
export function neg(a: Value): Value {
  return typeof a === "number" ? -a : new Exact(-a.n, a.d);
}

/** a * b. */
export function mul(a: Value, b: Value): Value {
  if (typeof a !== "number" && typeof b !== "number") return exact(a.n * b.n, a.d * b.d);
  const x = toFloat(a), y = toFloat(b);
  return floatResult(x * y, x, y);
}

/** a / b; NaN when b is zero. */
export function div(a: Value, b: Value): Value {
  if (typeof a !== "number" && typeof b !== "number") return exact(a.n * b.d, a.d * b.n);
  const x = toFloat(a), y = toFloat(b);
  if (y === 0) return NaN;
  return floatResult(x / y, x, y);
}

// Exact integer q-th root of x >= 0, or null when x is not a perfect q-th power (or too big to try).
function integerRoot(x: bigint, q: number): bigint | null {
  if (x < 2n) return x;
  const guess = Math.round(Math.pow(Number(x), 1 / q));
  if (!Number.isFinite(guess) || guess > 2 ** 50) return null;
  const qq = BigInt(q);
  for (const c of [guess - 1, guess, guess + 1]) {
    if (c >= 0 && BigInt(c) ** qq === x) return BigInt(c);
  }
  return null;
}

/** a ^ b: exact for rational bases with integer exponents (within MAX_BITS) and perfect roots. */
function pow(a: Value, b: Value): Value {
  if (typeof b !== "number" && typeof a !== "number") {
    if (b.d === 1n) {
      const k = abs(b.n);
      if (a.n === 0n) return b.n < 0n ? NaN : b.n === 0n ? exact(1n) : exact(0n);
      if (a.d === 1n && abs(a.n) === 1n) return exact(a.n < 0n && k % 2n === 1n ? -1n : 1n);
      const bits = (bitLength(a.n) + bitLength(a.d)) * Number(k);
      if (bits <= 2 * MAX_BITS) {
        const r = exact(a.n ** k, a.d ** k);
        return b.n < 0n ? div(exact(1n), r) : r;
      }
      return NaN; // |result| far beyond 2^4096 or below 2^-4096: treat as unknown
    }
    if (b.d <= 12n) {
      const q = Number(b.d);
      const negative = a.n < 0n;
      if (!negative || q % 2 === 1) {
        const rn = integerRoot(abs(a.n), q), rd = integerRoot(a.d, q);
        if (rn !== null && rd !== null) return pow(exact(negative ? -rn : rn, rd), exact(b.n));
      }
      if (negative && q % 2 === 1) {
        // real odd root of a negative number: -(|a|^(p/q)) with the sign of (-1)^p
        const m = pow(exact(-a.n, a.d), b);
        return abs(b.n) % 2n === 1n ? neg(m) : m;
      }
    }
  }
  const x = toFloat(a), y = toFloat(b);
  return floatResult(Math.pow(x, y), x, y);
}

/** Compares two values; see {@linkcode RELATIVE_TOLERANCE} and {@linkcode INTEGER_TOLERANCE}. */
export function numbersEqual(a: Value, b: Value): boolean {
  if (typeof a !== "number" && typeof b !== "number") {
    // Both exact: an integer on either side demands exact equality (no "close enough" integers).
    if (a.d === 1n || b.d === 1n) return a.n === b.n && a.d === b.d;
    const diff = abs(a.n * b.d - b.n * a.d);
    const scale = abs(a.n) * b.d > abs(b.n) * a.d ? abs(a.n) * b.d : abs(b.n) * a.d;
    return diff * 1_000_000n <= scale; // |a - b| <= 1e-6 * max(|a|, |b|), in exact arithmetic
  }
  const x = toFloat(a), y = toFloat(b);
  if (Number.isNaN(x) || Number.isNaN(y)) return false;
  if (!Number.isFinite(x) || !Number.isFinite(y)) return x === y;
  const integer = isExactInteger(a) ? a : isExactInteger(b) ? b : null;
  if (integer !== null) {
    // An irrational expression equals an integer only up to floating-point round-off.
    const n = Number(integer.n);
    if (Math.abs(n) > Number.MAX_SAFE_INTEGER) return false;
    const other = integer === a ? y : x;
    return Math.abs(other - n) <= INTEGER_TOLERANCE * Math.max(1, Math.abs(n));
  }
  return Math.abs(x - y) <= RELATIVE_TOLERANCE * Math.max(Math.abs(x), Math.abs(y));
}

/** Expression tree of a parsed answer. */
export type Node =
  | { t: "num"; v: Value; literal: boolean }
  | { t: "var"; name: string }
  | { t: "add" | "sub" | "mul" | "div" | "pow"; a: Node; b: Node }
  | { t: "neg"; a: Node }
  | { t: "fn"; name: string; a: Node; b: Node | null };

const FUNCTIONS = new Set([
  "sin",
  "cos",
  "tan",
  "cot",
  "sec",
  "csc",
  "arcsin",
  "arccos",
  "arctan",
  "sinh",
  "cosh",
  "tanh",
  "ln",
  "log",
  "exp",
]);

const GREEK = new Set([
  "alpha",
  "beta",
  "gamma",
  "delta",
  "epsilon",
  "varepsilon",
  "zeta",
  "eta",
  "theta",
  "vartheta",
  "iota",
  "kappa",
  "lambda",
  "mu",
  "nu",
  "xi",
  "rho",
  "sigma",
  "tau",
  "upsilon",
  "phi",
  "varphi",
  "chi",
  "psi",
  "omega",
  "Gamma",
  "Delta",
  "Theta",
  "Lambda",
  "Xi",
  "Sigma",
  "Phi",
  "Psi",
  "Omega",
]);

// Commands that can start an operand (used to detect implicit multiplication).
const ATOM_COMMANDS = new Set([
  "frac",
  "sqrt",
  "pi",
  "infty",
  "binom",
  "lfloor",
  "lceil",
  ...FUNCTIONS,
  ...GREEK,
]);

/** Maximum parser recursion depth; deeper input is rejected, not parsed. */
const MAX_DEPTH = 64;

const FAIL = Symbol("parse failure");

function num(v: Value, literal = false): Node {
  return { t: "num", v, literal };
}

function bin(t: "add" | "sub" | "mul" | "div" | "pow", a: Node, b: Node): Node {
  return { t, a, b };
}

function isDigit(c: string): boolean {
  return c >= "0" && c <= "9";
}

function isLetter(c: string): boolean {
  return (c >= "a" && c <= "z") || (c >= "A" && c <= "Z");
}

class Parser {
  pos = 0;
  depth = 0;
  readonly vars = new Set<string>();
  constructor(readonly src: string) {}

  fail(): never {
    throw FAIL;
  }

  enter(): void {
    if (++this.depth > MAX_DEPTH) this.fail();
  }

  skipWs(): void {
    while (this.pos < this.src.length) {
      const c = this.src[this.pos];
      if (c !== " " && c !== "\t" && c !== "\n" && c !== "\r") break;
      this.pos++;
    }
  }

  peek(): string {
    this.skipWs();
    return this.src[this.pos] ?? "";
  }

  // Reads `\name` at pos without consuming it; "" when there is no command there.
  peekCommand(): string {
    this.skipWs();
    if (this.src[this.pos] !== "\\") return "";
    let end = this.pos + 1;
    while (end < this.src.length && isLetter(this.src[end])) end++;
    return end === this.pos + 1
      ? this.src.slice(this.pos, end + 1)
      : this.src.slice(this.pos + 1, end);
  }

  expect(s: string): void {
    this.skipWs();
    if (!this.src.startsWith(s, this.pos)) this.fail();
    this.pos += s.length;
  }

  parseAll(): Node {
    const node = this.parseExpr();
    this.skipWs();
    if (this.pos !== this.src.length) this.fail();
    return node;
  }

  parseExpr(): Node {
    this.enter();
    let left = this.parseTerm();
    for (;;) {
      const c = this.peek();
      if (c === "+") {
        this.pos++;
        left = bin("add", left, this.parseTerm());
      } else if (c === "-") {
        this.pos++;
        left = bin("sub", left, this.parseTerm());
      } else break;
    }
    this.depth--;
    return left;
  }

  startsOperand(): boolean {
    const c = this.peek();
    if (isDigit(c) || isLetter(c) || c === "(" || c === "{") return true;
    if (c === "." && isDigit(this.src[this.pos + 1] ?? "")) return true;
    return c === "\\" && ATOM_COMMANDS.has(this.peekCommand());
  }

  parseTerm(): Node {
    let left = this.parseUnary();
    for (;;) {
      const c = this.peek();
      if (c === "*" || c === "/") {
        this.pos++;
        left = bin(c === "*" ? "mul" : "div", left, this.parseUnary());
        continue;
      }
      const command = c === "\\" ? this.peekCommand() : "";
      if (command === "cdot" || command === "times" || command === "div") {
        this.pos += command.length + 1;
        left = bin(command === "div" ? "div" : "mul", left, this.parseUnary());
      } else if (this.startsOperand()) {
        left = bin("mul", left, this.parsePower()); // implicit product: 2x, 11\sqrt2, (a+5)(b+2)
      } else break;
    }
    return left;
  }

  parseUnary(): Node {
    this.enter();
    let node: Node;
    const c = this.peek();
    if (c === "-") {
      this.pos++;
      node = { t: "neg", a: this.parseUnary() };
    } else if (c === "+") {
      this.pos++;
      node = this.parseUnary();
    } else node = this.parsePower();
    this.depth--;
    return node;
  }

  parsePower(): Node {
    let base = this.parsePostfix();
    while (this.peek() === "^") {
      this.pos++;
      base = bin("pow", base, this.parseScript());
    }
    return base;
  }

  parsePostfix(): Node {
    let node = this.parseAtom();
    while (this.peek() === "!") {
      this.pos++;
      node = { t: "fn", name: "factorial", a: node, b: null };
    }
    return node;
  }

  // One TeX argument: a {group}, or a single character or command (`\frac43`, `x^23` = x^2 * 3).
  parseScript(): Node {
    this.enter();
    const c = this.peek();
    let node: Node;
    if (c === "{") {
      this.pos++;
      node = this.parseExpr();
      this.expect("}");
    } else if (c === "-") {
      this.pos++; // `x^-1` is not TeX, but models write it
      node = { t: "neg", a: this.parseScript() };
    } else if (isDigit(c)) {
      this.pos++;
      node = num(exact(BigInt(c)), true);
    } else if (isLetter(c)) {
      this.pos++;
      node = this.variable(c);
    } else if (c === "\\") {
      node = this.parseCommand();
    } else this.fail();
    this.depth--;
    return node;
  }

  variable(name: string): Node {
    if (this.src[this.pos] === "_") {
      this.pos++;
      const c = this.src[this.pos] ?? "";
      if (c === "{") {
        const end = this.src.indexOf("}", this.pos);
        if (end < 0) this.fail();
        name += "_" + this.src.slice(this.pos + 1, end).replace(/\s+/g, "");
        this.pos = end + 1;
      } else if (isDigit(c) || isLetter(c)) {
        name += "_" + c;
        this.pos++;
      } else this.fail();
    } else if (name === "e") return num(Math.E);
    this.vars.add(name);
    return { t: "var", name };
  }

  parseNumber(): Node {
    const src = this.src;
    const start = this.pos;
    while (isDigit(src[this.pos] ?? "")) this.pos++;
    let intPart = src.slice(start, this.pos);
    let frac = "";
    if (src[this.pos] === "." && isDigit(src[this.pos + 1] ?? "")) {
      const fs = ++this.pos;
      while (isDigit(src[this.pos] ?? "")) this.pos++;
      frac = src.slice(fs, this.pos);
    } else if (src[this.pos] === "." && intPart !== "" && !isDigit(src[this.pos + 1] ?? "")) {
      this.pos++; // "5." is 5
    }
    if (intPart === "") intPart = "0";
    let exponent = 0;
    const e = src[this.pos];
    if ((e === "e" || e === "E") && !isLetter(src[this.pos + 1] ?? "")) {
      let k = this.pos + 1;
      let sign = 1;
      if (src[k] === "+" || src[k] === "-") sign = src[k++] === "-" ? -1 : 1;
      const es = k;
      while (isDigit(src[k] ?? "")) k++;
      if (k > es && k - es <= 4) {
        exponent = sign * Number(src.slice(es, k));
        this.pos = k;
      }
    }
    if (intPart.length + frac.length > 2000) this.fail();
    let v = exact(BigInt(intPart + frac), 10n ** BigInt(frac.length));
    if (exponent !== 0) v = mul(v, pow(exact(10n), exact(BigInt(exponent))));
    const integerLiteral = frac === "" && exponent === 0;
    if (integerLiteral) {
      // Mixed number: `137 \frac{1}{2}` is 137 + 1/2 when both parts of the fraction are integers.
      const save = this.pos;
      if (this.peekCommand() === "frac") {
        const f = this.parseCommand();
        if (
          f.t === "div" && f.a.t === "num" && f.a.literal && f.b.t === "num" && f.b.literal
        ) return bin("add", num(v, true), f);
        this.pos = save;
      }
    }
    return num(v, integerLiteral);
  }

  parseAtom(): Node {
    this.enter();
    const c = this.peek();
    let node: Node;
    if (isDigit(c) || c === ".") {
      if (c === "." && !isDigit(this.src[this.pos + 1] ?? "")) this.fail();
      node = this.parseNumber();
    } else if (isLetter(c)) {
      this.pos++;
      node = this.variable(c);
    } else if (c === "(" || c === "{" || c === "|") {
      this.pos++;
      node = this.parseExpr();
      this.expect(c === "(" ? ")" : c === "{" ? "}" : "|");
      if (c === "|") node = { t: "fn", name: "abs", a: node, b: null };
    } else if (c === "\\") {
      node = this.parseCommand();
    } else this.fail();
    this.depth--;
    return node;
  }

  parseCommand(): Node {
    const name = this.peekCommand();
    if (!isLetter(name[0] ?? "")) this.fail();
    this.pos += name.length + 1;
    switch (name) {
      case "frac": {
        const a = this.parseScript();
        return bin("div", a, this.parseScript());
      }
      case "binom": {
        const a = this.parseScript();
        return { t: "fn", name, a, b: this.parseScript() };
      }
      case "sqrt": {
        let index: Node | null = null;
        if (this.peek() === "[") {
          this.pos++;
          index = this.parseExpr();
          this.expect("]");
        }
        return { t: "fn", name: "root", a: this.parseScript(), b: index };
      }
      case "pi":
        return num(Math.PI);
      case "infty":
        return num(Infinity);
      case "lfloor":
      case "lceil": {
        const a = this.parseExpr();
        this.expect(name === "lfloor" ? "\\rfloor" : "\\rceil");
        return { t: "fn", name: name.slice(1), a, b: null };
      }
    }
    if (GREEK.has(name)) {
      this.vars.add(name);
      return { t: "var", name };
    }
    if (FUNCTIONS.has(name)) return this.parseFunction(name);
    this.fail();
  }

  // `\sin x`, `\sin(2x)`, `\sin^2 x`, `\sin^{-1} x`, `\log_2 8`, `\sin 2x` (= sin(2x)).
  parseFunction(name: string): Node {
    let power: Node | null = null;
    let base: Node | null = null;
    if (this.peek() === "^") {
      this.pos++;
      power = this.parseScript();
    }
    if (this.peek() === "_") {
      this.pos++;
      base = this.parseScript();
    }
    let arg: Node;
    if (this.peek() === "(") {
      this.pos++;
      arg = this.parseExpr();
      this.expect(")");
    } else {
      arg = this.parsePower();
      while (this.startsOperand() && !FUNCTIONS.has(this.peekCommand())) {
        arg = bin("mul", arg, this.parsePower());
      }
    }
    const inverse = power !== null && power.t === "neg" && power.a.t === "num" &&
      isExactInteger(power.a.v) && power.a.v.n === 1n;
    if (inverse && ["sin", "cos", "tan"].includes(name)) {
      return { t: "fn", name: "arc" + name, a: arg, b: null };
    }
    const node: Node = { t: "fn", name, a: arg, b: base };
    return power === null ? node : bin("pow", node, power);
  }
}

/** A parsed expression and its free variables. */
export interface ParsedExpression {
  node: Node;
  vars: Set<string>;
}

/**
 * Parses a normalised LaTeX expression; null when it is outside the supported subset or nests
 * deeper than {@linkcode MAX_DEPTH}.
 */
export function parseExpression(src: string): ParsedExpression | null {
  const parser = new Parser(src);
  try {
    return { node: parser.parseAll(), vars: parser.vars };
  } catch (error) {
    if (error === FAIL) return null;
    throw error;
  }
}

function factorial(v: Value): Value {
  if (!isExactInteger(v) || v.n < 0n || v.n > 500n) return NaN;
  let r = 1n;
  for (let i = 2n; i <= v.n; i++) r *= i;
  return exact(r);
}

function binomial(n: Value, k: Value): Value {
  if (!isExactInteger(n) || !isExactInteger(k) || n.n < 0n || n.n > 5000n) return NaN;
  if (k.n < 0n || k.n > n.n) return exact(0n);
  let r = 1n;
  const kk = k.n < n.n - k.n ? k.n : n.n - k.n;
  for (let i = 1n; i <= kk; i++) r = (r * (n.n - kk + i)) / i;
  return exact(r);
}

function floorValue(v: Value, ceil: boolean): Value {
  if (typeof v === "number") return ceil ? Math.ceil(v) : Math.floor(v);
  let q = v.n / v.d; // truncates toward zero
  if (!ceil && v.n < 0n && q * v.d !== v.n) q -= 1n;
  if (ceil && v.n > 0n && q * v.d !== v.n) q += 1n;
  return exact(q);
}

function applyFunction(name: string, a: Value, b: Value | null): Value {
  switch (name) {
    case "root":
      return pow(a, b === null ? exact(1n, 2n) : div(exact(1n), b));
    case "abs":
      return typeof a === "number" ? Math.abs(a) : new Exact(abs(a.n), a.d);
    case "factorial":
      return factorial(a);
    case "binom":
      return b === null ? NaN : binomial(a, b);
    case "floor":
    case "ceil":
      return floorValue(a, name === "ceil");
  }
  if (typeof a !== "number" && a.n === 0n) {
    // exact values at 0 keep e.g. `\sin 0 = 0` and `\ln 1`-free forms exact
    if (["sin", "tan", "arcsin", "arctan", "sinh", "tanh"].includes(name)) return exact(0n);
    if (["cos", "cosh", "exp"].includes(name)) return exact(1n);
  }
  const x = toFloat(a);
  let r: number;
  switch (name) {
    case "sin":
      r = Math.sin(x);
      break;
    case "cos":
      r = Math.cos(x);
      break;
    case "tan":
      r = Math.tan(x);
      break;
    case "cot":
      r = 1 / Math.tan(x);
      break;
    case "sec":
      r = 1 / Math.cos(x);
      break;
    case "csc":
      r = 1 / Math.sin(x);
      break;
    case "arcsin":
      r = Math.asin(x);
      break;
    case "arccos":
      r = Math.acos(x);
      break;
    case "arctan":
      r = Math.atan(x);
      break;
    case "sinh":
      r = Math.sinh(x);
      break;
    case "cosh":
      r = Math.cosh(x);
      break;
    case "tanh":
      r = Math.tanh(x);
      break;
    case "exp":
      r = Math.exp(x);
      break;
    case "ln":
    case "log":
      r = b === null ? Math.log(x) : Math.log(x) / Math.log(toFloat(b));
      break;
    default:
      return NaN;
  }
  return Number.isFinite(r) ? r : NaN;
}

/** Evaluates a tree with the given variable values; unknown variables give NaN. */
export function evaluate(node: Node, env: Map<string, Value>): Value {
  switch (node.t) {
    case "num":
      return node.v;
    case "var":
      return env.get(node.name) ?? NaN;
    case "neg":
      return neg(evaluate(node.a, env));
    case "add":
      return add(evaluate(node.a, env), evaluate(node.b, env));
    case "sub":
      return add(evaluate(node.a, env), neg(evaluate(node.b, env)));
    case "mul":
      return mul(evaluate(node.a, env), evaluate(node.b, env));
    case "div":
      return div(evaluate(node.a, env), evaluate(node.b, env));
    case "pow":
      return pow(evaluate(node.a, env), evaluate(node.b, env));
    case "fn":
      return applyFunction(
        node.name,
        evaluate(node.a, env),
        node.b === null ? null : evaluate(node.b, env),
      );
  }
}
