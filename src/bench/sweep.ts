import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatSize, parseSize } from '../config/index.js';
import { UserError } from '../errors.js';
import { formatBytes } from './budget.js';
import { formatCount, formatMs, type BenchReport, type Figure } from './report.js';

/**
 * Sweeps: one bench job per point of one variable, a JSON table of the points
 * and an SVG chart of tokens/s, memory per worker and overlap against it.
 *   workers=1,2,4,8 (with --seq-per-worker: weak scaling, fixed shard)
 *   seq-len=16K,32K,64K (fixed ring: strong scaling)
 */
export type SweepVariable = 'workers' | 'seq-len';
export const SWEEP_VARIABLES: readonly SweepVariable[] = ['workers', 'seq-len'];

export interface Sweep {
  variable: SweepVariable;
  values: number[];
}

export function parseSweep(text: string): Sweep {
  const m = /^\s*([a-z-]+)\s*=\s*(.*)$/.exec(text);
  if (!m || !(SWEEP_VARIABLES as readonly string[]).includes(m[1])) {
    throw new UserError(`--sweep: expected ${SWEEP_VARIABLES.map((v) => `${v}=a,b,c`).join(' or ')}, got ${JSON.stringify(text)}`);
  }
  const variable = m[1] as SweepVariable;
  const parts = m[2].split(',').map((x) => x.trim());
  if (parts.length === 0 || parts.some((x) => x === '')) throw new UserError(`--sweep ${variable}: give a comma-separated list of values, got ${JSON.stringify(m[2])}`);
  const values = parts.map((x) => parseSize(x, `--sweep ${variable}`));
  if (new Set(values).size !== values.length) throw new UserError(`--sweep ${variable}: a value appears twice`);
  return { variable, values };
}

export interface SweepRow {
  variable: SweepVariable;
  value: number;
  seqLen?: number;
  workers?: number;
  shardLen?: number;
  mode?: BenchReport['mode'];
  measuredFraction?: number;
  wallMs?: Figure;
  tokensPerS?: Figure;
  kernelGflops?: Figure;
  overlapEfficiency?: Figure;
  ringOverhead?: Figure;
  peakRssBytes?: Figure;
  ringBufferBytes?: Figure;
  runDir?: string;
  /** Why the point did not run (e.g. it does not fit the host). */
  error?: string;
}

export function sweepRow(variable: SweepVariable, value: number, r: BenchReport, runDir?: string): SweepRow {
  return {
    variable,
    value,
    seqLen: r.params.seqLen,
    workers: r.params.workers,
    shardLen: r.plan.shardLen,
    mode: r.mode,
    measuredFraction: r.measuredFraction,
    wallMs: r.ring.wallMs,
    tokensPerS: r.ring.tokensPerS,
    kernelGflops: r.ring.kernelGflops,
    overlapEfficiency: r.ring.overlapEfficiency,
    ringOverhead: r.ring.ringOverhead,
    peakRssBytes: r.ring.peakRssBytes,
    ringBufferBytes: r.ring.ringBufferBytes,
    runDir,
  };
}

const label = (variable: SweepVariable, v: number) => (variable === 'seq-len' ? formatSize(v) : String(v));

function cellOf(f: Figure | undefined, fmt: (v: number) => string): string {
  if (!f || f.value === null) return '-';
  return (f.basis === 'projected' ? '*' : '') + fmt(f.value);
}

