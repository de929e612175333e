import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newRingStepStats, ringAttentionOp, type RingConfig } from '../src/attention/ring-attention.js';
import { shardPositions, type Layout } from '../src/attention/layout.js';
import { Trace } from '../src/attention/trace.js';
import { createNativeEngine, nativeEngineUnavailable } from '../src/engine/native.js';
import type { Engine, Tensor } from '../src/engine/types.js';
import { openGpu, type OpenedGpu } from '../src/engine/webgpu/device.js';
import { createWebGPUEngine } from '../src/engine/webgpu/engine.js';
import { loadKernel } from '../src/kernels/index.js';
import { initParams } from '../src/model/params.js';
import { createModel } from '../src/model/transformer.js';
import type { ModelConfig } from '../src/model/types.js';
import type { Ring } from '../src/ring/transport.js';
import { assertClose, fullAttentionReference, gatherRows, makeProblem, relErr, wholeSequence, type Problem } from './helpers/attention.js';
import { closeAll, openLocalRing } from './helpers/ring.js';

// Ring attention with the blocks on a WebGPU device (a software one here: lavapipe), against
// the float64 reference; one training step on webgpu against the native CPU engine.

const SEQ = 48;
const gpus: OpenedGpu[] = [];
const engines: Engine[] = [];
const rings = new Map<number, Ring[]>();
let skip: string | false = false;

before(async () => {
  try {
    for (let r = 0; r < 4; r++) gpus.push(await openGpu(undefined, { allowSoftware: true }));
  } catch (e) {
    skip = `no WebGPU adapter: ${(e as Error).message}`;
    console.log(`# webgpu ring tests skipped: ${skip}`);
    return;
  }
  for (const g of gpus) engines.push(createWebGPUEngine(g));
  for (const n of [2, 3, 4]) rings.set(n, await openLocalRing(n));
});

after(async () => {
  for (const r of rings.values()) await closeAll(r);
  for (const e of engines) e.dispose();
  for (const g of gpus) g.close();
});

const put = (e: Engine, x: Float32Array): Tensor => {
  const t = e.floats(x.length);
  e.write(t, x);
  return t;
};

/** Forward and backward on every rank's own device; full-sequence results reassembled. */
async function runRing(n: number, layout: Layout, causal: boolean, p: Problem, traces?: Trace[]) {
  const { heads, kvHeads, headDim: D } = p;
  const members = n === 1 ? [null] : rings.get(n)!;
  const positionsOf = (r: number) => shardPositions(layout, SEQ, n, r);
  const { all, place } = wholeSequence(SEQ, heads, kvHeads, D);
  await Promise.all(
    members.map(async (ring, r) => {
      const e = engines[r];
      const pos = positionsOf(r);
      const cfg: RingConfig = {
        ring, causal, heads, kvHeads, headDim: D, overlap: r % 2 === 0, positionsOf,
        segments: p.seg ? Int32Array.from(pos, (t) => p.seg![t]) : undefined,
        stats: newRingStepStats(),
        trace: traces?.[r],
      };
      const op = ringAttentionOp(cfg);
      const m = pos.length;
      const t = { q: put(e, gatherRows(p.q, pos, heads * D)), k: put(e, gatherRows(p.k, pos, kvHeads * D)), v: put(e, gatherRows(p.v, pos, kvHeads * D)), o: e.floats(m * heads * D), lse: e.floats(heads * m) };
      const g = { dq: e.floats(m * heads * D), dk: e.floats(m * kvHeads * D), dv: e.floats(m * kvHeads * D) };
      await op.forward(e, t);
      await op.backward(e, t, put(e, gatherRows(p.dO, pos, heads * D)), g);
      const [o, lse, dq, dk, dv] = await Promise.all([t.o, t.lse, g.dq, g.dk, g.dv].map((x) => e.read(x)));
      place(pos, { o, lse, dq, dk, dv });
      assert.equal(cfg.stats!.steps, 2 * n);
    }),
  );
  return all;
}

