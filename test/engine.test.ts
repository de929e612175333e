import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { createNativeEngine, nativeEngineUnavailable } from '../src/engine/native.js';
import { createTfjsEngine } from '../src/engine/tfjs.js';
import { EngineMemory, slice, type Engine, type Tensor } from '../src/engine/types.js';
import { loadEngine } from '../src/engine/index.js';
import { UserError } from '../src/errors.js';
import { selectBackend } from '../src/tensor/backend.js';
import { Rng } from '../src/tensor/random.js';
import { loadAddon } from '../src/addon/index.js';

/**
 * Every engine op against float64: forward ops against plain float64 loops
 * written here, backward ops against central finite differences of those
 * loops. Each engine (native in every instruction set the CPU runs, and tfjs)
 * must agree within 1e-5 relative.
 */

const TOL = 1e-5;

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length, 'lengths differ');
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < got.length; i++) {
    diff = Math.max(diff, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

function close(got: ArrayLike<number>, want: ArrayLike<number>, what: string, tol = TOL): void {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

const rng = new Rng(7);
function randArray(n: number, std = 1): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal() * std);
}

/** Gradient of sum(f(x) * r) with respect to x, by central differences in float64. */
function numericGrad(f: (x: Float64Array) => Float64Array, x: Float64Array, r: Float64Array, h = 1e-5): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const old = x[i];
    x[i] = old + h;
    const up = f(x);
    x[i] = old - h;
    const down = f(x);
    x[i] = old;
    let s = 0;
    for (let j = 0; j < r.length; j++) s += (up[j] - down[j]) * r[j];
    g[i] = s / (2 * h);
  }
  return g;
}

// ---- float64 references ----------------------------------------------------------

function normRef(kind: 'rms' | 'layer', x: Float64Array, w: Float64Array, b: Float64Array | null, rows: number, d: number, eps: number): Float64Array {
  const out = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    if (kind === 'layer') {
      for (let j = 0; j < d; j++) mean += x[r * d + j];
      mean /= d;
    }
    let ss = 0;
    for (let j = 0; j < d; j++) ss += (x[r * d + j] - mean) ** 2;
    const rstd = 1 / Math.sqrt(ss / d + eps);
    for (let j = 0; j < d; j++) out[r * d + j] = (x[r * d + j] - mean) * rstd * w[j] + (b ? b[j] : 0);
  }
  return out;
}

function matmulRef(a: Float64Array, b: Float64Array, m: number, n: number, k: number, ta: boolean, tb: boolean): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
      c[i * n + j] = s;
    }
  return c;
}

function ropeRef(x: Float64Array, rows: number, heads: number, hd: number, pos: Int32Array, base: number, inverse: boolean): Float64Array {
  const out = Float64Array.from(x);
  const half = hd / 2;
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < heads; h++)
      for (let j = 0; j < half; j++) {
        const ang = pos[r] * Math.pow(base, (-2 * j) / hd) * (inverse ? -1 : 1);
        const i = (r * heads + h) * hd + j;
        out[i] = x[i] * Math.cos(ang) - x[i + half] * Math.sin(ang);
        out[i + half] = x[i + half] * Math.cos(ang) + x[i] * Math.sin(ang);
      }
  return out;
}

const siluRef = (u: Float64Array): Float64Array => u.map((x) => x / (1 + Math.exp(-x)));

function xentRef(logits: Float64Array, targets: Int32Array, rows: number, V: number): { loss: number; perRow: Float64Array } {
  const perRow = new Float64Array(rows);
  let loss = 0;
  for (let r = 0; r < rows; r++) {
    if (targets[r] < 0) continue;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[r * V + j]);
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(logits[r * V + j] - m);
    perRow[r] = m + Math.log(s) - logits[r * V + targets[r]];
    loss += perRow[r];
  }
  return { loss, perRow };
}

// ---- engines under test -----------------------------------------------------------

interface Subject {
  label: string;
  make: () => Engine;
}

