import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runCli, workerPids, ROOT } from './helpers/cli.js';

/** The CI smoke run: `ringattn train` with configs/ci.yaml, end to end on a localhost ring. */

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-train-cli-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));
const CI_SPEC = path.join(ROOT, 'configs', 'ci.yaml');

test('ringattn train --config configs/ci.yaml writes every run-directory artifact', async () => {
  const runDir = path.join(tmp, 'run');
  const r = await runCli(['train', '--config', CI_SPEC, '--run-dir', runDir], { timeoutMs: 300000 });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^trained 4 steps, final loss \d+\.\d+ \(eval \d+\.\d+\); run directory /);
  assert.match(r.stderr, /\[rank 1 local\] INFO compute: engine (native \w+, 1 thread|tfjs)/);
  assert.match(r.stderr, /step 4\/4 \| loss/);
  const files = readdirSync(runDir).sort();
  for (const f of ['spec.json', 'metrics.jsonl', 'loss.svg', 'latest', 'ckpt-2', 'ckpt-4', 'logs']) assert.ok(files.includes(f), `${f} in ${files}`);
  const metrics = readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(metrics.map((m) => m.step), [1, 2, 3, 4]);
  for (const key of ['loss', 'lr', 'gradNorm', 'tokensPerSec', 'stepMs', 'computeMs', 'commMs', 'waitMs']) assert.equal(typeof metrics[0][key], 'number', key);
  assert.equal(typeof metrics[1].evalLoss, 'number');
  assert.match(readFileSync(path.join(runDir, 'loss.svg'), 'utf8'), /^<svg[\s\S]*<\/svg>\s*$/);
  assert.deepEqual(readdirSync(path.join(runDir, 'logs')).sort(), ['rank-0.log', 'rank-1.log']);
  // Every rank's own timings of every step, whose four parts add up to its step time.
  const ranks = readFileSync(path.join(runDir, 'ranks.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(ranks.map((x) => `${x.step}/${x.rank}`).sort(), ['1/0', '1/1', '2/0', '2/1', '3/0', '3/1', '4/0', '4/1']);
  for (const x of ranks) {
    const parts = x.attentionMs + x.otherComputeMs + x.ringWaitMs + x.allReduceMs;
    assert.ok(Math.abs(parts - x.stepMs) < 1e-6 * x.stepMs + 1e-9, `step ${x.step} rank ${x.rank}: parts ${parts} vs step ${x.stepMs}`);
    assert.ok(x.attentionMs > 0 && x.rssBytes > 2 ** 20, JSON.stringify(x));
  }
  assert.deepEqual(
    ranks.filter((x) => x.rank === 0).map((x) => x.stepMs),
    metrics.map((m) => m.stepMs),
    "rank 0's records are its metrics.jsonl step times",
  );
  // The launcher's last word on the ring: finished, every rank done, its last heartbeat and what it ran on.
  const ring = JSON.parse(readFileSync(path.join(runDir, 'ring.json'), 'utf8'));
  assert.equal(ring.state, 'finished');
  assert.equal(ring.job, 'train');
  assert.deepEqual(ring.ranks.map((x: { rank: number; state: string }) => [x.rank, x.state]), [[0, 'done'], [1, 'done']]);
  for (const x of ring.ranks) {
    assert.ok(Date.parse(x.lastHeartbeat) >= Date.parse(ring.started) && Date.parse(x.lastHeartbeat) <= Date.parse(ring.updated), JSON.stringify(x));
    assert.equal(x.info.threads, 1);
    assert.equal(typeof x.info.engine, 'string');
  }
  assert.equal(statSync(runDir).mode & 0o077, 0, 'run directory is owner-only');
  assert.deepEqual(workerPids(29500), []);
});

test('ringattn train --window trains with sliding-window attention: the loss falls, and the spec records the window and the contiguous layout it chose', async () => {
  const runDir = path.join(tmp, 'window');
  const r = await runCli(['train', '--config', CI_SPEC, '--run-dir', runDir, '--window', '16', '--quiet']);
  assert.equal(r.code, 0, r.stderr);
  const spec = JSON.parse(readFileSync(path.join(runDir, 'spec.json'), 'utf8'));
  assert.equal(spec.attention.window, 16);
  const losses = readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss as number);
  assert.ok(losses.every(Number.isFinite) && losses.at(-1)! < losses[0], `losses ${losses.join(', ')}`);
  const log = readFileSync(path.join(runDir, 'logs', 'rank-0.log'), 'utf8');
  assert.match(log, /contiguous layout/);
});

