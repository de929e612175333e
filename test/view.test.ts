import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { specFromObject } from '../src/config/index.js';
import { paramCount } from '../src/model/index.js';
import { flopsPerToken, meanKeys } from '../src/train/flops.js';
import { peakOf, RunWatcher, slowestRank } from '../src/view/run-dir.js';
import { startView, type ViewServer } from '../src/view/server.js';
import type { RankStepRecord, StepMetrics } from '../src/train/metrics.js';
import type { RingHealth } from '../src/launch/ring-health.js';
import { CLI, runCli } from './helpers/cli.js';

/** The dashboard's data (a run directory read as it grows) and its server, without a browser (see view-browser.test.ts). */

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-view-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

const spec = specFromObject(
  { name: 'view-test', hosts: [{ name: 'local', address: '127.0.0.1', slots: 2 }], model: { dModel: 32, layers: 2, heads: 2 }, train: { steps: 10, seqLen: 256 } },
  'view test spec',
);

function metric(step: number, extra: Partial<StepMetrics> = {}): StepMetrics {
  return {
    step,
    loss: 5 - step / 10,
    lr: 1e-3,
    gradNorm: 1 + step,
    seqLen: 256,
    tokensPerSec: 1000 * step,
    stepMs: 100,
    computeMs: 80,
    commMs: 10,
    waitMs: 10,
    attnComputeMs: 30,
    allReduceMs: 10,
    optimizerMs: 1,
    tokens: 255,
    peakRssBytes: 1e8,
    peakRssByRank: [1e8, 1e8],
    time: new Date().toISOString(),
    ...extra,
  };
}

function rankRow(step: number, rank: number, busy: number, allReduce: number): RankStepRecord {
  return { step, rank, stepMs: busy + allReduce + 5, attentionMs: busy / 2, otherComputeMs: busy / 2, ringWaitMs: 5, allReduceMs: allReduce, rssBytes: (100 + rank) * 2 ** 20, time: '' };
}

function ring(state: RingHealth['state'], gemm: Array<number | undefined>): RingHealth {
  return {
    job: 'train',
    attempt: 0,
    state,
    started: new Date().toISOString(),
    updated: new Date().toISOString(),
    heartbeatIntervalMs: 500,
    heartbeatTimeoutMs: 3000,
    ranks: gemm.map((g, rank) => ({ rank, host: 'local', pid: 100 + rank, state: 'running', lastHeartbeat: new Date().toISOString(), info: g === undefined ? {} : { gemmGflops: g } })),
  };
}

const line = (x: object) => JSON.stringify(x) + '\n';

function runDir(name: string): string {
  const dir = path.join(tmp, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'spec.json'), JSON.stringify(spec));
  return dir;
}

test('flopsPerToken: 6 per parameter plus 12 per head dimension per key attended, the keys counted from the mask itself', () => {
  // The reference: count every (query, key) pair the mask allows, by its definition.
  const count = (s: number, causal: boolean, w?: number) => {
    let n = 0;
    for (let i = 0; i < s; i++) {
      for (let j = 0; j < s; j++) {
        const inWindow = w === undefined || Math.abs(i - j) < w;
        if ((causal ? j <= i : true) && inWindow) n++;
      }
    }
    return n / s;
  };
  for (const [s, causal, w] of [[64, true, undefined], [64, false, undefined], [64, true, 16], [64, false, 16], [50, true, 7], [33, false, 40], [1, true, undefined]] as const) {
    assert.ok(Math.abs(meanKeys(s, { causal, window: w }) - count(s, causal, w)) < 1e-12, `s ${s} causal ${causal} window ${w}`);
  }
  const m = spec.model;
  const headDim = m.dModel / m.heads;
  assert.equal(flopsPerToken(m, 256, { causal: true }), 6 * paramCount(m) + 12 * m.layers * m.heads * headDim * (257 / 2));
});

