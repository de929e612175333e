import assert from 'node:assert/strict';
import { describe, it, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { UserError } from '../src/errors.js';
import { canAttend, isFullyMasked, loadKernel, type KernelName } from '../src/kernels/index.js';
import { emptyPartial, mergePartial, rowDelta } from '../src/kernels/merge.js';
import { referenceKernel } from '../src/kernels/reference.js';
import { createTfjsKernel } from '../src/kernels/tfjs.js';
import type { AttentionKernel, BlockArgs, BlockPartial } from '../src/kernels/types.js';
import { describeBackends, selectBackend } from '../src/tensor/backend.js';
import { Rng, deriveSeed, randn } from '../src/tensor/random.js';
import {
  assertClose,
  assertNoNaN,
  fullAttentionReference,
  gatherCols,
  gatherRows,
  makeProblem,
  range,
  scatterAddRows,
  type Problem,
} from './helpers/attention.js';

// The tfjs kernel is tested on wasm: the backend every machine here has.
const backend = await selectBackend('wasm');

const nativeLoad = await loadKernel('native', { tileQ: 16, tileKV: 16, threads: 1 }).then(
  (r) => ({ kernel: r.kernel, skip: undefined as string | undefined }),
  (e: Error) => ({ kernel: null, skip: `native kernel not available: ${e.message}` }),
);

interface KernelCase {
  label: string;
  kernel: AttentionKernel | null;
  skip?: string;
}
const KERNELS: KernelCase[] = [
  { label: 'reference', kernel: referenceKernel },
  { label: 'tfjs/wasm tiles 16x16', kernel: createTfjsKernel({ tileQ: 16, tileKV: 16 }) },
  { label: 'tfjs/wasm tiles 5x7', kernel: createTfjsKernel({ tileQ: 5, tileKV: 7 }) },
  { label: 'tfjs/wasm tiles 128x128 (larger than the block)', kernel: createTfjsKernel({ tileQ: 128, tileKV: 128 }) },
  { label: 'native', kernel: nativeLoad.kernel, skip: nativeLoad.skip },
];

// ------------------------------------------------------------------ helpers

function blockArgs(p: Problem, qRows: Int32Array, kvRows: Int32Array, causal: boolean): BlockArgs {
  return {
    heads: p.heads,
    kvHeads: p.kvHeads,
    headDim: p.headDim,
    qLen: qRows.length,
    kvLen: kvRows.length,
    q: gatherRows(p.q, qRows, p.heads * p.headDim),
    k: gatherRows(p.k, kvRows, p.kvHeads * p.headDim),
    v: gatherRows(p.v, kvRows, p.kvHeads * p.headDim),
    qPos: qRows,
    kvPos: kvRows,
    qSeg: p.seg ? Int32Array.from(qRows, (r) => p.seg![r]) : undefined,
    kvSeg: p.seg ? Int32Array.from(kvRows, (r) => p.seg![r]) : undefined,
    causal,
    scale: 1 / Math.sqrt(p.headDim),
  };
}

/** Full reference with dO restricted to `qRows` (other rows get zero upstream gradient). */
function referenceFor(p: Problem, causal: boolean, qRows: Int32Array) {
  const w = p.heads * p.headDim;
  const dO = new Float32Array(p.seqLen * w);
  for (const r of qRows) dO.set(p.dO.subarray(r * w, (r + 1) * w), r * w);
  return fullAttentionReference({ ...p, causal, dO });
}

/**
 * Ring attention on one machine: split the sequence into shards (each a list of
 * global positions), run every query shard against every KV shard, merge the
 * partials, then accumulate the backward over the KV shards with the final lse.
 */
async function blockwise(kernel: AttentionKernel, p: Problem, causal: boolean, shards: Int32Array[]) {
  const w = p.heads * p.headDim;
  const kw = p.kvHeads * p.headDim;
  const o = new Float64Array(p.seqLen * w);
  const lse = new Float64Array(p.heads * p.seqLen);
  const dq = new Float64Array(p.seqLen * w);
  const dk = new Float64Array(p.seqLen * kw);
  const dv = new Float64Array(p.seqLen * kw);
  let maskedRowsSeen = 0;
  let skippedBlocks = 0;
  for (const qRows of shards) {
    const acc: BlockPartial = emptyPartial(qRows.length, p.heads, p.headDim);
    for (const kvRows of shards) {
      const args = blockArgs(p, qRows, kvRows, causal);
      if (isFullyMasked(args)) skippedBlocks++;
      // Called even for fully masked blocks: the kernel must cope, and merging it is a no-op.
      const part = await kernel.forward(args);
      assertNoNaN(part.o, 'partial o');
      assertNoNaN(part.lse, 'partial lse');
      maskedRowsSeen += part.lse.filter((x) => x === -Infinity).length;
      mergePartial(acc, part, p.heads, p.headDim);
    }
    scatterAddRows(o, acc.o, qRows, w);
    for (let h = 0; h < p.heads; h++) qRows.forEach((r, i) => (lse[h * p.seqLen + r] = acc.lse[h * qRows.length + i]));
    const dO = gatherRows(p.dO, qRows, w);
    const delta = rowDelta(dO, acc.o, qRows.length, p.heads, p.headDim);
    const dqBlock = new Float32Array(qRows.length * w);
    for (const kvRows of shards) {
      const args = blockArgs(p, qRows, kvRows, causal);
      const dkBlock = new Float32Array(kvRows.length * kw);
      const dvBlock = new Float32Array(kvRows.length * kw);
      await kernel.backward(args, { dO, lse: acc.lse, delta }, { dq: dqBlock, dk: dkBlock, dv: dvBlock });
      scatterAddRows(dk, dkBlock, kvRows, kw);
      scatterAddRows(dv, dvBlock, kvRows, kw);
    }
    scatterAddRows(dq, dqBlock, qRows, w);
  }
  return { o, lse, dq, dk, dv, maskedRowsSeen, skippedBlocks };
}

function shardsFor(layout: 'contiguous' | 'zigzag' | 'striped' | 'uneven', seqLen: number, n: number): Int32Array[] {
  const out: Int32Array[] = [];
  if (layout === 'uneven') {
    const cuts = [0, 13, 30, 31, seqLen];
    for (let i = 0; i + 1 < cuts.length; i++) out.push(range(cuts[i], cuts[i + 1]));
    return out;
  }
  const per = seqLen / n;
  for (let r = 0; r < n; r++) {
    if (layout === 'contiguous') out.push(range(r * per, (r + 1) * per));
    else if (layout === 'striped') out.push(Int32Array.from({ length: per }, (_, i) => i * n + r));
    else {
      const c = per / 2;
      out.push(Int32Array.from([...range(r * c, (r + 1) * c), ...range((2 * n - 1 - r) * c, (2 * n - r) * c)]));
    }
  }
  return out;
}

// ------------------------------------------------------------------ cases

interface SingleCase {
  name: string;
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  causal: boolean;
  docs?: number;
  qRows?: [number, number];
}
const SINGLE: SingleCase[] = [
  { name: 'MHA causal', seqLen: 48, heads: 4, kvHeads: 4, headDim: 8, causal: true },
  { name: 'MHA non-causal', seqLen: 48, heads: 4, kvHeads: 4, headDim: 8, causal: false },
  { name: 'GQA 4q/2kv causal', seqLen: 40, heads: 4, kvHeads: 2, headDim: 16, causal: true },
  { name: 'MQA 4q/1kv non-causal', seqLen: 40, heads: 4, kvHeads: 1, headDim: 8, causal: false },
  { name: 'packed documents, causal, GQA', seqLen: 50, heads: 4, kvHeads: 2, headDim: 8, causal: true, docs: 4 },
  { name: 'packed documents, non-causal, MQA', seqLen: 50, heads: 4, kvHeads: 1, headDim: 8, causal: false, docs: 3 },
  { name: 'odd lengths qLen 37 kvLen 53, causal', seqLen: 53, heads: 4, kvHeads: 2, headDim: 8, causal: true, qRows: [16, 53] },
  { name: 'odd lengths qLen 37 kvLen 53, non-causal, documents', seqLen: 53, heads: 2, kvHeads: 1, headDim: 12, causal: false, docs: 3, qRows: [0, 37] },
];

interface RingCase {
  name: string;
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  causal: boolean;
  docs?: number;
  layout: 'contiguous' | 'zigzag' | 'striped' | 'uneven';
  ring: number;
}
const RING: RingCase[] = [
  { name: 'zigzag x4, causal, GQA', seqLen: 64, heads: 4, kvHeads: 2, headDim: 8, causal: true, layout: 'zigzag', ring: 4 },
  { name: 'contiguous x4, non-causal, MHA', seqLen: 48, heads: 4, kvHeads: 4, headDim: 8, causal: false, layout: 'contiguous', ring: 4 },
  { name: 'striped x3, causal, packed documents, MQA', seqLen: 48, heads: 4, kvHeads: 1, headDim: 8, causal: true, docs: 5, layout: 'striped', ring: 3 },
  { name: 'uneven shards (13, 17, 1, 22), causal, packed documents', seqLen: 53, heads: 2, kvHeads: 2, headDim: 8, causal: true, docs: 3, layout: 'uneven', ring: 4 },
];

// ------------------------------------------------------------------ tests

for (const kc of KERNELS) {
  describe(`kernel: ${kc.label}`, { skip: kc.skip }, () => {
    const kernel = kc.kernel!;

    for (const [n, c] of SINGLE.entries()) {
      it(`single block = full reference: ${c.name}`, async () => {
        const p = makeProblem({ ...c, seed: 100 + n });
        const qRows = c.qRows ? range(c.qRows[0], c.qRows[1]) : range(0, c.seqLen);
        const kvRows = range(0, c.seqLen);
        const ref = referenceFor(p, c.causal, qRows);
        const args = blockArgs(p, qRows, kvRows, c.causal);
        const part = await kernel.forward(args);
        const w = c.heads * c.headDim;
        assertClose(part.o, gatherRows(ref.o, qRows, w), 'o');
        assertClose(part.lse, gatherCols(ref.lse, c.heads, c.seqLen, qRows), 'lse');

        const dO = gatherRows(p.dO, qRows, w);
        const delta = rowDelta(dO, part.o, qRows.length, c.heads, c.headDim);
        const acc = {
          dq: new Float32Array(qRows.length * w),
          dk: new Float32Array(c.seqLen * c.kvHeads * c.headDim),
          dv: new Float32Array(c.seqLen * c.kvHeads * c.headDim),
        };
        await kernel.backward(args, { dO, lse: part.lse, delta }, acc);
        assertClose(acc.dq, gatherRows(ref.dq!, qRows, w), 'dq');
        assertClose(acc.dk, ref.dk!, 'dk');
        assertClose(acc.dv, ref.dv!, 'dv');
      });
    }

    for (const [n, c] of RING.entries()) {
      it(`blockwise identity (merge partials, accumulate backward): ${c.name}`, async () => {
        const p = makeProblem({ ...c, seed: 200 + n });
        const ref = fullAttentionReference({ ...p, causal: c.causal, dO: p.dO });
        const got = await blockwise(kernel, p, c.causal, shardsFor(c.layout, c.seqLen, c.ring));
        assertClose(got.o, ref.o, 'o');
        assertClose(got.lse, ref.lse, 'lse');
        assertClose(got.dq, ref.dq!, 'dq');
        assertClose(got.dk, ref.dk!, 'dk');
        assertClose(got.dv, ref.dv!, 'dv');
        // The cases are chosen so the masked paths are exercised, not merely allowed.
        if (c.causal && c.layout === 'uneven') assert.ok(got.skippedBlocks > 0, 'expected some fully masked blocks');
        if (c.causal || c.docs) assert.ok(got.maskedRowsSeen > 0, 'expected partials with fully masked rows');
      });
    }

    it('fully masked block: lse = -Infinity, o = 0, no NaN, no gradient', async () => {
      const p = makeProblem({ seqLen: 32, heads: 4, kvHeads: 2, headDim: 8, seed: 300 });
      const args = blockArgs(p, range(0, 16), range(16, 32), true);
      const part = await kernel.forward(args);
      assert.ok(part.lse.every((x) => x === -Infinity));
      assert.ok(part.o.every((x) => x === 0));
      const acc = { dq: new Float32Array(16 * 32), dk: new Float32Array(16 * 16), dv: new Float32Array(16 * 16) };
      await kernel.backward(args, { dO: gatherRows(p.dO, range(0, 16), 32), lse: part.lse, delta: new Float32Array(64) }, acc);
      for (const [name, x] of Object.entries(acc)) assert.ok(x.every((y) => y === 0), `${name} must stay zero`);
    });

    it('block with some fully masked rows (document absent from the KV block)', async () => {
      // Documents 1 (rows 0..7) and 2 (rows 8..15), non-causal; the KV block holds only document 2.
      const p = makeProblem({ seqLen: 16, heads: 2, kvHeads: 1, headDim: 8, seed: 301 });
      p.seg = Int32Array.from({ length: 16 }, (_, i) => (i < 8 ? 1 : 2));
      const qRows = range(0, 16);
      const kvRows = range(8, 16);
      const ref = fullAttentionReference({ ...p, causal: false, dO: p.dO });
      const args = blockArgs(p, qRows, kvRows, false);
      const part = await kernel.forward(args);
      assertNoNaN(part.o, 'o');
      const w = 2 * 8;
      for (let h = 0; h < 2; h++) {
        for (let i = 0; i < 16; i++) {
          const l = part.lse[h * 16 + i];
          if (i < 8) assert.equal(l, -Infinity, `row ${i} head ${h}`);
          else assert.ok(Number.isFinite(l), `row ${i} head ${h}`);
        }
      }
      assert.ok(part.o.subarray(0, 8 * w).every((x) => x === 0));
      const doc2 = range(8, 16);
      assertClose(part.o.subarray(8 * w), gatherRows(ref.o, doc2, w), 'o rows of document 2');
      assertClose(gatherCols(part.lse, 2, 16, doc2), gatherCols(ref.lse, 2, 16, doc2), 'lse rows of document 2');

      // Backward with this block's lse as the final one: rows 0..7 have lse = -Infinity and get no gradient.
      const dO = gatherRows(p.dO, qRows, w);
      const delta = rowDelta(dO, part.o, 16, 2, 8);
      const acc = { dq: new Float32Array(16 * w), dk: new Float32Array(8 * 8), dv: new Float32Array(8 * 8) };
      await kernel.backward(args, { dO, lse: part.lse, delta }, acc);
      for (const [name, x] of Object.entries(acc)) assertNoNaN(x, name);
      assert.ok(acc.dq.subarray(0, 8 * w).every((x) => x === 0));
      assertClose(acc.dq.subarray(8 * w), gatherRows(ref.dq!, doc2, w), 'dq rows of document 2');
      assertClose(acc.dk, gatherRows(ref.dk!, doc2, 8), 'dk');
      assertClose(acc.dv, gatherRows(ref.dv!, doc2, 8), 'dv');
    });

    it('backward adds into the accumulators', async () => {
      const p = makeProblem({ seqLen: 20, heads: 2, kvHeads: 2, headDim: 8, seed: 302 });
      const rows = range(0, 20);
      const args = blockArgs(p, rows, rows, true);
      const part = await kernel.forward(args);
      const dO = gatherRows(p.dO, rows, 16);
      const grad = { dO, lse: part.lse, delta: rowDelta(dO, part.o, 20, 2, 8) };
      const once = { dq: new Float32Array(320), dk: new Float32Array(320), dv: new Float32Array(320) };
      await kernel.backward(args, grad, once);
      const twice = { dq: new Float32Array(320), dk: new Float32Array(320), dv: new Float32Array(320) };
      await kernel.backward(args, grad, twice);
      await kernel.backward(args, grad, twice);
      for (const key of ['dq', 'dk', 'dv'] as const) {
        assertClose(twice[key], once[key].map((x) => 2 * x), key);
      }
    });
  });
}

describe('tfjs kernel specifics', () => {
  it(`runs on the selected backend (${backend.name})`, () => {
    assert.equal(tf.getBackend(), 'wasm');
  });

  it('leaks no tensors in forward or backward', async () => {
    const kernel = createTfjsKernel({ tileQ: 8, tileKV: 8 });
    const p = makeProblem({ seqLen: 30, heads: 4, kvHeads: 2, headDim: 8, seed: 400, docs: 2 });
    const rows = range(0, 30);
    const args = blockArgs(p, rows, rows, true);
    const before = tf.memory().numTensors;
    const part = await kernel.forward(args);
    assert.equal(tf.memory().numTensors, before, 'forward');
    const dO = gatherRows(p.dO, rows, 32);
    const acc = { dq: new Float32Array(30 * 32), dk: new Float32Array(30 * 16), dv: new Float32Array(30 * 16) };
    await kernel.backward(args, { dO, lse: part.lse, delta: rowDelta(dO, part.o, 30, 4, 8) }, acc);
    assert.equal(tf.memory().numTensors, before, 'backward');
  });

  it('skips fully masked tiles: causal 64x64 with 16x16 tiles computes 10 of 16 tile pairs', async () => {
    const heads = 2;
    const kernel = createTfjsKernel({ tileQ: 16, tileKV: 16 });
    const p = makeProblem({ seqLen: 64, heads, kvHeads: 1, headDim: 8, seed: 401 });
    const rows = range(0, 64);
    const args = blockArgs(p, rows, rows, true);
    const matMuls = async (f: () => Promise<unknown>): Promise<number> => {
      const info = await tf.profile(async () => {
        await f();
        return [];
      });
      return info.kernels.filter((k) => k.name === 'BatchMatMul').length;
    };
    const part = await kernel.forward(args);
    // forward: 2 matMuls (s = q k^T, p v) per computed tile pair and head
    assert.equal(await matMuls(() => kernel.forward(args)), 10 * heads * 2);
    const dO = gatherRows(p.dO, rows, heads * 8);
    const acc = { dq: new Float32Array(64 * 16), dk: new Float32Array(64 * 8), dv: new Float32Array(64 * 8) };
    const grad = { dO, lse: part.lse, delta: rowDelta(dO, part.o, 64, heads, 8) };
    // backward: 5 matMuls (s, dv, dp, dq, dk) per computed tile pair and head
    assert.equal(await matMuls(() => kernel.backward(args, grad, acc)), 10 * heads * 5);
  });

  it('gives the same results on the cpu backend', async () => {
    await selectBackend('cpu');
    try {
      const kernel = createTfjsKernel({ tileQ: 8, tileKV: 8 });
      const p = makeProblem({ seqLen: 24, heads: 2, kvHeads: 1, headDim: 8, seed: 403, docs: 2 });
      const rows = range(0, 24);
      const ref = fullAttentionReference({ ...p, causal: true, dO: p.dO });
      const args = blockArgs(p, rows, rows, true);
      const part = await kernel.forward(args);
      assertClose(part.o, ref.o, 'o');
      assertClose(part.lse, ref.lse, 'lse');
      const acc = { dq: new Float32Array(24 * 16), dk: new Float32Array(24 * 8), dv: new Float32Array(24 * 8) };
      await kernel.backward(args, { dO: p.dO, lse: part.lse, delta: rowDelta(p.dO, part.o, 24, 2, 8) }, acc);
      assertClose(acc.dq, ref.dq!, 'dq');
      assertClose(acc.dk, ref.dk!, 'dk');
      assertClose(acc.dv, ref.dv!, 'dv');
    } finally {
      await selectBackend('wasm');
    }
  });

  it('rejects bad tile sizes and mismatched arrays', async () => {
    assert.throws(() => createTfjsKernel({ tileQ: 0, tileKV: 16 }), /tileQ/);
    const kernel = createTfjsKernel({ tileQ: 4, tileKV: 4 });
    const p = makeProblem({ seqLen: 8, heads: 2, kvHeads: 1, headDim: 4, seed: 402 });
    const args = blockArgs(p, range(0, 8), range(0, 8), false);
    await assert.rejects(kernel.forward({ ...args, qLen: 7 }), /q has 64 elements, expected 56/);
    await assert.rejects(kernel.forward({ ...args, kvHeads: 3 }), /multiple of kvHeads/);
  });
});

describe('isFullyMasked', () => {
  const i32 = (...x: number[]) => Int32Array.from(x);
  it('causal: every key after every query', () => {
    assert.equal(isFullyMasked({ causal: true, qPos: i32(0, 1, 2), kvPos: i32(3, 4) }), true);
    assert.equal(isFullyMasked({ causal: true, qPos: i32(0, 5, 2), kvPos: i32(3, 4) }), false);
    assert.equal(isFullyMasked({ causal: false, qPos: i32(0, 1, 2), kvPos: i32(3, 4) }), false);
  });
  it('segments: no shared document, or each shared document only has later keys', () => {
    assert.equal(isFullyMasked({ causal: false, qPos: i32(0, 1), kvPos: i32(2, 3), qSeg: i32(1, 1), kvSeg: i32(2, 2) }), true);
    assert.equal(isFullyMasked({ causal: false, qPos: i32(0, 1), kvPos: i32(2, 3), qSeg: i32(1, 2), kvSeg: i32(2, 2) }), false);
    // doc 7 shared but its keys come after its queries; doc 8 keys are early but doc 8 has no queries here
    assert.equal(isFullyMasked({ causal: true, qPos: i32(5, 6), kvPos: i32(7, 1), qSeg: i32(7, 7), kvSeg: i32(7, 8) }), true);
    assert.equal(isFullyMasked({ causal: true, qPos: i32(5, 9), kvPos: i32(7, 1), qSeg: i32(7, 7), kvSeg: i32(7, 8) }), false);
  });
  it('empty blocks are fully masked', () => {
    assert.equal(isFullyMasked({ causal: false, qPos: i32(), kvPos: i32(1) }), true);
  });
  it('agrees with the pairwise rule on random blocks', () => {
    const rng = new Rng(7);
    for (let trial = 0; trial < 500; trial++) {
      const nq = 1 + rng.int(5);
      const nk = 1 + rng.int(5);
      const withSeg = rng.uniform() < 0.5;
      const m = {
        causal: rng.uniform() < 0.7,
        qPos: Int32Array.from({ length: nq }, () => rng.int(20)),
        kvPos: Int32Array.from({ length: nk }, () => rng.int(20)),
        qSeg: withSeg ? Int32Array.from({ length: nq }, () => rng.int(3)) : undefined,
        kvSeg: withSeg ? Int32Array.from({ length: nk }, () => rng.int(3)) : undefined,
      };
      let any = false;
      for (let i = 0; i < nq; i++) for (let j = 0; j < nk; j++) any ||= canAttend(m, i, j);
      assert.equal(isFullyMasked(m), !any, JSON.stringify(m, (_, v) => (v instanceof Int32Array ? [...v] : v)));
    }
  });
});

describe('loadKernel', () => {
  const opts = { tileQ: 16, tileKV: 16, threads: 1 };
  it('reference and tfjs load by name', async () => {
    assert.equal((await loadKernel('reference', opts)).kernel.name, 'reference');
    assert.equal((await loadKernel('tfjs', opts)).kernel.name, 'tfjs');
  });
  it('auto picks native when it loads, else tfjs and says why', async () => {
    const r = await loadKernel('auto', opts);
    if (nativeLoad.kernel) {
      assert.equal(r.kernel.name, nativeLoad.kernel.name);
    } else {
      assert.equal(r.kernel.name, 'tfjs');
      assert.match(r.reason, /native skipped: .+/);
    }
  });
  it('native that cannot load is a UserError with the reason', { skip: nativeLoad.kernel ? 'native kernel is available here' : undefined }, async () => {
    await assert.rejects(loadKernel('native', opts), (e: unknown) => e instanceof UserError && /native kernel unavailable: .+/.test(e.message));
  });
  it('rejects unknown names and bad options', async () => {
    await assert.rejects(loadKernel('fast' as KernelName, opts), UserError);
    await assert.rejects(loadKernel('tfjs', { ...opts, tileKV: 0 }), UserError);
  });
});

describe('selectBackend', () => {
  it('is idempotent', async () => {
    const a = await selectBackend('wasm');
    const b = await selectBackend('wasm');
    assert.deepEqual(a, b);
    assert.equal(tf.getBackend(), 'wasm');
  });
  it('auto records why each earlier backend was skipped', async () => {
    const logs: string[] = [];
    const r = await selectBackend('auto', (m) => logs.push(m));
    const order = ['tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'];
    assert.deepEqual(
      r.skipped.map((s) => s.name),
      order.slice(0, order.indexOf(r.name)),
    );
    for (const s of r.skipped) assert.ok(s.reason.length > 0);
    assert.ok(logs.some((l) => l.includes(r.name)));
    await selectBackend('wasm');
  });
  it('a specific backend that cannot load is a UserError naming it', async (t) => {
    const probes = await describeBackends();
    assert.equal(tf.getBackend(), 'wasm', 'describeBackends switches back');
    const missing = probes.find((p) => !p.available);
    if (!missing) {
      t.skip('every backend loads on this machine');
      return;
    }
    t.diagnostic(`${missing.name}: ${missing.reason}`);
    await assert.rejects(selectBackend(missing.name), (e: unknown) => e instanceof UserError && e.message.includes(`'${missing.name}'`));
    assert.equal(tf.getBackend(), 'wasm');
  });
  it('rejects unknown names', async () => {
    await assert.rejects(selectBackend('webgpu' as 'cpu'), UserError);
  });
});

describe('random', () => {
  it('is deterministic and seed-dependent', () => {
    assert.deepEqual(randn(100, 42), randn(100, 42));
    assert.notDeepEqual(randn(100, 42), randn(100, 43));
    const a = new Rng(2 ** 40 + 5);
    const b = new Rng(5);
    assert.notEqual(a.nextU32(), b.nextU32());
    assert.equal(deriveSeed(1, 2, 3), deriveSeed(1, 2, 3));
    assert.notEqual(deriveSeed(1, 2, 3), deriveSeed(1, 3, 2));
  });
  it('has the expected moments', () => {
    const x = randn(20000, 1);
    const mean = x.reduce((s, v) => s + v, 0) / x.length;
    const variance = x.reduce((s, v) => s + (v - mean) ** 2, 0) / x.length;
    assert.ok(Math.abs(mean) < 0.03, `mean ${mean}`);
    assert.ok(Math.abs(variance - 1) < 0.05, `variance ${variance}`);
    const rng = new Rng(9);
    let lo = 1;
    let hi = 0;
    let sum = 0;
    for (let i = 0; i < 20000; i++) {
      const u = rng.uniform();
      lo = Math.min(lo, u);
      hi = Math.max(hi, u);
      sum += u;
    }
    assert.ok(lo >= 0 && hi < 1);
    assert.ok(Math.abs(sum / 20000 - 0.5) < 0.01);
  });
});

test('summary', (t) => {
  t.diagnostic(`tfjs backend: ${backend.name}; native: ${nativeLoad.skip ?? 'loaded'}`);
});
