import { writeFileAtomic } from './checkpoint.js';

export interface LossPoint {
  step: number;
  loss?: number;
  evalLoss?: number;
}

export const CHART_FILE = 'loss.svg';

/** 1, 2 or 5 times a power of ten: tick spacing a reader can add up. */
export function niceStep(range: number, targetTicks: number): number {
  if (!(range > 0)) return 1;
  const raw = range / Math.max(1, targetTicks);
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

/** Tick values covering [lo, hi] on a nice grid. */
export function niceTicks(lo: number, hi: number, targetTicks = 5): { lo: number; hi: number; ticks: number[] } {
  if (hi === lo) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const step = niceStep(hi - lo, targetTicks);
  const a = Math.floor(lo / step) * step;
  const b = Math.ceil(hi / step) * step;
  const ticks: number[] = [];
  for (let i = 0; a + i * step <= b + step * 1e-9; i++) ticks.push(+(a + i * step).toPrecision(12));
  return { lo: a, hi: b, ticks };
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  return String(+v.toPrecision(4));
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export interface ChartOptions {
  title?: string;
  width?: number;
  height?: number;
}

/** One line of a chart: `name` is its SVG class, `label` its legend entry. */
export interface Series {
  name: string;
  label: string;
  color: string;
  dashed?: boolean;
  /** Dots at the points (sparse series such as evaluations). */
  dots?: boolean;
  points: ReadonlyArray<readonly [number, number]>;
}

/**
 * An SVG of lines against step, with ticked axes, axis labels and a legend.
 * Self-contained (no scripts, no external fonts), so any browser or image viewer shows it.
 */
export function renderChart(
  series: readonly Series[],
  opts: ChartOptions & { yLabel: string; yRange?: [number, number]; /** Where the legend starts, as a share of the plot's height from its top. */ legendAt?: number },
): string {
  const W = opts.width ?? 720;
  const H = opts.height ?? 420;
  const m = { l: 64, r: 24, t: 40, b: 52 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const all = series.flatMap((s) => s.points);
  const title = esc(opts.title ?? '');
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${title}</text>`);
  if (all.length === 0) {
    out.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle" fill="#666">no steps yet</text>`);
    out.push('</svg>');
    return out.join('\n') + '\n';
  }
  const xs = niceTicks(Math.min(0, ...all.map((p) => p[0])), Math.max(1, ...all.map((p) => p[0])), 8);
  const [yLo, yHi] = opts.yRange ?? [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const ys = niceTicks(yLo, yHi, 6);
  const X = (v: number): number => m.l + ((v - xs.lo) / (xs.hi - xs.lo)) * pw;
  const Y = (v: number): number => m.t + ph - ((v - ys.lo) / (ys.hi - ys.lo)) * ph;
  const r = (v: number): string => v.toFixed(1);

  for (const t of ys.ticks) {
    out.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${r(Y(t))}" y2="${r(Y(t))}" stroke="#eee"/>`);
    out.push(`<line x1="${m.l - 5}" x2="${m.l}" y1="${r(Y(t))}" y2="${r(Y(t))}" stroke="#333"/>`);
    out.push(`<text x="${m.l - 8}" y="${r(Y(t) + 4)}" text-anchor="end">${fmt(t)}</text>`);
  }
  for (const t of xs.ticks) {
    out.push(`<line x1="${r(X(t))}" x2="${r(X(t))}" y1="${m.t + ph}" y2="${m.t + ph + 5}" stroke="#333"/>`);
    out.push(`<text x="${r(X(t))}" y="${m.t + ph + 19}" text-anchor="middle">${fmt(t)}</text>`);
  }
  out.push(`<line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${m.t + ph}" stroke="#333"/>`);
  out.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${m.t + ph}" y2="${m.t + ph}" stroke="#333"/>`);
  out.push(`<text x="${m.l + pw / 2}" y="${H - 12}" text-anchor="middle">step</text>`);
  out.push(`<text transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(opts.yLabel)}</text>`);

  const path = (pts: Series['points']): string => pts.map((p, i) => `${i === 0 ? 'M' : 'L'}${r(X(p[0]))},${r(Y(p[1]))}`).join(' ');
  const dash = (s: Series) => (s.dashed ? ' stroke-dasharray="5 3"' : '');
  for (const s of series) {
    if (s.points.length === 0) continue;
    out.push(`<path class="${esc(s.name)}" d="${path(s.points)}" fill="none" stroke="${s.color}" stroke-width="1.5"${dash(s)}/>`);
    if (s.dots) for (const p of s.points) out.push(`<circle cx="${r(X(p[0]))}" cy="${r(Y(p[1]))}" r="2.5" fill="${s.color}"/>`);
  }
  const lx = m.l + pw - 200;
  series.forEach((s, i) => {
    const y = m.t + 10 + (opts.legendAt ?? 0) * ph + 18 * i;
    out.push(`<line x1="${lx}" x2="${lx + 22}" y1="${y}" y2="${y}" stroke="${s.color}" stroke-width="2"${dash(s)}/>`);
    out.push(`<text x="${lx + 28}" y="${y + 4}">${esc(s.label)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** Train and eval loss against step. */
export function renderLossChart(points: readonly LossPoint[], opts: ChartOptions = {}): string {
  const train = points.filter((p) => Number.isFinite(p.loss)).map((p) => [p.step, p.loss as number] as const);
  const evals = points.filter((p) => Number.isFinite(p.evalLoss)).map((p) => [p.step, p.evalLoss as number] as const);
  return renderChart(
    [
      { name: 'train', label: 'train loss', color: '#1f77b4', points: train },
      { name: 'eval', label: 'eval loss', color: '#d62728', dashed: true, dots: true, points: evals },
    ],
    { ...opts, title: opts.title ?? 'Loss', yLabel: 'loss (nats/token)' },
  );
}

/** Rewrites the chart atomically, so a viewer refreshing it never reads half a file. */
export function writeLossChart(path: string, points: readonly LossPoint[], opts: ChartOptions = {}): void {
  writeFileAtomic(path, renderLossChart(points, opts));
}