test('slowestRank: the rank with the most compute over the last complete steps; incomplete steps do not count', () => {
  const rows: RankStepRecord[] = [];
  for (let step = 1; step <= 30; step++) {
    rows.push(rankRow(step, 0, 10, 8), rankRow(step, 1, 18, 0.5), rankRow(step, 2, 12, 6));
  }
  // Step 31 has only rank 0's record, with a huge compute time: it must not count.
  rows.push(rankRow(31, 0, 1000, 0));
  const s = slowestRank(rows, 3, 20)!;
  assert.equal(s.rank, 1);
  assert.equal(s.steps, 20);
  assert.ok(Math.abs(s.busyMs - 18) < 1e-9);
  assert.ok(Math.abs(s.othersAllReduceMs - 7) < 1e-9);
  assert.deepEqual(s.busyMsByRank.map((x) => Math.round(x * 1e6) / 1e6), [10, 18, 12]);
  assert.equal(slowestRank(rows.slice(0, 2), 3), null, 'no step with all three ranks');
  assert.equal(slowestRank(rows, 1), null, 'one rank waits for no one');
});

test('peakOf: MFU divides by the sum of every rank\'s measured SGEMM rate, and by nothing when a rank has none', () => {
  assert.equal(peakOf(ring('running', [100, 50])).flopsPerSec, 150e9);
  assert.equal(peakOf(ring('running', [100, undefined])).flopsPerSec, null);
  assert.match(peakOf(ring('running', [100, undefined])).source, /not every rank/);
  assert.equal(peakOf(null).flopsPerSec, null);
});

test('RunWatcher: a snapshot of the files, then only what they gained; a torn last line waits for its end; a rewritten file is a new snapshot', () => {
  const dir = runDir('watch');
  writeFileSync(path.join(dir, 'metrics.jsonl'), line(metric(1)) + line(metric(2, { evalLoss: 4.5 })));
  writeFileSync(path.join(dir, 'ranks.jsonl'), line(rankRow(1, 0, 10, 1)) + line(rankRow(1, 1, 12, 1)));
  writeFileSync(path.join(dir, 'ring.json'), JSON.stringify(ring('running', [100, 100])));
  const w = new RunWatcher(dir);
  const snap = w.snapshot();
  assert.equal(snap.name, 'view-test');
  assert.equal(snap.totalSteps, 10);
  assert.deepEqual(snap.metrics.map((m) => [m.step, m.evalLoss]), [[1, null], [2, 4.5]]);
  assert.equal(snap.metrics[1].modelFlopsPerSec, flopsPerToken(spec.model, 256, spec.attention) * 2000);
  assert.equal(snap.peak.flopsPerSec, 200e9);
  assert.equal(snap.slowest!.rank, 1);
  assert.match(snap.specYaml!, /^name: view-test$/m);
  assert.deepEqual(w.poll(), [], 'nothing changed');

  // Step 3 arrives in two writes: no event for the first half.
  const third = line(metric(3));
  appendFileSync(path.join(dir, 'metrics.jsonl'), third.slice(0, 20));
  assert.deepEqual(w.poll(), []);
  appendFileSync(path.join(dir, 'metrics.jsonl'), third.slice(20));
  appendFileSync(path.join(dir, 'ranks.jsonl'), line(rankRow(2, 0, 10, 1)));
  const [append, ...rest] = w.poll();
  assert.equal(rest.length, 0);
  assert.equal(append.type, 'append');
  if (append.type !== 'append') return;
  assert.deepEqual(append.metrics.map((m) => m.step), [3]);
  assert.deepEqual(append.ranks.map((r) => [r.step, r.rank]), [[2, 0]]);

  // The launcher marks the end; a checkpoint appears.
  writeFileSync(path.join(dir, 'ring.json'), JSON.stringify(ring('finished', [100, 100])));
  mkdirSync(path.join(dir, 'ckpt-3'));
  writeFileSync(path.join(dir, 'ckpt-3', 'params.bin'), Buffer.alloc(4096));
  writeFileSync(path.join(dir, 'ckpt-3', 'manifest.json'), JSON.stringify({ extra: { loss: 4.7 } }));
  const events = w.poll();
  assert.deepEqual(events.map((e) => e.type), ['checkpoints', 'ring'], 'the end comes last');
  assert.ok(w.ended());
  const ck = events[0].type === 'checkpoints' ? events[0].checkpoints : [];
  assert.equal(ck.length, 1);
  assert.equal(ck[0].step, 3);
  assert.equal(ck[0].loss, 4.7);
  assert.ok(ck[0].bytes > 4096);

  // A resumed run rewrites metrics.jsonl shorter: the page must start over from a snapshot.
  writeFileSync(path.join(dir, 'metrics.jsonl'), line(metric(1)));
  const again = w.poll();
  assert.deepEqual(again.map((e) => e.type), ['snapshot']);
  assert.deepEqual(again[0].type === 'snapshot' ? again[0].snapshot.metrics.map((m) => m.step) : [], [1]);
});

