import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { shardPositions, type Layout } from '../src/attention/layout.js';
import { newRingStepStats, ringAttentionBackward, ringAttentionForward } from '../src/attention/ring-attention.js';
import { loadKernel } from '../src/kernels/index.js';
import { canAttend, isFullyMasked } from '../src/kernels/mask.js';
import { referenceKernel } from '../src/kernels/reference.js';
import type { AttentionKernel } from '../src/kernels/types.js';
import { selectBackend } from '../src/tensor/backend.js';
import { fullAttentionReference, gatherRows, makeProblem, relErr } from './helpers/attention.js';
import { closeAll, openLocalRingPair } from './helpers/ring.js';
import { rng } from './helpers/rng.js';

/*
 * Sliding-window attention (issue 15): query i attends keys j with
 * i - W < j <= i (causal) or |i - j| < W. The oracle is the float64 full
 * reference with the window written into its own mask (kernels/reference.ts);
 * the kernels, the block test and the ring (which skips whole hops) must agree.
 */

const kernels: Array<{ name: string; kernel: AttentionKernel }> = [];
before(async () => {
  await selectBackend('wasm');
  kernels.push({ name: 'reference', kernel: referenceKernel });
  kernels.push({ name: 'tfjs', kernel: (await loadKernel('tfjs', { tileQ: 8, tileKV: 8, threads: 1 })).kernel });
  const native = await loadKernel('native', { tileQ: 8, tileKV: 8, threads: 1 }).catch(() => null);
  if (native) kernels.push({ name: 'native', kernel: native.kernel });
  else console.log('window: native kernel not built here; reference and tfjs only');
});

describe('the window mask', () => {
  test('isFullyMasked under a window is exact: it agrees with every pair on random position sets, segments and windows', () => {
    const r = rng(11);
    for (let trial = 0; trial < 3000; trial++) {
      const pick = (n: number) => Int32Array.from({ length: n }, () => Math.floor(r() * 64));
      const qPos = pick(1 + Math.floor(r() * 6));
      const kvPos = pick(1 + Math.floor(r() * 6));
      const segs = r() < 0.3;
      const m = {
        causal: r() < 0.5,
        window: 1 + Math.floor(r() * 20),
        qPos,
        kvPos,
        qSeg: segs ? Int32Array.from(qPos, () => Math.floor(r() * 2)) : undefined,
        kvSeg: segs ? Int32Array.from(kvPos, () => Math.floor(r() * 2)) : undefined,
      };
      let any = false;
      for (let i = 0; i < qPos.length; i++) for (let j = 0; j < kvPos.length; j++) any ||= canAttend(m, i, j);
      assert.equal(isFullyMasked(m), !any, JSON.stringify({ ...m, qPos: [...qPos], kvPos: [...kvPos] }));
    }
  });
});

describe('every kernel against the float64 reference', () => {
  const S = 40;
  for (const causal of [true, false]) {
    for (const W of [1, 7, 16, 40, 45]) {
      test(`${causal ? 'causal' : 'not causal'}, W = ${W}, GQA, with and without packed documents: forward and backward`, async () => {
        for (const docs of [0, 3]) {
          const p = makeProblem({ seqLen: S, heads: 4, kvHeads: 2, headDim: 8, seed: W + (causal ? 0 : 100) + docs, docs });
          const ref = fullAttentionReference({ ...p, causal, window: W, dO: p.dO });
          const pos = Int32Array.from({ length: S }, (_, i) => i);
          const args = { heads: 4, kvHeads: 2, headDim: 8, qLen: S, kvLen: S, q: p.q, k: p.k, v: p.v, qPos: pos, kvPos: pos, qSeg: p.seg, kvSeg: p.seg, causal, window: W, scale: 1 / Math.sqrt(8) };
          for (const { name, kernel } of kernels) {
            const out = await kernel.forward(args);
            assert.ok(relErr(out.o, ref.o) < 1e-5, `${name} o, docs ${docs}: ${relErr(out.o, ref.o)}`);
            const finite = (x: ArrayLike<number>) => Array.from(x, (v) => (Number.isFinite(v) ? v : -1e9));
            assert.ok(relErr(finite(out.lse), finite(ref.lse)) < 1e-5, `${name} lse, docs ${docs}`);
            const delta = new Float32Array(4 * S);
            for (let i = 0; i < S; i++) for (let h = 0; h < 4; h++) for (let d = 0; d < 8; d++) delta[h * S + i] += p.dO[(i * 4 + h) * 8 + d] * out.o[(i * 4 + h) * 8 + d];
            const g = { dq: new Float32Array(S * 32), dk: new Float32Array(S * 16), dv: new Float32Array(S * 16) };
            await kernel.backward(args, { dO: p.dO, lse: out.lse, delta }, g);
            for (const key of ['dq', 'dk', 'dv'] as const) assert.ok(relErr(g[key], ref[key]!) < 1e-4, `${name} ${key}, docs ${docs}: ${relErr(g[key], ref[key]!)}`);
          }
        }
      });
    }
  }
});

/** Ring attention of the whole problem on `rings`, gathered back into sequence order. */
type Rings = Awaited<ReturnType<typeof openLocalRingPair>>;

