import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { gatherShard, shardPositions } from '../src/attention/layout.js';
import { createNativeEngine, nativeEngineUnavailable } from '../src/engine/native.js';
import { createTfjsEngine } from '../src/engine/tfjs.js';
import type { Engine } from '../src/engine/types.js';
import {
  createModel,
  generate,
  initParams,
  localAttention,
  paramCount,
  paramSpecs,
  paramView,
  type AttentionOp,
  type ModelConfig,
  type Params,
} from '../src/model/index.js';
import { selectBackend } from '../src/tensor/backend.js';
import { Rng } from '../src/tensor/random.js';
import { inProcessRing } from './helpers/local-attention.js';
import { referenceLogits, referenceLossAndGrads } from './oracles/reference-model.js';

const SEQ = 12;

function tinyConfig(over: Partial<ModelConfig> = {}): ModelConfig {
  return {
    vocabSize: 256,
    dModel: 16,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    ffnHidden: 32,
    ffnChunk: 5,
    norm: 'rms',
    tiedEmbeddings: true,
    ropeBase: 10000,
    // Larger than a training init so attention and the nonlinearities are far from linear.
    initStd: 0.3,
    ...over,
  };
}

/** A sequence of SEQ tokens with next-token targets; two positions ignored (-1), like a window's last token. */
function sequence(seed: number, vocab = 256): { tokens: Int32Array; targets: Int32Array; positions: Int32Array } {
  const rng = new Rng(seed);
  const all = Int32Array.from({ length: SEQ + 1 }, () => rng.int(vocab));
  const tokens = all.slice(0, SEQ);
  const targets = all.slice(1);
  targets[3] = -1;
  targets[SEQ - 1] = -1;
  return { tokens, targets, positions: Int32Array.from({ length: SEQ }, (_, i) => i) };
}

/** Largest |a - b| over the tensor, relative to the tensor's largest |b|. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

function assertGradsClose(params: Params, got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): number {
  let worst = 0;
  for (const s of params.specs) {
    const g = Array.prototype.slice.call(got, s.offset, s.offset + s.size) as number[];
    const w = Array.prototype.slice.call(want, s.offset, s.offset + s.size) as number[];
    const e = relErr(g, w);
    worst = Math.max(worst, e);
    assert.ok(e <= tol, `${what}: gradient of ${s.name} differs by ${e.toExponential(2)} (relative), tolerance ${tol}`);
  }
  return worst;
}

interface Subject {
  label: string;
  make: () => Engine;
}
const nativeMissing = nativeEngineUnavailable();
const engines: Subject[] = [];
if (!nativeMissing) engines.push({ label: 'native', make: () => createNativeEngine({ threads: 2 }) });
else console.log(`# native engine not tested: ${nativeMissing}`);
engines.push({ label: 'tfjs', make: () => createTfjsEngine() });

before(async () => {
  await selectBackend('wasm');
});

type Seq = ReturnType<typeof sequence>;

/** One forward+backward on a fresh model: loss, token count and the gradients (copied out). */
async function step(engine: Engine, cfg: ModelConfig, params: Params, seq: Seq, attn: AttentionOp = localAttention(cfg, seq.positions), lossScale = 1) {
  const model = createModel(engine, cfg, { maxTokens: seq.tokens.length });
  engine.write(model.params, params.flat);
  const r = await model.step(seq, attn, lossScale);
  return { ...r, grads: Float32Array.from(await engine.read(model.grads)) };
}