/** One raw HTTP/1.1 request: the path goes on the wire exactly as written (no client normalizes it). */
function raw(port: number, target: string, opts: { method?: string; host?: string } = {}): Promise<{ status: number; headers: string; body: string }> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let data = '';
    s.on('data', (d) => (data += d.toString('latin1')));
    s.on('error', reject);
    s.on('end', () => {
      const cut = data.indexOf('\r\n\r\n');
      resolve({ status: Number(data.slice(9, 12)), headers: data.slice(0, cut), body: data.slice(cut + 4) });
    });
    s.write(`${opts.method ?? 'GET'} ${target} HTTP/1.1\r\nHost: ${opts.host ?? `127.0.0.1:${port}`}\r\nConnection: close\r\n\r\n`);
  });
}

async function withServer(dir: string, fn: (v: ViewServer) => Promise<void>): Promise<void> {
  const v = await startView({ runDir: dir, port: 0, pollMs: 50 });
  try {
    await fn(v);
  } finally {
    await v.close();
  }
}

test('the server: the page, its assets and the run; nothing outside the run directory and its own assets', async () => {
  const dir = runDir('serve');
  writeFileSync(path.join(dir, 'metrics.jsonl'), line(metric(1)));
  mkdirSync(path.join(dir, 'logs'));
  writeFileSync(path.join(dir, 'logs', 'rank-0.log'), 'hello from rank 0\n');
  // A secret beside the run directory, and links inside it that point there.
  const secret = path.join(tmp, 'secret.txt');
  writeFileSync(secret, 'SECRET');
  symlinkSync(secret, path.join(dir, 'link-to-secret'));
  symlinkSync(tmp, path.join(dir, 'link-to-parent'));
  writeFileSync(path.join(tmp, 'serve-sibling.txt'), 'SECRET');
  await withServer(dir, async (v) => {
    assert.match(v.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const page = await raw(v.port, '/');
    assert.equal(page.status, 200);
    assert.match(page.body, /<div id="loss-chart"/);
    assert.match(page.headers, /Content-Security-Policy: default-src 'self'/);
    for (const a of ['/assets/app.js', '/assets/app.css', '/assets/uPlot.iife.min.js', '/assets/uPlot.min.css']) assert.equal((await raw(v.port, a)).status, 200, a);
    const snap = JSON.parse((await raw(v.port, '/api/snapshot')).body);
    assert.deepEqual(snap.metrics.map((m: { step: number }) => m.step), [1]);
    const log = await raw(v.port, '/run/logs/rank-0.log');
    assert.equal(log.status, 200);
    assert.equal(log.body, 'hello from rank 0\n');
    assert.equal((await raw(v.port, '/run/metrics.jsonl', { method: 'HEAD' })).status, 200);

    const refused = [
      '/run/../secret.txt',
      '/run/%2e%2e/secret.txt',
      '/run/%2E%2E%2Fsecret.txt',
      '/run/..%2fsecret.txt',
      '/run/logs/..%2f..%2fsecret.txt',
      '/run/..%5csecret.txt',
      '/run/%2Fetc%2Fpasswd',
      '//etc/passwd',
      '/run//etc/passwd',
      '/run/./metrics.jsonl',
      '/run/metrics.jsonl%00.txt',
      '/run/%zz',
      '/run/link-to-secret',
      '/run/link-to-parent/secret.txt',
      '/run/link-to-parent/serve-sibling.txt',
      '/run/logs',
      '/run/',
      '/assets/../package.json',
      '/assets/%2e%2e/package.json',
      '/assets/app.js/../../package.json',
      '/assets/index.html',
      '/node_modules/uplot/package.json',
      '/package.json',
      '/etc/passwd',
    ];
    for (const target of refused) {
      const r = await raw(v.port, target);
      assert.equal(r.status, 404, `${target}: ${r.status}`);
      assert.ok(!r.body.includes('SECRET') && !r.body.includes('root:'), target);
    }
    assert.equal((await raw(v.port, '/', { method: 'POST' })).status, 405);
    assert.equal((await raw(v.port, '/run/metrics.jsonl', { method: 'DELETE' })).status, 405);
    // DNS rebinding: a page of another site whose name now points at 127.0.0.1 gets nothing.
    assert.equal((await raw(v.port, '/api/snapshot', { host: `evil.example:${v.port}` })).status, 403);
    assert.equal((await raw(v.port, '/api/snapshot', { host: `localhost:${v.port}` })).status, 200);
    assert.equal((await raw(v.port, '/api/snapshot', { host: `127.0.0.1:${v.port + 1}` })).status, 403);
  });
});

/** Reads server-sent events until `until` says stop. */
async function events(url: string, until: (evs: Array<{ type: string; data: any }>) => boolean, ms = 10000): Promise<Array<{ type: string; data: any }>> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), ms);
  const out: Array<{ type: string; data: any }> = [];
  try {
    const res = await fetch(url, { signal: ac.signal });
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    let buf = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += Buffer.from(chunk).toString('utf8');
      let cut: number;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const type = /^event: (.*)$/m.exec(block)![1];
        out.push({ type, data: JSON.parse(/^data: (.*)$/m.exec(block)![1]) });
      }
      if (until(out)) break;
    }
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return out;
}

