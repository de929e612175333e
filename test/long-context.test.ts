import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { shardPositions } from '../src/attention/layout.js';
import { specFromObject, type ClusterSpec } from '../src/config/index.js';
import { UserError } from '../src/errors.js';
import { referenceKernel } from '../src/kernels/reference.js';
import { loadKernel } from '../src/kernels/index.js';
import type { AttentionKernel } from '../src/kernels/types.js';
import { createModel, initParams } from '../src/model/index.js';
import { randn } from '../src/tensor/random.js';
import { createTfjsEngine } from '../src/engine/tfjs.js';
import { selectBackend } from '../src/tensor/backend.js';
import { createDataSource, passkeyAlphabet, type DataSource, type Window, passkeySpan, passkeyWindow, windowRng, PASSKEY_DEFAULTS } from '../src/train/data.js';
import { depthBuckets } from '../src/jobs/eval.js';
import { trainRingOn } from '../src/train/ring.js';
import { evaluate, lengthStages, train } from '../src/train/loop.js';
import type { StepMetrics } from '../src/train/metrics.js';
import { withSetting } from '../src/cli/common.js';
import { relErr } from './helpers/attention.js';
import { testEngine } from './helpers/engine.js';
import { closeAll, openLocalRing } from './helpers/ring.js';
import { localRing } from './helpers/train-local.js';

/** What proves long context: the passkey task, attention.scope local, the length schedule, --set. */

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'ra-long-'));
  dirs.push(d);
  return d;
}

describe('passkey data', () => {
  const o = { valueTokens: 4, minDepth: 0.25, maxDepth: 0.75 };

  it('plants the key and value inside the depth range and asks for the value at the end, scoring only the answer', () => {
    const V = 64;
    const a = passkeyAlphabet(V, o.valueTokens);
    assert.equal(a.fillers + 2 + o.valueTokens * a.perValue <= V, true);
    for (const L of [64, 257, 1000]) {
      for (let i = 0; i < 20; i++) {
        const w = passkeyWindow(L, V, o, windowRng(5, i, 0, 'train'));
        assert.equal(w.tokens.length, L + 1);
        const keys = [...w.tokens.keys()].filter((p) => w.tokens[p] === a.key);
        assert.equal(keys.length, 1, 'one key');
        const p = keys[0];
        assert.ok(p >= o.minDepth * L && p + o.valueTokens < o.maxDepth * L, `key at ${p} of ${L} lies in the depth range`);
        assert.equal(w.depth, p / L);
        const q = L - o.valueTokens;
        assert.equal(w.tokens[q], a.query, 'the query marker opens the answer');
        const scored = [...w.targets.keys()].filter((i) => w.targets[i] >= 0);
        assert.deepEqual(scored, [q, q + 1, q + 2, q + 3], 'only the answer tokens are scored');
        for (let j = 0; j < o.valueTokens; j++) {
          const v = w.tokens[p + 1 + j];
          assert.ok(v >= a.valueBase + j * a.perValue && v < a.valueBase + (j + 1) * a.perValue, `answer token ${j} comes from block ${j}`);
          assert.equal(w.targets[q + j], v, 'the answer is the planted value');
          assert.equal(w.tokens[q + 1 + j], v);
        }
        for (let t = 0; t <= L; t++) {
          if (t === p || t === q || (t > p && t <= p + o.valueTokens) || t > q) continue;
          assert.ok(w.tokens[t] < a.fillers, 'everything else is filler');
        }
      }
    }
  });

  it('is a pure function of (seed, step, batch index, split)', () => {
    const src = createDataSource({ kind: 'passkey', paths: [], evalFraction: 0, passkey: o }, 512, 64);
    assert.deepEqual(src.windowFor(3, 1, 'train', 9), src.windowFor(3, 1, 'train', 9));
    assert.notDeepEqual(src.windowFor(3, 1, 'train', 9), src.windowFor(3, 1, 'eval', 9));
    assert.notDeepEqual(src.windowFor(3, 1, 'train', 9), src.windowFor(3, 1, 'train', 10));
    const depths = Array.from({ length: 200 }, (_, i) => src.windowFor(i, 0, 'train', 1).depth!);
    assert.ok(Math.min(...depths) < 0.3 && Math.max(...depths) > 0.7, 'depths cover the range');
  });

  it('rejects a vocabulary, sequence or depth range that cannot hold the task', () => {
    assert.throws(() => createDataSource({ kind: 'passkey', paths: [], evalFraction: 0, passkey: PASSKEY_DEFAULTS }, 512, 11), /vocabSize >= 12/);
    assert.throws(() => createDataSource({ kind: 'passkey', paths: [], evalFraction: 0, passkey: { ...o, minDepth: 0.5, maxDepth: 0.51 } }, 64, 64), UserError);
    assert.deepEqual(passkeySpan(100, { valueTokens: 4, minDepth: 0, maxDepth: 1 }), { first: 0, last: 91 });
    assert.throws(() => specFromObject({ hosts: [{ name: 'a', address: '127.0.0.1' }], data: { kind: 'passkey', passkey: { minDepth: 0.6, maxDepth: 0.5 } } }), /data\.passkey\.maxDepth: maxDepth 0\.5 must be larger than minDepth 0\.6/);
  });
});