for (const n of [1, 2, 3, 4]) {
  test(`webgpu ring of ${n}: layouts, masks and head groupings equal full attention (float64) within 1e-4`, async (t) => {
    if (skip) return t.skip(skip);
    let seed = 500 * n;
    const cases: Array<{ layout: Layout; causal: boolean; kvHeads: number; docs?: number }> = [
      { layout: 'zigzag', causal: true, kvHeads: 2 },
      { layout: 'contiguous', causal: true, kvHeads: 4 },
      { layout: 'striped', causal: false, kvHeads: 1 },
      { layout: 'zigzag', causal: true, kvHeads: 1, docs: 4 },
    ];
    for (const c of cases) {
      const p = makeProblem({ seqLen: SEQ, heads: 4, kvHeads: c.kvHeads, headDim: 16, seed: seed++, docs: c.docs });
      const got = await runRing(n, c.layout, c.causal, p);
      const ref = fullAttentionReference({ ...p, seqLen: SEQ, causal: c.causal, seg: p.seg, dO: p.dO });
      const label = `N=${n} ${c.layout} causal=${c.causal} kvHeads=${c.kvHeads}${c.docs ? ' packed' : ''}`;
      assertClose(got.o, ref.o, `${label} o`, 1e-4);
      assertClose(got.lse, ref.lse, `${label} lse`, 1e-4);
      assertClose(got.dq, ref.dq!, `${label} dq`, 1e-4);
      assertClose(got.dk, ref.dk!, `${label} dk`, 1e-4);
      assertClose(got.dv, ref.dv!, `${label} dv`, 1e-4);
    }
  });
}

test('webgpu: the next KV block is on the wire before the current block has finished computing (trace)', async (t) => {
  if (skip) return t.skip(skip);
  const n = 3;
  // Large enough for a software GPU's compute to take longer than a loopback hop.
  const p = makeProblem({ seqLen: 3 * 256, heads: 4, kvHeads: 4, headDim: 64, seed: 3 });
  const traces = [0, 1, 2].map((r) => new Trace(r));
  const members = rings.get(n)!;
  const positionsOf = (r: number) => shardPositions('contiguous', p.q.length / (4 * 64), n, r);
  await Promise.all(
    members.map(async (ring, r) => {
      const e = engines[r];
      const pos = positionsOf(r);
      const op = ringAttentionOp({ ring, causal: false, heads: 4, kvHeads: 4, headDim: 64, overlap: true, positionsOf, trace: traces[r] });
      const m = pos.length;
      await op.forward(e, { q: put(e, gatherRows(p.q, pos, 256)), k: put(e, gatherRows(p.k, pos, 256)), v: put(e, gatherRows(p.v, pos, 256)), o: e.floats(m * 256), lse: e.floats(4 * m) });
    }),
  );
  for (const tr of traces) {
    const compute = tr.events.filter((e) => e.cat === 'compute');
    const transfers = tr.events.filter((e) => e.cat === 'transfer');
    assert.equal(compute.length, n, `rank ${tr.rank}: one compute per step`);
    assert.equal(transfers.length, n - 1, `rank ${tr.rank}: one transfer per hop`);
    for (let s = 0; s < n - 1; s++) {
      const c = compute[s];
      assert.ok(transfers[s].ts < c.ts + c.dur, `rank ${tr.rank} step ${s}: the transfer began at ${transfers[s].ts}, after the compute ended at ${c.ts + c.dur}`);
    }
  }
});

test('a training step on webgpu equals the native CPU engine within 1e-4 (loss and every gradient)', async (t) => {
  if (skip) return t.skip(skip);
  const missing = nativeEngineUnavailable();
  if (missing) return t.skip(`native engine unavailable: ${missing}`);
  const cfg: ModelConfig = { vocabSize: 61, dModel: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 48, ffnChunk: 16, norm: 'rms', tiedEmbeddings: false, ropeBase: 10000, initStd: 0.1 };
  const n = 40;
  const tokens = Int32Array.from({ length: n }, (_, i) => (i * 17 + 3) % 61);
  const targets = Int32Array.from({ length: n }, (_, i) => (i % 7 === 0 ? -1 : (i * 5 + 1) % 61));
  const positions = Int32Array.from({ length: n }, (_, i) => i);
  const shard = { tokens, targets, positions };
  const { kernel } = await loadKernel('native', { tileQ: 16, tileKV: 16, threads: 1 });
  const step = async (e: Engine) => {
    const model = createModel(e, cfg, { maxTokens: n });
    e.write(model.params, initParams(cfg, 5).flat);
    e.zero(model.grads);
    const attn = ringAttentionOp({ ring: null, kernel, causal: true, heads: 4, kvHeads: 2, headDim: 8, overlap: false, positionsOf: () => positions });
    const r = await model.step(shard, attn, 1 / 35);
    return { loss: r.lossSum, grads: Float32Array.from(await e.read(model.grads)) };
  };
  const cpu = createNativeEngine({ threads: 1 });
  const want = await step(cpu);
  const got = await step(engines[0]);
  cpu.dispose();
  assert.ok(Math.abs(got.loss - want.loss) / Math.abs(want.loss) <= 1e-4, `loss ${got.loss} vs ${want.loss}`);
  const err = relErr(got.grads, want.grads);
  assert.ok(err <= 1e-4, `gradients: relative error ${err}`);
  assert.ok(want.grads.some((x) => x !== 0), 'the reference gradients are not all zero');
});
