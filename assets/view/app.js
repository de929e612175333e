// The run dashboard: one EventSource, whose first event is the whole run and
// whose later ones are what the run directory gained. Plain script, no build:
// uPlot (bundled by the package) draws the line charts, SVG the stacked bars.
'use strict';

const BAR_STEPS = 30;
const COLORS = ['#3b6fd8', '#c0504d', '#2e9d5b', '#e6a23c', '#7a52c7', '#1f9bb4', '#b3478f', '#6b7385'];

const run = { snapshot: null, metrics: [], ranks: [], ring: null, peak: null, slowest: null, checkpoints: [] };
const charts = {};
let logScale = false;

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, text) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
const fmt = (x, digits = 3) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : Number(x).toPrecision(digits));
const bytes = (b) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : b >= 2 ** 20 ? `${(b / 2 ** 20).toFixed(1)} MiB` : `${(b / 1024).toFixed(0)} KiB`);
// Steps are whole numbers: no tick between two of them.
const STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];
const STEP_AXIS = { label: 'step', incrs: STEP_INCRS };

function chartWidth(id) {
  return Math.max(300, $(id).clientWidth);
}

/** Creates or updates one uPlot chart: `data` is [x, ...series]. */
function plot(id, series, data, opts = {}) {
  const existing = charts[id];
  if (existing && !opts.recreate) {
    existing.setData(data);
    return existing;
  }
  if (existing) existing.destroy();
  const chart = new uPlot(
    {
      width: chartWidth(id),
      height: 220,
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: false }, ...(opts.scales ?? {}) },
      axes: opts.axes ?? [STEP_AXIS, {}],
      series: [{ label: 'step' }, ...series],
    },
    data,
    $(id),
  );
  charts[id] = chart;
  return chart;
}

function lossChart(recreate) {
  const m = run.metrics;
  const data = [m.map((r) => r.step), m.map((r) => r.loss), m.map((r) => r.evalLoss)];
  plot(
    'loss-chart',
    [
      { label: 'train', stroke: COLORS[0], width: 1.5 },
      { label: 'eval', stroke: COLORS[1], width: 1.5, spanGaps: true, points: { show: true, size: 6 } },
    ],
    data,
    { recreate, scales: { y: logScale ? { distr: 3, log: 10 } : {} } },
  );
  $('loss-chart').dataset.points = String(m.filter((r) => Number.isFinite(r.loss)).length);
}

function speedChart() {
  const m = run.metrics;
  const peak = run.peak && run.peak.flopsPerSec;
  const series = [{ label: 'tokens/s', stroke: COLORS[2], width: 1.5, scale: 'tok' }];
  const data = [m.map((r) => r.step), m.map((r) => r.tokensPerSec)];
  if (peak) {
    series.push({ label: 'MFU %', stroke: COLORS[4], width: 1.5, dash: [6, 4], scale: 'mfu' });
    data.push(m.map((r) => (r.modelFlopsPerSec === null ? null : (100 * r.modelFlopsPerSec) / peak)));
  }
  const axes = [STEP_AXIS, { scale: 'tok', label: 'tokens/s', size: 60 }];
  if (peak) axes.push({ scale: 'mfu', side: 1, label: 'MFU %', grid: { show: false } });
  // The series set changes when the peak first becomes known: a new chart then.
  const shape = peak ? 'mfu' : 'tok';
  plot('speed-chart', series, data, { recreate: charts['speed-chart'] && charts['speed-chart'].shape !== shape, axes }).shape = shape;
  const last = m[m.length - 1];
  $('mfu-note').textContent = peak
    ? `MFU = model FLOPs (6·params + 12·layers·heads·headDim·keys attended, per token) / ${run.peak.source}.` +
      (last && last.modelFlopsPerSec !== null ? ` Last step: ${fmt((100 * last.modelFlopsPerSec) / peak)}%.` : '')
    : `MFU not shown: ${run.peak ? run.peak.source : 'no ring.json yet'}.`;
}

function simpleChart(id, label, key, color) {
  const m = run.metrics;
  plot(id, [{ label, stroke: color, width: 1.5 }], [m.map((r) => r.step), m.map((r) => r[key])]);
}

function memoryChart() {
  const world = worldSize();
  const steps = [...new Set(run.ranks.map((r) => r.step))].sort((a, b) => a - b);
  const index = new Map(steps.map((s, i) => [s, i]));
  const cols = Array.from({ length: world }, () => new Array(steps.length).fill(null));
  for (const r of run.ranks) if (r.rank < world) cols[r.rank][index.get(r.step)] = r.rssBytes / 2 ** 20;
  const series = cols.map((_, r) => ({ label: `rank ${r} MiB`, stroke: COLORS[r % COLORS.length], width: 1.5, spanGaps: true }));
  const shape = String(world);
  plot('memory-chart', series, [steps, ...cols], { recreate: charts['memory-chart'] && charts['memory-chart'].shape !== shape, axes: [STEP_AXIS, { label: 'RSS MiB', size: 60 }] }).shape = shape;
}

