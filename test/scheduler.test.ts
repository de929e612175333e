import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CLI, ROOT } from './helpers/cli.js';
import { freePortRange } from './helpers/ports.js';

/** Scheduler mode: every rank started from outside, as Slurm or mpirun would, with rank and size in the environment. */

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-sched-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

function startRank(specFile: string, env: Record<string, string>, job = 'ringcheck') {
  const child = spawn(process.execPath, [CLI, 'worker', '--config', specFile, '--job', job, '--run-dir', path.join(tmp, 'run')], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  return new Promise<{ code: number | null; out: string }>((resolve) => child.on('exit', (code) => resolve({ code, out })));
}

test('three ranks started by a scheduler (SLURM_PROCID/SLURM_NTASKS) form the ring and finish', async () => {
  const basePort = await freePortRange(4);
  const specFile = path.join(tmp, 'three.yaml');
  writeFileSync(specFile, `hosts:\n  - name: node\n    address: 127.0.0.1\n    slots: 3\nring:\n  basePort: ${basePort}\n`);
  const results = await Promise.all([0, 1, 2].map((r) => startRank(specFile, { SLURM_PROCID: String(r), SLURM_NTASKS: '3' })));
  results.forEach((r, rank) => {
    assert.equal(r.code, 0, `rank ${rank}: ${r.out}`);
    assert.match(r.out, /ring check round passed/);
  });
});

test('a world size that disagrees with the spec is refused in one line', async () => {
  const specFile = path.join(tmp, 'two.yaml');
  writeFileSync(specFile, 'hosts:\n  - name: node\n    address: 127.0.0.1\n    slots: 2\n');
  const r = await startRank(specFile, { RINGATTN_RANK: '0', RINGATTN_WORLD_SIZE: '3' });
  assert.equal(r.code, 2);
  assert.match(r.out.trim(), /^ringattn: RINGATTN_WORLD_SIZE=3, but .*two\.yaml describes 2 worker slot\(s\)$/);
});
