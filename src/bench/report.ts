import { formatSize } from '../config/index.js';
import type { Calibration } from './calibrate.js';
import { estimateKernelMs } from './calibrate.js';
import type { BenchParams } from './params.js';
import { formatBytes, type BenchBudget, type HostFit } from './budget.js';
import { projectRank, type RankModel } from './projection.js';
import type { RankResult, RankSetup } from './types.js';

/**
 * The combined report of a bench run, and its text form. Every figure says
 * where it comes from:
 *   measured  - timed or counted in this run, on the work this run did;
 *   projected - derived from measured figures for work this run did not do
 *               (time-limited mode), by the formulas in docs/bench.md;
 *   analytic  - exact from the parameters (FLOPs, buffer bytes).
 */
export type Basis = 'measured' | 'projected' | 'analytic';

export interface Figure {
  value: number | null;
  basis: Basis;
}

export interface Figures {
  /** Wall time of one iteration (forward, plus backward when asked). */
  wallMs: Figure;
  tokensPerS: Figure;
  /** All FLOPs of the work (exact count) over the wall time. */
  achievedGflops: Figure;
  /** FLOPs the kernel actually did over the kernel time: the kernel's own rate in this run. */
  kernelGflops: Figure;
  /** FLOPs the kernel did over its time in the no-ring run: its rate with nothing else running. */
  pureKernelGflops: Figure;
  /** Kernel time of one iteration. */
  kernelMs: Figure;
  /** The same kernel calls with no ring. */
  pureKernelMs: Figure;
  /** Kernel time per ring step that computed (forward plus backward). */
  computeMsPerStep: Figure;
  /** Time blocked on incoming blocks, per hop. */
  waitMsPerHop: Figure;
  /** One hop of a real-size KV block with nothing else running. */
  transferMsPerHop: Figure;
  /** Share of transfer time hidden behind compute: 1 - wait / transfer, clamped to [0, 1]. */
  overlapEfficiency: Figure;
  /** (wall - pure kernel time) / pure kernel time. */
  ringOverhead: Figure;
  /** Bytes this rank sent per iteration (ring: mean per worker). */
  bytesSent: Figure;
  peakRssBytes: Figure;
  ringBufferBytes: Figure;
  flops: Figure;
}

export interface RankReport {
  rank: number;
  host: string;
  setup: RankSetup;
  figures: Figures;
  /** Exact share of this rank's work the kernel computed. */
  measuredFraction: number;
  /** Kernel milliseconds per ring step (mean over iterations); projected in a time-limited run. */
  kernelMsPerStep: { fwd: number[]; bwd: number[] | null; basis: Basis };
  raw: RankResult;
}

export interface BenchReport {
  kind: 'ringattn-bench';
  version: 1;
  date: string;
  params: BenchParams;
  spec: { name: string; kernel: string; tileQ: number; tileKV: number; threads: number; maxMessageBytes: number };
  kernel: string;
  kernelReason: string;
  plan: BenchBudget;
  mode: 'full' | 'time-limited';
  /** Allowed score entries computed / all allowed entries of the work (1 in a full run). */
  measuredFraction: number;
  /** Names of the ring figures that are projections. */
  projections: string[];
  ring: Figures;
  ranks: RankReport[];
  traceFile?: string;
  notes: string[];
}

const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);
const mean = (xs: readonly number[]) => (xs.length ? sum(xs) / xs.length : 0);
const clamp01 = (x: number) => Math.min(1, Math.max(0, x));
const fig = (value: number | null, basis: Basis): Figure => ({ value: value === null || Number.isFinite(value) ? value : null, basis });

function rankFigures(p: BenchParams, plan: BenchBudget, r: RankResult, m: RankModel): Figures {
  const b: Basis = r.mode === 'full' ? 'measured' : 'projected';
  const transferTotal = m.transferMs === null ? null : m.transferMs * m.hops;
  return {
    wallMs: fig(m.wallMs, b),
    tokensPerS: fig(plan.shardLen / (m.wallMs / 1000), b),
    achievedGflops: fig(m.flopsTotal / m.wallMs / 1e6, b),
    kernelGflops: fig(m.kernelMeasuredMs > 0 ? m.flopsMeasured / m.kernelMeasuredMs / 1e6 : null, 'measured'),
    pureKernelGflops: fig(m.pureMeasuredMs > 0 ? m.flopsMeasured / m.pureMeasuredMs / 1e6 : null, 'measured'),
    kernelMs: fig(m.kernelMs, b),
    pureKernelMs: fig(m.pureMs, b),
    computeMsPerStep: fig(m.computedSteps > 0 ? m.kernelMs / m.computedSteps : null, b),
    waitMsPerHop: fig(m.hops > 0 ? m.waitMs / m.hops : null, b),
    transferMsPerHop: fig(m.transferMs, 'measured'),
    overlapEfficiency: fig(transferTotal ? clamp01(1 - m.waitMs / transferTotal) : null, b),
    ringOverhead: fig(m.pureMs > 0 ? (m.wallMs - m.pureMs) / m.pureMs : null, b),
    bytesSent: fig(m.bytesSent, 'measured'),
    peakRssBytes: fig(r.peakRssBytes, 'measured'),
    ringBufferBytes: fig(r.ringBufferBytes, 'analytic'),
    flops: fig(m.flopsTotal, 'analytic'),
  };
}

