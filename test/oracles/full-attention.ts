/**
 * The test oracle of attention: the whole sequence at once, in float64, with the
 * mask read from positions (src/kernels/mask.ts). Every kernel, the ring loop
 * and the CLI's outputs are checked against it; it is not part of the package.
 */

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
