// Native attention kernel throughput next to this machine's fp32 matmul rate
// (numpy, same thread count), measured in the same run.
//
//   node --import tsx scripts/bench-kernel.ts [--threads N] [--json] [--len 2048] [--heads 4]
//        [--kv-heads 4] [--head-dim 64] [--tile-q 128] [--tile-kv 128] [--reps 5] [--isa avx2]
//
// FLOP convention: forward = 4 * headDim * heads * (allowed query-key pairs), i.e. the two
// matmuls QK^T and PV over the pairs the mask allows (all qLen*kvLen non-causal, about half
// causal); the exp and the masked parts of diagonal tiles are not counted. Backward = 2.5x
// forward (five matmuls against two). fwd+bwd = 3.5x forward over the summed time. Each figure is
// the best of --reps runs after a warm-up (medians in the JSON), like the matmul figure.
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { loadNativeKernel, nativeInfo } from '../src/kernels/native.js';
import type { BlockArgs } from '../src/kernels/types.js';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '1' },
    json: { type: 'boolean', default: false },
    len: { type: 'string', default: '2048' },
    heads: { type: 'string', default: '4' },
    'kv-heads': { type: 'string' },
    'head-dim': { type: 'string', default: '64' },
    'tile-q': { type: 'string', default: '128' },
    'tile-kv': { type: 'string', default: '128' },
    reps: { type: 'string', default: '5' },
    isa: { type: 'string' },
  },
});
const threads = Number(values.threads);
const len = Number(values.len);
const heads = Number(values.heads);
const kvHeads = Number(values['kv-heads'] ?? values.heads);
const headDim = Number(values['head-dim']);
const tileQ = Number(values['tile-q']);
const tileKV = Number(values['tile-kv']);
const reps = Number(values.reps);

const info = nativeInfo();
if (!info.available) {
  console.error(`bench-kernel: ${info.reason}`);
  process.exit(1);
}

function matmulRate(nThreads: number): number | null {
  // Thread caps must be in the environment before numpy loads its BLAS.
  const env = {
    ...process.env,
    OPENBLAS_NUM_THREADS: String(nThreads),
    OMP_NUM_THREADS: String(nThreads),
    MKL_NUM_THREADS: String(nThreads),
  };
  const code = [
    'import numpy as np, time',
    'n = 2048',
    'a = np.random.rand(n, n).astype(np.float32); b = np.random.rand(n, n).astype(np.float32)',
    'a @ b',
    'best = 1e9',
    'for _ in range(5):',
    '    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)',
    'print(2 * n**3 / best / 1e9)',
  ].join('\n');
  const r = spawnSync('python3', ['-c', code], { env, encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) return null;
  return Number(r.stdout.trim());
}

function randn(n: number): Float32Array {
  const out = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 3.4;
  }
  return out;
}

function allowedPairs(a: BlockArgs): number {
  if (!a.causal) return a.qLen * a.kvLen;
  let n = 0;
  for (let i = 0; i < a.qLen; i++) for (let j = 0; j < a.kvLen; j++) if (a.kvPos[j] <= a.qPos[i]) n++;
  return n;
}

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];