/** A plain-text table of the sweep for the console (and markdown, with `md`). */
export function formatSweep(variable: SweepVariable, rows: SweepRow[], md = false): string {
  const header = [variable, 'seq len', 'shard', 'mode', 'wall/iter', 'tokens/s', 'kernel GFLOP/s', 'overlap', 'ring overhead', 'peak RSS', 'ring buffers'];
  const body = rows.map((r) =>
    r.error
      ? [label(variable, r.value), ...header.slice(1, -1).map(() => ''), `error: ${r.error}`]
      : [
          label(variable, r.value),
          formatSize(r.seqLen!),
          formatSize(r.shardLen!),
          r.mode === 'full' ? 'full' : `limited ${(100 * r.measuredFraction!).toPrecision(2)}%`,
          cellOf(r.wallMs, formatMs),
          cellOf(r.tokensPerS, formatCount),
          cellOf(r.kernelGflops, (v) => v.toPrecision(3)),
          cellOf(r.overlapEfficiency, (v) => `${(100 * v).toFixed(1)}%`),
          cellOf(r.ringOverhead, (v) => `${(100 * v).toFixed(1)}%`),
          cellOf(r.peakRssBytes, formatBytes),
          cellOf(r.ringBufferBytes, formatBytes),
        ],
  );
  if (md) {
    return [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...body.map((r) => `| ${r.join(' | ')} |`)].join('\n');
  }
  const widths = header.map((h, c) => Math.max(h.length, ...body.map((r) => r[c].length)));
  return [header, ...body].map((r) => r.map((x, c) => x.padStart(widths[c])).join('  ')).join('\n');
}

// ------------------------------------------------------------------ chart

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Ticks from 0 to at least `max` in steps of 1, 2 or 5 times a power of ten. */
function ticksTo(max: number, target = 4): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / target;
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  const out: number[] = [];
  for (let v = 0; v < max + step * 0.999; v += step) out.push(+v.toPrecision(12));
  return out;
}

interface Series {
  name: string;
  color: string;
  pick: (r: SweepRow) => Figure | undefined;
}

