/**
 * npm run bench:view — what the dashboard costs.
 *
 * 1. Training with `--view` and one live page (a server-sent-event reader in
 *    this process, connected as soon as the URL is printed) against the same
 *    run without: median step time of the localhost demo model, the two
 *    alternated round by round so that drift hits both alike.
 * 2. The server's reading of a large run directory, made here: 100K metrics
 *    records and 2000 steps x 8 ranks of per-rank records. Measured: the first
 *    read (what a page's snapshot waits for), the snapshot's size, a poll that
 *    finds nothing new, a poll that finds one new step; and the page's assets.
 */
import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadSpec } from '../src/config/index.js';
import { cliCommand, machineLine, writeLocalSpec } from '../src/bench/harness.js';
import { RunWatcher } from '../src/view/run-dir.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const arg = (name: string, dflt: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const ROUNDS = Number(arg('--rounds', '2'));
const STEPS = Number(arg('--steps', '12'));
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const dir = mkdtempSync(path.join(tmpdir(), 'ra-bench-view-'));

/** Reads a dashboard's event stream until aborted; counts the events. */
async function readEvents(url: string, signal: AbortSignal, count: { events: number }): Promise<void> {
  try {
    const res = await fetch(url, { signal });
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) count.events += Buffer.from(chunk).toString('utf8').split('\n\n').length - 1;
  } catch {
    // aborted at the end of the run, or the server closed the stream
  }
}

async function trainRun(view: boolean, round: number): Promise<{ stepMs: number; events: number }> {
  const demo = loadSpec(path.join(ROOT, 'configs', 'localhost.yaml'));
  const spec = writeLocalSpec(path.join(dir, `spec-${round}-${view}.json`), 'bench-view', 2, {
    attention: { causal: demo.attention.causal, layout: demo.attention.layout },
    model: { dModel: demo.model.dModel, layers: demo.model.layers, heads: demo.model.heads },
    train: { steps: STEPS, seqLen: demo.train.seqLen, batch: demo.train.batch, lr: demo.train.lr, warmupSteps: 2, evalEvery: 0, checkpointEvery: 0 },
  });
  const runDir = path.join(dir, `run-${round}-${view}`);
  const [cmd, ...pre] = cliCommand();
  const child = spawn(cmd, [...pre, 'train', '--config', spec, '--run-dir', runDir, '--quiet', ...(view ? ['--view', '--port', '0'] : [])], { stdio: ['ignore', 'ignore', 'pipe'] });
  const ac = new AbortController();
  const count = { events: 0 };
  let stderr = '';
  let reader: Promise<void> = Promise.resolve();
  child.stderr.on('data', (d) => {
    stderr += d;
    const m = /^dashboard: (http:\/\/\S+)$/m.exec(stderr);
    if (m && count.events === 0 && view) {
      count.events = 0.5; // connecting
      reader = readEvents(`${m[1]}api/events`, ac.signal, count);
    }
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  ac.abort();
  await reader;
  if (code !== 0) throw new Error(`bench-view: train failed:\n${stderr}`);
  const m = readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { stepMs: number });
  return { stepMs: median(m.slice(Math.max(1, Math.floor(m.length / 4))).map((x) => x.stepMs)), events: Math.floor(count.events) };
}

function metricLine(step: number): string {
  return JSON.stringify({
    step,
    loss: 3 + 1 / step,
    lr: 1e-3,
    gradNorm: 1,
    seqLen: 4096,
    tokensPerSec: 4000,
    stepMs: 1000,
    computeMs: 900,
    commMs: 50,
    waitMs: 50,
    attnComputeMs: 300,
    allReduceMs: 50,
    optimizerMs: 5,
    tokens: 4095,
    peakRssBytes: 2e8,
    peakRssByRank: [2e8, 2e8, 2e8, 2e8, 2e8, 2e8, 2e8, 2e8],
    time: '2026-12-01T00:00:00.000Z',
    ...(step % 100 === 0 ? { evalLoss: 3.2, evalAccuracy: 0.4 } : {}),
  }) + '\n';
}

function rankLine(step: number, rank: number): string {
  return JSON.stringify({ step, rank, stepMs: 1000, attentionMs: 300, otherComputeMs: 600, ringWaitMs: 50, allReduceMs: 50, rssBytes: 2e8, time: '2026-12-01T00:00:00.000Z' }) + '\n';
}

async function serverCosts(): Promise<Record<string, number>> {
  const { mkdirSync } = await import('node:fs');
  const runDir = path.join(dir, 'large');
  mkdirSync(runDir, { recursive: true });
  const spec = loadSpec(path.join(ROOT, 'configs', 'localhost.yaml'));
  writeFileSync(path.join(runDir, 'spec.json'), JSON.stringify({ ...spec, hosts: [{ name: 'local', address: '127.0.0.1', slots: 8 }] }));
  const STEPS_LARGE = 100_000;
  const chunks: string[] = [];
  for (let s = 1; s <= STEPS_LARGE; s++) chunks.push(metricLine(s));
  writeFileSync(path.join(runDir, 'metrics.jsonl'), chunks.join(''));
  const rchunks: string[] = [];
  for (let s = STEPS_LARGE - 1999; s <= STEPS_LARGE; s++) for (let r = 0; r < 8; r++) rchunks.push(rankLine(s, r));
  writeFileSync(path.join(runDir, 'ranks.jsonl'), rchunks.join(''));
  const t0 = performance.now();
  const w = new RunWatcher(runDir);
  const snapshotJson = JSON.stringify(w.snapshot());
  const firstReadMs = performance.now() - t0;
  const idle: number[] = [];
  const grow: number[] = [];
  for (let i = 0; i < 20; i++) {
    let t = performance.now();
    w.poll();
    idle.push(performance.now() - t);
    appendFileSync(path.join(runDir, 'metrics.jsonl'), metricLine(STEPS_LARGE + 1 + i));
    appendFileSync(path.join(runDir, 'ranks.jsonl'), Array.from({ length: 8 }, (_, r) => rankLine(STEPS_LARGE + 1 + i, r)).join(''));
    t = performance.now();
    w.poll();
    grow.push(performance.now() - t);
  }
  const require = createRequire(import.meta.url);
  const uplot = path.dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));
  const assets = [
    ...['index.html', 'app.js', 'app.css'].map((f) => path.join(ROOT, 'assets', 'view', f)),
    path.join(uplot, 'uPlot.iife.min.js'),
    path.join(uplot, 'uPlot.min.css'),
  ].reduce((a, f) => a + statSync(f).size, 0);
  return {
    metricsMiB: statSync(path.join(runDir, 'metrics.jsonl')).size / 2 ** 20,
    firstReadMs,
    snapshotMiB: Buffer.byteLength(snapshotJson) / 2 ** 20,
    idlePollMs: median(idle),
    growPollMs: median(grow),
    assetsKiB: assets / 1024,
  };
}

