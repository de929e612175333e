import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { emptyPartial, mergePartial } from '../src/kernels/merge.js';
import { loadNativeKernel, nativeInfo } from '../src/kernels/native.js';
import type { AttentionKernel, BlockArgs, BlockPartial } from '../src/kernels/types.js';
import { rng } from './helpers/rng.js';

// The addon is built at install; a missing addon fails here unless the build
// was skipped on purpose.
const info = nativeInfo();
const skip = !info.available && process.env.RINGATTN_SKIP_NATIVE ? `RINGATTN_SKIP_NATIVE is set: ${info.reason}` : false;


function randn(n: number, rand: () => number, sd = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(rand(), 1e-12);
    out[i] = sd * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  }
  return out;
}

interface Case {
  qLen: number;
  kvLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  causal: boolean;
  qPos: number[];
  kvPos: number[];
  qSeg?: number[];
  kvSeg?: number[];
  seed: number;
}

const range = (start: number, n: number) => Array.from({ length: n }, (_, i) => start + i);

function makeArgs(c: Case): BlockArgs & { dO: Float32Array } {
  const rand = rng(c.seed);
  return {
    qLen: c.qLen,
    kvLen: c.kvLen,
    heads: c.heads,
    kvHeads: c.kvHeads,
    headDim: c.headDim,
    q: randn(c.qLen * c.heads * c.headDim, rand),
    k: randn(c.kvLen * c.kvHeads * c.headDim, rand),
    v: randn(c.kvLen * c.kvHeads * c.headDim, rand),
    dO: randn(c.qLen * c.heads * c.headDim, rand),
    qPos: Int32Array.from(c.qPos),
    kvPos: Int32Array.from(c.kvPos),
    qSeg: c.qSeg ? Int32Array.from(c.qSeg) : undefined,
    kvSeg: c.kvSeg ? Int32Array.from(c.kvSeg) : undefined,
    causal: c.causal,
    scale: 1 / Math.sqrt(c.headDim),
  };
}

/**
 * Float64 reference over the materialised score matrix of the whole problem:
 * forward o and lse, then (with that lse and delta = rowsum(dO * o)) dq, dk, dv.
 */
function reference(a: BlockArgs & { dO: Float32Array }) {
  const { qLen, kvLen, heads, kvHeads, headDim: D, scale } = a;
  const group = heads / kvHeads;
  const o = new Float64Array(qLen * heads * D);
  const lse = new Float64Array(heads * qLen);
  const delta = new Float64Array(heads * qLen);
  const dq = new Float64Array(qLen * heads * D);
  const dk = new Float64Array(kvLen * kvHeads * D);
  const dv = new Float64Array(kvLen * kvHeads * D);
  const allowed = (i: number, j: number) =>
    (!a.causal || a.kvPos[j] <= a.qPos[i]) && (!a.qSeg || a.qSeg[i] === a.kvSeg![j]);
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group);
    for (let i = 0; i < qLen; i++) {
      const qo = (i * heads + h) * D;
      const s = new Float64Array(kvLen).fill(-Infinity);
      for (let j = 0; j < kvLen; j++) {
        if (!allowed(i, j)) continue;
        const ko = (j * kvHeads + g) * D;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += a.q[qo + d] * a.k[ko + d];
        s[j] = dot * scale;
      }
      const m = Math.max(...s);
      if (m === -Infinity) {
        lse[h * qLen + i] = -Infinity;
        continue;
      }
      let l = 0;
      for (let j = 0; j < kvLen; j++) l += Math.exp(s[j] - m);
      const L = m + Math.log(l);
      lse[h * qLen + i] = L;
      const p = s.map((x) => Math.exp(x - L));
      for (let j = 0; j < kvLen; j++) {
        const vo = (j * kvHeads + g) * D;
        for (let d = 0; d < D; d++) o[qo + d] += p[j] * a.v[vo + d];
      }
      let dl = 0;
      for (let d = 0; d < D; d++) dl += a.dO[qo + d] * o[qo + d];
      delta[h * qLen + i] = dl;
      for (let j = 0; j < kvLen; j++) {
        if (p[j] === 0) continue;
        const ko = (j * kvHeads + g) * D;
        let dp = 0;
        for (let d = 0; d < D; d++) {
          dv[ko + d] += p[j] * a.dO[qo + d];
          dp += a.dO[qo + d] * a.v[ko + d];
        }
        const ds = p[j] * (dp - dl) * scale;
        for (let d = 0; d < D; d++) {
          dq[qo + d] += ds * a.k[ko + d];
          dk[ko + d] += ds * a.q[qo + d];
        }
      }
    }
  }
  return { o, lse, delta, dq, dk, dv };
}

