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
