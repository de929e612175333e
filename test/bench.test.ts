import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { LAYOUTS, shardPositions, type Layout } from '../src/attention/layout.js';
import { benchJob } from '../src/jobs/bench.js';
import { benchArgs, BENCH_SHAPE_DEFAULTS, type BenchParams } from '../src/bench/params.js';
import { benchBudget, hostFit, memoryBudget } from '../src/bench/budget.js';
import { formatReport, type BenchReport, type Figures } from '../src/bench/report.js';
import { parseSweep, renderSweepChart, sweepRow } from '../src/bench/sweep.js';
import { benchCommand } from '../src/cli/bench.js';
import { specFromObject, type ClusterSpec } from '../src/config/index.js';
import { UserError } from '../src/errors.js';
import type { DriverContext, WorkerContext } from '../src/jobs/types.js';
import type { Ring } from '../src/ring/transport.js';
import { closeAll, openLocalRing } from './helpers/ring.js';

/**
 * The bench job driven without processes: its worker side on in-process rings
 * (test/helpers/ring.ts) and its driver side in the same process, joined by a
 * mailbox that stands in for the coordinator. Results cross it as JSON, as
 * they would cross the control socket. Sizes are tiny and the kernel is the
 * reference one; nothing here asserts a timing.
 */

class Mailbox {
  private readonly boxes = new Map<string, { queue: unknown[]; waiters: Array<(v: unknown) => void> }>();
  private box(rank: number, name: string) {
    const key = `${rank}/${name}`;
    let b = this.boxes.get(key);
    if (!b) this.boxes.set(key, (b = { queue: [], waiters: [] }));
    return b;
  }
  put(rank: number, name: string, value: unknown): void {
    const b = this.box(rank, name);
    const copy = JSON.parse(JSON.stringify(value)) as unknown;
    const w = b.waiters.shift();
    if (w) w(copy);
    else b.queue.push(copy);
  }
  take(rank: number, name: string): Promise<unknown> {
    const b = this.box(rank, name);
    if (b.queue.length) return Promise.resolve(b.queue.shift());
    return new Promise((resolve) => b.waiters.push(resolve));
  }
}

const log = pino({ level: 'silent' });

function testSpec(workers: number, extra: Record<string, unknown> = {}): ClusterSpec {
  return specFromObject(
    { hosts: [{ name: 'local', address: '127.0.0.1', slots: workers }], kernel: 'reference', attention: { tileQ: 4, tileKV: 4 }, ...extra },
    'bench test',
  );
}

function params(workers: number, over: Partial<BenchParams> = {}): BenchParams {
  return {
    seqLen: 48,
    workers,
    heads: 2,
    kvHeads: 1,
    headDim: 4,
    causal: true,
    layout: 'zigzag',
    backward: false,
    overlap: true,
    iterations: 1,
    timeLimitS: 300,
    seed: 7,
    trace: false,
    json: true,
    ...over,
  };
}

/** A ring of one needs no sockets: the bench only asks it for its size. */
const soloRing = { rank: 0, worldSize: 1 } as unknown as Ring;

async function runBench(p: BenchParams, spec = testSpec(p.workers)): Promise<{ report: BenchReport; printed: string[] }> {
  const n = p.workers;
  const rings = n > 1 ? await openLocalRing(n) : [soloRing];
  const box = new Mailbox();
  const peers = rings.map((_, rank) => ({ rank, host: 'local', endpoint: `tcp://127.0.0.1:${rank}` }));
  const args = benchArgs(p);
  const runDir = mkdtempSync(join(tmpdir(), 'bench-test-'));
  const printed: string[] = [];
  try {
    const workers = rings.map((ring, rank) => {
      const ctx: WorkerContext = {
        rank,
        worldSize: n,
        host: 'local',
        localRank: rank,
        spec,
        ring,
        peers,
        runDir,
        args,
        log,
        input: () => Promise.reject(new Error('the bench job takes no inputs')),
        result: async (name, value) => box.put(rank, name, value),
      };
      return benchJob.worker(ctx);
    });
    const driverCtx: DriverContext = {
      spec,
      worldSize: n,
      peers,
      runDir,
      args,
      send: async () => undefined,
      result: async (rank, name) => ({ value: await box.take(rank, name), blobs: [] }),
      print: (line) => printed.push(line),
    };
    const [report] = await Promise.all([benchJob.driver!(driverCtx), ...workers]);
    return { report: report as BenchReport, printed };
  } finally {
    if (n > 1) await closeAll(rings);
    rmSync(runDir, { recursive: true, force: true });
  }
}