try {
  console.log(`bench:view, ${machineLine()}`);
  const rows: Array<{ round: number; plain: number; view: number; events: number }> = [];
  for (let round = 0; round < ROUNDS; round++) {
    const plain = await trainRun(false, round);
    const view = await trainRun(true, round);
    rows.push({ round, plain: plain.stepMs, view: view.stepMs, events: view.events });
    process.stderr.write(`bench-view: round ${round + 1}: ${plain.stepMs.toFixed(0)} ms per step without the dashboard, ${view.stepMs.toFixed(0)} ms with it (${view.events} events read)\n`);
  }
  console.log(`\nlocalhost demo model (2 workers, 4K tokens, d=256, 4 layers), ${STEPS} steps per run, median step of the last three quarters:\n`);
  console.log('| round | without --view, ms/step | with --view and a live page, ms/step | difference | events the page received |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) console.log(`| ${r.round + 1} | ${r.plain.toFixed(0)} | ${r.view.toFixed(0)} | ${(100 * (r.view / r.plain - 1)).toFixed(1)}% | ${r.events} |`);
  const c = await serverCosts();
  console.log('\nthe server on a run of 100K steps (metrics.jsonl ' + `${c.metricsMiB.toFixed(1)} MiB) and 2000 steps x 8 ranks of ranks.jsonl:\n`);
  console.log('| first read (snapshot) | snapshot JSON | poll, nothing new | poll, one new step | page assets |');
  console.log('|---|---|---|---|---|');
  console.log(`| ${c.firstReadMs.toFixed(0)} ms | ${c.snapshotMiB.toFixed(1)} MiB | ${c.idlePollMs.toFixed(2)} ms | ${c.growPollMs.toFixed(2)} ms | ${c.assetsKiB.toFixed(0)} KiB |`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
