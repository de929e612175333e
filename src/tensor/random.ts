/**
 * A small seeded PRNG: xoshiro128** (32-bit state words, so it stays in fast
 * int32 arithmetic in JS), seeded through a murmur-style 32-bit finaliser so
 * that nearby seeds (0, 1, 2, ...) give unrelated streams. Deterministic across
 * runs, processes and machines: tests, parameter init and data sampling rely on
 * that to reproduce a run from its seed alone.
 */

const TWO_POW_32 = 4294967296;

function fmix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

function checkSeed(seed: number): void {
  if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be a safe integer, got ${seed}`);
}

/**
 * A seed derived from `seed` and a list of integer keys (e.g. rank, layer, step):
 * the way to give independent streams to independent consumers of one run seed.
 */
export function deriveSeed(seed: number, ...keys: number[]): number {
  checkSeed(seed);
  let lo = seed >>> 0;
  let hi = Math.floor(seed / TWO_POW_32) >>> 0;
  for (const key of keys) {
    checkSeed(key);
    lo = fmix32((lo ^ fmix32((key >>> 0) + 0x9e3779b9)) >>> 0);
    hi = fmix32((hi ^ fmix32((Math.floor(key / TWO_POW_32) >>> 0) + lo)) >>> 0);
  }
  // Keep within 2^53 so the result is itself a valid seed.
  return (hi & 0x1fffff) * TWO_POW_32 + lo;
}

export class Rng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;
  private spare: number | null = null;

  constructor(seed: number) {
    checkSeed(seed);
    let x = (seed >>> 0) ^ fmix32((Math.floor(seed / TWO_POW_32) >>> 0) ^ 0x5bd1e995);
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      return fmix32(x);
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    // The all-zero state is the one fixed point of xoshiro.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** A uniform 32-bit unsigned integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    const a = this.nextU32() >>> 5; // 27 bits
    const b = this.nextU32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!Number.isSafeInteger(n) || n <= 0) throw new RangeError(`int(n) needs a positive integer, got ${n}`);
    return Math.floor(this.uniform() * n);
  }

  /** Standard normal (Box-Muller; the second value of each pair is kept for the next call). */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    const u1 = 1 - this.uniform(); // (0, 1]: log never sees 0
    const u2 = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    const theta = 2 * Math.PI * u2;
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** Fill `out` with N(0, std^2) samples. */
  fillNormal<T extends Float32Array | Float64Array>(out: T, std = 1): T {
    for (let i = 0; i < out.length; i++) out[i] = this.normal() * std;
    return out;
  }

  /** Fill `out` with uniform samples in [lo, hi). */
  fillUniform<T extends Float32Array | Float64Array>(out: T, lo = 0, hi = 1): T {
    const w = hi - lo;
    for (let i = 0; i < out.length; i++) out[i] = lo + this.uniform() * w;
    return out;
  }
}

/** `n` samples of N(0, std^2) from a fresh generator seeded with `seed`. */
export function randn(n: number, seed: number, std = 1): Float32Array {
  return new Rng(seed).fillNormal(new Float32Array(n), std);
}

/** `n` uniform samples in [lo, hi) from a fresh generator seeded with `seed`. */
export function randu(n: number, seed: number, lo = 0, hi = 1): Float32Array {
  return new Rng(seed).fillUniform(new Float32Array(n), lo, hi);
}
