import { slotGpu, workerThreads, type ClusterSpec } from '../config/index.js';
import { totalmem } from 'node:os';
import { calibrateKernel } from '../bench/calibrate.js';
import { loadKernel, type KernelName } from '../kernels/index.js';
import { allReduceSum, barrier, ringPass, timeHops } from '../ring/collectives.js';
import { randn } from '../tensor/random.js';
import { loadSumInto } from '../addon/index.js';
import { tunedGemm, tunedTiles, tuningFilePath } from '../engine/tuning.js';
import { loadEngine, type EngineName } from '../engine/index.js';
import { describeBackends, selectBackend, tfjsWant } from '../tensor/backend.js';
import type { AdapterInfo } from '../engine/webgpu/device.js';
import type { JobDefinition } from './types.js';

/**
 * `ringattn doctor`: what each worker can use, and how fast the ring really is,
 * measured with real messages. Rank 0's figures also calibrate `plan`'s
 * "this-machine" device.
 */

export interface DoctorRankReport {
  rank: number;
  host: string;
  node: string;
  endpoint: string;
  backends: Array<{ name: string; available: boolean; gpu: boolean; reason?: string }>;
  kernel: string;
  kernelReason: string;
  kernelGflops: number;
  memoryGB: number;
  /**
   * RSS (bytes) of this worker once it has loaded the compute engine, the
   * attention kernel and ZeroMQ, before any model or measurement allocates:
   * the fixed overhead `plan` adds to what a training run allocates.
   */
  runtimeBytes: number;
  /** WebGPU adapters seen by this worker; the first rank of a host also measures each one. */
  webgpu: WebgpuReport;
  /** Block sizes measured for this host (the first rank on each host measures; the others read them). */
  tuning: { tiles?: { tileQ: number; tileKV: number }; gemm?: { mc: number; kc: number; nc: number }; file: string; error?: string };
}

export interface AdapterReport extends AdapterInfo {
  limits?: Record<string, number>;
  /** A square fp32 matmul on the webgpu engine, and attention forward (no mask) on it. */
  matmulGflops?: number;
  attentionGflops?: number;
  /** Why the adapter was listed but not measured. */
  error?: string;
}

export interface WebgpuReport {
  /** Why WebGPU cannot run in this worker at all. */
  unavailable?: string;
  adapters: AdapterReport[];
}

export interface HopFigure {
  bytes: number;
  ms: number;
  gbps: number;
}

export interface DoctorReport {
  ranks: DoctorRankReport[];
  latencyUs: number;
  hops: HopFigure[];
  allReduce: { bytes: number; ms: number; busGBps: number };
}

const MiB = 1 << 20;

/** GFLOP/s of `run`, which does `flops` of work per call: one warm-up call, then calls for `ms` (at least two). */
async function rate(flops: number, run: () => Promise<void>, ms = 500): Promise<number> {
  await run();
  const t0 = performance.now();
  let reps = 0;
  while (performance.now() - t0 < ms || reps < 2) {
    await run();
    reps++;
  }
  return (flops * reps) / ((performance.now() - t0) / 1000) / 1e9;
}

/** The kernel's forward rate on one n x n block, by the same calibration bench uses (src/bench/calibrate.ts). */
async function kernelRate(kernelName: KernelName, threads: number): Promise<{ name: string; reason: string; gflops: number }> {
  const { kernel, reason } = await loadKernel(kernelName, { tileQ: 128, tileKV: 128, threads });
  const [n, heads, d] = kernel.name === 'native' ? [1024, 4, 64] : [256, 2, 64];
  const cal = await calibrateKernel(kernel, { heads, kvHeads: heads, headDim: d }, { shardLen: n, tileQ: n, tileKV: n, maxKvRows: n, backward: false });
  return { name: kernel.name, reason, gflops: cal.fwdGflops };
}

/**
 * Loads what a training worker loads before its model (the ring's ZeroMQ is
 * already up), then reads the RSS. First in the job: tuning and the kernel's
 * rate allocate buffers the native addon keeps, which a train worker has not
 * allocated at that point either.
 */
async function runtimeRss(spec: ClusterSpec, rank: number, threads: number): Promise<number> {
  const { engine } = await loadEngine(spec.engine as EngineName, { threads, backend: spec.backend, gpu: slotGpu(spec, rank) });
  if (spec.kernel === 'tfjs' || engine.name === 'tfjs') await selectBackend(tfjsWant(spec.backend));
  await loadKernel(spec.kernel as KernelName, { tileQ: 128, tileKV: 128, threads });
  const rss = process.memoryUsage().rss;
  engine.dispose();
  return rss;
}