function ringFigures(p: BenchParams, plan: BenchBudget, results: RankResult[], models: RankModel[]): Figures {
  const b: Basis = results.some((r) => r.mode !== 'full') ? 'projected' : 'measured';
  const wall = Math.max(...models.map((m) => m.wallMs));
  const pure = Math.max(...models.map((m) => m.pureMs));
  const kernelMeasured = sum(models.map((m) => m.kernelMeasuredMs));
  const pureMeasured = sum(models.map((m) => m.pureMeasuredMs));
  const transfers = models.every((m) => m.transferMs !== null) ? sum(models.map((m) => m.transferMs! * m.hops)) : null;
  const computedSteps = sum(models.map((m) => m.computedSteps));
  const hops = sum(models.map((m) => m.hops));
  return {
    wallMs: fig(wall, b),
    tokensPerS: fig(p.seqLen / (wall / 1000), b),
    achievedGflops: fig(plan.flops.total / wall / 1e6, b),
    kernelGflops: fig(kernelMeasured > 0 ? sum(models.map((m) => m.flopsMeasured)) / kernelMeasured / 1e6 : null, 'measured'),
    pureKernelGflops: fig(pureMeasured > 0 ? sum(models.map((m) => m.flopsMeasured)) / pureMeasured / 1e6 : null, 'measured'),
    kernelMs: fig(Math.max(...models.map((m) => m.kernelMs)), b),
    pureKernelMs: fig(pure, b),
    computeMsPerStep: fig(computedSteps > 0 ? sum(models.map((m) => m.kernelMs)) / computedSteps : null, b),
    waitMsPerHop: fig(hops > 0 ? sum(models.map((m) => m.waitMs)) / hops : null, b),
    transferMsPerHop: fig(transfers === null || hops === 0 ? null : transfers / hops, 'measured'),
    overlapEfficiency: fig(transfers ? clamp01(1 - sum(models.map((m) => m.waitMs)) / transfers) : null, b),
    ringOverhead: fig(pure > 0 ? (wall - pure) / pure : null, b),
    bytesSent: fig(mean(models.map((m) => m.bytesSent)), 'measured'),
    peakRssBytes: fig(Math.max(...results.map((r) => r.peakRssBytes)), 'measured'),
    ringBufferBytes: fig(plan.memory.ringBytes, 'analytic'),
    flops: fig(plan.flops.total, 'analytic'),
  };
}

export function buildReport(input: {
  params: BenchParams;
  plan: BenchBudget;
  spec: BenchReport['spec'];
  setups: RankSetup[];
  results: RankResult[];
  traceFile?: string;
  date?: Date;
}): BenchReport {
  const { params: p, plan, setups, results } = input;
  const models = results.map((r) => projectRank(p, r));
  const ranks: RankReport[] = results.map((r, i) => {
    const total = sum(r.entries.totalPerStep);
    return {
      rank: r.rank,
      host: r.host,
      setup: setups[i],
      figures: rankFigures(p, plan, r, models[i]),
      measuredFraction: total > 0 ? sum(r.entries.measuredPerStep) / total : 1,
      kernelMsPerStep: { ...models[i].perStep, basis: r.mode === 'full' ? 'measured' : 'projected' },
      raw: r,
    };
  });
  const ring = ringFigures(p, plan, results, models);
  const mode = results.every((r) => r.mode === 'full') ? 'full' : 'time-limited';
  const totalEntries = sum(results.map((r) => sum(r.entries.totalPerStep)));
  const notes: string[] = [
    'FLOPs count allowed score entries exactly: 4*headDim*heads per entry forward, 10*headDim*heads backward.',
    'Waits include waiting for a slower predecessor (load imbalance), not only for transfers.',
    'Peak RSS is the whole worker process (runtime, and garbage not yet collected within a phase), not only the ring buffers.',
  ];
  if (mode === 'time-limited') {
    notes.push(
      `Time-limited: the kernel computed ${(100 * sum(results.map((r) => sum(r.entries.measuredPerStep))) / totalEntries).toPrecision(3)}% of the allowed entries ` +
        '(evenly spread query tiles against every KV block); KV blocks of the real size travelled the full ring and every buffer had its real size.',
      'Projected kernel time = the work at the no-ring rate measured on the same tiles, scaled by the exact share of entries, ' +
        "plus the ring's measured cost to the kernel; waits are re-derived from the measured transfer time (docs/bench.md).",
    );
  }
  return {
    kind: 'ringattn-bench',
    version: 1,
    date: (input.date ?? new Date()).toISOString(),
    params: p,
    spec: input.spec,
    kernel: setups[0]?.kernel ?? 'unknown',
    kernelReason: setups[0]?.kernelReason ?? '',
    plan,
    mode,
    measuredFraction: totalEntries > 0 ? sum(results.map((r) => sum(r.entries.measuredPerStep))) / totalEntries : 1,
    projections: (Object.keys(ring) as Array<keyof Figures>).filter((k) => ring[k].basis === 'projected'),
    ring,
    ranks,
    traceFile: input.traceFile,
    notes,
  };
}