test('a run resumed from its checkpoint gives the same losses as an uninterrupted one', async () => {
  // Uninterrupted: 4 steps. Interrupted: the same run cut after its step-2 checkpoint, then --resume.
  const full = path.join(tmp, 'full');
  assert.equal((await runCli(['train', '--config', CI_SPEC, '--run-dir', full, '--quiet'])).code, 0);
  const cut = path.join(tmp, 'cut');
  assert.equal((await runCli(['train', '--config', CI_SPEC, '--run-dir', cut, '--quiet'])).code, 0);
  for (const f of ['ckpt-4']) rmSync(path.join(cut, f), { recursive: true });
  const r = await runCli(['train', '--config', CI_SPEC, '--run-dir', cut, '--resume', '--quiet']);
  assert.equal(r.code, 0, r.stderr);
  const losses = (dir: string) => readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss as number);
  const a = losses(full);
  const b = losses(cut);
  assert.equal(b.length, 4);
  // The resumed attempt's per-rank records replace the first attempt's steps 3 and 4: each step and rank once.
  const ranks = readFileSync(path.join(cut, 'ranks.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(ranks.map((x) => `${x.step}/${x.rank}`).sort(), ['1/0', '1/1', '2/0', '2/1', '3/0', '3/1', '4/0', '4/1']);
  a.forEach((x, i) => assert.ok(Math.abs(x - b[i]) <= 1e-6 * Math.abs(x), `step ${i + 1}: ${x} vs ${b[i]}`));
});

test('ringattn generate samples from a checkpoint, deterministically for a seed, the same on a ring as in one process', async () => {
  const runDir = path.join(tmp, 'run');
  const args = ['generate', '--checkpoint', runDir, '--prompt', 'const ', '--max-tokens', '40', '--seed', '3'];
  const a = await runCli(args);
  assert.equal(a.code, 0, a.stderr);
  assert.ok(a.stdout.startsWith('const '), a.stdout);
  assert.ok(Buffer.byteLength(a.stdout) >= 'const '.length + 30);
  assert.match(a.stderr, /generate \(1 process\): prefill 4 tokens in \d+ ms \([\d.]+ tokens\/s\); time to first token \d+ ms; decode 41 tokens at [\d.]+ tokens\/s/);
  const b = await runCli(args);
  assert.equal(a.stdout, b.stdout);
  // Greedy, so the tokens cannot hinge on a draw landing within float rounding of a boundary.
  const greedy = ['generate', '--checkpoint', runDir, '--prompt-file', CI_SPEC, '--max-tokens', '12', '--temperature', '0'];
  const one = await runCli(greedy);
  const ring = await runCli([...greedy, '--workers', '2']);
  assert.equal(one.code, 0, one.stderr);
  assert.equal(ring.code, 0, ring.stderr);
  assert.equal(ring.stdout, one.stdout);
  assert.match(ring.stderr, /warning: the prompt is \d+ tokens, longer than the \d+ the model was trained on/);
  assert.match(ring.stderr, /generate \(2 workers\): prefill \d+ tokens/);
  for (const [flags, why] of [
    [['--checkpoint', path.join(tmp, 'nothing-here'), '--prompt', 'x'], /^ringattn: checkpoint path .*nothing-here does not exist/],
    [['--checkpoint', runDir, '--prompt', ''], /^ringattn: --prompt: the prompt is empty\n$/],
    [['--checkpoint', runDir], /^ringattn: give the text to continue: --prompt TEXT or --prompt-file FILE\n$/],
    [['--checkpoint', runDir, '--prompt', 'x', '--top-p', '1.5'], /^ringattn: --top-p: expected a number in \(0, 1\], got "1\.5"\n$/],
    [['--checkpoint', runDir, '--prompt-file', path.join(tmp, 'absent.txt')], /^ringattn: --prompt-file: .*absent\.txt does not exist\n$/],
  ] as const) {
    const bad = await runCli(['generate', ...flags]);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, why);
  }
  assert.ok(!existsSync(path.join(tmp, 'nothing-here')));
});