interface Panel {
  title: string;
  fmt: (v: number) => string;
  series: Series[];
  /** Tick values covering [0, max]; decimal steps unless given. */
  ticks?: (max: number) => number[];
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
const byteUnit = (max: number) => Math.min(BYTE_UNITS.length - 1, Math.max(0, Math.floor(Math.log2(Math.max(1, max)) / 10)));

/** Ticks at round numbers of the largest binary unit the maximum reaches (0, 50, 100 MiB; not 47.7 MiB). */
function byteTicks(max: number): number[] {
  const unit = 1024 ** byteUnit(max);
  return ticksTo(max / unit).map((t) => t * unit);
}

function byteLabel(v: number, max: number): string {
  const u = byteUnit(max);
  return `${+(v / 1024 ** u).toPrecision(6)} ${BYTE_UNITS[u]}`;
}

const PANELS: Panel[] = [
  { title: 'tokens/s (whole ring)', fmt: formatCount, series: [{ name: 'tokens/s', color: '#1f77b4', pick: (r) => r.tokensPerS }] },
  {
    title: 'memory per worker',
    fmt: formatBytes,
    ticks: byteTicks,
    series: [
      { name: 'peak RSS (measured)', color: '#d62728', pick: (r) => r.peakRssBytes },
      { name: 'ring buffers (analytic)', color: '#7f7f7f', pick: (r) => r.ringBufferBytes },
    ],
  },
  {
    title: 'overlap efficiency (share of transfer hidden)',
    fmt: (v) => `${Math.round(v * 100)}%`,
    series: [{ name: 'overlap', color: '#2ca02c', pick: (r) => r.overlapEfficiency }],
  },
];

/**
 * Three stacked panels against the swept variable (evenly spaced categories).
 * Filled dots are measured, hollow dots projected; failed points are left out
 * and their label crossed. Self-contained SVG.
 */
export function renderSweepChart(variable: SweepVariable, rows: SweepRow[]): string {
  const W = 760;
  const PH = 210;
  const m = { l: 84, r: 190, t: 44, b: 44 };
  const H = m.t + PANELS.length * (PH + m.b) + 8;
  const plotW = W - m.l - m.r;
  const x = (i: number) => m.l + (rows.length === 1 ? plotW / 2 : (i * plotW) / (rows.length - 1));
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${m.l}" y="20" font-size="14" font-weight="bold">ringattn bench sweep over ${esc(variable)}</text>`);
  out.push(`<text x="${W - m.r + 10}" y="20" fill="#555">filled dot: measured</text>`);
  out.push(`<text x="${W - m.r + 10}" y="34" fill="#555">hollow dot: projected</text>`);
  PANELS.forEach((panel, pi) => {
    const top = m.t + pi * (PH + m.b);
    const bottom = top + PH - 20;
    const values = rows.flatMap((r) => panel.series.map((s) => s.pick(r)?.value ?? null)).filter((v): v is number => v !== null);
    const max = Math.max(0, ...values);
    const ticks = (panel.ticks ?? ticksTo)(max);
    const yMax = ticks[ticks.length - 1] || 1;
    const tickLabel = panel.ticks === byteTicks ? (t: number) => byteLabel(t, max) : panel.fmt;
    const y = (v: number) => bottom - ((bottom - top - 16) * v) / yMax;
    out.push(`<text x="${m.l}" y="${top + 8}" font-weight="bold">${esc(panel.title)}</text>`);
    for (const t of ticks) {
      out.push(`<line x1="${m.l}" x2="${m.l + plotW}" y1="${y(t)}" y2="${y(t)}" stroke="#e5e5e5"/>`);
      out.push(`<text x="${m.l - 6}" y="${y(t) + 4}" text-anchor="end" fill="#333">${esc(t === 0 ? '0' : tickLabel(t))}</text>`);
    }
    out.push(`<line x1="${m.l}" x2="${m.l + plotW}" y1="${bottom}" y2="${bottom}" stroke="#333"/>`);
    out.push(`<line x1="${m.l}" x2="${m.l}" y1="${top + 12}" y2="${bottom}" stroke="#333"/>`);
    rows.forEach((r, i) => {
      const text = label(variable, r.value) + (r.error ? ' (failed)' : '');
      out.push(`<text x="${x(i)}" y="${bottom + 16}" text-anchor="middle" fill="${r.error ? '#b00' : '#333'}">${esc(text)}</text>`);
    });
    out.push(`<text x="${m.l + plotW / 2}" y="${bottom + 32}" text-anchor="middle" fill="#555">${esc(variable)}</text>`);
    panel.series.forEach((s, si) => {
      const pts = rows.map((r, i) => ({ i, f: s.pick(r) })).filter((p) => p.f && p.f.value !== null);
      if (pts.length > 1) out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts.map((p) => `${x(p.i)},${y(p.f!.value!)}`).join(' ')}"/>`);
      for (const p of pts) {
        const hollow = p.f!.basis === 'projected';
        out.push(`<circle cx="${x(p.i)}" cy="${y(p.f!.value!)}" r="4" fill="${hollow ? 'white' : s.color}" stroke="${s.color}" stroke-width="2"/>`);
      }
      const ly = top + 24 + si * 18;
      out.push(`<line x1="${W - m.r + 10}" x2="${W - m.r + 30}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2"/>`);
      out.push(`<text x="${W - m.r + 36}" y="${ly}">${esc(s.name)}</text>`);
    });
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export const SWEEP_TABLE_FILE = 'bench-sweep.json';
export const SWEEP_CHART_FILE = 'bench-sweep.svg';

/** Writes the table and the chart into `dir`; returns their paths. */
export function writeSweep(dir: string, sweep: Sweep, rows: SweepRow[], extra: Record<string, unknown> = {}): { table: string; chart: string } {
  mkdirSync(dir, { recursive: true });
  const table = join(dir, SWEEP_TABLE_FILE);
  const chart = join(dir, SWEEP_CHART_FILE);
  writeFileSync(table, JSON.stringify({ kind: 'ringattn-bench-sweep', version: 1, variable: sweep.variable, values: sweep.values, ...extra, rows }, null, 2) + '\n');
  writeFileSync(chart, renderSweepChart(sweep.variable, rows));
  return { table, chart };
}