// ---------------------------------------------------------------- text form

export function formatMs(ms: number): string {
  if (ms < 1) return `${ms.toFixed(3)} ms`;
  if (ms < 1000) return `${ms.toPrecision(3)} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toPrecision(3)} s`;
  if (s < 7200) return `${(s / 60).toPrecision(3)} min`;
  if (s < 2 * 86400) return `${(s / 3600).toPrecision(3)} h`;
  return `${(s / 86400).toPrecision(3)} days`;
}

export function formatCount(x: number): string {
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1e12) return `${(x / 1e12).toPrecision(3)}T`;
  if (a >= 1e9) return `${(x / 1e9).toPrecision(3)}G`;
  if (a >= 1e6) return `${(x / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${(x / 1e3).toPrecision(3)}K`;
  return x >= 100 ? x.toFixed(0) : x.toPrecision(3);
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

type Row = [label: string, key: keyof Figures, fmt: (v: number) => string];
const ROWS: Row[] = [
  ['wall per iteration', 'wallMs', formatMs],
  ['tokens/s', 'tokensPerS', formatCount],
  ['achieved GFLOP/s (all work / wall)', 'achievedGflops', (v) => v.toPrecision(3)],
  ['kernel GFLOP/s/worker, in the ring', 'kernelGflops', (v) => v.toPrecision(3)],
  ['kernel GFLOP/s/worker, alone', 'pureKernelGflops', (v) => v.toPrecision(3)],
  ['kernel time per iteration', 'kernelMs', formatMs],
  ['pure kernel time (no ring)', 'pureKernelMs', formatMs],
  ['compute per ring step', 'computeMsPerStep', formatMs],
  ['wait per hop', 'waitMsPerHop', formatMs],
  ['transfer per hop (alone)', 'transferMsPerHop', formatMs],
  ['overlap efficiency', 'overlapEfficiency', pct],
  ['ring overhead', 'ringOverhead', pct],
  ['bytes sent per iteration', 'bytesSent', formatBytes],
  ['peak RSS', 'peakRssBytes', formatBytes],
  ['ring buffers (analytic)', 'ringBufferBytes', formatBytes],
];

function cell(f: Figure, fmt: (v: number) => string): string {
  if (f.value === null) return '-';
  return (f.basis === 'projected' ? '*' : '') + fmt(f.value);
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (r: string[]) => r.map((x, c) => (c === 0 ? x.padEnd(widths[c]) : x.padStart(widths[c]))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)];
}

export function describeRun(p: BenchParams): string {
  const mask = `${p.causal ? 'causal' : 'non-causal'}${p.window ? `, window ${p.window}` : ''}, ${p.layout}`;
  return (
    `${formatSize(p.seqLen)} tokens (${p.seqLen}) on ${p.workers} worker(s), ${mask}, ` +
    `${p.backward ? 'forward + backward' : 'forward'}, ${p.overlap ? 'overlapped' : 'naive (no overlap)'} schedule; ` +
    `${p.heads} query head(s), ${p.kvHeads} KV head(s), head dim ${p.headDim}`
  );
}

export function formatReport(r: BenchReport): string {
  const lines: string[] = [];
  lines.push(`ringattn bench: ${describeRun(r.params)}`);
  const ran = r.ranks[0]?.raw.iterations.length ?? 0;
  lines.push(
    `kernel: ${r.kernel} (${r.kernelReason}); ${ran} timed iteration(s) after one warm-up` +
      (ran < r.params.iterations ? ` (${r.params.iterations} asked; the time limit left room for ${ran})` : ''),
  );
  if (r.mode === 'full') lines.push('mode: full run, every figure measured');
  else {
    const s = r.ranks[0].setup.tiles;
    lines.push(
      `mode: time-limited: the kernel computed ${s.measured} of ${s.total} query tiles per rank = ${(100 * r.measuredFraction).toPrecision(3)}% of the work; ` +
        '* marks projections for the whole work',
    );
  }
  const showRanks = r.ranks.length <= 8;
  const header = ['', ...(showRanks ? r.ranks.map((x) => `rank ${x.rank}`) : []), 'ring'];
  const rows = ROWS.map(([label, key, fmt]) => [label, ...(showRanks ? r.ranks.map((x) => cell(x.figures[key], fmt)) : []), cell(r.ring[key], fmt)]);
  lines.push('', ...table(header, rows), '');
  lines.push(`work: ${formatCount(r.plan.flops.total)} FLOP (${formatCount(r.plan.entries.total)} allowed score entries, counted exactly)`);
  if (r.traceFile) lines.push(`trace: ${r.traceFile} (open in https://ui.perfetto.dev)`);
  for (const n of r.notes) lines.push(`note: ${n}`);
  return lines.join('\n');
}

