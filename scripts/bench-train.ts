/**
 * npm run bench:train — training throughput and MFU of real `ringattn train`
 * runs on a localhost ring, per config and compute engine.
 *
 *   node --import tsx scripts/bench-train.ts [--configs demo,long] [--engines native,tfjs,tfjs-all]
 *                                            [--steps demo=40,long=4] [--json]
 *
 * Configs: `demo` is configs/localhost.yaml as shipped; `long` is 2 workers,
 * 16K tokens per step, d=256, 4 layers, 8 heads. Each run's metrics.jsonl gives
 * the medians of the steps after the first quarter (warm-up), split into
 * attention (kernel time), other compute (the engine's model ops), ring wait,
 * all-reduce and optimizer. Engines: `native`; `tfjs` (the tfjs engine on the
 * wasm backend, attention still on the native kernel: the engines compared
 * alone); `tfjs-all` (tfjs engine and tfjs attention kernel: a host where the
 * addon cannot build).
 *
 * MFU = model FLOPs per step / step time / the machine's fp32 GEMM rate on all
 * cores, measured in the same run: numpy's 2048^3 matmul (OpenBLAS, with
 * OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for that command only), or the
 * engine's own SGEMM when numpy is absent (labelled). Model FLOPs =
 * flopsPerToken (src/train/flops.ts) times the tokens of one step: 6·P per token
 * plus 12·L·H·d_head per key attended (about T/2 keys under a causal mask).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { loadSpec, specFromObject, type ClusterSpec } from '../src/config/index.js';
import { loadGemm } from '../src/addon/index.js';
import { paramCount } from '../src/model/index.js';
import { flopsPerToken } from '../src/train/flops.js';
import { cpuFlags } from '../src/bench/harness.js';
import { numpyMatmulRate } from './numpy-gemm.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const arg = (name: string, dflt: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const configNames = arg('--configs', 'demo,long').split(',');
const engines = arg('--engines', 'native,tfjs').split(',');
for (const e of engines) if (!['native', 'tfjs', 'tfjs-all'].includes(e)) throw new Error(`bench-train: unknown engine "${e}" (native, tfjs, tfjs-all)`);
const stepsFor = Object.fromEntries(
  arg('--steps', 'demo=40,long=4')
    .split(',')
    .map((kv) => kv.split('=') as [string, string]),
);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function specOf(name: string): ClusterSpec {
  const demo = loadSpec(path.join(ROOT, 'configs', 'localhost.yaml'));
  if (name === 'demo') return demo;
  if (name === 'long') {
    return specFromObject({
      name: 'long',
      hosts: [{ name: 'local', address: '127.0.0.1', slots: 2 }],
      attention: { causal: true, layout: 'auto' },
      model: { dModel: 256, layers: 4, heads: 8 },
      train: { seqLen: '16K', batch: 1, steps: 4 },
      data: { kind: 'text' },
    });
  }
  throw new Error(`bench-train: unknown config "${name}" (demo, long)`);
}

function modelFlops(spec: ClusterSpec): number {
  return flopsPerToken(spec.model, spec.train.seqLen, spec.attention) * spec.train.batch * spec.train.seqLen;
}

interface GemmCeiling {
  gflops: number;
  source: string;
}

async function gemmCeiling(): Promise<GemmCeiling> {
  const threads = availableParallelism();
  const np = await numpyMatmulRate(threads, 2048, 10);
  if (!('error' in np)) return { gflops: np.gflops, source: `numpy ${np.numpy} fp32 2048³ on ${threads} threads, best of 10, OpenBLAS kernel ${np.kernel}` };
  const { gemm: addon, reason } = loadGemm();
  if (!addon) throw new Error(`bench-train: neither numpy (${np.error}) nor the engine's SGEMM (${reason}) is available`);
  const n = 2048;
  const a = new Float32Array(n * n).fill(0.5);
  const c = new Float32Array(n * n);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    addon.sgemmSync({ m: n, n, k: n, transA: false, transB: false, a, lda: n, b: a, ldb: n, c, ldc: n, beta: 0, threads });
    best = Math.min(best, performance.now() - t0);
  }
  return { gflops: (2 * n ** 3) / (best / 1000) / 1e9, source: `the engine's own SGEMM 2048³ on ${threads} threads (numpy unavailable: ${np.error})` };
}

interface Row {
  config: string;
  engine: string;
  tokensPerStep: number;
  tokensPerSec: number;
  stepMs: number;
  attentionMs: number;
  otherMs: number;
  waitMs: number;
  allReduceMs: number;
  optimizerMs: number;
  gflops: number;
  mfu: number;
}

const TRAIN_FLAGS = ['avx512f', 'avx512bw', 'avx2', 'fma', 'amx_tile'];

const ceiling = await gemmCeiling();
const dir = mkdtempSync(path.join(tmpdir(), 'ra-bench-train-'));
const rows: Row[] = [];
try {
  for (const config of configNames) {
    const base = specOf(config);
    const steps = Number(stepsFor[config] ?? 10);
    for (const engine of engines) {
      const specFile = path.join(dir, `${config}-${engine}.yaml`);
      const { runDir: _r, ...rest } = base;
      const backend = engine === 'native' ? base.backend : 'wasm';
      const kernel = engine === 'tfjs-all' ? 'tfjs' : base.kernel;
      const engineName = engine === 'native' ? 'native' : 'tfjs';
      writeFileSync(specFile, stringify({ ...rest, engine: engineName, kernel, backend, train: { ...base.train, steps, checkpointEvery: 0, evalEvery: 0 } }));
      const runDir = path.join(dir, `${config}-${engine}`);
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'ringattn.js'), 'train', '--config', specFile, '--run-dir', runDir, '--quiet'], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`train ${config} on engine ${engine} failed:\n${r.stderr}`);
      const all = readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      const m = all.slice(Math.max(1, Math.floor(all.length / 4)));
      const stepMs = median(m.map((x) => x.stepMs));
      const flops = modelFlops(base);
      const gflops = flops / (stepMs / 1000) / 1e9;
      rows.push({
        config,
        engine,
        tokensPerStep: base.train.batch * base.train.seqLen,
        tokensPerSec: median(m.map((x) => x.tokensPerSec)),
        stepMs,
        attentionMs: median(m.map((x) => x.attnComputeMs)),
        otherMs: median(m.map((x) => x.computeMs - x.attnComputeMs - x.optimizerMs)),
        waitMs: median(m.map((x) => x.waitMs)),
        allReduceMs: median(m.map((x) => x.allReduceMs)),
        optimizerMs: median(m.map((x) => x.optimizerMs)),
        gflops,
        mfu: gflops / ceiling.gflops,
      });
      process.stderr.write(`bench-train: ${config} on ${engine}: ${stepMs.toFixed(0)} ms per step\n`);
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

if (process.argv.includes('--json')) {
  process.stdout.write(`${JSON.stringify({ ceiling, cpu: cpus()[0]?.model, flags: cpuFlags(TRAIN_FLAGS, ''), rows })}\n`);
} else {
  console.log(`${cpus().length} x ${cpus()[0]?.model} (${cpuFlags(TRAIN_FLAGS, '')}); GEMM ceiling ${ceiling.gflops.toFixed(0)} GFLOP/s: ${ceiling.source}`);
  for (const c of configNames) {
    const s = specOf(c);
    console.log(`${c}: ${s.hosts.reduce((a, h) => a + h.slots, 0)} workers, d=${s.model.dModel}, ${s.model.layers} layers, ${s.model.heads} heads, ${s.train.batch} x ${s.train.seqLen} tokens per step, ${paramCount(s.model)} parameters, ${(modelFlops(s) / 1e9).toFixed(1)} GFLOP per step`);
  }
  console.log('| config | engine | tokens/s | step ms | attention ms | other compute ms | ring wait ms | all-reduce ms | optimizer ms | model GFLOP/s | MFU |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    console.log(
      `| ${r.config} | ${r.engine} | ${r.tokensPerSec.toFixed(0)} | ${r.stepMs.toFixed(0)} | ${r.attentionMs.toFixed(0)} | ${r.otherMs.toFixed(0)} | ${r.waitMs.toFixed(0)} | ${r.allReduceMs.toFixed(0)} | ${r.optimizerMs.toFixed(1)} | ${r.gflops.toFixed(1)} | **${(100 * r.mfu).toFixed(1)}%** |`,
    );
  }
  for (const c of configNames) {
    const n = rows.find((r) => r.config === c && r.engine === 'native');
    for (const other of ['tfjs', 'tfjs-all']) {
      const t = rows.find((r) => r.config === c && r.engine === other);
      if (n && t) console.log(`${c}: native ${(n.tokensPerSec / t.tokensPerSec).toFixed(1)}x ${other} in tokens/s`);
    }
  }
}