test('the event stream: a snapshot first, then each record as it is appended, then the ring\'s end', async () => {
  const dir = runDir('stream');
  writeFileSync(path.join(dir, 'metrics.jsonl'), line(metric(1)));
  writeFileSync(path.join(dir, 'ring.json'), JSON.stringify(ring('running', [100, 100])));
  await withServer(dir, async (v) => {
    const writer = setTimeout(() => {
      appendFileSync(path.join(dir, 'metrics.jsonl'), line(metric(2)));
      appendFileSync(path.join(dir, 'ranks.jsonl'), line(rankRow(2, 0, 1, 1)) + line(rankRow(2, 1, 3, 1)));
      setTimeout(() => writeFileSync(path.join(dir, 'ring.json'), JSON.stringify(ring('finished', [100, 100]))), 200);
    }, 200);
    const evs = await events(`${v.url}api/events`, (e) => e.some((x) => x.type === 'ring' && x.data.ring.state === 'finished'));
    clearTimeout(writer);
    assert.equal(evs[0].type, 'snapshot');
    assert.deepEqual(evs[0].data.metrics.map((m: { step: number }) => m.step), [1]);
    const appended = evs.filter((e) => e.type === 'append');
    assert.deepEqual(appended.flatMap((e) => e.data.metrics.map((m: { step: number }) => m.step)), [2]);
    assert.deepEqual(appended.flatMap((e) => e.data.ranks.map((r: RankStepRecord) => r.rank)), [0, 1]);
    assert.equal(appended.at(-1)!.data.slowest.rank, 1);
    assert.equal(evs.at(-1)!.data.peak.flopsPerSec, 200e9);
  });
});