describe('train.lengthSchedule', () => {
  it('stages run in order, then train.seqLen for the rest', () => {
    const t = { seqLen: 1024, batch: 1, steps: 10, lengthSchedule: [{ seqLen: 64, steps: 3, batch: 8 }, { seqLen: 256, steps: 2 }] };
    assert.deepEqual(lengthStages(t), [
      { seqLen: 64, batch: 8, untilStep: 3 },
      { seqLen: 256, batch: 1, untilStep: 5 },
      { seqLen: 1024, batch: 1, untilStep: 10 },
    ]);
  });

  it('names the stage that is too long, and refuses stages that leave no step at train.seqLen', () => {
    const spec = (train: object) => specFromObject({ hosts: [{ name: 'a', address: '127.0.0.1' }], train });
    assert.throws(() => spec({ seqLen: 256, steps: 10, lengthSchedule: [{ seqLen: 256, steps: 2 }] }), /train\.lengthSchedule\[0\]\.seqLen: stage seqLen 256 must be shorter/);
    assert.throws(() => spec({ seqLen: 256, steps: 10, lengthSchedule: [{ seqLen: 64, steps: 10 }] }), /leave none at train\.seqLen/);
  });

  it('the loop trains each stage at its length and batch, and evaluates at train.seqLen', async () => {
    await selectBackend('wasm');
    const spec = specFromObject({
      hosts: [{ name: 'a', address: '127.0.0.1' }],
      model: { vocabSize: 32, dModel: 16, layers: 1, heads: 2, ffnHidden: 32 },
      train: { steps: 5, seqLen: 128, batch: 1, warmupSteps: 1, checkpointEvery: 0, evalEvery: 5, lengthSchedule: [{ seqLen: 32, steps: 2, batch: 3 }] },
      data: { kind: 'passkey', passkey: { valueTokens: 2 } },
    });
    const seen: StepMetrics[] = [];
    await train(localRing({ heads: 2, kvHeads: 2, headDim: 8 }), spec, { engine: testEngine(), runDir: tmp(), resume: false, log: () => undefined, progress: false, onStep: (m) => seen.push(m) });
    assert.deepEqual(seen.map((m) => m.seqLen), [32, 32, 128, 128, 128]);
    assert.deepEqual(seen.map((m) => m.tokens), [6, 6, 2, 2, 2], 'scored answer tokens: batch x valueTokens');
    const last = seen[4];
    assert.ok(last.evalAccuracy !== undefined && last.evalAccuracy >= 0 && last.evalAccuracy <= 1);
    assert.ok(last.peakRssBytes > 0 && last.peakRssByRank.length === 1 && last.peakRssByRank[0] === last.peakRssBytes);
  });
});