/** Allowed (query, key) pairs of rank r against the block of `owner`, by brute force over every pair. */
function bruteEntries(layout: Layout, seqLen: number, n: number, r: number, owner: number, causal: boolean, rows?: number[]): number {
  const q = shardPositions(layout, seqLen, n, r);
  const kv = shardPositions(layout, seqLen, n, owner);
  let count = 0;
  for (const i of rows ?? q.keys()) for (const j of kv) if (!causal || j <= q[i]) count++;
  return count;
}

const FIGURE_KEYS: Array<keyof Figures> = [
  'wallMs', 'tokensPerS', 'achievedGflops', 'kernelGflops', 'pureKernelGflops', 'kernelMs', 'pureKernelMs', 'computeMsPerStep', 'waitMsPerHop',
  'transferMsPerHop', 'overlapEfficiency', 'ringOverhead', 'bytesSent', 'peakRssBytes', 'ringBufferBytes', 'flops',
];

function assertFigures(f: Figures, ringOfOne: boolean, label: string): void {
  assert.deepEqual(Object.keys(f).sort(), [...FIGURE_KEYS].sort(), `${label}: figure names`);
  for (const key of FIGURE_KEYS) {
    const x = f[key];
    assert.ok(['measured', 'projected', 'analytic'].includes(x.basis), `${label}.${key}: basis ${x.basis}`);
    const mayBeNull = ringOfOne && ['waitMsPerHop', 'transferMsPerHop', 'overlapEfficiency'].includes(key);
    if (mayBeNull) assert.equal(x.value, null, `${label}.${key} on a ring of one`);
    else assert.ok(typeof x.value === 'number' && Number.isFinite(x.value), `${label}.${key} = ${x.value}`);
  }
  if (f.overlapEfficiency.value !== null) assert.ok(f.overlapEfficiency.value >= 0 && f.overlapEfficiency.value <= 1);
  assert.equal(f.flops.basis, 'analytic');
  assert.equal(f.ringBufferBytes.basis, 'analytic');
  assert.equal(f.kernelGflops.basis, 'measured');
  assert.equal(f.transferMsPerHop.basis, 'measured');
}

test('causal FLOPs are the exact count of unmasked score entries, for every layout, per rank and step', async () => {
  const n = 3;
  const S = 48;
  for (const layout of LAYOUTS) {
    const p = params(n, { layout, backward: layout === 'striped' });
    const { report } = await runBench(p);
    // Causal: token i attends to i + 1 tokens, whatever the layout.
    assert.equal(report.plan.entries.total, (S * (S + 1)) / 2, layout);
    const fwdPerEntry = 4 * p.headDim * p.heads;
    const bwdPerEntry = p.backward ? 10 * p.headDim * p.heads : 0;
    assert.equal(report.plan.flops.forward, fwdPerEntry * report.plan.entries.total);
    assert.equal(report.ring.flops.value, (fwdPerEntry + bwdPerEntry) * report.plan.entries.total);
    assert.equal(report.mode, 'full');
    assert.equal(report.measuredFraction, 1);
    for (const r of report.ranks) {
      const brute = Array.from({ length: n }, (_, t) => bruteEntries(layout, S, n, r.rank, (r.rank - t + n) % n, true));
      assert.deepEqual(r.raw.entries.totalPerStep, brute, `${layout} rank ${r.rank} per step`);
      assert.deepEqual(r.raw.entries.measuredPerStep, brute);
      assert.equal(report.plan.entries.perRank[r.rank], brute.reduce((a, b) => a + b, 0));
      assert.equal(r.figures.flops.value, (fwdPerEntry + bwdPerEntry) * brute.reduce((a, b) => a + b, 0));
      // Fully masked blocks are skipped by the ring loop and cost no kernel time.
      const it = r.raw.iterations[0].fwd;
      assert.equal(it.skippedSteps, brute.filter((e) => e === 0).length);
      brute.forEach((e, t) => {
        if (e === 0) assert.equal(it.kernelMsPerStep[t], 0);
      });
    }
    for (const key of ['wallMs', 'overlapEfficiency', 'ringOverhead', 'tokensPerS'] as const) assert.equal(report.ring[key].basis, 'measured');
    assert.deepEqual(report.projections, []);
  }
});

