import { attentionTiles, loadTunedKernel } from '../engine/tuning.js';
import { nativeInfo } from '../kernels/native.js';
import { workerThreads } from '../config/index.js';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { shardPositions } from '../attention/layout.js';
import { newRingStepStats, ringAttentionBackward, ringAttentionForward, type RingAttentionConfig } from '../attention/ring-attention.js';
import { Trace, TRACK_TRANSFER, traceDocument, type TraceEvent } from '../attention/trace.js';
import { UserError } from '../errors.js';
import { isFullyMasked } from '../kernels/mask.js';
import { rowDelta } from '../kernels/merge.js';
import type { BlockArgs, BlockPartial } from '../kernels/types.js';
import type { DriverContext, JobDefinition, WorkerContext } from './types.js';
import { allReduceSum, barrier, timeHops } from '../ring/collectives.js';
import type { Ring } from '../ring/transport.js';
import { selectBackend, tfjsWant } from '../tensor/backend.js';
import { deriveSeed } from '../tensor/random.js';
import { calibrateKernel, estimateKernelMs, fillUnitUniform } from '../bench/calibrate.js';
import { MeteredKernel } from '../bench/metered-kernel.js';
import { parseBenchArgs, type BenchParams } from '../bench/params.js';
import { benchBudget, checkHostFit, checkMessageSize, hostFit, memoryBudget } from '../bench/budget.js';
import { buildReport, formatReport, formatSetup, type BenchReport } from '../bench/report.js';
import type { IterationRaw, PhaseRaw, RankResult, RankSetup } from '../bench/types.js';
import { mod } from '../ring/mod.js';
import { chosenEntries, queryTiles, sortedCopy, spreadTiles, stepOwner, tileEntries, tileRows } from '../bench/work.js';

/**
 * `ringattn bench`: real ring attention on the job's ring, measured.
 *
 * Every worker allocates its real shards (random q, k, v from a seeded PRNG),
 * measures one hop of a real-size KV block with nothing else running, and
 * calibrates the kernel on real tiles. If all of the work fits the time limit
 * it runs it: a warm-up, `iterations` timed ring runs, then as many passes of
 * the same kernel calls with no ring. Otherwise the ring runs are just as real (every block
 * travels, every buffer has its size, every merge happens) but the kernel
 * computes only evenly spread query tiles, whose exact share of the work is
 * counted so the report can say what was measured and what is projected.
 *
 * Results: 'setup' (RankSetup) once the rank knows how it will run, 'bench'
 * (RankResult) at the end, and 'trace' ({ events }) when a trace was asked for.
 */

/** Share of the time limit the kernel runs may plan for; the rest absorbs calibration optimism and fixed costs. */
const BUDGET_SHARE = 0.7;

/**
 * A full collection between phases, so that the peak RSS is the working set of
 * one phase rather than blocks of earlier phases the collector has not reached
 * yet. Node exposes gc() only behind a flag; it can be turned on at run time.
 * Backing stores of typed arrays are released shortly after, off the main thread.
 */
