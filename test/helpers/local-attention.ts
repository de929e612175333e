import { rowDelta } from '../../src/kernels/merge.js';
import { referenceKernel } from '../../src/kernels/reference.js';
import type { BlockArgs } from '../../src/kernels/types.js';
import { onHostArrays } from '../../src/attention/op.js';
import type { AttentionOp } from '../../src/attention/op.js';
import type { ModelConfig } from '../../src/model/types.js';

/**
 * A stand-in for ring attention with no network: N ranks in one process, each
 * holding its shard's positions. A rank's k-th attention call waits until every
 * rank has made its k-th call (the same rendezvous the ring imposes), then each
 * rank's queries attend to the KV of all ranks in a single reference-kernel
 * call; in backward, each rank's dk/dv contributions are summed into the
 * owning rank's slice. Exact, so N concurrent model.step calls must
 * reproduce the unsharded model.
 */
export function inProcessRing(cfg: ModelConfig, positions: Int32Array[]): AttentionOp[] {
  const N = positions.length;
  const heads = cfg.heads;
  const kvHeads = cfg.kvHeads;
  const hd = cfg.dModel / cfg.heads;
  const lens = positions.map((p) => p.length);
  const starts = lens.map((_, r) => lens.slice(0, r).reduce((a, b) => a + b, 0));
  const total = lens.reduce((a, b) => a + b, 0);
  const allPos = new Int32Array(total);
  positions.forEach((p, r) => allPos.set(p, starts[r]));
  const concat = (parts: Float32Array[], width: number): Float32Array => {
    const out = new Float32Array(total * width);
    parts.forEach((p, r) => out.set(p, starts[r] * width));
    return out;
  };
  const args = (r: number, q: Float32Array, k: Float32Array, v: Float32Array): BlockArgs => ({
    heads,
    kvHeads,
    headDim: hd,
    qLen: lens[r],
    kvLen: total,
    q,
    k,
    v,
    qPos: positions[r],
    kvPos: allPos,
    causal: true,
    scale: 1 / Math.sqrt(hd),
  });

  type Phase = {
    inputs: unknown[];
    arrived: number;
    done: Promise<unknown[]>;
    resolve: (out: unknown[]) => void;
    reject: (e: unknown) => void;
  };
  const phases = new Map<number, Phase>();
  const calls = new Array<number>(N).fill(0);
  async function rendezvous<T, R>(rank: number, input: T, compute: (all: T[]) => Promise<R[]>): Promise<R> {
    const k = calls[rank]++;
    let ph = phases.get(k);
    if (!ph) {
      let resolve!: (out: unknown[]) => void;
      let reject!: (e: unknown) => void;
      const done = new Promise<unknown[]>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      ph = { inputs: new Array(N), arrived: 0, done, resolve, reject };
      phases.set(k, ph);
    }
    ph.inputs[rank] = input;
    if (++ph.arrived === N) {
      phases.delete(k);
      try {
        ph.resolve(await compute(ph.inputs as T[]));
      } catch (e) {
        ph.reject(e);
      }
    }
    return (await ph.done)[rank] as R;
  }

  const kvw = kvHeads * hd;
  return positions.map((_, rank) => onHostArrays({
    forward: (q, k, v) =>
      rendezvous(rank, { q, k, v }, async (all) => {
        const K = concat(
          all.map((a) => a.k),
          kvw,
        );
        const V = concat(
          all.map((a) => a.v),
          kvw,
        );
        return Promise.all(all.map((a, r) => referenceKernel.forward(args(r, a.q, K, V))));
      }),
    backward: (saved, dO) =>
      rendezvous(rank, { saved, dO }, async (all) => {
        const K = concat(
          all.map((a) => a.saved.k),
          kvw,
        );
        const V = concat(
          all.map((a) => a.saved.v),
          kvw,
        );
        const dK = new Float32Array(total * kvw);
        const dV = new Float32Array(total * kvw);
        const dQ: Float32Array[] = [];
        for (let r = 0; r < N; r++) {
          const { saved: s, dO: g } = all[r];
          const acc = { dq: new Float32Array(lens[r] * heads * hd), dk: dK, dv: dV };
          await referenceKernel.backward(args(r, s.q, K, V), { dO: g, lse: s.lse, delta: rowDelta(g, s.o, lens[r], heads, hd) }, acc);
          dQ.push(acc.dq);
        }
        return dQ.map((dq, r) => ({
          dq,
          dk: dK.slice(starts[r] * kvw, (starts[r] + lens[r]) * kvw),
          dv: dV.slice(starts[r] * kvw, (starts[r] + lens[r]) * kvw),
        }));
      }),
  }));
}