describe('parameters', () => {
  test('layout, count and deterministic init', () => {
    for (const tiedEmbeddings of [true, false]) {
      for (const norm of ['rms', 'layer'] as const) {
        const cfg = tinyConfig({ tiedEmbeddings, norm, initStd: 0.02 });
        const specs = paramSpecs(cfg);
        let off = 0;
        for (const s of specs) {
          assert.equal(s.offset, off);
          assert.equal(s.size, s.shape.reduce((a, b) => a * b, 1));
          off += s.size;
        }
        assert.equal(paramCount(cfg), off);
        assert.equal(specs.some((s) => s.name === 'head'), !tiedEmbeddings);
        assert.equal(specs.some((s) => s.name.endsWith('_bias')), norm === 'layer');
        const shape = (n: string) => specs.find((s) => s.name === n)?.shape;
        assert.deepEqual(shape('layers.1.wq'), [16, 16]);
        assert.deepEqual(shape('layers.1.wk'), [16, 8]);
        assert.deepEqual(shape('layers.1.wo'), [16, 16]);
        assert.deepEqual(shape('layers.0.w1'), [16, 32]);
        assert.deepEqual(shape('layers.0.w2'), [32, 16]);

        const a = initParams(cfg, 7);
        const b = initParams(cfg, 7);
        const c = initParams(cfg, 8);
        assert.deepEqual(a.flat, b.flat);
        assert.notDeepEqual(a.flat, c.flat);
        assert.ok(paramView(a, 'final_norm').every((x) => x === 1));
        assert.ok(paramView(a, 'layers.0.attn_norm').every((x) => x === 1));
        if (norm === 'layer') assert.ok(paramView(a, 'layers.1.ffn_norm_bias').every((x) => x === 0));
        const std = (x: Float32Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length);
        const e = std(paramView(a, 'embed'));
        assert.ok(Math.abs(e - 0.02) < 0.002, `embed std ${e}`);
        // Output projections into the residual stream are scaled by 1/sqrt(2 * layers) = 1/2.
        const w2 = std(paramView(a, 'layers.0.w2'));
        assert.ok(Math.abs(w2 - 0.01) < 0.0015, `w2 std ${w2}`);
      }
    }
  });
});

