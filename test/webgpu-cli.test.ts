import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { listAdaptersQuietly } from '../src/engine/webgpu/device.js';
import { readNpy, writeNpy } from '../src/tensor/npy.js';
import { assertClose, fullAttentionReference, makeProblem } from './helpers/attention.js';
import { ROOT, runCli, workerPids } from './helpers/cli.js';

// The ring commands with --backend webgpu, end to end, on this machine's (software) adapter.

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-webgpu-cli-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));
const file = (n: string) => path.join(tmp, n);
const CI_SPEC = path.join(ROOT, 'configs', 'ci.yaml');
// No Vulkan driver at all, whatever this machine has.
const NO_DRIVER = { VK_ICD_FILENAMES: file('no-such-icd.json'), VK_DRIVER_FILES: file('no-such-icd.json') };
let skip: string | false = false;

before(async () => {
  const adapters = await listAdaptersQuietly();
  if (!adapters || adapters.length === 0) {
    skip = 'no WebGPU adapter on this machine (install mesa-vulkan-drivers 25 from bookworm-backports: .ci/setup-system.sh)';
    console.log(`# webgpu CLI tests skipped: ${skip}`);
  }
});

test('ringattn attn --backend webgpu on 3 workers equals full attention within 1e-4', async (t) => {
  if (skip) return t.skip(skip);
  const [S, H, G, D] = [60, 4, 2, 16];
  const p = makeProblem({ seqLen: S, heads: H, kvHeads: G, headDim: D, seed: 21 });
  writeNpy(file('q.npy'), p.q, [S, H, D]);
  writeNpy(file('k.npy'), p.k, [S, G, D]);
  writeNpy(file('v.npy'), p.v, [S, G, D]);
  writeNpy(file('dout.npy'), p.dO, [S, H, D]);
  const out = file('attn-out');
  const r = await runCli(['attn', '--backend', 'webgpu', '--q', file('q.npy'), '--k', file('k.npy'), '--v', file('v.npy'), '--dout', file('dout.npy'), '--workers', '3', '--causal', '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  const ref = fullAttentionReference({ ...p, seqLen: S, causal: true, seg: undefined, dO: p.dO });
  const read = (n: string) => readNpy(path.join(out, n)).data as Float32Array;
  assertClose(read('out.npy'), ref.o, 'out', 1e-4);
  assertClose(read('lse.npy'), ref.lse, 'lse', 1e-4);
  assertClose(read('dq.npy'), ref.dq!, 'dq', 1e-4);
  assertClose(read('dk.npy'), ref.dk!, 'dk', 1e-4);
  assertClose(read('dv.npy'), ref.dv!, 'dv', 1e-4);
});

test('ringattn train --backend webgpu: a 2-worker run on the GPU engine, step losses equal the native engine run', async (t) => {
  if (skip) return t.skip(skip);
  const gpu = file('train-webgpu');
  const cpu = file('train-native');
  const r = await runCli(['train', '--config', CI_SPEC, '--backend', 'webgpu', '--run-dir', gpu], { timeoutMs: 300000 });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /\[rank 1 local\] INFO compute: engine webgpu .*\(requested\); attention on the webgpu engine/);
  assert.doesNotMatch(r.stderr, /artificially reduced/, "Dawn's lavapipe notices stay in the rank logs");
  const c = await runCli(['train', '--config', CI_SPEC, '--run-dir', cpu, '--quiet'], { timeoutMs: 300000 });
  assert.equal(c.code, 0, c.stderr);
  const losses = (dir: string) => readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss as number);
  const a = losses(gpu);
  const b = losses(cpu);
  assert.equal(a.length, 4);
  a.forEach((x, i) => assert.ok(Math.abs(x - b[i]) <= 1e-4 * Math.abs(b[i]), `step ${i + 1}: webgpu ${x}, native ${b[i]}`));
  assert.deepEqual(workerPids(29500), []);
});

test('backend auto passes over a software adapter and says so; --backend webgpu without an adapter is one line, exit 2, nothing left behind', async (t) => {
  if (skip) return t.skip(skip);
  const auto = await runCli(['train', '--config', CI_SPEC, '--run-dir', file('train-auto')], { timeoutMs: 300000 });
  assert.equal(auto.code, 0, auto.stderr);
  assert.match(auto.stderr, /INFO compute: engine native .*webgpu skipped: only a software adapter is here \(/);
  const runDir = file('train-no-driver');
  const r = await runCli(['train', '--config', CI_SPEC, '--backend', 'webgpu', '--run-dir', runDir], { env: NO_DRIVER });
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split('\n').filter((l) => !l.startsWith('ringattn train: '));
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^ringattn: hosts\[0\] \(local\) slot 0: backend webgpu: no WebGPU adapter found \(looked for any WebGPU adapter\); install a Vulkan driver/);
  assert.ok(!existsSync(runDir), 'no run directory');
  // A gpus entry naming an adapter that is not there.
  const spec = file('bad-gpus.yaml');
  writeFileSync(spec, 'hosts:\n  - name: box\n    address: 127.0.0.1\n    slots: 2\n    gpus: [0, 7]\nmodel: {dModel: 32, layers: 1, heads: 2}\ntrain: {steps: 1, seqLen: 64}\n');
  const bad = await runCli(['train', '--config', spec, '--backend', 'webgpu', '--run-dir', file('bad-gpus')]);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /ringattn: hosts\[0\] \(box\) slot 1: backend webgpu: WebGPU adapter 7 not found \(adapters here: 0: /);
});

test('ringattn doctor --backend webgpu lists the adapter with its limits and measured rates', async (t) => {
  if (skip) return t.skip(skip);
  // Doctor re-tunes and rewrites plan's machine file and the tuning file beside it: the test's own, not the user's.
  const r = await runCli(['doctor', '--workers', '2', '--backend', 'webgpu'], { timeoutMs: 300000, env: { RINGATTN_MACHINE_FILE: file('machine.json') } });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /webgpu adapter 0: .+ \(vulkan, (software: correctness only|hardware)\): matmul \d+\.\d GFLOP\/s, attention \d+\.\d GFLOP\/s forward, max buffer \d+ MiB, binding \d+ MiB, workgroup memory \d+ KiB/);
  assert.match(r.stdout, /PASS: the ring of 2 works/);
});