test('ringattn view: loopback unless told; a bad run directory or a port in use is one line and exit 2', async () => {
  await assert.rejects(startView({ runDir: runDir('bind'), port: 0, bind: '0.0.0.0' }), /--bind 0\.0\.0\.0 is not a loopback address: .*add --allow-remote/);
  await assert.rejects(startView({ runDir: runDir('bind'), port: 0, bind: '10.1.2.3' }), /--bind 10\.1\.2\.3 is not a loopback address/);
  const missing = await runCli(['view', path.join(tmp, 'nope')]);
  assert.equal(missing.code, 2);
  assert.equal(missing.stderr.trim(), `ringattn: ${path.join(tmp, 'nope')}: no such run directory`);
  const remote = await runCli(['view', runDir('cli'), '--bind', '0.0.0.0']);
  assert.equal(remote.code, 2);
  assert.match(remote.stderr.trim(), /^ringattn: --bind 0\.0\.0\.0 is not a loopback address: [^\n]*--allow-remote[^\n]*$/);
  await withServer(runDir('busy'), async (v) => {
    const busy = await runCli(['view', runDir('cli'), '--port', String(v.port)]);
    assert.equal(busy.code, 2);
    assert.equal(busy.stderr.trim(), `ringattn: --port ${v.port}: the port is in use on 127.0.0.1`);
  });
  const badPort = await runCli(['view', runDir('cli'), '--port', 'http']);
  assert.equal(badPort.code, 2);
  assert.match(badPort.stderr.trim(), /^ringattn: --port: expected an integer >= 0, got "http"$/);
});

const nsMissing = process.getuid?.() !== 0 ? 'needs root, for a network namespace of its own' : spawnSync('sh', ['-c', 'command -v unshare && command -v ip']).status !== 0 ? 'needs unshare and ip' : null;
if (nsMissing) process.stderr.write(`view.test: the non-loopback bind is skipped: ${nsMissing}\n`);

test('--bind a non-loopback address with --allow-remote: served there, to any host name, with a warning (inside a network namespace of the test)', { skip: nsMissing ?? false }, () => {
  const dir = runDir('remote');
  writeFileSync(path.join(dir, 'metrics.jsonl'), line(metric(1)));
  // Inside the namespace: start `ringattn view` on the dummy interface's address, then fetch a snapshot from it.
  const probe = path.join(tmp, 'probe.mjs');
  writeFileSync(
    probe,
    `import { spawn } from 'node:child_process';
const child = spawn(process.execPath, [${JSON.stringify(CLI)}, 'view', ${JSON.stringify(dir)}, '--bind', '10.213.0.1', '--allow-remote', '--port', '8470'], { stdio: ['ignore', 'ignore', 'pipe'] });
let err = '';
child.stderr.on('data', (d) => (err += d));
let body = null;
for (let i = 0; i < 100 && body === null; i++) {
  await new Promise((r) => setTimeout(r, 100));
  try { body = await (await fetch('http://10.213.0.1:8470/api/snapshot', { headers: { host: 'ringattn.example:8470' } })).json(); } catch {}
}
child.kill('SIGINT');
await new Promise((r) => child.on('exit', r));
process.stdout.write(JSON.stringify({ body, err }));
`,
  );
  // A private address on the namespace's own interface, in a namespace that reaches nothing: the port is never on a real network.
  const script = ['set -e', 'ip link set lo up', 'ip addr add 10.213.0.1/32 dev lo', `exec ${JSON.stringify(process.execPath)} ${JSON.stringify(probe)}`].join('\n');
  const r = spawnSync('unshare', ['--net', 'sh', '-c', script], { encoding: 'utf8', timeout: 60000 });
  assert.equal(r.status, 0, r.stderr);
  const { body, err } = JSON.parse(r.stdout);
  assert.deepEqual(body?.metrics.map((m: { step: number }) => m.step), [1], `served on the address, to another host name: the user asked for a remote page\n${err}`);
  assert.match(err, /^warning: the dashboard is served on 10\.213\.0\.1:8470 to anyone who can reach it, without authentication$/m);
  assert.match(err, /^dashboard: http:\/\/10\.213\.0\.1:8470\/$/m);
});