/** Dawn's adapters; with `measure`, each one opened and timed on a matmul and on attention (small sizes on a software adapter). */
async function webgpuReport(measure: boolean): Promise<WebgpuReport> {
  const { listAdapters, openGpu, webgpuUnavailable } = await import('../engine/webgpu/device.js');
  const unavailable = webgpuUnavailable();
  if (unavailable) return { unavailable, adapters: [] };
  const adapters: AdapterReport[] = await listAdapters();
  if (!measure) return { adapters };
  const { createWebGPUEngine } = await import('../engine/webgpu/engine.js');
  for (const a of adapters) {
    try {
      const gpu = await openGpu(a.index, { allowSoftware: true, what: `doctor, adapter ${a.index}` });
      a.limits = gpu.limits;
      const engine = createWebGPUEngine(gpu);
      const m = a.software ? 256 : 2048;
      const [x, y, z] = [0, 1, 2].map(() => engine.floats(m * m));
      engine.write(x, randn(m * m, 1));
      engine.write(y, randn(m * m, 2));
      a.matmulGflops = await rate(2 * m * m * m, async () => {
        engine.matmul({ m, n: m, k: m }, z, x, y);
        await engine.flush();
      });
      const [n, heads, d] = a.software ? [256, 2, 64] : [4096, 8, 64];
      const s = { heads, kvHeads: heads, headDim: d, qLen: n, kvLen: n, causal: false, scale: 1 / Math.sqrt(d) };
      const [q, k, v, o] = [0, 1, 2, 3].map(() => engine.floats(n * heads * d));
      const lse = engine.floats(heads * n);
      const pos = engine.ints(n);
      engine.writeInts(pos, Int32Array.from({ length: n }, (_, i) => i));
      for (const [i, t] of [q, k, v].entries()) engine.write(t, randn(n * heads * d, 3 + i));
      const mask = { qPos: pos, kvPos: pos, qSeg: null, kvSeg: null };
      a.attentionGflops = await rate(4 * n * n * d * heads, async () => {
        engine.attention!.reset(s, o, lse);
        engine.attention!.forward(s, mask, q, k, v, o, lse);
        await engine.flush();
      });
      engine.dispose();
      gpu.close();
    } catch (e) {
      a.error = (e as Error).message.split('\n')[0];
    }
  }
  return { adapters };
}

export const doctorJob: JobDefinition = {
  kind: 'doctor',
  async worker(ctx) {
    const { ring, spec } = ctx;
    const threads = workerThreads(spec, ctx.rank);
    const runtimeBytes = await runtimeRss(spec, ctx.rank, threads);
    // The first rank of each host measures the block sizes afresh, alone on the host; the others then read them.
    const measuresHere = ctx.peers.find((p) => p.host === ctx.host)?.rank === ctx.rank;
    const dims = { heads: spec.model.heads, kvHeads: spec.model.kvHeads, headDim: spec.model.dModel / spec.model.heads, threads };
    const tuning: DoctorRankReport['tuning'] = { file: tuningFilePath() };
    const tune = async (fresh: boolean) => {
      try {
        tuning.gemm = (await tunedGemm({ threads }, { fresh })).value;
        tuning.tiles = (await tunedTiles(dims, { fresh })).value;
      } catch (e) {
        tuning.error = (e as Error).message.split('\n')[0];
      }
    };
    if (measuresHere) await tune(true);
    await barrier(ring);
    if (!measuresHere) await tune(false);
    const backends = await describeBackends();
    const webgpu = await webgpuReport(measuresHere);
    const k = await kernelRate(spec.kernel as KernelName, threads);
    const report: DoctorRankReport = {
      rank: ctx.rank,
      host: ctx.host,
      node: process.version,
      endpoint: ctx.peers[ctx.rank].endpoint,
      backends,
      kernel: k.name,
      kernelReason: k.reason,
      kernelGflops: k.gflops,
      memoryGB: totalmem() / 2 ** 30,
      runtimeBytes,
      webgpu,
      tuning,
    };
    await ctx.result('report', report);
    await barrier(ring);
    // Latency: many tiny passes. Bandwidth: one block per size, best of three.
    const tiny = new Float32Array(2);
    const t0 = performance.now();
    const rounds = 50;
    for (let i = 0; i < rounds; i++) await ringPass(ring, 'lat', [tiny]);
    const latencyUs = ((performance.now() - t0) / rounds) * 1000;
    const hops: HopFigure[] = [];
    for (const mib of [1, 4, 16, 64]) {
      const block = new Float32Array((mib * MiB) / 4).fill(1);
      const best = Math.min(...(await timeHops(ring, 'bw', () => [block], { runs: 3 })).map((r) => r.ms));
      hops.push({ bytes: mib * MiB, ms: best, gbps: (mib * MiB) / (best / 1000) / 1e9 });
    }
    const arBytes = 64 * MiB;
    const x = new Float32Array(arBytes / 4).fill(1);
    // In place, as training sums its gradients; best of three, as for the hops.
    let arMs = Infinity;
    for (let rep = 0; rep < 3; rep++) {
      await barrier(ring);
      const a0 = performance.now();
      await allReduceSum(ring, x, { inPlace: true, add: loadSumInto() ?? undefined });
      arMs = Math.min(arMs, performance.now() - a0);
    }
    const n = ctx.worldSize;
    // Bus bandwidth: the bytes each rank moves in a ring all-reduce, 2(n-1)/n of the array.
    const busGBps = n > 1 ? ((2 * (n - 1)) / n) * arBytes / (arMs / 1000) / 1e9 : 0;
    if (ctx.rank === 0) await ctx.result('ring', { latencyUs, hops, allReduce: { bytes: arBytes, ms: arMs, busGBps } });
  },
  async driver(ctx): Promise<DoctorReport> {
    const ranks: DoctorRankReport[] = [];
    for (let r = 0; r < ctx.worldSize; r++) ranks.push((await ctx.result(r, 'report')).value as DoctorRankReport);
    const ring = (await ctx.result(0, 'ring')).value as Omit<DoctorReport, 'ranks'>;
    return { ranks, ...ring };
  },
};
