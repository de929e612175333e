import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { createNativeEngine, nativeEngineUnavailable } from '../src/engine/native.js';
import { slice, type Engine, type IntTensor, type Tensor } from '../src/engine/types.js';
import { openGpu, type OpenedGpu } from '../src/engine/webgpu/device.js';
import { createWebGPUEngine } from '../src/engine/webgpu/engine.js';
import { UserError } from '../src/errors.js';
import { Rng } from '../src/tensor/random.js';

/**
 * The webgpu engine op by op against the native engine (1 thread) on the same
 * inputs. Every tensor is a slice at an offset that is not a multiple of 64
 * elements inside a buffer filled with random values around it, and the test
 * compares the whole buffers: the slice must match and nothing around it may
 * change. Error measure: max |webgpu - native| / max(1, max |native|) over the
 * buffer, at most 1e-4 (float32 kernels with tree reductions against native's
 * float32/float64 loops). Runs on whatever adapter Dawn finds, a software
 * Vulkan (lavapipe) included; skipped, with the reason, when there is none.
 */

const TOL = 1e-4;

let gpu: OpenedGpu | null = null;
let skip: string | false = false;
try {
  gpu = await openGpu(undefined, { allowSoftware: true, what: 'webgpu engine test' });
} catch (e) {
  skip = `no WebGPU device: ${(e as Error).message}`;
}
if (!skip) {
  const why = nativeEngineUnavailable();
  if (why) skip = `the native engine (the reference) is unavailable: ${why}`;
}
if (skip) console.log(`# skipping test/webgpu-engine.test.ts: ${skip}`);

after(() => gpu?.close());

const rng = new Rng(12);
const randArray = (n: number, std = 1): Float32Array => Float32Array.from({ length: n }, () => rng.normal() * std);

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length, 'lengths differ');
  let diff = 0;
  let scale = 1;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= diff)) diff = Number.isNaN(d) ? Infinity : d;
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return diff / scale;
}