describe('evaluation accuracy', () => {
  it("counts a target as right exactly when it is the argmax of the model's logits", async () => {
    await selectBackend('wasm');
    const V = 24;
    const cfg = specFromObject({ hosts: [{ name: 'a', address: '127.0.0.1' }], model: { vocabSize: V, dModel: 16, layers: 1, heads: 2, ffnHidden: 32 } }).model;
    const engine = testEngine();
    const n = 64;
    const model = createModel(engine, cfg, { maxTokens: n });
    engine.write(model.params, initParams(cfg, 3).flat);
    const ring = localRing({ heads: 2, kvHeads: 2, headDim: 8 });
    const positions = Int32Array.from({ length: n }, (_, i) => i);
    const attn = ring.attention(positions, n);
    // Targets built from the model's own logits: every third row its argmax, every third the runner-up, the rest unscored.
    const windows: Window[] = [];
    for (let j = 0; j < 4; j++) {
      const tokens = Int32Array.from({ length: n + 1 }, (_, i) => (i * 7 + j * 5) % V);
      const lg = await model.logits({ tokens: tokens.subarray(0, n), positions }, attn);
      const targets = new Int32Array(n).fill(-1);
      for (let p = 0; p < n; p++) {
        const row = Array.from(lg.subarray(p * V, (p + 1) * V));
        const order = row.map((x, c) => [x, c] as const).sort((a, b) => b[0] - a[0]);
        if (p % 3 === 0) targets[p] = order[0][1];
        else if (p % 3 === 1) targets[p] = order[1][1];
      }
      windows.push({ tokens, targets, depth: j / 4 });
    }
    const data: DataSource = { kind: 'text', seqLen: n, hasEval: true, windowFor: (_s, j) => windows[j], describe: () => 'argmax probe' };
    const r = await evaluate(ring, model, data, positions, attn, 4, 0);
    const scored = windows.reduce((a, w) => a + w.targets.filter((t) => t >= 0).length, 0);
    const right = windows.reduce((a, w) => a + w.targets.filter((t, p) => t >= 0 && p % 3 === 0).length, 0);
    assert.equal(r.accuracy, right / scored);
    assert.deepEqual(r.perWindow.map((w) => w.depth), [0, 0.25, 0.5, 0.75]);
  });

  it('buckets windows by the depth of their key', () => {
    const b = depthBuckets(
      [
        { targets: 4, correct: 4, depth: 0.1 },
        { targets: 4, correct: 2, depth: 0.15 },
        { targets: 4, correct: 0, depth: 0.99 },
        { targets: 4, correct: 4 },
      ],
      4,
    );
    assert.deepEqual(b.map((x) => [x.samples, x.correct, x.exact]), [[2, 6, 1], [0, 0, 0], [0, 0, 0], [1, 0, 0]]);
    assert.equal(b[0].accuracy, 0.75);
  });
});

describe('attention.scope: local', () => {
  let kernel: AttentionKernel;
  before(async () => {
    await selectBackend('wasm');
    kernel = (await loadKernel('auto', { tileQ: 8, tileKV: 8, threads: 1 })).kernel;
  });

  it("equals full attention over each rank's own shard alone, on a real ring of 3 (and ring scope does not)", async () => {
    const [H, G, D, N, S] = [2, 1, 8, 3, 48];
    const spec = (scope: string): ClusterSpec =>
      specFromObject({ hosts: [{ name: 'a', address: '127.0.0.1', slots: N }], attention: { scope }, model: { dModel: H * D, heads: H, kvHeads: G }, train: { seqLen: S } });
    const rings = await openLocalRing(N);
    try {
      for (const scope of ['local', 'ring']) {
        const errs = await Promise.all(
          rings.map(async (ring) => {
            const pos = shardPositions('zigzag', S, N, ring.rank);
            const n = pos.length;
            const q = randn(n * H * D, 10 + ring.rank);
            const k = randn(n * G * D, 20 + ring.rank);
            const v = randn(n * G * D, 30 + ring.rank);
            // A tfjs engine: host arrays, as the native one.
            const e = createTfjsEngine();
            const put = (x: Float32Array) => {
              const t = e.floats(x.length);
              e.write(t, x);
              return t;
            };
            const t = { q: put(q), k: put(k), v: put(v), o: e.floats(q.length), lse: e.floats(H * n) };
            await trainRingOn(ring, spec(scope), kernel).attention(pos, S).forward(e, t);
            const got = { o: await e.read(t.o) };
            const want = await referenceKernel.forward({ heads: H, kvHeads: G, headDim: D, qLen: n, kvLen: n, q, k, v, qPos: pos, kvPos: pos, causal: true, scale: 1 / Math.sqrt(D) });
            return relErr(got.o, want.o);
          }),
        );
        if (scope === 'local') for (const e of errs) assert.ok(e < 1e-5, `local scope vs the shard alone: rel err ${e}`);
        else assert.ok(Math.max(...errs) > 1e-2, 'ring scope sees other shards too');
      }
    } finally {
      await closeAll(rings);
    }
  });
});

describe('--set', () => {
  const base = specFromObject({ hosts: [{ name: 'a', address: '127.0.0.1' }] });
  it('replaces one field, the value read as YAML', () => {
    const s = specFromObject(withSetting(specFromObject(withSetting(base, 'attention.scope=local')), 'train.seqLen=16K'));
    assert.equal(s.attention.scope, 'local');
    assert.equal(s.train.seqLen, 16384);
    assert.equal(base.attention.scope, 'ring', 'the original is untouched');
  });
  it('says what is wrong with a bad assignment', () => {
    assert.throws(() => withSetting(base, 'attention.scope'), /expected FIELD=VALUE/);
    assert.throws(() => withSetting(base, 'train.seqLen.x=1'), /train\.seqLen is not a section/);
    assert.throws(() => specFromObject(withSetting(base, 'attention.scope=far'), '--set attention.scope=far'), /--set attention\.scope=far: attention\.scope/);
  });
});
