/**
 * Shared helpers for attention tests: seeded random problems, the float64
 * full-attention reference, row gathering for sharded blocks, and the
 * relative-error comparison the tests use (max|a - b| / max|b| per tensor).
 */
import assert from 'node:assert/strict';
import { Rng, randn } from '../../src/tensor/random.js';
export { fullAttentionReference } from '../oracles/full-attention.js';

export interface Problem {
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  q: Float32Array; // [seqLen, heads, headDim]
  k: Float32Array; // [seqLen, kvHeads, headDim]
  v: Float32Array;
  dO: Float32Array; // [seqLen, heads, headDim]
  seg?: Int32Array;
}

/** A random attention problem over a whole sequence; `docs` > 0 packs that many documents. */
export function makeProblem(p: { seqLen: number; heads: number; kvHeads: number; headDim: number; seed: number; docs?: number }): Problem {
  const { seqLen, heads, kvHeads, headDim, seed } = p;
  const out: Problem = {
    seqLen,
    heads,
    kvHeads,
    headDim,
    q: randn(seqLen * heads * headDim, seed * 10 + 1),
    k: randn(seqLen * kvHeads * headDim, seed * 10 + 2),
    v: randn(seqLen * kvHeads * headDim, seed * 10 + 3),
    dO: randn(seqLen * heads * headDim, seed * 10 + 4),
  };
  if (p.docs && p.docs > 0) out.seg = packedSegments(seqLen, p.docs, seed * 10 + 5);
  return out;
}

/** Document ids for `docs` contiguous documents of random lengths covering the sequence. */
export function packedSegments(seqLen: number, docs: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  const cuts = new Set<number>();
  while (cuts.size < Math.min(docs, seqLen) - 1) cuts.add(1 + rng.int(seqLen - 1));
  const sorted = [...cuts].sort((a, b) => a - b);
  const seg = new Int32Array(seqLen);
  let d = 0;
  for (let i = 0; i < seqLen; i++) {
    while (d < sorted.length && i >= sorted[d]) d++;
    seg[i] = 100 + d; // ids need not start at 0
  }
  return seg;
}

/** Rows `rows` of a row-major [n, width] array. */
export function gatherRows(x: ArrayLike<number>, rows: ArrayLike<number>, width: number): Float32Array {
  const out = new Float32Array(rows.length * width);
  for (let r = 0; r < rows.length; r++) {
    for (let c = 0; c < width; c++) out[r * width + c] = x[rows[r] * width + c];
  }
  return out;
}

/** Adds a [rows.length, width] block into rows `rows` of a [n, width] array. */
export function scatterAddRows(dst: Float64Array, src: ArrayLike<number>, rows: ArrayLike<number>, width: number): void {
  for (let r = 0; r < rows.length; r++) {
    for (let c = 0; c < width; c++) dst[rows[r] * width + c] += src[r * width + c];
  }
}

/** Columns `cols` of a [heads, n] array (lse / delta layout). */
export function gatherCols(x: ArrayLike<number>, heads: number, n: number, cols: ArrayLike<number>): Float64Array {
  const out = new Float64Array(heads * cols.length);
  for (let h = 0; h < heads; h++) {
    for (let c = 0; c < cols.length; c++) out[h * cols.length + c] = x[h * n + cols[c]];
  }
  return out;
}

export function range(start: number, end: number): Int32Array {
  const out = new Int32Array(Math.max(0, end - start));
  for (let i = 0; i < out.length; i++) out[i] = start + i;
  return out;
}

/**
 * max|a - b| / max|b|. Infinite entries must match exactly (a fully masked row
 * has lse = -Infinity) and are left out of both maxima; any NaN gives NaN.
 */
export function relErr(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  assert.equal(actual.length, expected.length, 'length mismatch');
  let num = 0;
  let den = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const b = expected[i];
    if (Number.isNaN(a) || Number.isNaN(b)) return NaN;
    if (!Number.isFinite(b) || !Number.isFinite(a)) {
      if (a !== b) return Infinity;
      continue;
    }
    num = Math.max(num, Math.abs(a - b));
    den = Math.max(den, Math.abs(b));
  }
  if (den === 0) return num; // all-zero reference: absolute error
  return num / den;
}

export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, label: string, tol = 1e-5): void {
  const e = relErr(actual, expected);
  assert.ok(e <= tol, `${label}: relative error ${e} exceeds ${tol}`);
}

export function assertNoNaN(x: ArrayLike<number>, label: string): void {
  for (let i = 0; i < x.length; i++) assert.ok(!Number.isNaN(x[i]), `${label}[${i}] is NaN`);
}

export interface AttentionResults {
  o: Float32Array;
  lse: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

/** Whole-sequence results, and how to place one rank's shard results (rows at global positions `pos`) into them. */
export function wholeSequence(seqLen: number, heads: number, kvHeads: number, headDim: number) {
  const qw = heads * headDim;
  const kw = kvHeads * headDim;
  const all: AttentionResults = {
    o: new Float32Array(seqLen * qw),
    lse: new Float32Array(heads * seqLen),
    dq: new Float32Array(seqLen * qw),
    dk: new Float32Array(seqLen * kw),
    dv: new Float32Array(seqLen * kw),
  };
  const place = (pos: ArrayLike<number>, shard: AttentionResults): void => {
    const m = pos.length;
    for (let i = 0; i < m; i++) {
      const t = pos[i];
      all.o.set(shard.o.subarray(i * qw, (i + 1) * qw), t * qw);
      all.dq.set(shard.dq.subarray(i * qw, (i + 1) * qw), t * qw);
      all.dk.set(shard.dk.subarray(i * kw, (i + 1) * kw), t * kw);
      all.dv.set(shard.dv.subarray(i * kw, (i + 1) * kw), t * kw);
      for (let h = 0; h < heads; h++) all.lse[h * seqLen + t] = shard.lse[h * m + i];
    }
  };
  return { all, place };
}