for (const subject of engines) {
  describe(`the model on the ${subject.label} engine`, () => {
    for (const norm of ['rms', 'layer'] as const) {
      for (const tiedEmbeddings of [true, false]) {
        test(`a training step equals the float64 reference (${norm} norm, ${tiedEmbeddings ? 'tied' : 'untied'})`, async () => {
          const engine = subject.make();
          const cfg = tinyConfig({ norm, tiedEmbeddings });
          const params = initParams(cfg, 11);
          const seq = sequence(5);
          const ref = referenceLossAndGrads(cfg, params, seq);
          const got = await step(engine, cfg, params, seq);
          assert.equal(got.tokens, SEQ - 2);
          assert.ok(Math.abs(got.lossSum - ref.loss) <= 1e-5 * Math.abs(ref.loss), `loss ${got.lossSum} vs ${ref.loss}`);
          const worst = assertGradsClose(params, got.grads, ref.grads, 1e-5, 'vs float64 reference');
          console.log(`# ${subject.label} ${norm}/${tiedEmbeddings ? 'tied' : 'untied'}: worst relative gradient difference ${worst.toExponential(2)}`);

          // The loss scale multiplies every gradient and nothing else.
          const scaled = await step(engine, cfg, params, seq, undefined, 1 / 10);
          assert.equal(scaled.lossSum, got.lossSum);
          assertGradsClose(params, scaled.grads, got.grads.map((g) => g / 10), 1e-5, 'loss scale');
          engine.dispose();
        });
      }
    }

    test('a shard in zigzag order at its global positions gives the same loss and gradients', async () => {
      const engine = subject.make();
      const cfg = tinyConfig();
      const params = initParams(cfg, 21);
      const seq = sequence(6);
      const base = await step(engine, cfg, params, seq);
      const pos = new Int32Array([...shardPositions('zigzag', SEQ, 2, 1), ...shardPositions('zigzag', SEQ, 2, 0)]);
      const perm = { tokens: gatherShard(seq.tokens, pos, 1), targets: gatherShard(seq.targets, pos, 1), positions: pos };
      const got = await step(engine, cfg, params, perm);
      assert.ok(Math.abs(got.lossSum - base.lossSum) <= 1e-5 * base.lossSum);
      assertGradsClose(params, got.grads, base.grads, 1e-5, 'permuted shard');
      engine.dispose();
    });

    test('shards on an in-process ring sum to the unsharded float64 gradient of the mean loss', async () => {
      const cfg = tinyConfig({ norm: 'layer' });
      const params = initParams(cfg, 31);
      const seq = sequence(12);
      const T = seq.targets.filter((t) => t >= 0).length;
      const ref = referenceLossAndGrads(cfg, params, seq);
      const want = ref.grads.map((g) => g / T);
      for (const [layout, N] of [
        ['zigzag', 2],
        ['contiguous', 3],
        ['zigzag', 3],
        ['striped', 4],
      ] as const) {
        const pos = Array.from({ length: N }, (_, r) => shardPositions(layout, SEQ, N, r));
        const ops = inProcessRing(cfg, pos);
        const ranks = pos.map(() => subject.make());
        // Concurrent, as ranks would be: the attention calls interleave the steps at every await.
        const steps = await Promise.all(
          pos.map((p, r) =>
            step(ranks[r], cfg, params, { tokens: gatherShard(seq.tokens, p, 1), targets: gatherShard(seq.targets, p, 1), positions: p }, ops[r], 1 / T),
          ),
        );
        const lossSum = steps.reduce((a, s) => a + s.lossSum, 0);
        assert.equal(
          steps.reduce((a, s) => a + s.tokens, 0),
          T,
        );
        assert.ok(Math.abs(lossSum - ref.loss) <= 1e-5 * ref.loss, `${layout}/${N}: loss ${lossSum} vs ${ref.loss}`);
        const grads = new Float32Array(want.length);
        for (const s of steps) for (let i = 0; i < grads.length; i++) grads[i] += s.grads[i];
        assertGradsClose(params, grads, want, 1e-5, `${layout} on ${N} ranks`);
        for (const e of ranks) e.dispose();
      }
    });

    test('FFN chunk size does not change the result', async () => {
      const engine = subject.make();
      const seq = sequence(8);
      const results = [];
      for (const ffnChunk of [1, 5, SEQ, 64]) {
        const cfg = tinyConfig({ ffnChunk, norm: 'layer' });
        results.push(await step(engine, cfg, initParams(cfg, 4), seq));
      }
      const params = initParams(tinyConfig({ norm: 'layer' }), 4);
      for (const r of results.slice(1)) {
        assert.ok(Math.abs(r.lossSum - results[0].lossSum) <= 1e-5 * results[0].lossSum);
        assertGradsClose(params, r.grads, results[0].grads, 1e-5, 'chunking');
      }
      engine.dispose();
    });

    test('a shard without targets has zero loss and zero gradient, and still runs every attention call', async () => {
      const engine = subject.make();
      const cfg = tinyConfig();
      const params = initParams(cfg, 2);
      const seq = { ...sequence(1), targets: new Int32Array(SEQ).fill(-1) };
      const inner = localAttention(cfg, seq.positions);
      let fwd = 0;
      let bwd = 0;
      const attn: AttentionOp = {
        forward: (e, t) => (fwd++, inner.forward(e, t)),
        backward: (e, s, dO, g) => (bwd++, inner.backward(e, s, dO, g)),
      };
      const r = await step(engine, cfg, params, seq, attn);
      assert.equal(r.lossSum, 0);
      assert.equal(r.tokens, 0);
      assert.ok(r.grads.every((g) => g === 0));
      assert.equal(fwd, cfg.layers);
      assert.equal(bwd, cfg.layers);
      engine.dispose();
    });

    test('loss() equals the training loss and logits() the reference logits', async () => {
      const engine = subject.make();
      const cfg = tinyConfig({ norm: 'layer', tiedEmbeddings: false });
      const params = initParams(cfg, 5);
      const seq = sequence(3);
      const attn = localAttention(cfg, seq.positions);
      const model = createModel(engine, cfg, { maxTokens: SEQ });
      engine.write(model.params, params.flat);
      const first = await model.step(seq, attn, 1);
      const e = await model.loss(seq, attn);
      assert.ok(Math.abs(e.lossSum - first.lossSum) <= 1e-6 * first.lossSum);
      assert.equal(e.tokens, first.tokens);
      const logits = await model.logits(seq, attn, 4);
      const want = referenceLogits(cfg, params, seq).subarray(4 * cfg.vocabSize);
      assert.ok(relErr(logits, want) <= 1e-5, `logits differ by ${relErr(logits, want)}`);
      engine.dispose();
    });
  });
}