/** max|a - b| / max|b|; -Infinity entries must match exactly. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    if (b[i] === -Infinity || a[i] === -Infinity) {
      assert.equal(a[i], b[i], `element ${i}: ${a[i]} vs ${b[i]}`);
      continue;
    }
    assert.ok(Number.isFinite(a[i]), `element ${i} is ${a[i]}`);
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return den === 0 ? num : num / den;
}

const TOL = 1e-5;

async function runBoth(kernel: AttentionKernel, a: BlockArgs & { dO: Float32Array }, ref: ReturnType<typeof reference>) {
  const fwd = await kernel.forward(a);
  const acc = {
    dq: new Float32Array(a.q.length),
    dk: new Float32Array(a.k.length),
    dv: new Float32Array(a.v.length),
  };
  await kernel.backward(a, { dO: a.dO, lse: Float32Array.from(ref.lse), delta: Float32Array.from(ref.delta) }, acc);
  return { ...fwd, ...acc };
}

async function checkAgainstReference(c: Case, opts: { tileQ: number; tileKV: number; threads: number; isa?: string }) {
  const a = makeArgs(c);
  const ref = reference(a);
  const kernel = await loadNativeKernel(opts);
  const got = await runBoth(kernel, a, ref);
  const errs = {
    o: relErr(got.o, ref.o),
    lse: relErr(got.lse, ref.lse),
    dq: relErr(got.dq, ref.dq),
    dk: relErr(got.dk, ref.dk),
    dv: relErr(got.dv, ref.dv),
  };
  for (const [name, e] of Object.entries(errs)) assert.ok(e <= TOL, `${name}: relative error ${e} > ${TOL}`);
  return got;
}

const odd = { qLen: 37, kvLen: 53 };
const cases: Record<string, Case> = {
  'causal MHA, odd lengths': {
    ...odd, heads: 2, kvHeads: 2, headDim: 16, causal: true, qPos: range(20, 37), kvPos: range(0, 53), seed: 1,
  },
  'non-causal GQA, headDim 20': {
    ...odd, heads: 4, kvHeads: 2, headDim: 20, causal: false, qPos: range(0, 37), kvPos: range(0, 53), seed: 2,
  },
  'causal MQA, 3 query heads': {
    ...odd, heads: 3, kvHeads: 1, headDim: 32, causal: true, qPos: range(16, 37), kvPos: range(0, 53), seed: 3,
  },
  // Positions interleaved like a striped layout; the first query rows see no key.
  'causal, strided positions, fully masked rows': {
    ...odd, heads: 2, kvHeads: 1, headDim: 8, causal: true,
    qPos: range(0, 37).map((i) => 2 * i), kvPos: range(0, 53).map((j) => 3 + 2 * j), seed: 4,
  },
  // Three packed documents; document 9 has queries but no keys (fully masked rows).
  'packed documents, causal GQA': {
    ...odd, heads: 4, kvHeads: 2, headDim: 24, causal: true, qPos: range(20, 37), kvPos: range(0, 53),
    qSeg: range(0, 37).map((i) => (i < 10 ? 1 : i < 30 ? 2 : 9)), kvSeg: range(0, 53).map((j) => (j < 25 ? 1 : 2)),
    seed: 5,
  },
  'packed documents, non-causal MHA': {
    ...odd, heads: 2, kvHeads: 2, headDim: 16, causal: false, qPos: range(0, 37), kvPos: range(0, 53),
    qSeg: range(0, 37).map((i) => Math.floor(i / 13)), kvSeg: range(0, 53).map((j) => Math.floor(j / 19)), seed: 6,
  },
};

// Skipped per test (not per suite) so the skip count and reason show in CI's summary.
describe('native attention kernel', () => {
  it('reports a usable instruction set', { skip }, () => {
    assert.ok(info.available, info.reason);
    assert.ok(info.isas && info.isas.includes('portable'), `isas: ${info.isas}`);
    assert.equal(info.isa, process.env.RINGATTN_NATIVE_ISA || info.isas![0]);
  });

  for (const [name, c] of Object.entries(cases)) {
    it(`${name}: forward and backward match the float64 reference (tiles 16)`, { skip }, async () => {
      await checkAgainstReference(c, { tileQ: 16, tileKV: 16, threads: 2 });
    });
  }

  it('every usable instruction set matches the reference', { skip }, async () => {
    for (const isa of info.isas ?? []) {
      for (const c of [cases['causal MQA, 3 query heads'], cases['packed documents, causal GQA']]) {
        await checkAgainstReference(c, { tileQ: 16, tileKV: 16, threads: 1, isa });
      }
    }
  });

  it('tiles larger than the block, and uneven tile shapes', { skip }, async () => {
    const c = cases['packed documents, causal GQA'];
    await checkAgainstReference(c, { tileQ: 64, tileKV: 128, threads: 2 });
    await checkAgainstReference(c, { tileQ: 5, tileKV: 7, threads: 2 });
  });

  it('gives bit-identical results with 1, 2 and 3 threads', { skip }, async () => {
    // kvHeads 3 with 2 threads mixes the one-pass and two-pass backward paths;
    // kvHeads 1 with 2 threads is all two-pass, with 1 thread all one-pass.
    for (const c of [
      { ...cases['causal MQA, 3 query heads'] },
      { ...cases['packed documents, causal GQA'], heads: 6, kvHeads: 3 },
    ]) {
      const a = makeArgs(c);
      const ref = reference(a);
      const results = [];
      for (const threads of [1, 2, 3]) {
        results.push(await runBoth(await loadNativeKernel({ tileQ: 16, tileKV: 16, threads }), a, ref));
      }
      for (const r of results.slice(1)) {
        for (const key of ['o', 'lse', 'dq', 'dk', 'dv'] as const) {
          assert.deepEqual(Buffer.from(r[key].buffer), Buffer.from(results[0][key].buffer), `${key} differs`);
        }
      }
    }
  });

  it('concurrent calls share the thread pool and give the sequential results', { skip }, async () => {
    const kernel = await loadNativeKernel({ tileQ: 16, tileKV: 16, threads: 2 });
    const all = Object.values(cases).map(makeArgs);
    const sequential: BlockPartial[] = [];
    for (const a of all) sequential.push(await kernel.forward(a));
    const concurrent = await Promise.all([...all, ...all].map((a) => kernel.forward(a)));
    concurrent.forEach((r, i) => {
      assert.deepEqual(r.o, sequential[i % all.length].o);
      assert.deepEqual(r.lse, sequential[i % all.length].lse);
    });
  });

  it('adds gradients into the accumulators', { skip }, async () => {
    const a = makeArgs(cases['non-causal GQA, headDim 20']);
    const ref = reference(a);
    const kernel = await loadNativeKernel({ tileQ: 16, tileKV: 16, threads: 2 });
    const grad = { dO: a.dO, lse: Float32Array.from(ref.lse), delta: Float32Array.from(ref.delta) };
    const once = { dq: new Float32Array(a.q.length), dk: new Float32Array(a.k.length), dv: new Float32Array(a.v.length) };
    await kernel.backward(a, grad, once);
    const twice = { dq: once.dq.slice(), dk: once.dk.slice(), dv: once.dv.slice() };
    await kernel.backward(a, grad, twice);
    for (const key of ['dq', 'dk', 'dv'] as const) {
      assert.deepEqual(twice[key], once[key].map((x) => 2 * x), key);
    }
  });

  it('KV blocks merged with mergePartial, and their summed backward, equal the whole problem', { skip }, async () => {
    const c = cases['packed documents, causal GQA'];
    const a = makeArgs(c);
    const ref = reference(a);
    const kernel = await loadNativeKernel({ tileQ: 16, tileKV: 16, threads: 2 });
    const { heads, kvHeads, headDim: D } = a;
    const cuts = [0, 11, 30, 53];
    const merged = emptyPartial(a.qLen, heads, D);
    const grad = { dO: a.dO, lse: Float32Array.from(ref.lse), delta: Float32Array.from(ref.delta) };
    const dq = new Float32Array(a.q.length);
    const dk = new Float32Array(a.k.length);
    const dv = new Float32Array(a.v.length);
    for (let b = 0; b + 1 < cuts.length; b++) {
      const [j0, j1] = [cuts[b], cuts[b + 1]];
      const rows = (x: Float32Array) => x.slice(j0 * kvHeads * D, j1 * kvHeads * D);
      const block: BlockArgs = {
        ...a,
        kvLen: j1 - j0,
        k: rows(a.k),
        v: rows(a.v),
        kvPos: a.kvPos.slice(j0, j1),
        kvSeg: a.kvSeg!.slice(j0, j1),
      };
      mergePartial(merged, await kernel.forward(block), heads, D);
      const blockAcc = { dq, dk: new Float32Array(block.k.length), dv: new Float32Array(block.v.length) };
      await kernel.backward(block, grad, blockAcc);
      dk.set(blockAcc.dk, j0 * kvHeads * D);
      dv.set(blockAcc.dv, j0 * kvHeads * D);
    }
    assert.ok(relErr(merged.o, ref.o) <= TOL, 'merged o');
    assert.ok(relErr(merged.lse, ref.lse) <= TOL, 'merged lse');
    assert.ok(relErr(dq, ref.dq) <= TOL, 'dq summed over blocks');
    assert.ok(relErr(dk, ref.dk) <= TOL, 'dk by block');
    assert.ok(relErr(dv, ref.dv) <= TOL, 'dv by block');
  });

  it('an empty KV block gives lse = -Infinity and o = 0', { skip }, async () => {
    const a = makeArgs({ ...cases['causal MHA, odd lengths'] });
    const kernel = await loadNativeKernel({ tileQ: 16, tileKV: 16, threads: 2 });
    const r = await kernel.forward({ ...a, kvLen: 0, k: new Float32Array(0), v: new Float32Array(0), kvPos: new Int32Array(0) });
    assert.ok(r.lse.every((x) => x === -Infinity));
    assert.ok(r.o.every((x) => x === 0));
  });

  it('computes off the JavaScript thread: timers keep firing while it runs', { skip }, async () => {
    const rand = rng(7);
    const [qLen, kvLen, heads, D] = [2048, 2048, 4, 64];
    const a: BlockArgs = {
      qLen, kvLen, heads, kvHeads: heads, headDim: D,
      q: randn(qLen * heads * D, rand), k: randn(kvLen * heads * D, rand), v: randn(kvLen * heads * D, rand),
      qPos: Int32Array.from(range(0, qLen)), kvPos: Int32Array.from(range(0, kvLen)), causal: false, scale: 0.125,
    };
    const kernel = await loadNativeKernel({ tileQ: 64, tileKV: 64, threads: 1 });
    let done = false;
    let ticksWhileRunning = 0;
    const timer = setInterval(() => {
      if (!done) ticksWhileRunning++;
    }, 1);
    const pending = kernel.forward(a).then((r) => {
      done = true;
      return r;
    });
    assert.equal(done, false, 'forward returned before computing');
    const r = await pending;
    clearInterval(timer);
    assert.ok(ticksWhileRunning >= 2, `timer ticked ${ticksWhileRunning} times during the call`);
    assert.ok(r.lse.every(Number.isFinite));
  });

  it('rejects inconsistent arguments', { skip }, async () => {
    const a = makeArgs(cases['causal MHA, odd lengths']);
    const kernel = await loadNativeKernel({ tileQ: 16, tileKV: 16, threads: 1 });
    await assert.rejects(kernel.forward({ ...a, q: a.q.subarray(1) }), /q has length/);
    await assert.rejects(kernel.forward({ ...a, kvHeads: 3 }), /multiple of kvHeads/);
    await assert.rejects(loadNativeKernel({ tileQ: 0, tileKV: 16, threads: 1 }), /tileQ/);
    await assert.rejects(loadNativeKernel({ tileQ: 16, tileKV: 16, threads: 1, isa: 'vax' }), /not usable/);
  });
});
