// Native SGEMM throughput next to numpy's fp32 matmul (OpenBLAS), measured in
// the same run, for square sizes, all four transpose combinations and each
// thread count.
//
//   npm run bench:gemm -- [--threads 1,2] [--sizes 256,512,1024,2048,4096] [--trans NN,NT,TN,TT]
//                         [--isa avx512] [--budget 0.5] [--json] [--kc N --mc N --nc N]
//
// Each figure is the best of several runs after a warm-up, 2*m*n*k flops over
// the wall time of one call: the engine's asynchronous sgemm (off the JS
// thread, awaited), numpy's `np.matmul(a, b, out=c)` with transposes as `.T`
// views (timed inside Python). The two alternate in batches (three each, two
// for the largest sizes; a batch is at least 1 run, more while a cell's runs
// fit in --budget seconds), so both see about the same load on a shared
// machine. Before each engine batch the bench waits until OpenBLAS's helper
// threads, which spin for about 0.13 s after each call, have gone to sleep, or
// they would take a core from the engine. numpy runs in one long-lived child
// per thread count, with OPENBLAS_NUM_THREADS set to it and OPENBLAS_CORETYPE /
// OPENBLAS_L2_SIZE removed from that child's environment only, so OpenBLAS
// picks its kernel for this CPU itself.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadGemm, type SgemmArgs } from '../src/addon/index.js';
import { Numpy } from './numpy-gemm.js';


const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '1,2' },
    sizes: { type: 'string', default: '256,512,1024,2048,4096' },
    trans: { type: 'string', default: 'NN,NT,TN,TT' },
    isa: { type: 'string' },
    budget: { type: 'string', default: '0.5' },
    json: { type: 'boolean', default: false },
    kc: { type: 'string' },
    mc: { type: 'string' },
    nc: { type: 'string' },
  },
});

const list = (s: string): number[] => s.split(',').map((x) => Number(x.trim())).filter((x) => Number.isInteger(x) && x > 0);
const threadList = list(values.threads);
const sizes = list(values.sizes);
const transList = values.trans.split(',').map((t) => t.trim().toUpperCase());
for (const t of transList) {
  if (!/^[NT][NT]$/.test(t)) {
    console.error(`bench-gemm: --trans: expected NN, NT, TN or TT, got "${t}"`);
    process.exit(1);
  }
}
const budget = Number(values.budget);
const blocking = {
  ...(values.kc ? { kc: Number(values.kc) } : {}),
  ...(values.mc ? { mc: Number(values.mc) } : {}),
  ...(values.nc ? { nc: Number(values.nc) } : {}),
};

const { gemm, reason } = loadGemm();
if (!gemm) {
  console.error(`bench-gemm: ${reason}`);
  process.exit(1);
}
const addon = gemm;
const isa = values.isa ?? addon.gemmIsas()[0];

function cpuInfo(): { model: string; avx512f: boolean; avx2: boolean; fma: boolean; cores: number } {
  let text = '';
  try {
    text = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    // not Linux
  }
  const model = /^model name\s*:\s*(.*)$/m.exec(text)?.[1]?.trim() ?? 'unknown';
  const flags = new Set((/^flags\s*:\s*(.*)$/m.exec(text)?.[1] ?? '').split(/\s+/));
  const cores = (text.match(/^processor\s*:/gm) ?? []).length;
  return { model, avx512f: flags.has('avx512f'), avx2: flags.has('avx2'), fma: flags.has('fma'), cores };
}

function fill(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    out[i] = s / 2 ** 32 - 0.5;
  }
  return out;
}

// ---------------------------------------------------------------------------
// One cell: the engine and numpy alternating, best of each.