test('non-causal FLOPs count every pair; the naive schedule runs and reports', async () => {
  const p = params(2, { causal: false, layout: 'contiguous', overlap: false, iterations: 2 });
  const { report } = await runBench(p);
  assert.equal(report.plan.entries.total, 48 * 48);
  assert.equal(report.ranks[0].raw.iterations.length, 2);
  assertFigures(report.ring, false, 'ring');
  // One KV block (k and v) per hop; N-1 hops per forward.
  assert.equal(report.plan.bytesPerHop, 2 * 24 * p.kvHeads * p.headDim * 4);
  assert.equal(report.ring.bytesSent.value, report.plan.bytesSentPerRank);
});

test('time-limited mode: measures a counted fraction of the work, marks projections', async () => {
  const n = 2;
  const S = 96;
  const p = params(n, { seqLen: S, layout: 'contiguous', backward: true, rowFraction: 0.25 });
  const { report, printed } = await runBench(p);
  assert.equal(report.mode, 'time-limited');
  assert.ok(report.measuredFraction > 0 && report.measuredFraction < 1, `fraction ${report.measuredFraction}`);
  let measured = 0;
  let total = 0;
  for (const r of report.ranks) {
    const tiles = r.setup.tiles;
    assert.equal(tiles.total, S / n / 4);
    assert.equal(tiles.measured, 3);
    assert.equal(tiles.chosen.length, 3);
    const rows = tiles.chosen.flatMap((i) => [0, 1, 2, 3].map((x) => i * 4 + x));
    const brute = Array.from({ length: n }, (_, t) => bruteEntries('contiguous', S, n, r.rank, (r.rank - t + n) % n, true, rows));
    assert.deepEqual(r.raw.entries.measuredPerStep, brute, `rank ${r.rank} measured entries`);
    measured += brute.reduce((a, b) => a + b, 0);
    total += r.raw.entries.totalPerStep.reduce((a, b) => a + b, 0);
    assert.equal(r.kernelMsPerStep.basis, 'projected');
    assertFigures(r.figures, false, `rank ${r.rank}`);
  }
  assert.equal(total, (S * (S + 1)) / 2);
  assert.equal(report.measuredFraction, measured / total);
  for (const key of ['wallMs', 'tokensPerS', 'achievedGflops', 'overlapEfficiency', 'ringOverhead', 'kernelMs', 'pureKernelMs'] as const) {
    assert.equal(report.ring[key].basis, 'projected', key);
    assert.ok(report.projections.includes(key), key);
  }
  for (const key of ['kernelGflops', 'pureKernelGflops', 'transferMsPerHop', 'bytesSent', 'peakRssBytes'] as const) assert.equal(report.ring[key].basis, 'measured', key);
  // The ring still moved full-size blocks: every hop of the iteration, forward and backward.
  assert.equal(report.ring.bytesSent.value, report.plan.bytesSentPerRank);
  assert.ok(report.notes.some((x) => x.includes('Time-limited')));
  const text = formatReport(report);
  assert.match(text, /time-limited/);
  assert.match(text, /\*/);
  assert.ok(printed.length === 0, 'a --json run prints nothing from the driver');
});

test('memory that does not fit the host is refused before anything is allocated', async () => {
  const p = params(1, { seqLen: 2 ** 30, layout: 'contiguous', heads: 8, kvHeads: 8, headDim: 128 });
  const spec = testSpec(1);
  const ctx = {
    rank: 0, worldSize: 1, host: 'local', localRank: 0, spec, ring: soloRing, peers: [{ rank: 0, host: 'local', endpoint: 'x' }],
    runDir: tmpdir(), args: benchArgs(p), log, input: () => Promise.reject(new Error('none')), result: async () => undefined,
  } as WorkerContext;
  const rssBefore = process.memoryUsage().rss;
  await assert.rejects(benchJob.worker(ctx), (err: Error) => {
    assert.ok(err instanceof UserError, err.message);
    assert.match(err.message, /not enough memory on host local: each of its 1 worker\(s\) needs [\d.]+ TiB/);
    return true;
  });
  assert.ok(process.memoryUsage().rss - rssBefore < 512 * 2 ** 20, 'nothing large was allocated');

  // A KV frame larger than ring.maxMessageBytes would be dropped by ZeroMQ: refused up front too.
  const small = testSpec(2, { ring: { maxMessageBytes: 256 } });
  const p2 = params(2, { seqLen: 48 });
  await assert.rejects(
    benchJob.worker({ ...ctx, worldSize: 2, spec: small, args: benchArgs(p2), peers: [ctx.peers[0], { rank: 1, host: 'local', endpoint: 'y' }] }),
    /ring\.maxMessageBytes/,
  );
});

