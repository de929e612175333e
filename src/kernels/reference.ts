import { canAttend, checkBlockArgs, checkGradArgs } from './mask.js';
import type { AttentionKernel, BlockArgs, BlockGradArgs, BlockGrads, BlockPartial } from './types.js';

/**
 * The obviously-correct kernel: plain loops, float64 intermediates, results
 * rounded to float32 only when stored. Slow (no tiling, no skipping); it exists
 * so the fast kernels have something to be compared against.
 */
export const referenceKernel: AttentionKernel = {
  name: 'reference',

  async forward(a: BlockArgs): Promise<BlockPartial> {
    checkBlockArgs(a);
    const { qLen, kvLen, heads, kvHeads, headDim: D, scale } = a;
    const group = heads / kvHeads;
    const o = new Float32Array(qLen * heads * D);
    const lse = new Float32Array(heads * qLen).fill(-Infinity);
    const s = new Float64Array(kvLen);
    const acc = new Float64Array(D);
    for (let h = 0; h < heads; h++) {
      const g = Math.floor(h / group);
      for (let i = 0; i < qLen; i++) {
        const qb = (i * heads + h) * D;
        let m = -Infinity;
        for (let j = 0; j < kvLen; j++) {
          if (!canAttend(a, i, j)) {
            s[j] = -Infinity;
            continue;
          }
          const kb = (j * kvHeads + g) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += a.q[qb + d] * a.k[kb + d];
          s[j] = dot * scale;
          if (s[j] > m) m = s[j];
        }
        if (m === -Infinity) continue; // no allowed key: lse stays -Infinity, o stays 0
        let l = 0;
        acc.fill(0);
        for (let j = 0; j < kvLen; j++) {
          if (s[j] === -Infinity) continue;
          const p = Math.exp(s[j] - m);
          l += p;
          const vb = (j * kvHeads + g) * D;
          for (let d = 0; d < D; d++) acc[d] += p * a.v[vb + d];
        }
        for (let d = 0; d < D; d++) o[qb + d] = acc[d] / l;
        lse[h * qLen + i] = m + Math.log(l);
      }
    }
    return { o, lse };
  },

  async backward(a: BlockArgs, grad: BlockGradArgs, out: BlockGrads): Promise<void> {
    checkBlockArgs(a);
    checkGradArgs(a, grad, out);
    const { qLen, kvLen, heads, kvHeads, headDim: D, scale } = a;
    const group = heads / kvHeads;
    const dq = new Float64Array(qLen * heads * D);
    const dk = new Float64Array(kvLen * kvHeads * D);
    const dv = new Float64Array(kvLen * kvHeads * D);
    for (let h = 0; h < heads; h++) {
      const g = Math.floor(h / group);
      for (let i = 0; i < qLen; i++) {
        const lse = grad.lse[h * qLen + i];
        if (lse === -Infinity) continue; // row saw no key anywhere: no gradient flows through it
        const delta = grad.delta[h * qLen + i];
        const qb = (i * heads + h) * D;
        for (let j = 0; j < kvLen; j++) {
          if (!canAttend(a, i, j)) continue;
          const kb = (j * kvHeads + g) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += a.q[qb + d] * a.k[kb + d];
          const p = Math.exp(dot * scale - lse);
          let dp = 0;
          for (let d = 0; d < D; d++) dp += grad.dO[qb + d] * a.v[kb + d];
          const ds = p * (dp - delta);
          for (let d = 0; d < D; d++) {
            dv[kb + d] += p * grad.dO[qb + d];
            dq[qb + d] += scale * ds * a.k[kb + d];
            dk[kb + d] += scale * ds * a.q[qb + d];
          }
        }
      }
    }
    for (let x = 0; x < dq.length; x++) out.dq[x] += dq[x];
    for (let x = 0; x < dk.length; x++) {
      out.dk[x] += dk[x];
      out.dv[x] += dv[x];
    }
  },
};