function worldSize() {
  if (run.ring) return run.ring.ranks.length;
  return run.ranks.reduce((a, r) => Math.max(a, r.rank + 1), 0);
}

/** Per rank, the last BAR_STEPS steps as stacked bars of the four parts of a step. */
function bars() {
  const host = $('bars');
  const world = worldSize();
  const lastStep = run.ranks.reduce((a, r) => Math.max(a, r.step), 0);
  const recent = run.ranks.filter((r) => r.step > lastStep - BAR_STEPS);
  host.textContent = '';
  if (recent.length === 0) {
    host.append(el('p', { class: 'dim small' }, 'no per-rank records yet (ranks.jsonl)'));
    return;
  }
  const maxMs = recent.reduce((a, r) => Math.max(a, r.stepMs), 1);
  const width = Math.max(300, host.clientWidth);
  const rowH = 64;
  const left = 70;
  const barW = (width - left - 10) / BAR_STEPS;
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(world * (rowH + 10)));
  const parts = [
    ['attentionMs', 'attention'],
    ['otherComputeMs', 'other'],
    ['ringWaitMs', 'wait'],
    ['allReduceMs', 'reduce'],
  ];
  for (let rank = 0; rank < world; rank++) {
    const y0 = rank * (rowH + 10) + rowH;
    const label = document.createElementNS(ns, 'text');
    label.setAttribute('x', '0');
    label.setAttribute('y', String(y0 - rowH / 2));
    label.setAttribute('font-size', '12');
    label.textContent = `rank ${rank}`;
    svg.append(label);
    for (const r of recent) {
      if (r.rank !== rank) continue;
      const x = left + (BAR_STEPS - 1 - (lastStep - r.step)) * barW;
      let y = y0;
      const g = document.createElementNS(ns, 'g');
      const title = document.createElementNS(ns, 'title');
      title.textContent = `rank ${rank}, step ${r.step}: ${r.stepMs.toFixed(1)} ms = attention ${r.attentionMs.toFixed(1)} + other ${r.otherComputeMs.toFixed(1)} + ring wait ${r.ringWaitMs.toFixed(1)} + all-reduce ${r.allReduceMs.toFixed(1)}`;
      g.append(title);
      for (const [key, cls] of parts) {
        const h = (r[key] / maxMs) * rowH;
        y -= h;
        const rect = document.createElementNS(ns, 'rect');
        rect.setAttribute('x', x.toFixed(1));
        rect.setAttribute('y', y.toFixed(1));
        rect.setAttribute('width', Math.max(1, barW - 2).toFixed(1));
        rect.setAttribute('height', Math.max(0, h).toFixed(1));
        rect.setAttribute('class', cls);
        g.append(rect);
      }
      svg.append(g);
    }
  }
  host.append(svg);
  host.append(el('p', { class: 'dim small' }, `bar height: share of the tallest step shown (${maxMs.toFixed(1)} ms); steps ${Math.max(1, lastStep - BAR_STEPS + 1)}..${lastStep}`));
}

function ageText(iso) {
  if (!iso) return ['–', false];
  const age = (Date.now() - Date.parse(iso)) / 1000;
  const stale = run.ring && run.ring.state === 'running' && age * 1000 > run.ring.heartbeatTimeoutMs;
  return [run.ring && run.ring.state === 'running' ? `${age.toFixed(1)} s ago` : new Date(iso).toLocaleTimeString(), stale];
}

function ringTable() {
  const body = $('ring-table').tBodies[0];
  body.textContent = '';
  const s = run.slowest;
  const fastest = s ? Math.min(...s.busyMsByRank) : 0;
  const spread = s && fastest > 0 ? (s.busyMs - fastest) / fastest : 0;
  $('slowest').textContent = s
    ? `Slowest rank: ${s.rank}, ${s.busyMs.toFixed(1)} ms of compute per step over the last ${s.steps} steps` +
      (spread < 0.05
        ? ` (within ${(100 * spread).toFixed(1)}% of the fastest: the ring is balanced).`
        : `, ${(100 * spread).toFixed(0)}% more than the fastest; the others spend ${s.othersAllReduceMs.toFixed(1)} ms per step in the all-reduce, mostly waiting for it.`)
    : worldSize() > 1 ? 'Slowest rank: not known until every rank has reported a step.' : '';
  if (!run.ring) {
    body.append(el('tr', {}, ''));
    body.rows[0].append(el('td', { colspan: '9', class: 'dim' }, 'no ring.json: this run directory predates the dashboard, or the launcher has not started'));
    return;
  }
  for (const r of run.ring.ranks) {
    const [age, stale] = ageText(r.lastHeartbeat);
    const tr = el('tr', s && s.rank === r.rank ? { class: 'slow' } : {});
    tr.append(el('td', {}, String(r.rank)), el('td', {}, r.host), el('td', { class: 'num' }, r.pid === undefined ? '–' : String(r.pid)), el('td', {}, r.state));
    tr.append(el('td', stale ? { class: 'stale' } : {}, age));
    tr.append(el('td', {}, String(r.info.engine ?? '–')), el('td', { class: 'num' }, fmt(r.info.gemmGflops, 4)));
    tr.append(el('td', { class: 'num' }, s ? s.busyMsByRank[r.rank].toFixed(1) : '–'), el('td', { class: 'num' }, s ? s.allReduceMsByRank[r.rank].toFixed(1) : '–'));
    body.append(tr);
  }
}