/** The line the driver prints once every rank has decided how it will run. */
export function formatSetup(p: BenchParams, setups: RankSetup[]): string[] {
  const s = setups[0];
  const lines: string[] = [];
  const hop = setups.filter((x) => x.transfer).map((x) => x.transfer!.msPerHop);
  lines.push(
    `setup: kernel ${s.kernel}, calibrated at ${s.calibration.fwdGflops.toPrecision(3)} GFLOP/s forward on ${s.calibration.qRows}x${s.calibration.kvRows} real tiles` +
      (hop.length ? `; one KV hop takes ${formatMs(Math.max(...hop))} alone` : ''),
  );
  if (setups.every((x) => x.mode === 'full')) lines.push(`running all of the work: warm-up, ${p.iterations} timed iteration(s), then the kernel alone`);
  else lines.push(`time-limited: computing ${s.tiles.measured} of ${s.tiles.total} query tiles per rank (${s.tiles.rows} of ${s.tiles.totalRows} rows) against every KV block`);
  return lines;
}

/** The plan printed before a run starts. */
export function formatBudget(
  p: BenchParams,
  plan: BenchBudget,
  extra: { kernel?: string; calibration?: Calibration; fits?: HostFit[]; maxMessageBytes?: number; timeLimitS: number },
): string {
  const lines: string[] = [];
  lines.push(`plan: ${describeRun(p)}`);
  const fwd = formatCount(plan.flops.forward);
  lines.push(
    `  work        ${formatCount(plan.flops.total)} FLOP` +
      (p.backward ? ` (forward ${fwd}, backward ${formatCount(plan.flops.backward)})` : '') +
      ` over ${formatCount(plan.entries.total)} allowed score entries`,
  );
  lines.push(
    `  per hop     ${formatBytes(plan.bytesPerHop)} KV block (k and v, ${formatBytes(plan.frameBytes)} each` +
      (extra.maxMessageBytes ? `; ring.maxMessageBytes ${formatBytes(extra.maxMessageBytes)}` : '') +
      `), ${plan.hopsPerRank.forward + plan.hopsPerRank.backward} hop(s) per iteration per worker`,
  );
  lines.push(`  per worker  ${formatSize(plan.shardLen)} tokens; ring buffers ${formatBytes(plan.memory.ringBytes)}: ` +
    plan.memory.items.map((i) => `${i.name} ${formatBytes(i.bytes)}`).join(', '));
  for (const f of extra.fits ?? []) {
    lines.push(
      `  memory      host ${f.host}: ${f.workers} worker(s) x ${formatBytes(f.neededBytes)} (buffers + ${formatBytes(plan.memory.slackBytes)} not yet collected + runtime); ` +
        `usable ${formatBytes(f.usableBytes)} each -> ` +
        (f.fits ? 'fits' : 'DOES NOT FIT'),
    );
  }
  if (extra.calibration) {
    const c = extra.calibration;
    const perPass = Math.max(...plan.entries.perRank.map((e) => estimateKernelMs(c, e, p.backward)));
    const runs = 2 * p.iterations + 1;
    const budget = extra.timeLimitS * 1000;
    lines.push(
      `  estimate    kernel ${extra.kernel ?? ''} at ${c.fwdGflops.toPrecision(3)} GFLOP/s forward` +
        (c.bwdGflops ? `, ${c.bwdGflops.toPrecision(3)} backward` : '') +
        ` (${c.qRows}x${c.kvRows} tiles on this machine): ${formatMs(perPass)} of compute per iteration on the busiest worker, ` +
        `${formatMs(perPass * runs)} for warm-up + ${p.iterations} iteration(s) + as many no-ring passes`,
    );
    if (perPass * runs > budget * 0.7) {
      lines.push(
        `  time limit  ${extra.timeLimitS} s: too short for all of it; compute will be measured on a fraction ` +
          `(about ${Math.max(1e-6, (budget * 0.7) / (perPass * runs) * 100).toPrecision(2)}%) of the query rows and the rest projected`,
      );
    }
  }
  return lines.join('\n');
}
