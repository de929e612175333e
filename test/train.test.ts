import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LAYOUTS, shardPositions } from '../src/attention/layout.js';
import { specFromObject, type ClusterSpec } from '../src/config/index.js';
import { UserError } from '../src/errors.js';
import type { Params } from '../src/model/types.js';
import { selectBackend } from '../src/tensor/backend.js';
import { renderLossChart, writeLossChart, niceTicks } from '../src/train/chart.js';
import { latestCheckpoint, listCheckpoints, loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';
import { DEFAULT_CORPUS_MAX_BYTES, globFiles, loadCorpus, resolveDataPaths } from '../src/train/corpus.js';
import { copyWindow, countTargets, createDataSource, recallAlphabet, recallWindow, shardOf, windowRng } from '../src/train/data.js';
import { train } from '../src/train/loop.js';
import { metricsLog, readMetrics, type StepMetrics } from '../src/train/metrics.js';
import { adamwUpdate, clipScale, isDecayed } from '../src/train/optimizer.js';
import { testEngine } from './helpers/engine.js';
import { Progress } from '../src/train/progress.js';
import { learningRate } from '../src/train/schedule.js';
import { localRing, localRings } from './helpers/train-local.js';

const tmpRoot = mkdtempSync(join(tmpdir(), 'ringattn-train-'));
after(() => rmSync(tmpRoot, { recursive: true, force: true }));
let tmpCount = 0;
function tmp(name: string): string {
  const d = join(tmpRoot, `${tmpCount++}-${name}`);
  mkdirSync(d, { recursive: true });
  return d;
}

function close(a: number, b: number, tol: number, msg?: string): void {
  assert.ok(Math.abs(a - b) <= tol, `${msg ?? ''} ${a} vs ${b} (tol ${tol})`);
}

describe('AdamW', () => {
  // Two tensors: a 2x1 matrix (decayed) and a 1-D gain of 2 (not decayed).
  const specs = [
    { name: 'w', shape: [2, 1], offset: 0, size: 2 },
    { name: 'norm', shape: [2], offset: 2, size: 2 },
  ];
  const hp = { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };

  /** Runs AdamW updates on the test engine; returns params, m, v after each. */
  async function run(p0: number[], grads: number[][], gradScale = 1) {
    const e = testEngine();
    const b = { params: e.floats(4), grads: e.floats(4), m: e.floats(4), v: e.floats(4) };
    e.write(b.params, Float32Array.from(p0));
    const out: { p: Float32Array; m: Float32Array; v: Float32Array }[] = [];
    for (let t = 0; t < grads.length; t++) {
      e.write(b.grads, Float32Array.from(grads[t]));
      adamwUpdate(e, specs, b, t + 1, hp, gradScale);
      out.push({ p: Float32Array.from(await e.read(b.params)), m: Float32Array.from(await e.read(b.m)), v: Float32Array.from(await e.read(b.v)) });
    }
    e.dispose();
    return out;
  }

  it('decays only tensors with two or more dimensions', () => {
    assert.deepEqual(specs.map(isDecayed), [true, false]);
  });

  it('matches two hand-computed steps', async () => {
    const g1 = [0.5, -0.25, 2, 0];
    const g2 = [-1, 0.5, 1, 4];
    const [s1, s2] = await run([1, -2, 0.5, 3], [g1, g2]);
    // Step 1: m = 0.1 g, v = 0.001 g^2; bias correction makes m^ = g, v^ = g^2,
    // so the update is lr * g / (|g| + eps), plus decay p * lr * wd on matrices.
    const p1 = [1 * (1 - 0.01) - (0.1 * 0.5) / (0.5 + 1e-8), -2 * (1 - 0.01) + (0.1 * 0.25) / (0.25 + 1e-8), 0.5 - (0.1 * 2) / (2 + 1e-8), 3];
    p1.forEach((x, i) => close(s1.p[i], x, 1e-6, `step 1, element ${i}`));
    const decayed = [true, true, false, false];
    for (let i = 0; i < 4; i++) {
      const m = 0.9 * (0.1 * g1[i]) + 0.1 * g2[i];
      const v = 0.999 * (0.001 * g1[i] * g1[i]) + 0.001 * g2[i] * g2[i];
      const mh = m / (1 - 0.81);
      const vh = v / (1 - 0.998001);
      let want = p1[i];
      if (decayed[i]) want -= 0.1 * 0.1 * p1[i];
      want -= (0.1 * mh) / (Math.sqrt(vh) + 1e-8);
      close(s2.p[i], want, 1e-6, `step 2, element ${i}`);
      close(s2.m[i], m, 1e-7);
      close(s2.v[i], v, 1e-7);
    }
  });

  it('is deterministic, and a gradient scale is the same as scaled gradients', async () => {
    const g = [[0.3, -1.5, 2, 0.25], [1, 1, -1, 0.5]];
    assert.deepEqual(await run([1, 2, 3, 4], g), await run([1, 2, 3, 4], g));
    const scaled = g.map((row) => row.map((x) => Math.fround(x * 0.5)));
    assert.deepEqual(await run([1, 2, 3, 4], g, 0.5), await run([1, 2, 3, 4], scaled));
  });
});

describe('gradient clipping', () => {
  it('scales down to maxNorm, never up; maxNorm 0 turns it off', () => {
    assert.equal(clipScale(5, 1), 0.2);
    assert.equal(clipScale(5, 10), 1);
    assert.equal(clipScale(5, 0), 1);
    assert.equal(clipScale(NaN, 1), 1);
  });
});

describe('learning-rate schedule', () => {
  const s = { steps: 13, lr: 1, minLr: 0.1, warmupSteps: 4 };
  it('warms up linearly, then decays by a cosine to minLr at the last step', () => {
    assert.equal(learningRate(0, s), 0.25);
    assert.equal(learningRate(1, s), 0.5);
    assert.equal(learningRate(3, s), 1);
    assert.equal(learningRate(4, s), 1);
    close(learningRate(8, s), 0.55, 1e-12); // half way through the decay
    close(learningRate(6, s), 0.1 + 0.45 * (1 + Math.cos(Math.PI / 4)), 1e-12);
    close(learningRate(12, s), 0.1, 1e-12);
    close(learningRate(50, s), 0.1, 1e-12);
    for (let i = 4; i < 12; i++) assert.ok(learningRate(i + 1, s) <= learningRate(i, s));
  });
  it('without warm-up starts at lr', () => {
    assert.equal(learningRate(0, { ...s, warmupSteps: 0 }), 1);
  });
});

describe('corpus', () => {
  let dir: string;
  before(() => {
    dir = tmp('corpus');
    mkdirSync(join(dir, 'a/b/c'), { recursive: true });
    mkdirSync(join(dir, '.hidden'), { recursive: true });
    writeFileSync(join(dir, 'a/x.txt'), 'x');
    writeFileSync(join(dir, 'a/y1.txt'), 'y');
    writeFileSync(join(dir, 'a/b/y.txt'), 'yy');
    writeFileSync(join(dir, 'a/b/c/z.md'), 'zzz');
    writeFileSync(join(dir, '.hidden/q.txt'), 'q');
  });

  it('globs with *, ** and ?', () => {
    const rel = (ps: string[]) => ps.map((p) => p.slice(dir.length + 1));
    assert.deepEqual(rel(globFiles('a/**/*.txt', dir)), ['a/b/y.txt', 'a/x.txt', 'a/y1.txt']);
    assert.deepEqual(rel(globFiles('a/?.txt', dir)), ['a/x.txt']);
    assert.deepEqual(rel(globFiles('a/*', dir)), ['a/x.txt', 'a/y1.txt']);
    assert.deepEqual(rel(globFiles('**/*.md', dir)), ['a/b/c/z.md']);
    assert.deepEqual(rel(globFiles(join(dir, 'a/b/*.txt'))), ['a/b/y.txt']);
    assert.deepEqual(rel(globFiles('*/q.txt', dir)), []);
  });

  it('resolves files, directories and globs; a path matching nothing is a UserError naming it', () => {
    assert.equal(resolveDataPaths(['a/x.txt', 'a/*.txt'], dir).length, 2);
    assert.equal(resolveDataPaths(['a'], dir).length, 4);
    assert.throws(() => resolveDataPaths(['nope/*.txt'], dir), (e: unknown) => e instanceof UserError && /"nope\/\*\.txt" matches no file/.test(e.message));
    assert.throws(() => resolveDataPaths(['missing.txt'], dir), (e: unknown) => e instanceof UserError && /"missing.txt" does not exist/.test(e.message));
  });

  it('holds out the last evalFraction of the bytes', () => {
    writeFileSync(join(dir, 'big.txt'), 'abcdefghij'.repeat(10));
    const c = loadCorpus(['big.txt'], { evalFraction: 0.2, cwd: dir });
    assert.equal(c.bytes.length, 100);
    assert.equal(c.eval.length, 20);
    assert.equal(Buffer.from(c.eval).toString(), 'abcdefghij'.repeat(2));
  });

  it('has a default corpus without any download: project sources and installed packages, capped and deterministic', () => {
    const a = loadCorpus([], { evalFraction: 0.05 });
    assert.ok(a.isDefault);
    assert.ok(a.bytes.length > 1_000_000 && a.bytes.length <= DEFAULT_CORPUS_MAX_BYTES, `${a.bytes.length} bytes`);
    const paths = a.parts.map((p) => p.path);
    assert.ok(paths.includes(join('src', 'train', 'corpus.ts')), 'the project\'s own sources');
    assert.ok(paths.some((p) => p.includes(join('node_modules', 'zod'))), 'zod');
    assert.ok(paths.some((p) => p.includes(join('node_modules', '@tensorflow', 'tfjs-core'))), 'tfjs-core');
    assert.ok(!paths.some((p) => p.includes(join('node_modules', 'typescript'))), 'no dev dependency');
    const b = loadCorpus([], { evalFraction: 0.05 });
    assert.deepEqual(b.parts, a.parts);
  });
});

describe('data windows', () => {
  const text = Buffer.from('Lorem ipsum dolor sit amet, consectetur adipiscing elit. '.repeat(40));
  const corpus = { bytes: new Uint8Array(text), train: new Uint8Array(text).subarray(0, 2000), eval: new Uint8Array(text).subarray(2000), parts: [], isDefault: false };
  const seqLen = 24; // a multiple of 2N for N = 1..4
  const dataSpec = { kind: 'text' as const, paths: [], evalFraction: 0.1 };
  const src = createDataSource(dataSpec, seqLen, 256, { corpus });

  it('are deterministic in (step, batch index, split, seed) and differ across them', () => {
    const w = src.windowFor(3, 1, 'train', 7);
    assert.deepEqual(src.windowFor(3, 1, 'train', 7), w);
    const others = [src.windowFor(4, 1, 'train', 7), src.windowFor(3, 0, 'train', 7), src.windowFor(3, 1, 'train', 8)];
    for (const o of others) assert.notDeepEqual(o.tokens, w.tokens);
    assert.equal(w.tokens.length, seqLen + 1);
    for (let p = 0; p < seqLen; p++) assert.equal(w.targets[p], w.tokens[p + 1]);
  });

  it('come from their split', () => {
    const hay = Buffer.from(corpus.eval).toString('latin1');
    for (let b = 0; b < 5; b++) {
      const w = src.windowFor(0, b, 'eval', 1);
      assert.ok(hay.includes(Buffer.from(Uint8Array.from(w.tokens)).toString('latin1')));
    }
  });

  it('sharded by every layout over rings of 1 to 4, reassemble the window, targets of shard ends included', () => {
    const w = src.windowFor(0, 0, 'train', 1);
    for (const layout of LAYOUTS) {
      for (let n = 1; n <= 4; n++) {
        const tokens = new Int32Array(seqLen).fill(-9);
        const targets = new Int32Array(seqLen).fill(-9);
        for (let r = 0; r < n; r++) {
          const pos = shardPositions(layout, seqLen, n, r);
          const s = shardOf(w, pos);
          assert.deepEqual(s.positions, pos);
          pos.forEach((p, i) => {
            tokens[p] = s.tokens[i];
            targets[p] = s.targets[i];
            assert.equal(s.targets[i], w.tokens[p + 1], `${layout} N=${n} rank ${r} position ${p}`);
          });
        }
        assert.deepEqual(tokens, w.tokens.subarray(0, seqLen), `${layout} over ${n}`);
        assert.deepEqual(targets, w.targets, `${layout} over ${n}`);
      }
    }
  });

  it('refuses text too short for one window, and text with a vocabulary under 256', () => {
    assert.throws(() => createDataSource(dataSpec, 5000, 256, { corpus }), UserError);
    assert.throws(() => createDataSource(dataSpec, seqLen, 64, { corpus }), /vocabSize >= 256/);
  });

  it('copy: the second half repeats the first, and only the copied half is scored', () => {
    for (const L of [15, 16, 63]) {
      const w = copyWindow(L, 10, windowRng(5, 0, 0, 'train'));
      const h = Math.floor((L + 1) / 2);
      for (let i = h; i <= L; i++) assert.equal(w.tokens[i], w.tokens[i - h]);
      for (let p = 0; p < L; p++) {
        if (p < h) assert.equal(w.targets[p], -1);
        else assert.equal(w.targets[p], w.tokens[p + 1]);
      }
      assert.equal(countTargets(w), L - h);
      assert.ok(w.tokens.every((t) => t >= 0 && t < 10));
    }
    const src2 = createDataSource({ kind: 'copy', paths: [], evalFraction: 0 }, 32, 16);
    assert.deepEqual(src2.windowFor(2, 3, 'train', 9), src2.windowFor(2, 3, 'train', 9));
    assert.notDeepEqual(src2.windowFor(2, 3, 'train', 9), src2.windowFor(2, 3, 'eval', 9));
    assert.ok(src2.hasEval);
  });

  it('recall: distinct keys with values early, the same keys queried late, scored only at the answers', () => {
    const V = 20;
    const a = recallAlphabet(V);
    for (const L of [31, 64, 127]) {
      const w = recallWindow(L, V, windowRng(3, L, 0, 'train'));
      const n = Math.min(a.keys, Math.floor((L + 1) / 8));
      const table = new Map<number, number>();
      for (let i = 0; i < n; i++) {
        const k = w.tokens[2 * i];
        const v = w.tokens[2 * i + 1];
        assert.ok(k >= a.keyBase && k < a.keyBase + a.keys, 'a key');
        assert.ok(v >= a.valueBase && v < V, 'a value');
        assert.ok(!table.has(k), 'keys are distinct');
        table.set(k, v);
      }
      let scored = 0;
      for (let p = 0; p < L; p++) {
        if (w.targets[p] < 0) continue;
        scored++;
        assert.ok(p >= L + 1 - 2 * n, 'queries are at the end');
        assert.equal(w.targets[p], table.get(w.tokens[p]), 'the answer is the value stored with the key');
        assert.equal(w.targets[p], w.tokens[p + 1]);
      }
      assert.equal(scored, n);
      for (let p = 2 * n; p < L + 1 - 2 * n; p++) assert.equal(w.tokens[p], a.filler);
    }
  });
});

function fakeParams(n: number, seed: number): Params {
  const flat = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed));
  return {
    flat,
    specs: [
      { name: 'w', shape: [n / 2 - 1, 2], offset: 0, size: n - 2 },
      { name: 'g', shape: [2], offset: n - 2, size: 2 },
    ],
  };
}