test('the default bench shape fits 8M tokens on two workers of a 24 GiB host, frames under 1 GiB', () => {
  const p = params(2, { seqLen: 8 * 2 ** 20, ...BENCH_SHAPE_DEFAULTS, layout: 'zigzag' });
  const mem = memoryBudget(p);
  assert.ok(mem.frameBytes < 2 ** 30);
  assert.ok(hostFit('h', 2, 24 * 2 ** 30, mem.memory.perWorkerBytes).fits);
  const plan = benchBudget(p);
  assert.equal(plan.entries.total, (p.seqLen * (p.seqLen + 1)) / 2);
  assert.deepEqual(plan.hopsPerRank, { forward: 1, backward: 0 });
});

test('a ring of one: no transfers, every other figure present; trace written', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-trace-'));
  try {
    const traceFile = join(dir, 'trace.json');
    const { report, printed } = await runBench(params(1, { seqLen: 16, layout: 'contiguous', trace: true, traceFile, json: false }));
    assertFigures(report.ring, true, 'ring');
    assertFigures(report.ranks[0].figures, true, 'rank 0');
    assert.equal(report.traceFile, traceFile);
    const doc = JSON.parse(readFileSync(traceFile, 'utf8')) as { traceEvents: Array<{ ph: string; cat?: string; pid: number }> };
    assert.ok(doc.traceEvents.some((e) => e.ph === 'X' && e.cat === 'compute' && e.pid === 0));
    // Not --json: the driver printed the setup and the report.
    assert.ok(printed.some((l) => l.startsWith('setup:')));
    assert.ok(printed.some((l) => l.startsWith('ringattn bench:')));
    assert.ok(printed.some((l) => l.includes('overlap efficiency')));
    // The report survives JSON with every field.
    const back = JSON.parse(JSON.stringify(report)) as BenchReport;
    for (const key of ['kind', 'version', 'date', 'params', 'spec', 'kernel', 'kernelReason', 'plan', 'mode', 'measuredFraction', 'projections', 'ring', 'ranks', 'notes'] as const) {
      assert.ok(back[key] !== undefined, key);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('sweeps: parsing, one table row per point, an SVG chart', async () => {
  assert.deepEqual(parseSweep('workers=1,2,4,8'), { variable: 'workers', values: [1, 2, 4, 8] });
  assert.deepEqual(parseSweep('seq-len=16K,32K'), { variable: 'seq-len', values: [16384, 32768] });
  assert.throws(() => parseSweep('heads=1,2'), UserError);
  assert.throws(() => parseSweep('workers='), UserError);
  const { report } = await runBench(params(2, { seqLen: 16, layout: 'contiguous', causal: false }));
  const rows = [sweepRow('workers', 2, report), { ...sweepRow('workers', 4, report), value: 4 }, { variable: 'workers', value: 8, error: 'did not fit' }];
  const svg = renderSweepChart('workers', rows as ReturnType<typeof sweepRow>[]);
  assert.match(svg, /^<svg/);
  assert.match(svg, /tokens\/s/);
  assert.match(svg, /memory per worker/);
  assert.match(svg, /overlap/);
});

test('the CLI refuses what cannot run before launching anything', async () => {
  const refuse = async (args: string[], why: RegExp) => {
    await assert.rejects(benchCommand().parseAsync(args, { from: 'user' }), (err: Error) => {
      assert.ok(err instanceof UserError, `${args.join(' ')}: ${err.message}`);
      assert.match(err.message, why);
      return true;
    });
  };
  await refuse(['--heads', '4', '--kv-heads', '3'], /--kv-heads 3 does not divide --heads 4/);
  await refuse(['--layout', 'diagonal'], /--layout: expected one of/);
  await refuse(['--seq-len', '1000', '--workers', '3'], /cannot be split by the zigzag layout over 3/);
  // 8M tokens with 4 KV heads of 64: k and v frames of 4 GiB each.
  await refuse(['--seq-len', '8M', '--heads', '4', '--kv-heads', '4', '--head-dim', '64'], /ring\.maxMessageBytes/);
  // 64 workers of 4M tokens each on this one machine.
  await refuse(['--workers', '64', '--seq-len', '256M'], /not enough memory on host localhost: each of its 64 worker\(s\) needs/);
  await refuse(['--sweep', 'workers=1,2', '--config', 'configs/localhost.yaml'], /cannot be combined with --config/);
  await refuse(['--sweep', 'seq-len=1K,2K', '--seq-len', '4K'], /drop --seq-len/);
  await refuse(['--seq-len', '4K', '--seq-per-worker', '2K'], /exclusive/);
});
