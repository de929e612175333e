// The native SGEMM (native/gemm*.cc): every usable instruction set against a
// float64 reference, over odd sizes, all transposes, beta 0 and 1, loose
// leading dimensions and 1 or 2 threads; results independent of the thread
// count bit for bit; argument checks.
//
//   node --import tsx --test test/gemm.test.ts
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { loadGemm, type GemmAddon, type SgemmArgs } from '../src/addon/index.js';
import { rng } from './helpers/rng.js';


// The addon is built at install; a missing addon fails here unless the build
// was skipped on purpose.
const { gemm: addon, reason: why = '' } = loadGemm();
const skip = !addon && process.env.RINGATTN_SKIP_NATIVE ? `RINGATTN_SKIP_NATIVE is set: ${why}` : false;

function native(): GemmAddon {
  if (!addon) assert.fail(`native addon not built: ${why}`);
  return addon;
}


function random(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = r() * 2 - 1;
  return out;
}

/** A call's shape and operands, with C as it was before the call. */
type Problem = Pick<SgemmArgs, 'm' | 'n' | 'k' | 'transA' | 'transB' | 'a' | 'lda' | 'b' | 'ldb' | 'ldc'> & { c0: Float32Array };

// Stored A is m x k (k x m when transposed), B k x n (n x k); each leading
// dimension `pad` more than the stored row length, arrays exactly as long as needed.
function problem(m: number, n: number, k: number, transA: boolean, transB: boolean, pad: number, seed: number): Problem {
  const aRows = transA ? k : m, aCols = transA ? m : k;
  const bRows = transB ? n : k, bCols = transB ? k : n;
  const lda = Math.max(1, aCols + pad), ldb = Math.max(1, bCols + pad), ldc = Math.max(1, n + pad);
  const len = (rows: number, cols: number, ld: number) => (rows === 0 || cols === 0 ? 0 : (rows - 1) * ld + cols);
  return {
    m,
    n,
    k,
    transA,
    transB,
    a: random(len(aRows, aCols, lda), seed),
    lda,
    b: random(len(bRows, bCols, ldb), seed + 1),
    ldb,
    ldc,
    c0: random(len(m, n, ldc), seed + 2),
  };
}

// op(A) op(B) in float64, and for each element the sum of |products|.
function reference(p: Problem): { ab: Float64Array; bound: Float64Array } {
  const { m, n, k, a, b, lda, ldb } = p;
  const ab = new Float64Array(m * n), bound = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0, t = 0;
      for (let q = 0; q < k; q++) {
        const x = (p.transA ? a[q * lda + i] : a[i * lda + q]) * (p.transB ? b[j * ldb + q] : b[q * ldb + j]);
        s += x;
        t += Math.abs(x);
      }
      ab[i * n + j] = s;
      bound[i * n + j] = t;
    }
  }
  return { ab, bound };
}

function args(p: Problem, c: Float32Array, beta: number, threads: number, isa?: string): SgemmArgs {
  return { m: p.m, n: p.n, k: p.k, transA: p.transA, transB: p.transB, a: p.a, lda: p.lda, b: p.b, ldb: p.ldb, c, ldc: p.ldc, beta, threads, isa };
}

// Every element within 1e-5 of the bound; the padding between rows of C untouched.
function check(p: Problem, ref: { ab: Float64Array; bound: Float64Array }, c: Float32Array, beta: number, what: string): void {
  let worst = 0;
  for (let i = 0; i < p.m; i++) {
    for (let j = 0; j < p.n; j++) {
      const old = beta ? p.c0[i * p.ldc + j] : 0;
      const want = old + ref.ab[i * p.n + j];
      const scale = Math.abs(old) + ref.bound[i * p.n + j];
      const err = Math.abs(c[i * p.ldc + j] - want) / (scale > 0 ? scale : 1);
      if (!(err <= 1e-5)) assert.fail(`${what}: C[${i}][${j}] = ${c[i * p.ldc + j]}, want ${want} (relative error ${err})`);
      worst = Math.max(worst, err);
    }
    for (let j = p.n; j < p.ldc && i * p.ldc + j < c.length; j++) {
      assert.equal(c[i * p.ldc + j], p.c0[i * p.ldc + j], `${what}: padding C[${i}][${j}] was written`);
    }
  }
}

