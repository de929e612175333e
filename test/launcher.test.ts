import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePortRange } from './helpers/ports.js';
import { runCli, workerPids, ROOT } from './helpers/cli.js';
import { specFromObject } from '../src/config/index.js';
import { runJob } from '../src/launch/launcher.js';

/**
 * The launcher as a user meets it: real worker processes on a localhost ring,
 * gang semantics when one of them dies or hangs, and no process left behind.
 */

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-launch-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

async function localSpec(slots: number, extra: object = {}) {
  const basePort = await freePortRange(slots + 1);
  return specFromObject({ runDir: tmp, hosts: [{ name: 'local', address: '127.0.0.1', slots }], ring: { basePort, heartbeatIntervalMs: 200, heartbeatTimeoutMs: 1000, ...extra } });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitForWorkers(n: number, port: number, ms = 30000): Promise<number[]> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const pids = workerPids(port);
    if (pids.length >= n) return pids;
    await sleep(50);
  }
  throw new Error(`${n} workers did not start`);
}

async function waitForLog(file: string, re: RegExp, ms = 30000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (existsSync(file) && re.test(readFileSync(file, 'utf8'))) return;
    await sleep(50);
  }
  throw new Error(`${file} never matched ${re}`);
}

/** Rank of a worker process, from its environment. */
function rankOf(pid: number): number {
  const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  return Number(env.find((e) => e.startsWith('RINGATTN_RANK='))!.split('=')[1]);
}

test('a ring of 3 local workers runs the collectives self-check and leaves nothing behind', async () => {
  const spec = await localSpec(3);
  const out = await runJob(spec, { kind: 'ringcheck', args: { rounds: 3, length: 4099 } }, { quiet: true });
  const ranks = out.value as Array<{ rank: number; rounds: number }>;
  assert.deepEqual(ranks.map((r) => r.rank), [0, 1, 2]);
  assert.ok(ranks.every((r) => r.rounds === 3));
  for (let r = 0; r < 3; r++) assert.match(readFileSync(path.join(out.runDir, 'logs', `rank-${r}.log`), 'utf8'), /ring check round passed/);
  assert.deepEqual(workerPids(spec.ring.basePort), []);
});

for (const [what, signal] of [['killed', 'SIGKILL'], ['hung (SIGSTOP)', 'SIGSTOP']] as const) {
  test(`a worker ${what} mid-collective stops the job within the heartbeat timeout, naming its rank`, async () => {
    const spec = await localSpec(3);
    const runDir = path.join(tmp, `victim-${signal}`);
    const job = runJob(spec, { kind: 'ringcheck', args: { rounds: 100000, holdMs: 20 } }, { quiet: true, runDir });
    job.catch(() => undefined);
    const pids = await waitForWorkers(3, spec.ring.basePort);
    await waitForLog(path.join(runDir, 'logs', 'rank-1.log'), /round":3/); // well inside the collectives
    const victim = pids.find((p) => rankOf(p) === 1)!;
    const t0 = Date.now();
    process.kill(victim, signal);
    await assert.rejects(job, (err: Error) => {
      assert.match(err.message, /^job ringcheck failed: rank 1 \(local\) (was killed by SIGKILL|stopped answering|did not send)/);
      return true;
    });
    const detectMs = Date.now() - t0;
    // Heartbeat timeout 1 s, plus the settling window and the stop of the others.
    assert.ok(detectMs < spec.ring.heartbeatTimeoutMs + 4000, `took ${detectMs} ms`);
    assert.deepEqual(workerPids(spec.ring.basePort), [], 'no worker left');
  });
}

test('a rank that never arrives is named when the rendezvous times out', async () => {
  const spec = await localSpec(2, { rendezvousTimeoutMs: 3000 });
  const bad = { ...spec, hosts: [...spec.hosts, { ...spec.hosts[0], name: 'ghost', address: '127.0.0.1', slots: 1, launch: 'ssh' as const, ssh: { port: 1, options: ['ConnectTimeout=2'] } }] };
  await assert.rejects(runJob(bad, { kind: 'ringcheck', args: {} }, { quiet: true }), /rank 2 \(ghost\) exited with code 255|missing rank 2 \(ghost\)/);
  assert.deepEqual(workerPids(spec.ring.basePort), []);
});

test('Ctrl-C on the launcher stops every worker', async () => {
  const basePort = await freePortRange(4);
  const specFile = path.join(tmp, 'sigint.yaml');
  writeFileSync(specFile, `runDir: ${tmp}\nhosts:\n  - name: local\n    address: 127.0.0.1\n    slots: 2\nring:\n  basePort: ${basePort}\ntrain:\n  steps: 100000\n  seqLen: 64\nmodel:\n  dModel: 16\n  layers: 1\n  heads: 2\n`);
  let child: import('node:child_process').ChildProcess | undefined;
  const run = runCli(['train', '--config', specFile, '--quiet'], { cwd: ROOT, onSpawn: (c) => (child = c) });
  await waitForWorkers(2, basePort);
  await sleep(1000);
  child!.kill('SIGINT');
  const r = await run;
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /interrupted by SIGINT/);
  assert.deepEqual(workerPids(basePort), []);
});