describe('webgpu engine', { skip }, () => {
  const W: Engine = skip ? (null as unknown as Engine) : createWebGPUEngine(gpu!);
  const N: Engine = skip ? (null as unknown as Engine) : createNativeEngine({ threads: 1 });
  const worst = new Map<string, number>();
  after(() => {
    W?.dispose();
    N?.dispose();
    if (worst.size) console.log(`# worst relative error by op: ${[...worst].map(([op, e]) => `${op} ${e.toExponential(1)}`).join(', ')}`);
  });

  /** The same float tensor in both engines: `n` elements at `off` inside a buffer of random values. */
  interface Pair {
    w: Tensor;
    n: Tensor;
    wAll: Tensor;
    nAll: Tensor;
  }
  function pair(data: Float32Array, off = 37, tail = 19): Pair {
    const all = randArray(off + data.length + tail);
    all.set(data, off);
    const wAll = W.floats(all.length);
    const nAll = N.floats(all.length);
    W.write(wAll, all);
    N.write(nAll, all);
    return { w: slice(wAll, off, data.length), n: slice(nAll, off, data.length), wAll, nAll };
  }
  function ints(data: Int32Array, off = 5): { w: IntTensor; n: IntTensor } {
    const all = new Int32Array(off + data.length + 3).fill(-7);
    all.set(data, off);
    const w = W.ints(all.length);
    const n = N.ints(all.length);
    W.writeInts(w, all);
    N.writeInts(n, all);
    return { w: slice(w, off, data.length), n: slice(n, off, data.length) };
  }
  /** Whole buffers of both engines agree. */
  async function same(p: Pair, what: string, tol = TOL): Promise<number> {
    const got = await W.read(p.wAll);
    const want = Float32Array.from(await N.read(p.nAll));
    const e = relErr(got, want);
    const op = what.split(' ')[0];
    worst.set(op, Math.max(worst.get(op) ?? 0, e));
    assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
    return e;
  }

  test('describes itself; read after write returns what was written, in a fresh array', async () => {
    assert.equal(W.name, 'webgpu');
    assert.match(W.description, /^webgpu .+ \(.+\)$/);
    assert.ok(W.attention, 'the engine carries its attention kernels');
    const t = W.floats(300);
    const data = randArray(300);
    W.write(t, data);
    const host = data.slice();
    data.fill(5); // the engine copied at the call
    const got = await W.read(t);
    assert.deepEqual(got, host);
    got.fill(9);
    assert.deepEqual(await W.read(t), host);
    const s = slice(t, 101, 77);
    W.write(s, new Float32Array(77).fill(2.5));
    const back = await W.read(t);
    for (let i = 0; i < 300; i++) assert.equal(back[i], i >= 101 && i < 178 ? 2.5 : host[i], `element ${i}`);
    assert.deepEqual(await W.read(slice(t, 150, 3)), new Float32Array(3).fill(2.5));
    const k = W.ints(10);
    W.writeInts(k, Int32Array.from([1, 2, 3]));
    await W.flush();
  });

  test('writes and ops run in the order recorded', async () => {
    const a = W.floats(100);
    const c = W.floats(100);
    const d = W.floats(100);
    W.write(a, new Float32Array(100).fill(1));
    W.add(c, a, a, 100);
    W.write(a, new Float32Array(100).fill(2));
    W.add(d, a, a, 100);
    W.zero(a);
    assert.deepEqual(await W.read(c), new Float32Array(100).fill(2));
    assert.deepEqual(await W.read(d), new Float32Array(100).fill(4));
    assert.deepEqual(await W.read(a), new Float32Array(100));
  });

  test('bufferCount counts buffers; dispose frees them; the memory cap throws a UserError', async () => {
    const e = createWebGPUEngine(gpu!, { maxBytes: 1000 });
    assert.equal(e.bufferCount(), 0);
    e.floats(200);
    e.ints(40);
    assert.equal(e.bufferCount(), 2);
    assert.throws(() => e.floats(11), (err: unknown) => err instanceof UserError && /out of engine memory/.test(err.message));
    assert.equal(e.bufferCount(), 2);
    e.floats(10);
    assert.equal(e.bufferCount(), 3);
    e.dispose();
    assert.equal(e.bufferCount(), 0);
    assert.throws(() => createWebGPUEngine(gpu!, { maxBytes: -1 }), RangeError);
  });

  test('matmul: every transpose combination, with and without accumulate, odd sizes, several tiles, k = 0', async () => {
    const shapes: [number, number, number][] = [
      [37, 53, 29],
      [1, 1, 1],
      [130, 70, 100],
      [64, 64, 16],
      [5, 9, 0],
    ];
    for (const [m, n, k] of shapes)
      for (const transA of [false, true])
        for (const transB of [false, true])
          for (const accumulate of [false, true]) {
            const a = pair(randArray(m * k), 45);
            const b = pair(randArray(k * n), 3);
            const c = pair(randArray(m * n), 70);
            const s = { m, n, k, transA, transB, accumulate };
            W.matmul(s, c.w, a.w, b.w);
            N.matmul(s, c.n, a.n, b.n);
            await same(c, `matmul ${m}x${n}x${k} ${transA ? 'T' : 'N'}${transB ? 'T' : 'N'}${accumulate ? ' acc' : ''}`);
          }
  });

  test('matmul without accumulate never reads C (NaN there is overwritten)', async () => {
    const [m, n, k] = [19, 23, 31];
    const a = pair(randArray(m * k));
    const b = pair(randArray(k * n));
    const c = pair(new Float32Array(m * n).fill(NaN));
    N.zero(c.n);
    W.matmul({ m, n, k }, c.w, a.w, b.w);
    N.matmul({ m, n, k }, c.n, a.n, b.n);
    await same(c, 'matmul over NaN');
  });

  /** Several tensors in one buffer of each engine, 3 elements apart: the views and the whole buffer. */
  function shared(parts: Float32Array[]): { views: { w: Tensor; n: Tensor }[]; all: Pair } {
    const gap = 3;
    const total = parts.reduce((s, p) => s + p.length + gap, 0);
    const all = pair(randArray(total), 11);
    const views: { w: Tensor; n: Tensor }[] = [];
    let at = 0;
    for (const p of parts) {
      const v = { w: slice(all.w, at, p.length), n: slice(all.n, at, p.length) };
      W.write(v.w, p);
      N.write(v.n, p);
      views.push(v);
      at += p.length + gap;
    }
    return { views, all };
  }

  test('tensors sharing one buffer (adjacent slices, and in place) bind as one window', async () => {
    const [m, n, k] = [21, 17, 33];
    for (const [transA, transB] of [
      [false, false],
      [true, true],
    ]) {
      const { views, all } = shared([randArray(m * k), randArray(k * n), randArray(m * n)]);
      const [a, b, c] = views;
      const s = { m, n, k, transA, transB, accumulate: true };
      W.matmul(s, c.w, a.w, b.w);
      N.matmul(s, c.n, a.n, b.n);
      await same(all, `matmul on one buffer ${transA ? 'T' : 'N'}${transB ? 'T' : 'N'}`);
    }
    const [rows, dim] = [9, 30];
    const { views, all } = shared([randArray(rows * dim), randArray(dim), randArray(dim), randArray(rows * dim), randArray(dim), randArray(dim), randArray(rows * dim)]);
    const [x, w, b, dOut, dw, db, dx] = views;
    const ns = { kind: 'layer' as const, rows, dim, eps: 1e-5 };
    W.normBackward(ns, dx.w, dw.w, db.w, dOut.w, x.w, w.w);
    N.normBackward(ns, dx.n, dw.n, db.n, dOut.n, x.n, w.n);
    await same(all, 'normBackward all in one buffer');
    W.norm(ns, x.w, x.w, w.w, b.w);
    N.norm(ns, x.n, x.n, w.n, b.n);
    await same(all, 'norm with out = x, all in one buffer');
  });

  test('embed and embedBackward, repeated tokens', async () => {
    const [vocab, dim, rows] = [11, 13, 40];
    const tokens = Int32Array.from({ length: rows }, (_, i) => (i % 3 === 0 ? 4 : rng.int(vocab)));
    tokens[1] = 0;
    tokens[2] = vocab - 1;
    const tok = ints(tokens);
    const table = pair(randArray(vocab * dim), 29, 0); // the table's slice ends its buffer, as the native engine reads its vocabulary
    const out = pair(randArray(rows * dim), 90);
    W.embed(out.w, table.w, tok.w, rows, dim);
    N.embed(out.n, table.n, tok.n, rows, dim);
    await same(out, 'embed');
    const dTable = pair(randArray(vocab * dim), 29, 0);
    const dOut = pair(randArray(rows * dim), 7);
    W.embedBackward(dTable.w, dOut.w, tok.w, rows, dim);
    N.embedBackward(dTable.n, dOut.n, tok.n, rows, dim);
    await same(dTable, 'embedBackward');
  });

  for (const kind of ['rms', 'layer'] as const) {
    test(`norm (${kind}) forward and backward`, async () => {
      for (const [rows, dim] of [
        [7, 45],
        [150, 45],
        [3, 300],
        [2, 1100],
      ]) {
        const s = { kind, rows, dim, eps: 1e-5 };
        const x = pair(randArray(rows * dim, 2), 41);
        const w = pair(randArray(dim), 3);
        const b = kind === 'layer' ? pair(randArray(dim), 66) : null;
        const out = pair(randArray(rows * dim), 100);
        W.norm(s, out.w, x.w, w.w, b?.w ?? null);
        N.norm(s, out.n, x.n, w.n, b?.n ?? null);
        await same(out, `norm ${kind} ${rows}x${dim}`);
        const dx = pair(randArray(rows * dim), 17);
        const dw = pair(randArray(dim), 33);
        const db = kind === 'layer' ? pair(randArray(dim), 51) : null;
        const dOut = pair(randArray(rows * dim), 1);
        W.normBackward(s, dx.w, dw.w, db?.w ?? null, dOut.w, x.w, w.w);
        N.normBackward(s, dx.n, dw.n, db?.n ?? null, dOut.n, x.n, w.n);
        await same(dx, `normBackward ${kind} ${rows}x${dim} dx`);
        await same(dw, `normBackward ${kind} ${rows}x${dim} dw`);
        if (db) await same(db, `normBackward ${kind} ${rows}x${dim} db`);
      }
    });
  }

  test('normBackward is deterministic', async () => {
    const s = { kind: 'layer' as const, rows: 130, dim: 70, eps: 1e-5 };
    const x = pair(randArray(s.rows * s.dim));
    const w = pair(randArray(s.dim));
    const dOut = pair(randArray(s.rows * s.dim));
    const runs: Float32Array[] = [];
    for (let r = 0; r < 2; r++) {
      const dx = W.floats(s.rows * s.dim);
      const dw = W.floats(s.dim);
      const db = W.floats(s.dim);
      W.normBackward(s, dx, dw, db, dOut.w, x.w, w.w);
      runs.push(Float32Array.from([...(await W.read(dx)), ...(await W.read(dw)), ...(await W.read(db))]));
    }
    assert.deepEqual(runs[0], runs[1]);
  });

  test('rope and its inverse', async () => {
    const [rows, heads, headDim] = [5, 3, 10];
    const x = pair(randArray(rows * heads * headDim), 45);
    const angles = Float32Array.from({ length: (rows * headDim) / 2 }, () => rng.uniform() * 6);
    const cos = pair(angles.map(Math.cos), 3);
    const sin = pair(angles.map(Math.sin), 77);
    const before = await W.read(x.w);
    for (const inverse of [false, true]) {
      W.rope({ rows, heads, headDim, inverse }, x.w, cos.w, sin.w);
      N.rope({ rows, heads, headDim, inverse }, x.n, cos.n, sin.n);
      await same(x, `rope${inverse ? ' inverse' : ''}`);
    }
    assert.ok(relErr(await W.read(x.w), before) < 1e-5, 'inverse(rope(x)) = x');
  });

  test('silu and siluBackward, in place too', async () => {
    const n = 1000;
    const data = randArray(n, 6);
    data[0] = -100;
    data[1] = 100;
    const u = pair(data, 13);
    const out = pair(randArray(n), 99);
    W.silu(out.w, u.w, n);
    N.silu(out.n, u.n, n);
    await same(out, 'silu');
    const dOut = pair(randArray(n), 57);
    const du = pair(randArray(n), 3);
    W.siluBackward(du.w, dOut.w, u.w, n);
    N.siluBackward(du.n, dOut.n, u.n, n);
    await same(du, 'siluBackward');
    W.siluBackward(dOut.w, dOut.w, u.w, n);
    N.siluBackward(dOut.n, dOut.n, u.n, n);
    await same(dOut, 'siluBackward with du = dOut');
    const v = pair(randArray(n, 3), 21);
    W.silu(v.w, v.w, n);
    N.silu(v.n, v.n, n);
    await same(v, 'silu with out = u');
  });

  test('add, with out = a and out = b', async () => {
    const n = 777;
    const a = pair(randArray(n), 45);
    const b = pair(randArray(n), 300);
    const out = pair(randArray(n), 1);
    W.add(out.w, a.w, b.w, n);
    N.add(out.n, a.n, b.n, n);
    await same(out, 'add');
    W.add(a.w, a.w, b.w, n);
    N.add(a.n, a.n, b.n, n);
    await same(a, 'add out = a');
    W.add(b.w, a.w, b.w, n);
    N.add(b.n, a.n, b.n, n);
    await same(b, 'add out = b');
  });

  test('an elementwise op past 65535 workgroups (the grid y dimension), and a per-row op past 65535 rows', async () => {
    const n = 65535 * 256 + 1000;
    const a = W.floats(n + 5);
    const host = Float32Array.from({ length: n + 5 }, (_, i) => i % 1013);
    W.write(a, host);
    const s = slice(a, 3, n);
    W.add(s, s, s, n);
    const got = await W.read(a);
    for (const i of [0, 1, 2, 3, 4, 1000, 65535 * 256, n, n + 1, n + 2, n + 3, n + 4]) {
      const want = i >= 3 && i < n + 3 ? 2 * host[i] : host[i];
      assert.equal(got[i], want, `element ${i}`);
    }
    const rows = 70000;
    const x = pair(randArray(rows * 2), 9);
    const w = pair(randArray(2), 1);
    const out = pair(randArray(rows * 2), 11);
    W.norm({ kind: 'rms', rows, dim: 2, eps: 1e-5 }, out.w, x.w, w.w, null);
    N.norm({ kind: 'rms', rows, dim: 2, eps: 1e-5 }, out.n, x.n, w.n, null);
    await same(out, 'norm over 70000 rows');
  });

  test('crossEntropy: targets -1, with and without gradScale, loss adds', async () => {
    for (const [rows, vocab, std] of [
      [9, 37, 1],
      [6, 300, 5],
      [3, 1500, 3],
    ]) {
      for (const gradScale of [null, 1, 0.37]) {
        const targets = Int32Array.from({ length: rows }, () => rng.int(vocab));
        targets[1] = -1;
        targets[rows - 1] = -1;
        targets[0] = vocab - 1;
        const tok = ints(targets);
        const logits = pair(randArray(rows * vocab, std), 45);
        const loss = pair(Float32Array.of(1.25), 50);
        W.crossEntropy(rows, vocab, logits.w, tok.w, loss.w, gradScale);
        N.crossEntropy(rows, vocab, logits.n, tok.n, loss.n, gradScale);
        await same(loss, `crossEntropy ${rows}x${vocab} loss (gradScale ${gradScale})`);
        await same(logits, `crossEntropy ${rows}x${vocab} logits (gradScale ${gradScale})`);
      }
    }
  });

  test('sumSquares on 100k elements (float32 two-stage tree against native float64)', async () => {
    for (const n of [100_003, 1, 4096, 4097]) {
      const x = pair(randArray(n), 77);
      const out = pair(Float32Array.of(123), 10);
      W.sumSquares(out.w, x.w);
      N.sumSquares(out.n, x.n);
      const got = (await W.read(out.w))[0];
      const want = (await N.read(out.n))[0];
      const e = Math.abs(got - want) / Math.max(1, Math.abs(want));
      assert.ok(e <= TOL, `sumSquares ${n}: ${got} vs ${want}, relative ${e.toExponential(2)}`);
      await same(out, `sumSquares ${n} (buffer)`);
      if (n === 100_003) console.log(`# sumSquares(100003) relative error ${e.toExponential(2)}`);
    }
  });

  test('adamw: steps with and without decay and gradient scaling', async () => {
    const n = 1000;
    const p = pair(randArray(n), 45);
    const m = pair(new Float32Array(n), 3);
    const v = pair(new Float32Array(n), 90);
    for (let t = 1; t <= 3; t++) {
      const g = pair(randArray(n, 0.1), 11);
      const args = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, decay: t === 2 ? 0 : 1e-3, bc1: 1 - 0.9 ** t, bc2: 1 - 0.95 ** t, gradScale: t === 1 ? 1 : 0.7 };
      W.adamw(args, p.w, g.w, m.w, v.w);
      N.adamw(args, p.n, g.n, m.n, v.n);
      await same(p, `adamw step ${t} params`);
      await same(m, `adamw step ${t} m`);
      await same(v, `adamw step ${t} v`);
    }
  });

  test('zero a slice', async () => {
    const t = pair(randArray(333), 61);
    W.zero(t.w);
    N.zero(t.n);
    await same(t, 'zero');
  });

  test('a bad size is refused on the host', () => {
    const a = W.floats(10);
    assert.throws(() => W.add(a, a, a, 11), RangeError);
    assert.throws(() => W.matmul({ m: 3, n: 4, k: 1 }, a, a, a), RangeError);
    assert.throws(() => W.rope({ rows: 1, heads: 1, headDim: 3 }, a, a, a), RangeError);
  });

  test('flush reports a device error as an Error', async () => {
    await W.flush();
    // An invalid call on the engine's device: the error arrives through the device's uncaptured-error event.
    gpu!.device.createBuffer({ size: 4, usage: 0 });
    await assert.rejects(W.flush(), (e: unknown) => e instanceof Error && /^webgpu engine: /.test(e.message));
    await W.flush(); // reported once
  });
});