const subjects: Subject[] = [];
const nativeMissing = nativeEngineUnavailable();
if (!nativeMissing) {
  const isas = (loadAddon<{ isas(): string[] }>().addon as { isas(): string[] }).isas();
  for (const isa of isas) subjects.push({ label: `native ${isa}`, make: () => createNativeEngine({ threads: 2, isa }) });
  subjects.push({ label: 'native, 1 thread', make: () => createNativeEngine({ threads: 1 }) });
} else {
  console.log(`# native engine not tested: ${nativeMissing}`);
}
subjects.push({ label: 'tfjs (cpu backend)', make: () => createTfjsEngine() });

before(async () => {
  await selectBackend('cpu');
});

async function put(e: Engine, data: Float32Array): Promise<Tensor> {
  const t = e.floats(data.length);
  e.write(t, data);
  return t;
}
const f64 = (a: Float32Array): Float64Array => Float64Array.from(a);

for (const subject of subjects) {
  describe(`engine ops: ${subject.label}`, () => {
    test('matmul, every transpose combination, overwrite and accumulate, edge sizes', async () => {
      const e = subject.make();
      for (const [m, n, k] of [
        [1, 1, 1],
        [7, 13, 5],
        [33, 65, 17],
        [70, 40, 129],
      ]) {
        for (const transA of [false, true])
          for (const transB of [false, true]) {
            const A = randArray(m * k);
            const B = randArray(k * n);
            const C0 = randArray(m * n);
            const a = await put(e, A);
            const b = await put(e, B);
            const c = await put(e, C0);
            const want = matmulRef(f64(A), f64(B), m, n, k, transA, transB);
            e.matmul({ m, n, k, transA, transB }, c, a, b);
            close(await e.read(c), want, `${m}x${n}x${k} ${transA ? 'T' : 'N'}${transB ? 'T' : 'N'}`);
            e.write(c, C0);
            e.matmul({ m, n, k, transA, transB, accumulate: true }, c, a, b);
            close(await e.read(c), want.map((x, i) => x + C0[i]), `${m}x${n}x${k} accumulate`);
          }
      }
      e.dispose();
    });

    for (const kind of ['rms', 'layer'] as const) {
      test(`${kind} norm forward and backward`, async () => {
        const e = subject.make();
        const rows = 37;
        const d = 24;
        const eps = 1e-5;
        const X = randArray(rows * d);
        const Wt = Float32Array.from(randArray(d), (x) => 1 + 0.3 * x);
        const Bt = randArray(d, 0.3);
        const x = await put(e, X);
        const w = await put(e, Wt);
        const b = kind === 'layer' ? await put(e, Bt) : null;
        const out = e.floats(rows * d);
        e.norm({ kind, rows, dim: d, eps }, out, x, w, b);
        const bb = kind === 'layer' ? f64(Bt) : null;
        close(await e.read(out), normRef(kind, f64(X), f64(Wt), bb, rows, d, eps), 'forward');

        const R = randArray(rows * d);
        const DX0 = randArray(rows * d);
        const dx = await put(e, DX0);
        const dw = await put(e, Float32Array.from({ length: d }, () => 0.5));
        const db = kind === 'layer' ? await put(e, Float32Array.from({ length: d }, () => -0.25)) : null;
        e.normBackward({ kind, rows, dim: d, eps }, dx, dw, db, await put(e, R), x, w);
        const r = f64(R);
        const gx = numericGrad((xx) => normRef(kind, xx, f64(Wt), bb, rows, d, eps), f64(X), r);
        const gw = numericGrad((ww) => normRef(kind, f64(X), ww, bb, rows, d, eps), f64(Wt), r);
        close(await e.read(dx), gx.map((g, i) => g + DX0[i]), 'dx (accumulated)');
        close(await e.read(dw), gw.map((g) => g + 0.5), 'dw (accumulated)');
        if (db && bb) {
          const gb = numericGrad((bv) => normRef(kind, f64(X), f64(Wt), bv, rows, d, eps), bb, r);
          close(await e.read(db), gb.map((g) => g - 0.25), 'db (accumulated)');
        }
        e.dispose();
      });
    }

    test('rope forward, and its inverse is its backward', async () => {
      const e = subject.make();
      const rows = 9;
      const heads = 3;
      const hd = 8;
      const pos = Int32Array.from([5, 0, 17, 2, 100, 3, 4, 9, 1]);
      const base = 10000;
      const half = hd / 2;
      const cosA = new Float32Array(rows * half);
      const sinA = new Float32Array(rows * half);
      for (let r = 0; r < rows; r++)
        for (let j = 0; j < half; j++) {
          const ang = pos[r] * Math.pow(base, (-2 * j) / hd);
          cosA[r * half + j] = Math.cos(ang);
          sinA[r * half + j] = Math.sin(ang);
        }
      const cos = await put(e, cosA);
      const sin = await put(e, sinA);
      const X = randArray(rows * heads * hd);
      const x = await put(e, X);
      e.rope({ rows, heads, headDim: hd }, x, cos, sin);
      close(await e.read(x), ropeRef(f64(X), rows, heads, hd, pos, base, false), 'forward');
      const R = randArray(rows * heads * hd);
      const g = await put(e, R);
      e.rope({ rows, heads, headDim: hd, inverse: true }, g, cos, sin);
      const gx = numericGrad((xx) => ropeRef(xx, rows, heads, hd, pos, base, false), f64(X), f64(R));
      close(await e.read(g), gx, 'backward');
      e.dispose();
    });

    test('silu forward and backward, add', async () => {
      const e = subject.make();
      const n = 1000;
      const U = randArray(n, 4);
      const u = await put(e, U);
      const out = e.floats(n);
      e.silu(out, u, n);
      close(await e.read(out), siluRef(f64(U)), 'silu');
      const R = randArray(n);
      const du = await put(e, R);
      e.siluBackward(du, du, u, n);
      close(await e.read(du), numericGrad(siluRef, f64(U), f64(R)), 'silu backward (in place)');
      const A = randArray(n);
      const a = await put(e, A);
      e.add(a, a, u, n);
      close(await e.read(a), Float64Array.from(A, (x, i) => x + U[i]), 'add');
      e.dispose();
    });

    test('embedding gather and scatter-add with repeated tokens', async () => {
      const e = subject.make();
      const V = 11;
      const d = 6;
      const Tab = randArray(V * d);
      const toks = Int32Array.from([3, 0, 3, 10, 7, 3]);
      const table = await put(e, Tab);
      const tokens = e.ints(toks.length);
      e.writeInts(tokens, toks);
      const out = e.floats(toks.length * d);
      e.embed(out, table, tokens, toks.length, d);
      const want = new Float64Array(toks.length * d);
      toks.forEach((t, i) => want.set(Tab.subarray(t * d, (t + 1) * d), i * d));
      close(await e.read(out), want, 'gather');
      const DY = randArray(toks.length * d);
      const dTab = e.floats(V * d);
      e.embedBackward(dTab, await put(e, DY), tokens, toks.length, d);
      const gathered = (tab: Float64Array): Float64Array => {
        const o = new Float64Array(toks.length * d);
        toks.forEach((t, i) => o.set(tab.subarray(t * d, (t + 1) * d), i * d));
        return o;
      };
      close(await e.read(dTab), numericGrad(gathered, f64(Tab), f64(DY)), 'scatter-add');
      e.dispose();
    });

    test('cross-entropy: loss, gradient, ignored rows, large logits', async () => {
      const e = subject.make();
      const rows = 13;
      const V = 50;
      const L0 = randArray(rows * V, 3);
      L0[5 * V + 7] = 80; // far beyond exp's float32 range without the max shift
      const tg = Int32Array.from({ length: rows }, (_, i) => (i === 4 || i === 9 ? -1 : (i * 7) % V));
      const logits = await put(e, L0);
      const targets = e.ints(rows);
      e.writeInts(targets, tg);
      const loss = e.floats(1);
      const scale = 0.3;
      e.crossEntropy(rows, V, logits, targets, loss, scale);
      const ref = xentRef(f64(L0), tg, rows, V);
      close([(await e.read(loss))[0]], [ref.loss], 'loss');
      const g = numericGrad((l) => Float64Array.of(xentRef(l, tg, rows, V).loss), f64(L0), Float64Array.of(scale));
      close(await e.read(logits), g, 'dlogits', 2e-5);
      const dl = await e.read(logits);
      for (const r of [4, 9]) for (let j = 0; j < V; j++) assert.equal(dl[r * V + j], 0, `row ${r} has no target: zero gradient`);
      // Forward only: logits untouched, loss accumulates.
      const l2 = await put(e, L0);
      e.crossEntropy(rows, V, l2, targets, loss, null);
      close([(await e.read(loss))[0]], [2 * ref.loss], 'loss accumulates');
      assert.deepEqual(await e.read(l2), L0);
      e.dispose();
    });

    test('sumSquares and adamw match the float64 formulas exactly', async () => {
      const e = subject.make();
      const n = 5000;
      const P0 = randArray(n);
      const G0 = randArray(n);
      const M0 = randArray(n, 0.1);
      const V0 = Float32Array.from(randArray(n), (x) => x * x * 0.01);
      const out = e.floats(1);
      const g = await put(e, G0);
      e.sumSquares(out, g);
      let ss = 0;
      for (const x of G0) ss += x * x;
      close([(await e.read(out))[0]], [ss], 'sumSquares', 1e-7);
      const p = await put(e, P0);
      const m = await put(e, M0);
      const v = await put(e, V0);
      const args = { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, decay: 0.001, bc1: 1 - 0.9 ** 3, bc2: 1 - 0.95 ** 3, gradScale: 0.7 };
      e.adamw(args, p, g, m, v);
      const wantP = new Float32Array(n);
      const wantM = new Float32Array(n);
      const wantV = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const gi = Math.fround(G0[i] * args.gradScale);
        const mi = args.beta1 * M0[i] + (1 - args.beta1) * gi;
        const vi = args.beta2 * V0[i] + (1 - args.beta2) * gi * gi;
        wantM[i] = mi;
        wantV[i] = vi;
        let pi = P0[i];
        pi -= args.decay * pi;
        pi -= (args.lr * (mi / args.bc1)) / (Math.sqrt(vi / args.bc2) + args.eps);
        wantP[i] = pi;
      }
      assert.deepEqual(await e.read(p), wantP, 'params bit-identical');
      assert.deepEqual(await e.read(m), wantM);
      assert.deepEqual(await e.read(v), wantV);
      e.dispose();
    });

    test('slices address rows of a larger buffer', async () => {
      const e = subject.make();
      const big = await put(e, Float32Array.from({ length: 20 }, (_, i) => i));
      e.zero(slice(big, 5, 5));
      const got = await e.read(big);
      assert.deepEqual([...got.subarray(4, 11)], [4, 0, 0, 0, 0, 0, 10]);
      assert.throws(() => slice(big, 18, 5), /outside a tensor/);
      e.dispose();
    });
  });
}