/** Ring attention of the whole problem on `rings` (with their reverse ring unless `oneWay`), gathered back into sequence order. */
async function onRing(pair: Rings, kernel: AttentionKernel, p: ReturnType<typeof makeProblem>, o: { causal: boolean; window: number; layout: Layout; oneWay?: boolean }) {
  const rings = pair.forward;
  const N = rings.length;
  const S = p.seqLen;
  const { heads: H, kvHeads: G, headDim: D } = p;
  const fwd = rings.map(() => newRingStepStats());
  const bwd = rings.map(() => newRingStepStats());
  const parts = await Promise.all(
    rings.map(async (ring) => {
      const pos = shardPositions(o.layout, S, N, ring.rank);
      const reverse = o.oneWay ? null : pair.reverse[ring.rank];
      const cfg = { ring, reverse, kernel, causal: o.causal, window: o.window, heads: H, kvHeads: G, headDim: D, overlap: true, positionsOf: (r: number) => shardPositions(o.layout, S, N, r) };
      const q = gatherRows(p.q, pos, H * D);
      const k = gatherRows(p.k, pos, G * D);
      const v = gatherRows(p.v, pos, G * D);
      const f = await ringAttentionForward({ ...cfg, stats: fwd[ring.rank] }, q, k, v);
      const g = await ringAttentionBackward({ ...cfg, stats: bwd[ring.rank] }, { q, k, v, o: f.o, lse: f.lse }, gatherRows(p.dO, pos, H * D));
      return { pos, o: f.o, ...g };
    }),
  );
  const gather = (key: 'o' | 'dq' | 'dk' | 'dv', width: number) => {
    const out = new Float64Array(S * width);
    for (const part of parts) for (let i = 0; i < part.pos.length; i++) for (let c = 0; c < width; c++) out[part.pos[i] * width + c] = part[key][i * width + c];
    return out;
  };
  const sum = (st: ReturnType<typeof newRingStepStats>[]) => st.reduce((a, s) => a + s.bytesSent, 0);
  return { o: gather('o', H * D), dq: gather('dq', H * D), dk: gather('dk', G * D), dv: gather('dv', G * D), fwdBytes: sum(fwd), bwdBytes: sum(bwd) };
}

describe('ring attention with a window skips whole hops, exactly', () => {
  const rings: Rings[] = [];
  after(async () => {
    for (const r of rings) await closeAll([...r.forward, ...r.reverse]);
  });
  const ringOf = async (n: number) => {
    const r = await openLocalRingPair(n);
    rings.push(r);
    return r;
  };

  for (const n of [1, 2, 3, 4, 8]) {
    test(`a ring of ${n}: W below, equal to and above the shard, causal and not, both dK/dV routes, against the float64 reference; bytes per the hop count`, async () => {
      const ring = await ringOf(n);
      const kernel = kernels.at(-1)!.kernel;
      const shard = 6;
      const S = shard * n * 2;
      for (const causal of [true, false]) {
        for (const layout of ['contiguous', 'zigzag'] as const) {
          const len = layout === 'zigzag' ? S : S / 2;
          const block = len / n;
          for (const [W, oneWay] of [Math.max(1, block - 2), block, block + 3, 3 * block + 1].flatMap((w) => [[w, false], [w, true]] as const)) {
            const p = makeProblem({ seqLen: len, heads: 2, kvHeads: 1, headDim: 8, seed: n * 100 + W });
            const ref = fullAttentionReference({ ...p, causal, window: W, dO: p.dO });
            const got = await onRing(ring, kernel, p, { causal, window: W, layout, oneWay });
            const what = `${causal ? 'causal' : 'not causal'}, ${layout}, shard ${block}, W = ${W}, ${oneWay ? 'one-way ring' : 'with the reverse ring'}`;
            for (const key of ['o', 'dq', 'dk', 'dv'] as const) assert.ok(relErr(got[key], ref[key]!) < 1e-5, `${what}: ${key} ${relErr(got[key], ref[key]!)}`);
            if (layout !== 'contiguous') continue;
            // The hop count, from the layout alone: block o goes to the next h = ceil((W - 1) / block) ranks while
            // some query is within W of it (causal: only later ranks; not causal: earlier ones too, reached round the ring).
            const h = Math.ceil((W - 1) / block);
            const reach = Array.from({ length: n }, (_, o) => {
              if (causal) return Math.min(h, n - 1 - o);
              // An earlier rank within the window is n - 1 hops away, the farthest of all.
              return Math.min(h, o) > 0 ? n - 1 : Math.min(h, n - 1 - o);
            });
            const kvBytes = block * 1 * 8 * 4 * 2;
            const hops = reach.reduce((a, b) => a + b, 0);
            assert.equal(got.fwdBytes, hops * kvBytes, `${what}: forward bytes`);
            // Backward: the KV blocks again, and each dK/dV (as large as its KV block, float32) back to its owner:
            // with the reverse ring straight back (with its owner id), the way it came; one-way, with its block,
            // then home alone (with its owner id) round the rest of the ring.
            const dkv = oneWay ? reach.reduce((a, r) => a + (r > 0 ? r * kvBytes + (n - r) * (kvBytes + 4) : 0), 0) : hops * (kvBytes + 4);
            assert.equal(got.bwdBytes, hops * kvBytes + dkv, `${what}: backward bytes`);
          }
        }
      }
    });
  }

  test('without a window nothing changes: every block goes all the way round', async () => {
    const ring = await ringOf(3);
    const p = makeProblem({ seqLen: 36, heads: 2, kvHeads: 1, headDim: 8, seed: 5 });
    const got = await onRing(ring, kernels.at(-1)!.kernel, p, { causal: true, window: 0, layout: 'zigzag' });
    const ref = fullAttentionReference({ ...p, causal: true, dO: p.dO });
    for (const key of ['o', 'dq', 'dk', 'dv'] as const) assert.ok(relErr(got[key], ref[key]!) < 1e-5, key);
    const kvBytes = 12 * 8 * 4 * 2;
    assert.equal(got.fwdBytes, 3 * 2 * kvBytes);
  });
});
