import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ringAttentionBackward, ringAttentionForward, newRingStepStats, type RingAttentionConfig } from '../src/attention/ring-attention.js';
import { LAYOUTS, shardPositions, type Layout } from '../src/attention/layout.js';
import { loadKernel } from '../src/kernels/index.js';
import type { AttentionKernel } from '../src/kernels/types.js';
import { selectBackend } from '../src/tensor/backend.js';
import type { Ring } from '../src/ring/transport.js';
import { assertClose, fullAttentionReference, gatherRows, makeProblem, wholeSequence, type Problem } from './helpers/attention.js';
import { closeAll, openLocalRing } from './helpers/ring.js';

const RING_SIZES = [1, 2, 3, 4, 8];
const SEQ = 48; // a multiple of 2N for every N above, so every layout applies
const rings = new Map<number, Ring[]>();
const kernels: AttentionKernel[] = [];

before(async () => {
  await selectBackend('wasm');
  const tile = { tileQ: 4, tileKV: 4, threads: 1 };
  kernels.push((await loadKernel('reference', tile)).kernel, (await loadKernel('tfjs', tile)).kernel);
  try {
    kernels.push((await loadKernel('native', tile)).kernel);
  } catch (err) {
    console.log(`# native kernel not tested: ${(err as Error).message}`);
  }
  for (const n of RING_SIZES) if (n > 1) rings.set(n, await openLocalRing(n));
});

after(async () => {
  for (const r of rings.values()) await closeAll(r);
});

/** Runs ring attention forward+backward on every rank and reassembles full-sequence results. */
async function runRing(kernel: AttentionKernel, n: number, layout: Layout, causal: boolean, p: Problem) {
  const { heads, kvHeads, headDim: D } = p;
  const members = n === 1 ? [null] : rings.get(n)!;
  const positionsOf = (r: number) => shardPositions(layout, SEQ, n, r);
  const { all, place } = wholeSequence(SEQ, heads, kvHeads, D);
  await Promise.all(
    members.map(async (ring, r) => {
      const pos = positionsOf(r);
      const cfg: RingAttentionConfig = {
        ring, kernel, causal, heads, kvHeads, headDim: D, overlap: r % 2 === 0, positionsOf,
        segments: p.seg ? Int32Array.from(pos, (t) => p.seg![t]) : undefined,
        stats: newRingStepStats(),
      };
      const q = gatherRows(p.q, pos, heads * D);
      const k = gatherRows(p.k, pos, kvHeads * D);
      const v = gatherRows(p.v, pos, kvHeads * D);
      const fwd = await ringAttentionForward(cfg, q, k, v);
      const grads = await ringAttentionBackward(cfg, { q, k, v, o: fwd.o, lse: fwd.lse }, gatherRows(p.dO, pos, heads * D));
      place(pos, { ...fwd, ...grads });
      assert.equal(cfg.stats!.steps, 2 * n);
    }),
  );
  return all;
}

function check(got: Awaited<ReturnType<typeof runRing>>, p: Problem, causal: boolean, label: string) {
  const ref = fullAttentionReference({ ...p, seqLen: SEQ, causal, seg: p.seg, dO: p.dO });
  assertClose(got.o, ref.o, `${label} o`);
  assertClose(got.lse, ref.lse, `${label} lse`);
  assertClose(got.dq, ref.dq!, `${label} dq`);
  assertClose(got.dk, ref.dk!, `${label} dk`);
  assertClose(got.dv, ref.dv!, `${label} dv`);
}

for (const n of RING_SIZES) {
  test(`ring of ${n}: every kernel, layout, mask and head grouping equals full attention`, async () => {
    let seed = 1000 * n;
    for (const kernel of kernels) {
      for (const layout of LAYOUTS) {
        for (const causal of [false, true]) {
          for (const kvHeads of [4, 2]) {
            const p = makeProblem({ seqLen: SEQ, heads: 4, kvHeads, headDim: 8, seed: seed++ });
            check(await runRing(kernel, n, layout, causal, p), p, causal, `${kernel.name} N=${n} ${layout} causal=${causal} kvHeads=${kvHeads}`);
          }
        }
        // Packed documents, with and without the causal mask, MQA.
        for (const causal of [false, true]) {
          const p = makeProblem({ seqLen: SEQ, heads: 4, kvHeads: 1, headDim: 8, seed: seed++, docs: 4 });
          check(await runRing(kernel, n, layout, causal, p), p, causal, `${kernel.name} N=${n} ${layout} packed causal=${causal}`);
        }
      }
    }
  });
}

test('causal contiguous layout skips the fully masked ring steps', async () => {
  const n = 4;
  const p = makeProblem({ seqLen: SEQ, heads: 2, kvHeads: 2, headDim: 8, seed: 7 });
  const stats = await Promise.all(
    rings.get(n)!.map(async (ring, r) => {
      const positionsOf = (x: number) => shardPositions('contiguous', SEQ, n, x);
      const cfg: RingAttentionConfig = { ring, kernel: kernels[0], causal: true, heads: 2, kvHeads: 2, headDim: 8, overlap: true, positionsOf, stats: newRingStepStats() };
      const pos = positionsOf(r);
      await ringAttentionForward(cfg, gatherRows(p.q, pos, 16), gatherRows(p.k, pos, 16), gatherRows(p.v, pos, 16));
      return cfg.stats!;
    }),
  );
  // Rank r needs only the blocks of ranks 0..r: it skips n-1-r of its n steps.
  assert.deepEqual(stats.map((s) => s.skippedSteps), [3, 2, 1, 0]);
});