describe('engines agree', { skip: nativeMissing ? `native engine unavailable: ${nativeMissing}` : false }, () => {
  test('the tfjs engine equals the native engine within 1e-5 on a training step', async () => {
    const cfg = tinyConfig({ norm: 'layer', tiedEmbeddings: false, dModel: 32, heads: 4, kvHeads: 1, ffnHidden: 64 });
    const params = initParams(cfg, 8);
    const seq = sequence(2);
    const a = await step(createNativeEngine({ threads: 2 }), cfg, params, seq);
    const b = await step(createTfjsEngine(), cfg, params, seq);
    assert.ok(Math.abs(a.lossSum - b.lossSum) <= 1e-5 * Math.abs(b.lossSum));
    assertGradsClose(params, a.grads, b.grads, 1e-5, 'native vs tfjs');
  });

  test('the native engine gives bit-identical results with 1 and 2 threads', async () => {
    const cfg = tinyConfig({ dModel: 64, heads: 4, ffnHidden: 256, ffnChunk: 64 });
    const params = initParams(cfg, 3);
    const seq = sequence(4);
    const a = await step(createNativeEngine({ threads: 1 }), cfg, params, seq);
    const b = await step(createNativeEngine({ threads: 2 }), cfg, params, seq);
    assert.equal(a.lossSum, b.lossSum);
    assert.deepEqual(a.grads, b.grads);
  });
});

describe('a warm step allocates nothing new', { skip: nativeMissing ? `native engine unavailable: ${nativeMissing}` : false }, () => {
  test('engine buffers stay fixed and the heap stays flat over 50 steps', async () => {
    const engine = createNativeEngine({ threads: 1 });
    const cfg = tinyConfig({ dModel: 32, heads: 4, ffnHidden: 64, ffnChunk: 8 });
    const params = initParams(cfg, 1);
    const seq = sequence(7);
    const attn = localAttention(cfg, seq.positions);
    const model = createModel(engine, cfg, { maxTokens: SEQ });
    engine.write(model.params, params.flat);
    for (let i = 0; i < 5; i++) await model.step(seq, attn, 1);
    const buffers = engine.bufferCount();
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    const heap0 = process.memoryUsage().heapUsed;
    for (let i = 0; i < 50; i++) {
      engine.zero(model.grads);
      await model.step(seq, attn, 1);
    }
    gc?.();
    const grown = process.memoryUsage().heapUsed - heap0;
    assert.equal(engine.bufferCount(), buffers, 'engine buffers after 50 more steps');
    // Without --expose-gc the heap holds garbage not yet collected; bound it loosely then.
    const limit = gc ? 512 * 1024 : 16 * 1024 * 1024;
    assert.ok(grown < limit, `heap grew by ${grown} bytes over 50 steps (limit ${limit})`);
    engine.dispose();
  });
});

describe('generate', () => {
  test('deterministic for a seed; temperature 0 is greedy', async () => {
    const engine = engines[0].make();
    const cfg = tinyConfig({ tiedEmbeddings: false });
    const params = initParams(cfg, 9);
    const prompt = new Int32Array([72, 101, 108, 108, 111]);
    const opts = { maxNewTokens: 6, temperature: 1, topK: 20, seed: 42, engine };
    const a = (await generate(cfg, params, prompt, opts)).tokens;
    const b = (await generate(cfg, params, prompt, opts)).tokens;
    const c = (await generate(cfg, params, prompt, { ...opts, seed: 43 })).tokens;
    assert.equal(a.length, 6);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    assert.ok(a.every((t) => t >= 0 && t < cfg.vocabSize));

    const greedy = (await generate(cfg, params, prompt, { maxNewTokens: 1, temperature: 0, seed: 0, engine })).tokens;
    const positions = Int32Array.from(prompt, (_, i) => i);
    const logits = referenceLogits(cfg, params, { tokens: prompt, positions });
    const last = logits.subarray((prompt.length - 1) * cfg.vocabSize);
    let arg = 0;
    for (let i = 1; i < last.length; i++) if (last[i] > last[arg]) arg = i;
    assert.equal(greedy[0], arg);
    engine.dispose();
  });
});
