import { loadSumInto } from '../addon/index.js';
import { shardPositions } from '../attention/layout.js';
import { newRingStepStats, ringAttentionOp } from '../attention/ring-attention.js';
import type { ClusterSpec } from '../config/index.js';
import type { AttentionKernel } from '../kernels/types.js';
import { allReduceSum } from '../ring/collectives.js';
import type { Ring } from '../ring/transport.js';
import { resolveLayout, type TrainRing } from './loop.js';

/** What the training loop needs from the ring: the gradient all-reduce and ring attention for this rank's shard. */
export function trainRingOn(ring: Ring, spec: ClusterSpec, kernel: AttentionKernel | null, reverse: Ring | null = null): TrainRing {
  const layout = resolveLayout(spec.attention);
  const stats = newRingStepStats();
  const sumInto = loadSumInto() ?? undefined;
  let commMs = 0;
  return {
    rank: ring.rank,
    worldSize: ring.worldSize,
    async allReduceSum(x) {
      const t0 = performance.now();
      const out = await allReduceSum(ring, x, { tag: 'grads', inPlace: true, add: sumInto });
      commMs += performance.now() - t0;
      return out;
    },
    startStep: (step) => ring.setStep(step),
    // scope local: the same loop on a ring of one, over this rank's own block only.
    attention: (positions, seqLen) =>
      ringAttentionOp({
        ring: spec.attention.scope === 'local' ? null : ring,
        reverse: spec.attention.scope === 'local' ? null : reverse,
        kernel: kernel ?? undefined,
        causal: spec.attention.causal,
        window: spec.attention.window,
        heads: spec.model.heads,
        kvHeads: spec.model.kvHeads,
        headDim: spec.model.dModel / spec.model.heads,
        overlap: spec.attention.overlap,
        wire: spec.ring.wire,
        positionsOf: spec.attention.scope === 'local' ? () => positions : (r) => shardPositions(layout, seqLen, ring.worldSize, r),
        stats,
      }),
    timings: () => ({ computeMs: stats.computeMs, commMs, waitMs: stats.waitMs }),
  };
}
