import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { readNpy, writeNpy } from '../src/tensor/npy.js';
import { assertClose, fullAttentionReference, makeProblem } from './helpers/attention.js';
import { runCli, workerPids } from './helpers/cli.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-attn-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

const S = 60;
const H = 4;
const G = 2;
const D = 8;
const p = makeProblem({ seqLen: S, heads: H, kvHeads: G, headDim: D, seed: 11, docs: 3 });
const file = (n: string) => path.join(tmp, n);
writeNpy(file('q.npy'), p.q, [S, H, D]);
writeNpy(file('k.npy'), p.k, [S, G, D]);
writeNpy(file('v.npy'), p.v, [S, G, D]);
writeNpy(file('dout.npy'), p.dO, [S, H, D]);
writeNpy(file('seg.npy'), p.seg!, [S]);

for (const [layout, causal, segments] of [['zigzag', true, false], ['striped', false, true]] as const) {
  test(`ringattn attn on 3 workers (${layout}, causal=${causal}, packed=${segments}) equals full attention`, async () => {
    const out = file(`out-${layout}`);
    const args = ['attn', '--q', file('q.npy'), '--k', file('k.npy'), '--v', file('v.npy'), '--dout', file('dout.npy'), '--workers', '3', '--layout', layout, '--out', out];
    if (causal) args.push('--causal');
    if (segments) args.push('--segments', file('seg.npy'));
    const r = await runCli(args);
    assert.equal(r.code, 0, r.stderr);
    const ref = fullAttentionReference({ ...p, seqLen: S, causal, seg: segments ? p.seg : undefined, dO: p.dO });
    const read = (n: string) => readNpy(path.join(out, n));
    assert.deepEqual(read('out.npy').shape, [S, H, D]);
    assert.deepEqual(read('lse.npy').shape, [H, S]);
    assert.deepEqual(read('dk.npy').shape, [S, G, D]);
    assertClose(read('out.npy').data as Float32Array, ref.o, 'out');
    assertClose(read('lse.npy').data as Float32Array, ref.lse, 'lse');
    assertClose(read('dq.npy').data as Float32Array, ref.dq!, 'dq');
    assertClose(read('dk.npy').data as Float32Array, ref.dk!, 'dk');
    assertClose(read('dv.npy').data as Float32Array, ref.dv!, 'dv');
  });
}

test('ringattn attn --window: sliding-window attention on 4 workers (contiguous by default) equals the windowed reference; a bad window is refused', async () => {
  for (const [window, causal] of [['7', true], ['2K', false]] as const) {
    const out = file(`out-window-${window}`);
    const args = ['attn', '--q', file('q.npy'), '--k', file('k.npy'), '--v', file('v.npy'), '--dout', file('dout.npy'), '--workers', '4', '--window', window, '--out', out];
    if (causal) args.push('--causal');
    const r = await runCli(args);
    assert.equal(r.code, 0, r.stderr);
    const ref = fullAttentionReference({ ...p, seqLen: S, causal, window: window === '2K' ? 2048 : 7, seg: undefined, dO: p.dO });
    const read = (n: string) => readNpy(path.join(out, n)).data as Float32Array;
    for (const [name, want] of [['out.npy', ref.o], ['dq.npy', ref.dq!], ['dk.npy', ref.dk!], ['dv.npy', ref.dv!]] as const) assertClose(read(name), want, `W ${window} ${name}`);
  }
  const bad = await runCli(['attn', '--q', file('q.npy'), '--k', file('k.npy'), '--v', file('v.npy'), '--workers', '2', '--window', '0', '--out', file('bad-window')]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^ringattn: --window 0: attention\.window: /);
  assert.ok(!existsSync(file('bad-window')));
});

test('ringattn attn --wire bfloat16 rounds only K and V on the wire: close to full attention, not equal; --wire bogus is refused', async () => {
  const out = file('out-bf16');
  const r = await runCli(['attn', '--q', file('q.npy'), '--k', file('k.npy'), '--v', file('v.npy'), '--workers', '3', '--causal', '--wire', 'bfloat16', '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  const ref = fullAttentionReference({ ...p, seqLen: S, causal: true, seg: undefined });
  const o = readNpy(path.join(out, 'out.npy')).data as Float32Array;
  assertClose(o, ref.o, 'out over a bf16 wire', 2e-2);
  assert.ok(o.some((x, i) => Math.abs(x - ref.o[i]) > 1e-4), 'the wire rounded something');
  const bad = await runCli(['attn', '--q', file('q.npy'), '--k', file('k.npy'), '--v', file('v.npy'), '--workers', '2', '--wire', 'int8', '--out', file('bad-wire')]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^ringattn: --wire int8: ring\.wire: /);
});

test('bad inputs get one clear line, exit 2, and no output files', async () => {
  writeFileSync(file('trunc.npy'), truncatedNpy());
  const cases: Array<[string[], RegExp]> = [
    [['--v', file('q.npy')], /q\.npy: shape \[60,4,8\] differs from k's \[60,2,8\]/],
    [['--q', file('trunc.npy')], /trunc\.npy: .*(truncated|expected)/],
    [['--workers', '7'], /sequence length 60 cannot be split by the zigzag layout over 7 rank\(s\)/],
  ];
  for (const [override, re] of cases) {
    const out = file('bad-out');
    const base: Record<string, string> = { '--q': file('q.npy'), '--k': file('k.npy'), '--v': file('v.npy'), '--workers': '2' };
    for (let i = 0; i < override.length; i += 2) base[override[i]] = override[i + 1];
    const r = await runCli(['attn', ...Object.entries(base).flat(), '--causal', '--out', out]);
    assert.equal(r.code, 2, `${override.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, re);
    assert.ok(!existsSync(out) || readdirSync(out).length === 0, 'no partial outputs');
  }
  assert.deepEqual(workerPids(29500), []); // --workers rings use the default spec's base port
});

/** A valid float32 [60,4,8] .npy cut short by 100 bytes. */
function truncatedNpy(): Uint8Array {
  const full = path.join(tmp, 'full.npy');
  writeNpy(full, new Float32Array(S * H * D), [S, H, D]);
  const bytes = readFileSync(full);
  return bytes.subarray(0, bytes.length - 100);
}