const TRANS: Array<[boolean, boolean]> = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
];
const name = (t: [boolean, boolean]) => `${t[0] ? 'T' : 'N'}${t[1] ? 'T' : 'N'}`;

describe('native sgemm', { skip }, () => {
  it('lists usable instruction sets, portable last', () => {
    const isas = native().gemmIsas();
    assert.ok(isas.length >= 1);
    assert.equal(isas[isas.length - 1], 'portable');
    for (const isa of isas) assert.ok(['avx512', 'avx2', 'portable'].includes(isa), isa);
  });

  const sizes: Array<[number, number, number]> = [
    [1, 1, 1],
    [7, 13, 5],
    [33, 65, 17],
    [100, 37, 300],
    [257, 129, 64],
  ];
  for (const [m, n, k] of sizes) {
    it(`${m}x${n}x${k}: every isa, transpose, beta and thread count matches float64`, () => {
      const g = native();
      let seed = m * 1000003 + n * 1009 + k;
      for (const t of TRANS) {
        for (const pad of [0, 3]) {
          const p = problem(m, n, k, t[0], t[1], pad, seed++);
          const ref = reference(p);
          for (const isa of g.gemmIsas()) {
            for (const beta of [0, 1]) {
              for (const threads of [1, 2]) {
                const c = p.c0.slice();
                g.sgemmSync(args(p, c, beta, threads, isa));
                check(p, ref, c, beta, `${isa} ${name(t)} pad ${pad} beta ${beta} threads ${threads}`);
              }
            }
          }
        }
      }
    });
  }

  it('the asynchronous sgemm gives the same result as sgemmSync, also when calls overlap', async () => {
    const g = native();
    const probs = TRANS.map((t, i) => problem(61, 90, 530, t[0], t[1], 1, 77 + i));
    const want = probs.map((p) => {
      const c = p.c0.slice();
      g.sgemmSync(args(p, c, 1, 1));
      return c;
    });
    const got = probs.map((p) => p.c0.slice());
    await Promise.all(probs.flatMap((p, i) => [g.sgemm(args(p, got[i], 1, 2))]));
    for (let i = 0; i < probs.length; i++) assert.deepEqual(got[i], want[i]);
    check(probs[0], reference(probs[0]), got[0], 1, 'async NN');
  });

  it('results are bitwise identical for 1, 2 and 3 threads', () => {
    const g = native();
    // Shapes whose task grids differ with the thread count: M large, M small
    // with N large, K deeper than a KC block; and custom blockings.
    const shapes: Array<[number, number, number]> = [
      [300, 200, 700],
      [40, 1000, 1100],
      [129, 67, 2100],
    ];
    for (const isa of g.gemmIsas()) {
      let seed = 5;
      for (const [m, n, k] of shapes) {
        for (const t of TRANS) {
          const p = problem(m, n, k, t[0], t[1], 2, seed++);
          for (const blocking of [{}, { kc: 96, mc: 50, nc: 100 }]) {
            const results = [1, 2, 3].map((threads) => {
              const c = p.c0.slice();
              g.sgemmSync({ ...args(p, c, 1, threads, isa), ...blocking });
              return c;
            });
            const what = `${isa} ${m}x${n}x${k} ${name(t)} ${JSON.stringify(blocking)}`;
            assert.ok(Buffer.from(results[0].buffer).equals(Buffer.from(results[1].buffer)), `${what}: 1 vs 2 threads`);
            assert.ok(Buffer.from(results[0].buffer).equals(Buffer.from(results[2].buffer)), `${what}: 1 vs 3 threads`);
          }
        }
      }
    }
    // And one product against float64, with a blocking that splits everything.
    const p = problem(129, 67, 2100, false, true, 2, 99);
    const c = p.c0.slice();
    g.sgemmSync({ ...args(p, c, 0, 2), kc: 96, mc: 50, nc: 100 });
    check(p, reference(p), c, 0, 'blocked NT');
  });

  it('empty dimensions: k = 0 zeroes C (beta 0) or leaves it (beta 1); m or n = 0 does nothing', () => {
    const g = native();
    for (const isa of g.gemmIsas()) {
      const p = problem(5, 6, 0, false, false, 2, 3);
      const c = p.c0.slice();
      g.sgemmSync(args(p, c, 1, 1, isa));
      assert.deepEqual(c, p.c0);
      g.sgemmSync(args(p, c, 0, 2, isa));
      for (let i = 0; i < 5; i++) for (let j = 0; j < 8; j++) if (i * 8 + j < c.length) assert.equal(c[i * 8 + j], j < 6 ? 0 : p.c0[i * 8 + j]);
      for (const [m, n] of [[0, 4], [4, 0]]) {
        const q = problem(m, n, 3, false, false, 0, 4);
        const cq = new Float32Array(16).fill(7);
        g.sgemmSync(args(q, cq, 0, 1, isa));
        assert.ok(cq.every((x) => x === 7));
      }
    }
  });

  it('rejects bad arguments with a ringattn native: message', async () => {
    const g = native();
    const p = problem(8, 9, 10, false, false, 0, 1);
    const good = () => args(p, p.c0.slice(), 0, 1);
    const cases: Array<[string, SgemmArgs, RegExp]> = [
      ['short a', { ...good(), a: p.a.subarray(1) }, /^ringattn native: a has 79 elements, needs 80/],
      ['short b', { ...good(), b: new Float32Array(5) }, /^ringattn native: b has 5 elements/],
      ['short c', { ...good(), c: new Float32Array(71) }, /^ringattn native: c has 71 elements, needs 72/],
      ['short a for lda', { ...good(), lda: 11 }, /^ringattn native: a has 80 elements, needs 87/],
      ['a not a Float32Array', { ...good(), a: new Float64Array(80) as unknown as Float32Array }, /^ringattn native: a must be a Float32Array/],
      ['c a plain array', { ...good(), c: [1, 2, 3] as unknown as Float32Array }, /^ringattn native: c must be a Float32Array/],
      ['lda below k', { ...good(), lda: 9 }, /^ringattn native: lda \(9\) must be at least 10/],
      ['ldb below n when transposed', { ...good(), transB: true, ldb: 9 }, /^ringattn native: ldb \(9\) must be at least 10/],
      ['ldc below n', { ...good(), ldc: 8 }, /^ringattn native: ldc \(8\) must be at least 9/],
      ['beta 2', { ...good(), beta: 2 }, /^ringattn native: beta must be an integer in \[0, 1\]/],
      ['m negative', { ...good(), m: -1 }, /^ringattn native: m must be an integer/],
      ['k fractional', { ...good(), k: 2.5 }, /^ringattn native: k must be an integer/],
      ['threads missing', { ...good(), threads: undefined as unknown as number }, /^ringattn native: threads must be a number/],
      ['unknown isa', { ...good(), isa: 'sse9' }, /^ringattn native: instruction set 'sse9' is not usable here/],
      ['kc zero', { ...good(), kc: 0 }, /^ringattn native: kc must be an integer/],
    ];
    for (const [what, bad, re] of cases) {
      assert.throws(() => g.sgemmSync(bad), (e: Error) => re.test(e.message), `sgemmSync: ${what}`);
      await assert.rejects(async () => g.sgemm(bad), (e: Error) => re.test(e.message), `sgemm: ${what}`);
    }
    assert.throws(() => g.sgemmSync(undefined as unknown as SgemmArgs), /^TypeError: ringattn native: sgemmSync\(args\)/);
    assert.throws(() => g.sgemmSync({ ...good(), a: new Float64Array(80) as unknown as Float32Array }), TypeError);
    assert.throws(() => g.sgemmSync({ ...good(), a: p.a.subarray(1) }), RangeError);
  });
});