let gcFn: (() => void) | null | undefined;
async function collectGarbage(): Promise<void> {
  if (gcFn === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gcFn = vm.runInNewContext('gc') as () => void;
    } catch {
      gcFn = null;
    }
  }
  if (!gcFn) return;
  // Two rounds: finalizers of the first (ZeroMQ's message buffers) free memory the second finds.
  for (let i = 0; i < 2; i++) {
    gcFn();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Element-wise sum of one-hot vectors: every rank learns every rank's value. */
async function gatherValues(ring: Ring, value: number): Promise<number[]> {
  const x = new Float32Array(ring.worldSize);
  x[ring.rank] = value;
  return Array.from(await allReduceSum(ring, x, 'bench-gather'));
}

/** One hop of [k, v], timed: the transfer time the overlap should hide (the median of the timed passes after a first). */
async function measureHop(ring: Ring, k: Float32Array, v: Float32Array, trace?: Trace): Promise<{ msPerHop: number; runsMs: number[] }> {
  const timed = k.byteLength + v.byteLength > 256 * 2 ** 20 ? 2 : 3;
  // Before each pass: collect the block the previous pass received.
  const runs = (await timeHops(ring, 'bench-hop', () => [k, v], { runs: timed + 1, before: collectGarbage })).slice(1);
  for (const r of runs) trace?.span('measured KV hop (alone)', TRACK_TRANSFER, r.start, r.end);
  const runsMs = runs.map((r) => r.ms);
  const sorted = [...runsMs].sort((a, b) => a - b);
  return { msPerHop: sorted[Math.floor(sorted.length / 2)], runsMs };
}

async function benchWorker(ctx: WorkerContext): Promise<void> {
  const started = performance.now();
  const memory: RankResult['memory'] = [];
  // Which phase set the peak: resident now, and the high-water mark so far, after each phase.
  const phaseDone = (phase: string, fields: Record<string, unknown> = {}) => {
    const m = { phase, rssBytes: process.memoryUsage().rss, maxRssBytes: process.resourceUsage().maxRSS * 1024, atMs: performance.now() - started };
    memory.push(m);
    ctx.log.info({ ...fields, rssMiB: Math.round(m.rssBytes / 2 ** 20), maxRssMiB: Math.round(m.maxRssBytes / 2 ** 20) }, `bench: ${phase}`);
  };
  const p = parseBenchArgs(ctx.args);
  const { rank, worldSize: n, spec } = ctx;
  if (p.workers !== n) throw new UserError(`bench: resolved for ${p.workers} worker(s), but the ring has ${n}`);
  const { heads: H, kvHeads: G, headDim: D } = p;
  const mem = memoryBudget(p);
  const s = mem.shardLen;
  checkMessageSize(mem, n, spec.ring.maxMessageBytes);
  const workersOnHost = Math.max(1, ctx.peers.filter((x) => x.host === ctx.host).length);
  checkHostFit(hostFit(ctx.host, workersOnHost, os.totalmem(), mem.memory.perWorkerBytes));

  const loaded = await loadTunedKernel(spec, { heads: H, kvHeads: G, headDim: D, threads: workerThreads(spec, rank) });
  const { tileQ, tileKV } = loaded.tiles;
  if (loaded.kernel.name === 'tfjs') await selectBackend(tfjsWant(spec.backend));

  // One array per block, kept: the kernel wrapper recognises a block by its positions array.
  const positions = new Map<number, Int32Array>();
  const ownerOf = new Map<Int32Array, number>();
  const positionsOf = (r: number): Int32Array => {
    let x = positions.get(r);
    if (!x) {
      x = shardPositions(p.layout, p.seqLen, n, r);
      positions.set(r, x);
      ownerOf.set(x, r);
    }
    return x;
  };
  const qPos = positionsOf(rank);

  const allocStart = performance.now();
  const q = fillUnitUniform(new Float32Array(s * H * D), deriveSeed(p.seed, rank, 0));
  const k = fillUnitUniform(new Float32Array(s * G * D), deriveSeed(p.seed, rank, 1));
  const v = fillUnitUniform(new Float32Array(s * G * D), deriveSeed(p.seed, rank, 2));
  const dO = p.backward ? fillUnitUniform(new Float32Array(s * H * D), deriveSeed(p.seed, rank, 3)) : null;
  const allocMs = performance.now() - allocStart;
  phaseDone('shards allocated', { ms: Math.round(allocMs) });

  const ring = n > 1 ? ctx.ring : null;
  const trace = p.trace ? new Trace(rank) : undefined;
  await barrier(ctx.ring);
  const transfer = ring ? await measureHop(ring, k, v, trace) : null;
  phaseDone('KV hop measured', { msPerHop: transfer?.msPerHop });
  await collectGarbage();
  const calibration = await calibrateKernel(loaded.kernel, p, { shardLen: s, tileQ, tileKV, backward: p.backward, data: { q, k, v } });
  phaseDone('kernel calibrated', { fwdGflops: +calibration.fwdGflops.toFixed(2) });

  // Exact work per query tile and ring step; the time-limited mode picks tiles from it.
  const entries = tileEntries(qPos, tileQ, (owner) => sortedCopy(positionsOf(owner)), rank, n, p.causal, p.window);
  const totalTiles = queryTiles(s, tileQ).length;
  const allTiles = Array.from({ length: totalTiles }, (_, i) => i);
  const totalPerStep = chosenEntries(entries, allTiles, n);
  const totalEntries = totalPerStep.reduce((a, b) => a + b, 0);

  let want = totalTiles;
  if (p.rowFraction !== undefined) {
    want = Math.max(1, Math.round(p.rowFraction * totalTiles));
  } else {
    const runs = 2 * p.iterations + 1; // warm-up, timed iterations, as many no-ring passes
    const hops = n > 1 ? n - 1 + (p.backward ? 2 * n - 1 : 0) : 0;
    const fixedMs = runs * hops * (transfer?.msPerHop ?? 0);
    const budgetMs = p.timeLimitS * 1000 * BUDGET_SHARE - (performance.now() - started) - fixedMs;
    const fullMs = runs * estimateKernelMs(calibration, totalEntries, p.backward);
    if (fullMs > budgetMs) {
      const f = Math.max(0, budgetMs) / fullMs;
      want = Math.max(1, Math.floor(f * totalTiles));
      const sumOf = (m: number) => chosenEntries(entries, spreadTiles(m, totalTiles), n).reduce((a, b) => a + b, 0);
      while (want > 1 && sumOf(want) > f * totalEntries * 1.05) want = Math.max(1, Math.floor(want * 0.9));
    }
  }
  // Every rank runs the same tiles count, the one the slowest rank can afford.
  const tiles = ring ? Math.min(...(await gatherValues(ring, want))) : want;
  const full = tiles >= totalTiles;
  const chosen = full ? allTiles : spreadTiles(tiles, totalTiles);
  const rows = full ? null : tileRows(chosen, s, tileQ);
  const measuredPerStep = full ? totalPerStep : chosenEntries(entries, chosen, n);

  const metered = new MeteredKernel(loaded.kernel, {
    ringSize: n,
    stepOf: (kvPos) => {
      const owner = ownerOf.get(kvPos);
      if (owner === undefined) throw new Error('bench: a KV block with positions the bench did not hand out');
      return mod(rank - owner, n);
    },
    rows,
    qPos,
  });

  const setup: RankSetup = {
    rank,
    host: ctx.host,
    kernel: loaded.kernel.name,
    kernelReason: loaded.reason,
    mode: full ? 'full' : 'time-limited',
    tiles: { measured: chosen.length, total: totalTiles, rows: rows ? rows.length : s, totalRows: s, chosen: full ? [] : chosen },
    transfer,
    calibration,
    allocMs,
    elapsedMs: performance.now() - started,
    hostTotalBytes: os.totalmem(),
    workersOnHost,
  };
  await ctx.result('setup', setup);
  phaseDone(`work counted: ${setup.mode}, ${chosen.length} of ${totalTiles} query tiles`);
  await collectGarbage();

  const base: RingAttentionConfig = { ring, reverse: ring ? ctx.reverse : null, kernel: metered, causal: p.causal, window: p.window, heads: H, kvHeads: G, headDim: D, overlap: p.overlap, positionsOf, wire: spec.ring.wire };
  const phase = (st: ReturnType<typeof newRingStepStats>, wallMs: number, kernelMsPerStep: number[]): PhaseRaw => ({
    wallMs,
    kernelMsPerStep,
    loopComputeMs: st.computeMs,
    waitMs: st.waitMs,
    bytesSent: st.bytesSent,
    steps: st.steps,
    skippedSteps: st.skippedSteps,
  });
  const runOnce = async (tr?: Trace): Promise<{ it: IterationRaw; out: BlockPartial }> => {
    metered.reset();
    const sF = newRingStepStats();
    const t0 = performance.now();
    const out = await ringAttentionForward({ ...base, stats: sF, trace: tr }, q, k, v);
    const t1 = performance.now();
    const fwd = phase(sF, t1 - t0, [...metered.fwdMs]);
    let bwd: PhaseRaw | null = null;
    let t2 = t1;
    if (dO) {
      const sB = newRingStepStats();
      await ringAttentionBackward({ ...base, stats: sB, trace: tr }, { q, k, v, o: out.o, lse: out.lse }, dO);
      t2 = performance.now();
      bwd = phase(sB, t2 - t1, [...metered.bwdMs]);
    }
    return { it: { wallMs: t2 - t0, fwd, bwd }, out };
  };

  // Only the backward's no-ring pass needs an output (its o and lse); holding one across
  // an iteration would add a whole output block to that iteration's peak memory.
  let last: BlockPartial | null = null;
  const warm = await runOnce().then((r) => {
    if (dO) last = r.out;
    return r.it;
  });
  phaseDone('warm-up done', { wallMs: Math.round(warm.wallMs) });
  // The warm-up says what an iteration costs: its wall time, plus about its kernel time for the
  // no-ring pass that goes with it. Run as many as the time limit leaves room for.
  const warmKernelMs = [...warm.fwd.kernelMsPerStep, ...(warm.bwd?.kernelMsPerStep ?? [])].reduce((a, b) => a + b, 0);
  const left = p.timeLimitS * 1000 - (performance.now() - started);
  let iterationsToRun = Math.max(1, Math.min(p.iterations, Math.floor(left / Math.max(warm.wallMs + warmKernelMs, 1e-3))));
  if (ring) iterationsToRun = Math.min(...(await gatherValues(ring, iterationsToRun)));
  const iterations: IterationRaw[] = [];
  for (let i = 0; i < iterationsToRun; i++) {
    last = null;
    await collectGarbage();
    await barrier(ctx.ring);
    const r = await runOnce(trace);
    iterations.push(r.it);
    if (dO) last = r.out;
    phaseDone(`iteration ${i + 1} of ${iterationsToRun} done`, { wallMs: Math.round(r.it.wallMs) });
  }

  // The same kernel calls with no ring: local K and V stand in for the other blocks,
  // with the other blocks' positions, so masks, skipped blocks and shapes are identical.
  await collectGarbage();
  await barrier(ctx.ring);
  const blockArgs = (t: number): BlockArgs => ({
    heads: H,
    kvHeads: G,
    headDim: D,
    qLen: s,
    kvLen: s,
    q,
    k,
    v,
    qPos,
    kvPos: positionsOf(stepOwner(rank, t, n)),
    causal: p.causal,
    window: p.window,
    scale: 1 / Math.sqrt(D),
  });
  // As many passes as timed ring iterations: both sides of the ring overhead are means over the same count.
  const out = last as BlockPartial | null;
  const grad = dO && out ? { dO, lse: out.lse, delta: rowDelta(dO, out.o, s, H, D) } : null;
  const acc = dO ? { dq: new Float32Array(s * H * D), dk: new Float32Array(s * G * D), dv: new Float32Array(s * G * D) } : null;
  const pureFwd = new Array<number>(n).fill(0);
  const pureBwd = dO ? new Array<number>(n).fill(0) : null;
  for (let pass = 0; pass < iterationsToRun; pass++) {
    if (pass > 0) await collectGarbage();
    metered.reset();
    for (let t = 0; t < n; t++) {
      const a = blockArgs(t);
      if (!isFullyMasked(a)) await metered.forward(a);
    }
    if (grad && acc) {
      for (let t = 0; t < n; t++) {
        const a = blockArgs(t);
        if (!isFullyMasked(a)) await metered.backward(a, grad, acc);
      }
    }
    for (let t = 0; t < n; t++) {
      pureFwd[t] += metered.fwdMs[t] / iterationsToRun;
      if (pureBwd) pureBwd[t] += metered.bwdMs[t] / iterationsToRun;
    }
  }
  phaseDone('no-ring passes done');
  await barrier(ctx.ring);

  const result: RankResult = {
    rank,
    host: ctx.host,
    mode: setup.mode,
    entries: { totalPerStep, measuredPerStep },
    iterations,
    pureKernelMsPerStep: { fwd: pureFwd, bwd: pureBwd },
    iterationsRequested: p.iterations,
    transferMsPerHop: transfer?.msPerHop ?? null,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    ringBufferBytes: mem.memory.ringBytes,
    memory,
  };
  await ctx.result('bench', result);
  if (trace) await ctx.result('trace', { events: trace.events });
}

async function benchDriver(ctx: DriverContext): Promise<BenchReport> {
  const p: BenchParams = parseBenchArgs(ctx.args);
  const plan = benchBudget(p);
  const setups: RankSetup[] = [];
  for (let r = 0; r < ctx.worldSize; r++) setups.push((await ctx.result(r, 'setup')).value as RankSetup);
  if (!p.json) for (const line of formatSetup(p, setups)) ctx.print(line);
  const results: RankResult[] = [];
  for (let r = 0; r < ctx.worldSize; r++) results.push((await ctx.result(r, 'bench')).value as RankResult);
  let traceFile: string | undefined;
  if (p.trace) {
    const events: TraceEvent[] = [];
    for (let r = 0; r < ctx.worldSize; r++) events.push(...((await ctx.result(r, 'trace')).value as { events: TraceEvent[] }).events);
    traceFile = p.traceFile ?? join(ctx.runDir, 'bench-trace.json');
    mkdirSync(dirname(traceFile), { recursive: true });
    writeFileSync(traceFile, JSON.stringify(traceDocument(events, ctx.peers.map(({ rank, host }) => ({ rank, host })))));
  }
  const tiles = await attentionTiles(ctx.spec.attention, ctx.spec.kernel === 'auto' && nativeInfo().available ? 'native' : ctx.spec.kernel, {
    heads: p.heads,
    kvHeads: p.kvHeads,
    headDim: p.headDim,
    threads: workerThreads(ctx.spec, 0),
  });
  const report = buildReport({
    params: p,
    plan,
    spec: {
      name: ctx.spec.name,
      kernel: ctx.spec.kernel,
      tileQ: tiles.tileQ,
      tileKV: tiles.tileKV,
      threads: workerThreads(ctx.spec, 0),
      maxMessageBytes: ctx.spec.ring.maxMessageBytes,
    },
    setups,
    results,
    traceFile,
  });
  if (!p.json) for (const line of formatReport(report).split('\n')) ctx.print(line);
  return report;
}

export const benchJob: JobDefinition = { kind: 'bench', worker: benchWorker, driver: benchDriver };