describe('native engine: bad input', { skip: nativeMissing ? `native engine unavailable: ${nativeMissing}` : false }, () => {
  test('an op outside its buffer rejects before anything runs', async () => {
    const e = createNativeEngine({ threads: 1 });
    const a = e.floats(4);
    const b = e.floats(4);
    e.write(a, Float32Array.of(1, 2, 3, 4));
    e.matmul({ m: 2, n: 2, k: 2 }, b, a, a);
    e.matmul({ m: 4, n: 4, k: 4 }, b, a, a); // far too large: nothing of this flush may run
    await assert.rejects(e.flush(), /ringattn engine: matmul c: \[0, 16\) outside buffer/);
    assert.deepEqual([...(await e.read(b))], [0, 0, 0, 0], 'the first op did not run either');
    e.dispose();
  });
  test('a token outside the table is an error', async () => {
    const e = createNativeEngine({ threads: 1 });
    const table = e.floats(4 * 2);
    const toks = e.ints(2);
    e.writeInts(toks, Int32Array.of(1, 4));
    e.embed(e.floats(4), table, toks, 2, 2);
    await assert.rejects(e.flush(), /token id 4 outside the table of 4/);
    e.dispose();
  });
  test('an unusable instruction set is refused with its name', () => {
    assert.throws(() => createNativeEngine({ threads: 1, isa: 'sse9' }), /instruction set 'sse9' is not usable/);
  });
});

