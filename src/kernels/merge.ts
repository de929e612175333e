import type { BlockPartial } from './types.js';

/**
 * The online-softmax merge, the one place it exists: folds `part` into `acc`
 * in place. Both hold attention normalised within their own KV blocks, so
 *   lse = logaddexp(lse_a, lse_b),  o = o_a * exp(lse_a - lse) + o_b * exp(lse_b - lse).
 * The weights are computed in float64 from the lse difference, which stays
 * exact as the number of merged blocks grows; a side with lse = -Infinity
 * (fully masked) gets weight 0 and never produces NaN.
 */
export function mergePartial(acc: BlockPartial, part: BlockPartial, heads: number, headDim: number): void {
  const qLen = acc.lse.length / heads;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < qLen; i++) {
      const li = h * qLen + i;
      const a = acc.lse[li];
      const b = part.lse[li];
      if (b === -Infinity) continue;
      let wa: number;
      let lse: number;
      if (a === -Infinity) {
        wa = 0;
        lse = b;
      } else if (a >= b) {
        const e = Math.exp(b - a);
        lse = a + Math.log1p(e);
        wa = 1 / (1 + e);
      } else {
        const e = Math.exp(a - b);
        lse = b + Math.log1p(e);
        wa = e / (1 + e);
      }
      const wb = 1 - wa;
      acc.lse[li] = lse;
      const base = (i * heads + h) * headDim;
      for (let d = 0; d < headDim; d++) {
        acc.o[base + d] = acc.o[base + d] * wa + part.o[base + d] * wb;
      }
    }
  }
}

/** An empty accumulator: no keys seen yet (lse = -Infinity, o = 0). */
export function emptyPartial(qLen: number, heads: number, headDim: number): BlockPartial {
  return { o: new Float32Array(qLen * heads * headDim), lse: new Float32Array(heads * qLen).fill(-Infinity) };
}

/** delta = rowsum(dO * o) per head and query row, the backward pass's softmax correction. */
export function rowDelta(dO: Float32Array, o: Float32Array, qLen: number, heads: number, headDim: number): Float32Array {
  const delta = new Float32Array(heads * qLen);
  for (let i = 0; i < qLen; i++) {
    for (let h = 0; h < heads; h++) {
      const base = (i * heads + h) * headDim;
      let s = 0;
      for (let d = 0; d < headDim; d++) s += dO[base + d] * o[base + d];
      delta[h * qLen + i] = s;
    }
  }
  return delta;
}