async function measure(causal: boolean) {
  const kernel = await loadNativeKernel({ tileQ, tileKV, threads, isa: values.isa });
  const pos = Int32Array.from({ length: len }, (_, i) => i);
  const args: BlockArgs = {
    qLen: len,
    kvLen: len,
    heads,
    kvHeads,
    headDim,
    q: randn(len * heads * headDim),
    k: randn(len * kvHeads * headDim),
    v: randn(len * kvHeads * headDim),
    qPos: pos,
    kvPos: pos,
    causal,
    scale: 1 / Math.sqrt(headDim),
  };
  const dO = randn(len * heads * headDim);
  const delta = new Float32Array(heads * len).fill(0.1);
  const acc = { dq: new Float32Array(args.q.length), dk: new Float32Array(args.k.length), dv: new Float32Array(args.v.length) };
  const fwdTimes: number[] = [];
  const bwdTimes: number[] = [];
  for (let r = 0; r <= reps; r++) {
    let t = performance.now();
    const { lse } = await kernel.forward(args);
    const tf = performance.now() - t;
    t = performance.now();
    await kernel.backward(args, { dO, lse, delta }, acc);
    const tb = performance.now() - t;
    if (r > 0) {
      // the first round warms caches, page tables and the thread pool
      fwdTimes.push(tf);
      bwdTimes.push(tb);
    }
  }
  const fwdFlop = 4 * headDim * heads * allowedPairs(args);
  const gflops = (flop: number, ms: number) => flop / (ms * 1e-3) / 1e9;
  const both = fwdTimes.map((x, i) => x + bwdTimes[i]);
  // Best of the repetitions, like the matmul figure it is compared with (the
  // least disturbed run on a shared machine); medians are in the JSON.
  return {
    causal,
    fwdMs: Math.min(...fwdTimes),
    bwdMs: Math.min(...bwdTimes),
    fwd: gflops(fwdFlop, Math.min(...fwdTimes)),
    bwd: gflops(2.5 * fwdFlop, Math.min(...bwdTimes)),
    fwdBwd: gflops(3.5 * fwdFlop, Math.min(...both)),
    fwdMedian: gflops(fwdFlop, median(fwdTimes)),
    bwdMedian: gflops(2.5 * fwdFlop, median(bwdTimes)),
    fwdBwdMedian: gflops(3.5 * fwdFlop, median(both)),
  };
}

const matmulBefore = matmulRate(threads);
const rows = [await measure(false), await measure(true)];
const matmulAfter = matmulRate(threads);
const rates = [matmulBefore, matmulAfter].filter((x): x is number => x !== null);
const matmul = rates.length ? Math.max(...rates) : null;

const result = {
  bench: 'kernel',
  isa: values.isa ?? process.env.RINGATTN_NATIVE_ISA ?? info.isa,
  threads,
  len,
  heads,
  kvHeads,
  headDim,
  tileQ,
  tileKV,
  reps,
  matmulGflops: matmul,
  // Passed through unchanged to numpy: a forced OpenBLAS core type changes its rate.
  openblasCoretype: process.env.OPENBLAS_CORETYPE ?? null,
  matmulRuns: [matmulBefore, matmulAfter],
  rows: rows.map((r) => ({
    ...r,
    fwdOfMatmul: matmul ? r.fwd / matmul : null,
    fwdBwdOfMatmul: matmul ? r.fwdBwd / matmul : null,
  })),
};

if (!values.json) {
  const f = (x: number) => x.toFixed(1).padStart(7);
  const pct = (x: number | null) => (x === null ? '    n/a' : `${(100 * x).toFixed(0).padStart(6)}%`);
  console.log(
    `native kernel (${result.isa}), ${threads} thread(s), ${len}x${len}, heads ${heads}/${kvHeads}, headDim ${headDim}, ` +
      `tiles ${tileQ}x${tileKV}, best of ${reps}`,
  );
  console.log(`numpy fp32 matmul 2048^3, ${threads} thread(s): ${matmul?.toFixed(1) ?? 'n/a'} GFLOP/s (best of 5, before and after: ${result.matmulRuns.map((x) => x?.toFixed(1)).join(', ')})`);
  console.log('mask      fwd ms  bwd ms  fwd GF/s  bwd GF/s  f+b GF/s  fwd/matmul  f+b/matmul');
  for (const r of result.rows) {
    console.log(
      `${(r.causal ? 'causal' : 'full').padEnd(8)} ${f(r.fwdMs)} ${f(r.bwdMs)}   ${f(r.fwd)}   ${f(r.bwd)}   ${f(r.fwdBwd)}     ${pct(r.fwdOfMatmul)}     ${pct(r.fwdBwdOfMatmul)}`,
    );
  }
}
console.log(JSON.stringify(result));