async function cell(np: Numpy | null, n: number, trans: string, threads: number): Promise<{ engine: number; numpy: number | null; error?: string }> {
  const transA = trans[0] === 'T', transB = trans[1] === 'T';
  const a = fill(n * n, 1), b = fill(n * n, 2), c = new Float32Array(n * n);
  const args: SgemmArgs = { m: n, n, k: n, transA, transB, a, lda: n, b, ldb: n, c, ldc: n, beta: 0, threads, isa, ...blocking };
  const tE0 = performance.now();
  await addon.sgemm(args);
  const engineWarm = (performance.now() - tE0) / 1000;
  let npError: string | undefined;
  let npWarm = 0;
  if (np) {
    try {
      npWarm = Number(await np.ask(`setup ${n} ${trans}`));
    } catch (err) {
      npError = (err as Error).message;
    }
  }
  const useNp = np !== null && npError === undefined;
  const batches = engineWarm + npWarm > budget / 2 ? 2 : 3;
  const perBatch = Math.max(1, Math.min(25, Math.floor(budget / batches / (engineWarm + npWarm))));
  let bestE = Infinity, bestN = Infinity;
  for (let batch = 0; batch < batches; batch++) {
    if (useNp && np && npError === undefined) {
      try {
        bestN = Math.min(bestN, Number(await np.ask(`run ${perBatch}`)));
      } catch (err) {
        npError = (err as Error).message;
      }
      if (threads > 1) await new Promise((r) => setTimeout(r, 200));
    }
    for (let i = 0; i < perBatch; i++) {
      const t0 = performance.now();
      await addon.sgemm(args);
      bestE = Math.min(bestE, (performance.now() - t0) / 1000);
    }
  }
  const flops = 2 * n ** 3;
  return { engine: flops / bestE / 1e9, numpy: Number.isFinite(bestN) ? flops / bestN / 1e9 : null, error: npError };
}

interface Row {
  size: number;
  trans: string;
  threads: number;
  engine: number;
  numpy: number | null;
  ratio: number | null;
}

const cpu = cpuInfo();
const rows: Row[] = [];
let numpyKernel = 'unknown', numpyVersion = 'unknown';
const numpyErrors: string[] = [];
for (const threads of threadList) {
  let np: Numpy | null = new Numpy(threads);
  try {
    const info = JSON.parse(await np.ask('info')) as { numpy: string; kernel: string };
    numpyKernel = info.kernel;
    numpyVersion = info.numpy;
  } catch (err) {
    numpyErrors.push(`threads ${threads}: ${(err as Error).message}`);
    np.close();
    np = null;
  }
  for (const n of sizes) {
    for (const trans of transList) {
      const r = await cell(np, n, trans, threads);
      if (r.error) numpyErrors.push(`threads ${threads}, ${n} ${trans}: ${r.error}`);
      const row: Row = { size: n, trans, threads, engine: r.engine, numpy: r.numpy, ratio: r.numpy ? r.engine / r.numpy : null };
      rows.push(row);
      if (!values.json) process.stderr.write(`  ${n} ${trans} t=${threads}: engine ${r.engine.toFixed(1)}, numpy ${r.numpy?.toFixed(1) ?? '-'}\n`);
    }
  }
  np?.close();
}

if (values.json) {
  console.log(
    JSON.stringify(
      { cpu, isa, isas: addon.gemmIsas(), blocking, numpy: { version: numpyVersion, kernel: numpyKernel, errors: numpyErrors }, rows },
      null,
      2,
    ),
  );
} else {
  const f = (x: number | null, d = 1) => (x === null ? '-' : x.toFixed(d));
  console.log(`CPU: ${cpu.model} (${cpu.cores} logical cores; avx512f ${cpu.avx512f ? 'yes' : 'no'}, avx2 ${cpu.avx2 ? 'yes' : 'no'}, fma ${cpu.fma ? 'yes' : 'no'})`);
  console.log(`engine: sgemm isa ${isa}${Object.keys(blocking).length ? ` blocking ${JSON.stringify(blocking)}` : ''}`);
  console.log(`numpy ${numpyVersion}: OpenBLAS kernel ${numpyKernel}`);
  for (const e of numpyErrors) console.log(`numpy failed: ${e}`);
  console.log('');
  console.log('| size | trans | threads | engine GFLOP/s | numpy GFLOP/s | ratio |');
  console.log('| ---: | :---: | ---: | ---: | ---: | ---: |');
  for (const r of rows) console.log(`| ${r.size} | ${r.trans} | ${r.threads} | ${f(r.engine)} | ${f(r.numpy)} | ${f(r.ratio, 2)} |`);
}
