import { rowDelta } from '../../src/kernels/merge.js';
import { referenceKernel } from '../../src/kernels/reference.js';
import { ringAttentionOp } from '../../src/attention/ring-attention.js';
import type { BlockArgs } from '../../src/kernels/types.js';
import { onHostArrays } from '../../src/attention/op.js';
import type { AttentionOp } from '../../src/attention/op.js';
import type { TrainRing } from '../../src/train/loop.js';

/**
 * An in-process stand-in for the ZeroMQ ring, for testing the training loop:
 * N "ranks" run `train` concurrently in one process. Collectives meet through
 * `Exchange`: the k-th call of every rank lands in slot k and resolves once all
 * ranks have arrived. Attention is exact and unsharded in effect: each rank
 * gathers every rank's K and V (with their global positions) and runs the
 * reference kernel of its queries against the whole sequence; the backward pass
 * sums every rank's dK/dV contributions for the rank's own keys. With one rank
 * it is plain local attention and allReduceSum is the identity.
 */
class Exchange<T> {
  private readonly seq: number[];
  private readonly slots = new Map<number, { values: T[]; arrived: number; resolve: (() => void)[] }>();
  constructor(private readonly size: number) {
    this.seq = new Array<number>(size).fill(0);
  }

  async gather(rank: number, value: T): Promise<T[]> {
    const k = this.seq[rank]++;
    let slot = this.slots.get(k);
    if (!slot) {
      slot = { values: new Array<T>(this.size), arrived: 0, resolve: [] };
      this.slots.set(k, slot);
    }
    slot.values[rank] = value;
    slot.arrived++;
    const s = slot;
    if (s.arrived === this.size) {
      this.slots.delete(k);
      for (const r of s.resolve) r();
    } else {
      await new Promise<void>((res) => s.resolve.push(res));
    }
    return s.values;
  }
}

export interface LocalDims {
  heads: number;
  kvHeads: number;
  headDim: number;
}

export function localRings(worldSize: number, dims: LocalDims, causal = true): TrainRing[] {
  const reduce = new Exchange<Float32Array>(worldSize);
  const fwd = new Exchange<{ k: Float32Array; v: Float32Array; pos: Int32Array }>(worldSize);
  const bwd = new Exchange<{ k: Float32Array; v: Float32Array; pos: Int32Array }>(worldSize);
  const bwdGrads = new Exchange<{ dk: Float32Array; dv: Float32Array }>(worldSize);
  const { heads, kvHeads, headDim } = dims;
  const kvRow = kvHeads * headDim;

  const concat = (parts: { k: Float32Array; v: Float32Array; pos: Int32Array }[]) => {
    const n = parts.reduce((a, p) => a + p.pos.length, 0);
    const k = new Float32Array(n * kvRow);
    const v = new Float32Array(n * kvRow);
    const pos = new Int32Array(n);
    let o = 0;
    for (const p of parts) {
      k.set(p.k, o * kvRow);
      v.set(p.v, o * kvRow);
      pos.set(p.pos, o);
      o += p.pos.length;
    }
    return { k, v, pos };
  };

  const args = (q: Float32Array, qPos: Int32Array, all: { k: Float32Array; v: Float32Array; pos: Int32Array }): BlockArgs => ({
    heads,
    kvHeads,
    headDim,
    qLen: qPos.length,
    kvLen: all.pos.length,
    q,
    k: all.k,
    v: all.v,
    qPos,
    kvPos: all.pos,
    causal,
    scale: 1 / Math.sqrt(headDim),
  });

  const rings: TrainRing[] = [];
  for (let rank = 0; rank < worldSize; rank++) {
    rings.push({
      rank,
      worldSize,
      async allReduceSum(x) {
        const parts = await reduce.gather(rank, x.slice());
        const out = new Float32Array(x.length);
        for (const p of parts) for (let i = 0; i < out.length; i++) out[i] += p[i];
        return out;
      },
      attention(positions): AttentionOp {
        const n = positions.length;
        return onHostArrays({
          async forward(q, k, v) {
            const all = concat(await fwd.gather(rank, { k, v, pos: positions }));
            return referenceKernel.forward(args(q, positions, all));
          },
          async backward(saved, dO) {
            const parts = await bwd.gather(rank, { k: saved.k, v: saved.v, pos: positions });
            const all = concat(parts);
            const acc = {
              dq: new Float32Array(n * heads * headDim),
              dk: new Float32Array(all.pos.length * kvRow),
              dv: new Float32Array(all.pos.length * kvRow),
            };
            const delta = rowDelta(dO, saved.o, n, heads, headDim);
            await referenceKernel.backward(args(saved.q, positions, all), { dO, lse: saved.lse, delta }, acc);
            const grads = await bwdGrads.gather(rank, { dk: acc.dk, dv: acc.dv });
            let start = 0;
            for (let r = 0; r < rank; r++) start += parts[r].pos.length;
            const dk = new Float32Array(n * kvRow);
            const dv = new Float32Array(n * kvRow);
            for (const g of grads) {
              for (let i = 0; i < n * kvRow; i++) {
                dk[i] += g.dk[start * kvRow + i];
                dv[i] += g.dv[start * kvRow + i];
              }
            }
            return { dq: acc.dq, dk, dv };
          },
        });
      },
      timings: () => ({ computeMs: 0, commMs: 0, waitMs: 0 }),
    });
  }
  return rings;
}

/** A ring of one: allReduceSum is the identity, attention is the ring loop itself on a ring of one (the reference kernel). */
export function localRing(dims: LocalDims, causal = true): TrainRing {
  return {
    rank: 0,
    worldSize: 1,
    allReduceSum: async (x) => x,
    attention: (positions) => ringAttentionOp({ ring: null, kernel: referenceKernel, causal, ...dims, overlap: false, positionsOf: () => positions }),
    timings: () => ({ computeMs: 0, commMs: 0, waitMs: 0 }),
  };
}