function saveFake(dir: string, step: number, keep?: number): string {
  const params = fakeParams(64, step);
  const opt = { m: params.flat.map((x) => x * 0.5), v: params.flat.map((x) => x * x), step };
  return saveCheckpoint(dir, { step, params, opt, dataState: { step, seed: 42 }, spec: { train: { seed: 42 } }, extra: { loss: step / 10 } }, { keep });
}

describe('checkpoints', () => {
  it('round-trip parameters, optimizer state and data state; leave no .tmp; owner-only permissions', () => {
    const dir = tmp('ckpt');
    const path = saveFake(dir, 7);
    const c = loadCheckpoint(path);
    const want = fakeParams(64, 7);
    assert.deepEqual(c.params.flat, want.flat);
    assert.deepEqual(c.params.specs, want.specs);
    assert.deepEqual(c.opt.m, want.flat.map((x) => x * 0.5));
    assert.equal(c.opt.step, 7);
    assert.deepEqual(c.dataState, { step: 7, seed: 42 });
    assert.deepEqual(c.extra, { loss: 0.7 });
    assert.deepEqual(readdirSync(dir).sort(), ['ckpt-7', 'latest']);
    assert.equal(readFileSync(join(dir, 'latest'), 'utf8').trim(), 'ckpt-7');
    assert.equal(statSync(path).mode & 0o777, 0o700);
    assert.equal(statSync(join(path, 'params.bin')).mode & 0o777, 0o600);
    assert.equal(statSync(join(path, 'manifest.json')).mode & 0o777, 0o600);
  });

  it('refuse a corrupted file, a truncated file and an edited manifest, naming the file', () => {
    const dir = tmp('ckpt-bad');
    const p = saveFake(dir, 1);
    const params = join(p, 'params.bin');
    const buf = readFileSync(params);
    buf[10] ^= 0xff;
    writeFileSync(params, buf);
    assert.throws(() => loadCheckpoint(p), (e: unknown) => e instanceof UserError && e.message === `checksum mismatch in ${params}`);

    const p2 = saveFake(dir, 2);
    const m = join(p2, 'adam-m.bin');
    truncateSync(m, 100);
    assert.throws(() => loadCheckpoint(p2), (e: unknown) => e instanceof UserError && e.message.startsWith(`checksum mismatch in ${m} (truncated`));

    const p3 = saveFake(dir, 3);
    const man = join(p3, 'manifest.json');
    writeFileSync(man, readFileSync(man, 'utf8').replace('"step": 3', '"step": 4'));
    assert.throws(() => loadCheckpoint(p3), (e: unknown) => e instanceof UserError && e.message === `checksum mismatch in ${man}`);
  });

  it('latest falls back to the previous valid checkpoint with a warning; only the last K are kept', () => {
    const dir = tmp('ckpt-latest');
    for (const s of [10, 20, 30, 40]) saveFake(dir, s, 3);
    assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [40, 30, 20]);
    assert.equal(latestCheckpoint(dir, () => assert.fail('no warning expected'))?.step, 40);
    truncateSync(join(dir, 'ckpt-40', 'params.bin'), 12);
    const warnings: string[] = [];
    const c = latestCheckpoint(dir, (w) => warnings.push(w));
    assert.equal(c?.step, 30);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /ckpt-40.*checksum mismatch in .*params\.bin/);
    assert.equal(latestCheckpoint(tmp('empty')), null);
    assert.ok(!readdirSync(dir).some((n) => n.includes('.tmp')));
  });
});

