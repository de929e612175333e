import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runCli } from './helpers/cli.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-cli-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

test('--help lists every command', async () => {
  const r = await runCli(['--help']);
  assert.equal(r.code, 0);
  for (const c of ['train', 'bench', 'plan', 'attn', 'doctor', 'generate']) assert.match(r.stdout, new RegExp(`\\n  ${c}\\b`));
});

test('a spec mistake is one line file:line:col, exit code 2, and nothing is started', async () => {
  const spec = path.join(tmp, 'typo.yaml');
  writeFileSync(spec, 'hosts:\n  - name: a\n    address: 127.0.0.1\n    slot: 2\n');
  const r = await runCli(['train', '--config', spec, '--run-dir', path.join(tmp, 'never')]);
  assert.equal(r.code, 2);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`^ringattn: ${spec.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4:5: hosts\\[0\\]\\.slot: unknown key "slot"`));
  assert.ok(!readdirSync(tmp).includes('never'), 'no run directory was created');
});

test('a missing spec file and a bad flag are clear errors', async () => {
  const r = await runCli(['doctor', '--config', path.join(tmp, 'nope.yaml')]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /nope\.yaml: cannot read the cluster spec/);
  const r2 = await runCli(['attn', '--q', 'a.npy']);
  assert.equal(r2.code, 2);
  assert.match(r2.stderr, /required option/);
  const r3 = await runCli(['train', '--resume']);
  assert.equal(r3.code, 2);
  assert.match(r3.stderr, /^ringattn: --resume needs --run-dir/);
});

test('doctor measures a ring of 2 and calibrates plan\'s this-machine device', async () => {
  const machineFile = path.join(tmp, 'machine.json');
  const env = { RINGATTN_MACHINE_FILE: machineFile };
  const r = await runCli(['doctor', '--workers', '2', '--json'], { env, timeoutMs: 180000 });
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout.slice(0, r.stdout.lastIndexOf('}') + 1));
  assert.deepEqual(report.ranks.map((x: { rank: number }) => x.rank), [0, 1]);
  for (const x of report.ranks) {
    assert.equal(x.node, process.version);
    assert.ok(x.backends.some((b: { name: string; available: boolean }) => b.name === 'wasm' && b.available));
    assert.ok(x.backends.some((b: { name: string; available: boolean; reason?: string }) => b.name === 'tensorflow-gpu' && (b.available || b.reason)));
    assert.ok(x.kernelGflops > 0);
  }
  assert.deepEqual(report.hops.map((h: { bytes: number }) => h.bytes / 2 ** 20), [1, 4, 16, 64]);
  assert.ok(report.hops.every((h: { gbps: number }) => h.gbps > 0));
  assert.ok(report.allReduce.busGBps > 0);
  assert.match(r.stdout, /PASS: the ring of 2 works/);
  const plan = await runCli(['plan', '--seq-len', '64K', '--device', 'this-machine', '--hidden', '256', '--layers', '2', '--hosts', '2', '--json'], { env });
  assert.equal(plan.code, 0, plan.stderr);
  assert.ok(JSON.parse(plan.stdout).device.tflops > 0);
});

test('--backend names an unusable backend in one line', async () => {
  const r = await runCli(['doctor', '--workers', '1', '--backend', 'tpu']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /^ringattn: --backend tpu: backend: /);
});