function checkpointTable() {
  const body = $('ckpt-table').tBodies[0];
  body.textContent = '';
  if (run.checkpoints.length === 0) {
    const tr = el('tr');
    tr.append(el('td', { colspan: '5', class: 'dim' }, 'none yet'));
    body.append(tr);
  }
  for (const c of run.checkpoints) {
    const tr = el('tr');
    tr.append(el('td', {}, c.name), el('td', { class: 'num' }, String(c.step)), el('td', { class: 'num' }, fmt(c.loss, 4)), el('td', { class: 'num' }, bytes(c.bytes)), el('td', {}, c.time ? new Date(c.time).toLocaleString() : '–'));
    body.append(tr);
  }
}

function header() {
  const snap = run.snapshot;
  $('title').textContent = snap && snap.name ? `ringattn: ${snap.name}` : 'ringattn run';
  document.title = $('title').textContent;
  $('rundir').textContent = snap ? snap.runDir : '';
  const state = run.ring ? run.ring.state : 'files only';
  $('state').textContent = state;
  $('state').className = `badge ${run.ring ? run.ring.state : ''}`;
  const last = run.metrics[run.metrics.length - 1];
  $('progress').textContent = last ? `step ${last.step}${snap && snap.totalSteps ? ` / ${snap.totalSteps}` : ''} · loss ${fmt(last.loss, 4)}${last.evalLoss !== null ? ` · eval ${fmt(last.evalLoss, 4)}` : ''}` : 'no steps yet';
  const failure = run.ring && run.ring.state === 'failed' ? run.ring.failure : null;
  $('failure').hidden = !failure;
  $('failure').textContent = failure || '';
}

function renderCharts() {
  lossChart(false);
  speedChart();
  simpleChart('lr-chart', 'lr', 'lr', COLORS[3]);
  simpleChart('grad-chart', 'grad norm', 'gradNorm', COLORS[5]);
  memoryChart();
  bars();
}

function renderAll() {
  header();
  renderCharts();
  ringTable();
  checkpointTable();
  $('spec').textContent = run.snapshot && run.snapshot.specYaml ? run.snapshot.specYaml : 'no spec.json yet';
}

function connect() {
  const es = new EventSource('/api/events');
  const ended = () => run.ring && run.ring.state !== 'running';
  es.addEventListener('snapshot', (e) => {
    const s = JSON.parse(e.data);
    Object.assign(run, { snapshot: s, metrics: s.metrics, ranks: s.ranks, ring: s.ring, peak: s.peak, slowest: s.slowest, checkpoints: s.checkpoints });
    renderAll();
    if (ended()) es.close();
  });
  es.addEventListener('append', (e) => {
    const a = JSON.parse(e.data);
    run.metrics.push(...a.metrics);
    run.ranks.push(...a.ranks);
    run.slowest = a.slowest;
    header();
    renderCharts();
    ringTable();
  });
  es.addEventListener('ring', (e) => {
    const r = JSON.parse(e.data);
    run.ring = r.ring;
    run.peak = r.peak;
    header();
    ringTable();
    speedChart();
    // The launcher wrote the job's end: nothing more will come, and the server may go.
    if (ended()) es.close();
  });
  es.addEventListener('checkpoints', (e) => {
    run.checkpoints = JSON.parse(e.data).checkpoints;
    checkpointTable();
  });
}

window.addEventListener('DOMContentLoaded', () => {
  $('log-scale').addEventListener('change', (e) => {
    logScale = e.target.checked;
    lossChart(true);
  });
  window.addEventListener('resize', () => {
    for (const [id, c] of Object.entries(charts)) c.setSize({ width: chartWidth(id), height: 220 });
    bars();
  });
  // Heartbeat ages tick between events.
  setInterval(() => {
    if (run.ring && run.ring.state === 'running') ringTable();
  }, 1000);
  connect();
});