describe('metrics, chart and progress', () => {
  const rec = (step: number, loss: number, evalLoss?: number): StepMetrics => ({
    step, loss, ...(evalLoss !== undefined ? { evalLoss } : {}), lr: 1e-3, gradNorm: 1, tokensPerSec: 100, stepMs: 10,
    computeMs: 8, commMs: 1, waitMs: 1, attnComputeMs: 2, allReduceMs: 1, optimizerMs: 1, tokens: 64, time: new Date(0).toISOString(),
  });

  it('metrics.jsonl appends one record per step and drops steps past a resume point', () => {
    const dir = tmp('metrics');
    const log = metricsLog(dir);
    for (let s = 1; s <= 5; s++) log.append(rec(s, 5 - s * 0.5, s % 2 === 0 ? 4 : undefined));
    assert.equal(readMetrics(log.path).length, 5);
    assert.equal(readMetrics(log.path)[1].evalLoss, 4);
    log.truncateAfter(3);
    assert.deepEqual(log.read().map((r) => r.step), [1, 2, 3]);
  });

  it('draws an SVG loss chart with both curves, ticks and labels', () => {
    const pts = Array.from({ length: 30 }, (_, i) => ({ step: i + 1, loss: 5 / (i + 1), evalLoss: i % 10 === 9 ? 5.5 / (i + 1) : undefined }));
    const svg = renderLossChart(pts, { title: 'run <1>' });
    assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assert.match(svg, /<path class="train" d="M/);
    assert.match(svg, /<path class="eval" d="M/);
    assert.match(svg, />step</);
    assert.match(svg, />loss \(nats\/token\)</);
    assert.match(svg, /run &lt;1&gt;/);
    assert.ok((svg.match(/<text /g) ?? []).length > 10, 'tick labels');
    assert.deepEqual(niceTicks(0, 30, 6).ticks, [0, 5, 10, 15, 20, 25, 30]);
    const file = join(tmp('chart'), 'loss.svg');
    writeLossChart(file, pts);
    assert.equal(readFileSync(file, 'utf8'), renderLossChart(pts));
  });

  it('progress: a bar redrawn in place on a TTY, plain lines every logEvery otherwise', () => {
    const out: string[] = [];
    let now = 0;
    const tty = new Progress({ total: 10, stream: { write: (s: string) => out.push(s), isTTY: true, columns: 120 }, now: () => now });
    now = 1000;
    tty.update({ step: 1, loss: 3.5, tokensPerSec: 1234 });
    tty.done();
    assert.match(out[0], /^\r\[###-+\] step  1\/10 \| loss 3\.5000 \| 1\.2k tok\/s \| ETA 9s\x1b\[K$/);
    assert.equal(out[1], '\n');

    const lines: string[] = [];
    const plain = new Progress({ total: 10, logEvery: 4, stream: { write: (s: string) => lines.push(s) } });
    for (let s = 1; s <= 10; s++) plain.update({ step: s, loss: 1, tokensPerSec: 10 });
    assert.deepEqual(lines.map((l) => /step +(\d+)/.exec(l)?.[1]), ['4', '8', '10']);
    assert.ok(lines.every((l) => l.endsWith('\n') && !l.includes('\r')));
  });
});

describe('training loop (single process, local exact attention)', () => {
  const model = { vocabSize: 256, dModel: 32, layers: 2, heads: 4, ffnHidden: 64, ffnChunk: 64 };
  const dims = { heads: 4, kvHeads: 4, headDim: 8 };
  let dataFile: string;
  let spec: ClusterSpec;
  const steps = 16;
  let full: { dir: string; losses: number[]; records: StepMetrics[] };

  const quiet = { log: () => {}, progress: false as const, get engine() { return testEngine(); } };
  before(async () => {
    await selectBackend('wasm');
    const d = tmp('loop-data');
    dataFile = join(d, 'text.txt');
    writeFileSync(dataFile, 'the quick brown fox jumps over the lazy dog. '.repeat(200));
    spec = specFromObject({
      hosts: [{ name: 'local', address: '127.0.0.1' }],
      model,
      train: { steps, seqLen: 32, batch: 2, lr: 1e-2, minLr: 1e-3, warmupSteps: 2, evalEvery: 8, evalBatches: 1, checkpointEvery: 5, logEvery: 4, seed: 11 },
      data: { kind: 'text', paths: [dataFile], evalFraction: 0.1 },
    });
    const dir = tmp('run-full');
    const losses: number[] = [];
    const res = await train(localRing(dims), spec, { ...quiet, runDir: dir, resume: false, onStep: (m) => losses.push(m.loss) });
    assert.equal(res.steps, steps);
    assert.equal(res.finalLoss, losses[steps - 1]);
    full = { dir, losses, records: readMetrics(join(dir, 'metrics.jsonl')) };
  });

  it('the loss falls', () => {
    const { losses } = full;
    assert.equal(losses.length, steps);
    close(losses[0], Math.log(256), 0.2, 'starts near chance');
    const tail = losses.slice(-3).reduce((a, b) => a + b, 0) / 3;
    assert.ok(tail < losses[0] - 2, `loss ${losses[0].toFixed(3)} -> ${tail.toFixed(3)}`);
  });

  it('writes the run directory: spec.json, metrics.jsonl, loss.svg, the last 3 checkpoints', () => {
    const { dir, records } = full;
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'spec.json'), 'utf8')), JSON.parse(JSON.stringify(spec)));
    assert.deepEqual(records.map((r) => r.step), Array.from({ length: steps }, (_, i) => i + 1));
    assert.deepEqual(records.filter((r) => r.evalLoss !== undefined).map((r) => r.step), [8, 16]);
    for (const r of records) {
      for (const k of ['loss', 'lr', 'gradNorm', 'tokensPerSec', 'stepMs', 'computeMs', 'commMs', 'waitMs'] as const) {
        assert.ok(Number.isFinite(r[k]), `${k} at step ${r.step}`);
      }
    }
    close(records[0].lr, 5e-3, 1e-9, 'warm-up');
    assert.match(readFileSync(join(dir, 'loss.svg'), 'utf8'), /<path class="eval"/);
    assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [16, 15, 10]);
    assert.equal(readFileSync(join(dir, 'latest'), 'utf8').trim(), 'ckpt-16');
    const last = loadCheckpoint(join(dir, 'ckpt-16'));
    assert.deepEqual(last.dataState, { step: 16, seed: 11 });
    assert.equal(last.opt.step, 16);
  });

  it('a run interrupted after a checkpoint and resumed equals the uninterrupted run', async () => {
    const dir = tmp('run-resume');
    const first: number[] = [];
    await assert.rejects(
      train(localRing(dims), spec, {
        ...quiet,
        runDir: dir,
        resume: false,
        onStep: (m) => {
          first.push(m.loss);
          if (m.step === 7) throw new Error('simulated crash');
        },
      }),
      /simulated crash/,
    );
    assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [5]);
    const second: number[] = [];
    const res = await train(localRing(dims), spec, { ...quiet, runDir: dir, resume: true, onStep: (m) => second.push(m.loss) });
    assert.equal(res.steps, steps);
    assert.equal(second.length, steps - 5);
    second.forEach((l, i) => close(l, full.losses[5 + i], 1e-6, `step ${6 + i}`));
    first.forEach((l, i) => close(l, full.losses[i], 1e-6, `step ${1 + i}`));
    const a = loadCheckpoint(join(full.dir, 'ckpt-16'));
    const b = loadCheckpoint(join(dir, 'ckpt-16'));
    assert.deepEqual(b.params.flat, a.params.flat);
    assert.deepEqual(b.opt.m, a.opt.m);
    assert.deepEqual(b.opt.v, a.opt.v);
    // The repeated steps 6 and 7 appear once.
    assert.deepEqual(readMetrics(join(dir, 'metrics.jsonl')).map((r) => r.step), Array.from({ length: steps }, (_, i) => i + 1));
  });

  it('a ring of 2 resumes from a checkpoint only rank 0 reads, and matches the one-rank run', async () => {
    const dir = tmp('run-ring2');
    cpSync(join(full.dir, 'ckpt-10'), join(dir, 'ckpt-10'), { recursive: true });
    const losses: number[][] = [[], []];
    const rings = localRings(2, dims);
    const res = await Promise.all(rings.map((r) => train(r, spec, { ...quiet, runDir: r.rank === 0 ? dir : join(dir, 'nowhere'), resume: true, onStep: (m) => losses[r.rank].push(m.loss) })));
    assert.deepEqual(res.map((r) => r.steps), [steps, steps]);
    assert.equal(losses[0].length, steps - 10);
    assert.deepEqual(losses[0], losses[1]);
    losses[0].forEach((l, i) => close(l, full.losses[10 + i], 1e-5 * full.losses[10 + i], `step ${11 + i}`));
    assert.ok(!existsSync(join(dir, 'nowhere')), 'only rank 0 writes');
    const a = loadCheckpoint(join(full.dir, 'ckpt-16')).params.flat;
    const b = loadCheckpoint(join(dir, 'ckpt-16')).params.flat;
    let maxDiff = 0;
    for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
    assert.ok(maxDiff < 1e-4, `max parameter difference ${maxDiff}`);
  });

  it('stops cleanly on request after the same step on every rank, with a checkpoint', async () => {
    const dir = tmp('run-stop');
    const ac = new AbortController();
    const res = await train(localRing(dims), { ...spec, train: { ...spec.train, evalEvery: 0 } }, {
      ...quiet,
      runDir: dir,
      resume: false,
      signal: ac.signal,
      onStep: (m) => {
        if (m.step === 2) ac.abort();
      },
    });
    assert.equal(res.steps, 3);
    assert.deepEqual(listCheckpoints(dir).map((c) => c.step), [3]);
  });

  it('scores only the copied half on the copy task', async () => {
    const copy = specFromObject({
      hosts: [{ name: 'local', address: '127.0.0.1' }],
      model: { ...model, vocabSize: 16 },
      train: { ...spec.train, steps: 2, evalEvery: 0 },
      data: { kind: 'copy' },
    });
    const seen: StepMetrics[] = [];
    await train(localRing(dims), copy, { ...quiet, runDir: tmp('run-copy'), resume: false, onStep: (m) => seen.push(m) });
    assert.deepEqual(seen.map((m) => m.tokens), [2 * (32 - 16), 2 * (32 - 16)]);
    close(seen[0].loss, Math.log(16), 0.2, 'chance on 16 symbols');
  });

  it('refuses to resume from a checkpoint of a different model', async () => {
    const dir = tmp('run-other-model');
    cpSync(join(full.dir, 'ckpt-16'), join(dir, 'ckpt-16'), { recursive: true });
    const other = { ...spec, model: { ...spec.model, ffnHidden: 48 } };
    await assert.rejects(train(localRing(dims), other, { ...quiet, runDir: dir, resume: true }), (e: unknown) => e instanceof UserError && /different model/.test(e.message));
  });
});