test('an engine that cannot load: auto falls back with one line saying why; asked for explicitly, exit 2 naming it', async () => {
  // RINGATTN_NATIVE_ISA names an instruction set no CPU has, so the native engine cannot start.
  const env = { RINGATTN_NATIVE_ISA: 'sse9' };
  const auto = await runCli(['train', '--config', CI_SPEC, '--run-dir', path.join(tmp, 'fallback')], { env });
  assert.equal(auto.code, 0, auto.stderr);
  assert.match(auto.stderr, /\[rank 0 local\] INFO compute: engine tfjs \w+ \((webgpu skipped: [^;]+; )?(tensorflow-gpu skipped: [^;]+; )?native engine skipped: .*instruction set 'sse9' is not usable/);
  const spec = path.join(tmp, 'native.yaml');
  writeFileSync(spec, readFileSync(CI_SPEC, 'utf8').replace(/^model:/m, 'engine: native\nmodel:'));
  const asked = await runCli(['train', '--config', spec, '--run-dir', path.join(tmp, 'asked')], { env });
  assert.equal(asked.code, 2, asked.stderr);
  assert.match(asked.stderr, /^ringattn: job train failed: rank \d \(local\) native engine unavailable: .*instruction set 'sse9' is not usable/m);
  assert.deepEqual(workerPids(29500), []);
});

test('ringattn eval on the ring reproduces the training run\'s last held-out accuracy, by depth, and --set changes the run', async () => {
  const spec = path.join(tmp, 'passkey.yaml');
  writeFileSync(
    spec,
    [
      'name: passkey-ci',
      'hosts: [{ name: local, address: 127.0.0.1, slots: 2 }]',
      'model: { vocabSize: 32, dModel: 16, layers: 1, heads: 2, ffnHidden: 32 }',
      'train: { steps: 4, seqLen: 64, warmupSteps: 1, checkpointEvery: 0, evalEvery: 4, evalBatches: 6 }',
      'data: { kind: passkey, passkey: { valueTokens: 2 } }',
    ].join('\n'),
  );
  const runDir = path.join(tmp, 'passkey');
  const t = await runCli(['train', '--config', spec, '--run-dir', runDir, '--quiet', '--set', 'train.lr=0.01']);
  assert.equal(t.code, 0, t.stderr);
  assert.equal(JSON.parse(readFileSync(path.join(runDir, 'spec.json'), 'utf8')).train.lr, 0.01, '--set reached the run');
  const last = readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).pop();
  assert.equal(typeof last.evalAccuracy, 'number');
  assert.equal(last.peakRssByRank.length, 2);

  const e = await runCli(['eval', '--checkpoint', runDir, '--samples', '6', '--buckets', '4', '--json']);
  assert.equal(e.code, 0, e.stderr);
  const r = JSON.parse(e.stdout);
  assert.equal(r.task, 'passkey');
  assert.equal(r.workers, 2);
  assert.equal(r.accuracy, last.evalAccuracy, 'the same windows and parameters give the same accuracy');
  // This bound has failed twice in full-suite runs (never alone): the training's eval came out 3e-5 off the eval
  // command's. Say what each rank of the training computed with, for whoever sees it next.
  const computeLines = () => [0, 1].map((k) => readFileSync(path.join(runDir, 'logs', `rank-${k}.log`), 'utf8').split('\n').find((l) => l.includes('compute: engine')) ?? '').join('\n');
  assert.ok(Math.abs(r.loss - last.evalLoss) <= 1e-6 * last.evalLoss, `${r.loss} vs ${last.evalLoss}\ntraining ranks:\n${computeLines()}\neval stderr:\n${e.stderr}`);
  assert.equal(r.byDepth.length, 4);
  assert.equal(r.byDepth.reduce((n: number, b: { samples: number }) => n + b.samples, 0), 6);

  const one = JSON.parse((await runCli(['eval', '--checkpoint', runDir, '--samples', '6', '--workers', '1', '--json'])).stdout);
  assert.equal(one.workers, 1);
  assert.ok(Math.abs(one.loss - r.loss) <= 1e-5 * r.loss, `a ring of 1 gives the same loss: ${one.loss} vs ${r.loss}`);

  const bad = await runCli(['eval', '--checkpoint', runDir, '--set', 'model.dModel=32']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^ringattn: .* holds \d+ parameters, the model of the spec \d+/);
  const task = await runCli(['eval', '--checkpoint', runDir, '--task', 'poetry']);
  assert.equal(task.code, 2);
  assert.match(task.stderr, /^ringattn: --task: expected one of text, copy, recall, passkey, got "poetry"/);
  const set = await runCli(['train', '--config', spec, '--set', 'attention.scope=far']);
  assert.equal(set.code, 2);
  assert.match(set.stderr, /^ringattn: --set attention\.scope=far: attention\.scope: /);
});