export interface FullAttentionArgs {
  q: ArrayLike<number>; // [seqLen, heads, headDim]
  k: ArrayLike<number>; // [seqLen, kvHeads, headDim]
  v: ArrayLike<number>;
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  causal: boolean;
  /** Sliding window W (kernels/types.ts); 0 or absent = none. */
  window?: number;
  /** Document id per position. */
  seg?: Int32Array;
  /** Defaults to 1/sqrt(headDim). */
  scale?: number;
  /** Upstream gradient [seqLen, heads, headDim]; when given, dq/dk/dv are returned. */
  dO?: ArrayLike<number>;
}

export interface FullAttentionResult {
  o: Float64Array; // [seqLen, heads, headDim]
  lse: Float64Array; // [heads, seqLen]
  dq?: Float64Array;
  dk?: Float64Array;
  dv?: Float64Array;
}

/**
 * Attention over a whole unsharded sequence (positions 0..seqLen-1), straight
 * from the softmax formula: materialise each row of scores, softmax it, take
 * the weighted sum. The backward pass uses the softmax Jacobian
 *   dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik)
 * with the row sum taken over P and dP directly, not via rowsum(dO * o) and
 * not via an externally supplied lse, so it shares no code path with the
 * blockwise kernels it checks.
 */
export function fullAttentionReference(a: FullAttentionArgs): FullAttentionResult {
  const { seqLen: S, heads, kvHeads, headDim: D, causal, seg } = a;
  const scale = a.scale ?? 1 / Math.sqrt(D);
  if (heads % kvHeads !== 0) throw new Error(`heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
  const group = heads / kvHeads;
  const o = new Float64Array(S * heads * D);
  const lse = new Float64Array(heads * S).fill(-Infinity);
  const dO = a.dO;
  const dq = dO ? new Float64Array(S * heads * D) : undefined;
  const dk = dO ? new Float64Array(S * kvHeads * D) : undefined;
  const dv = dO ? new Float64Array(S * kvHeads * D) : undefined;
  const P = new Float64Array(S);
  const dP = new Float64Array(S);
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group);
    for (let i = 0; i < S; i++) {
      const qb = (i * heads + h) * D;
      const w = a.window ?? 0;
      const allowed = (j: number): boolean => (!causal || j <= i) && (!seg || seg[i] === seg[j]) && (!w || (i - j < w && (causal || j - i < w)));
      let m = -Infinity;
      for (let j = 0; j < S; j++) {
        if (!allowed(j)) {
          P[j] = -Infinity;
          continue;
        }
        let dot = 0;
        for (let d = 0; d < D; d++) dot += a.q[qb + d] * a.k[(j * kvHeads + g) * D + d];
        P[j] = dot * scale;
        m = Math.max(m, P[j]);
      }
      if (m === -Infinity) continue;
      let z = 0;
      for (let j = 0; j < S; j++) {
        P[j] = P[j] === -Infinity ? 0 : Math.exp(P[j] - m);
        z += P[j];
      }
      for (let j = 0; j < S; j++) P[j] /= z;
      lse[h * S + i] = m + Math.log(z);
      for (let j = 0; j < S; j++) {
        if (P[j] === 0) continue;
        for (let d = 0; d < D; d++) o[qb + d] += P[j] * a.v[(j * kvHeads + g) * D + d];
      }
      if (!dO || !dq || !dk || !dv) continue;
      let rowSum = 0;
      for (let j = 0; j < S; j++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += dO[qb + d] * a.v[(j * kvHeads + g) * D + d];
        dP[j] = dot;
        rowSum += P[j] * dot;
      }
      for (let j = 0; j < S; j++) {
        if (P[j] === 0) continue;
        const dS = P[j] * (dP[j] - rowSum);
        const kb = (j * kvHeads + g) * D;
        for (let d = 0; d < D; d++) {
          dv[kb + d] += P[j] * dO[qb + d];
          dq[qb + d] += scale * dS * a.k[kb + d];
          dk[kb + d] += scale * dS * a.q[qb + d];
        }
      }
    }
  }
  return dO ? { o, lse, dq, dk, dv } : { o, lse };
}