describe('engine selection', () => {
  test('auto takes native when it loads, else says why it fell back', async () => {
    const { engine, reason } = await loadEngine('auto', { threads: 1, backend: 'cpu' });
    if (nativeMissing) {
      assert.equal(engine.name, 'tfjs');
      assert.match(reason, /native engine skipped/);
    } else {
      assert.equal(engine.name, 'native');
    }
    engine.dispose();
  });
  test('unknown names and bad thread counts are user errors', async () => {
    await assert.rejects(loadEngine('gpu' as never, { threads: 1 }), (e: unknown) => e instanceof UserError && /unknown engine 'gpu'/.test((e as Error).message));
    await assert.rejects(loadEngine('auto', { threads: 0 }), UserError);
  });
});

describe('engine memory cap', () => {
  const capped: Array<{ label: string; make: (maxBytes: number) => Engine }> = [{ label: 'tfjs', make: (maxBytes) => createTfjsEngine({ maxBytes }) }];
  if (!nativeMissing) capped.unshift({ label: 'native', make: (maxBytes) => createNativeEngine({ threads: 1, maxBytes }) });
  for (const { label, make } of capped) {
    test(`${label}: buffers up to the cap are allocated and usable; one byte past it is a one-line user error naming the cap`, async () => {
      const e = make(1024);
      const a = e.floats(200);
      e.ints(56); // exactly 1024 bytes now
      e.write(a, new Float32Array(200).fill(2));
      assert.equal((await e.read(a))[199], 2);
      const count = e.bufferCount();
      assert.throws(
        () => e.floats(1),
        (err: unknown) =>
          err instanceof UserError &&
          !err.message.includes('\n') &&
          new RegExp(`^${label} engine: out of engine memory: a float32\\[1\\] buffer .* past the cap of 0\\.0 MiB \\(1024 bytes, the engine option maxBytes\\)$`).test(err.message),
      );
      assert.equal(e.bufferCount(), count, 'nothing was allocated by the refused call');
      e.dispose();
    });
  }
  test('the cap comes from RINGATTN_ENGINE_MAX_BYTES when the option is absent, in bytes or a size', () => {
    assert.equal(new EngineMemory('native', undefined, {}).maxBytes, null);
    assert.equal(new EngineMemory('native', undefined, { RINGATTN_ENGINE_MAX_BYTES: '48M' }).maxBytes, 48 * 2 ** 20);
    assert.equal(new EngineMemory('native', 4096, { RINGATTN_ENGINE_MAX_BYTES: '48M' }).maxBytes, 4096, 'the option wins');
    const m = new EngineMemory('native', undefined, { RINGATTN_ENGINE_MAX_BYTES: '4096' });
    m.take(1024, 'float32');
    assert.throws(() => m.take(1, 'int32'), /int32\[1\] buffer .*\(4096 bytes, RINGATTN_ENGINE_MAX_BYTES\)$/);
    assert.throws(() => new EngineMemory('native', undefined, { RINGATTN_ENGINE_MAX_BYTES: 'lots' }), (err: unknown) => err instanceof UserError && /RINGATTN_ENGINE_MAX_BYTES: expected a positive integer/.test((err as Error).message));
  });
});
