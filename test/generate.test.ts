import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { specFromObject } from '../src/config/index.js';
import { createNativeEngine, nativeEngineUnavailable } from '../src/engine/native.js';
import { referenceKernel } from '../src/kernels/reference.js';
import { createModel, generate, initParams, localAttention, sampleToken, type ModelConfig } from '../src/model/index.js';
import { runJob } from '../src/launch/launcher.js';
import { Rng } from '../src/tensor/random.js';
import { initCheckpoint } from './helpers/checkpoint.js';
import { freePortRange } from './helpers/ports.js';
import { closeAll, openLocalRing } from './helpers/ring.js';

/*
 * Inference on the ring (issue 14): prefill sharded by the layout, decoding
 * against the KV cache spread over the ranks. The oracle for the cache is the
 * model recomputing the whole prefix with exact local attention; the oracle
 * for the ring is one process.
 */

const skip = nativeEngineUnavailable() ?? false;
const cfg: ModelConfig = {
  vocabSize: 256, dModel: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 64, ffnChunk: 8, norm: 'rms', tiedEmbeddings: true, ropeBase: 10000,
  // Far from linear, so a wrong position or a missing cache row changes the tokens.
  initStd: 0.3,
};
const params = initParams(cfg, 5);
const engines: Array<{ dispose(): void }> = [];
after(() => engines.forEach((e) => e.dispose()));
const engine = () => {
  const e = createNativeEngine({ threads: 1 });
  engines.push(e);
  return e;
};
const promptOf = (len: number) => Int32Array.from({ length: len }, (_, i) => (i * 37 + 11) % 256);

/** Greedy tokens and the logits each was chosen from. */
async function greedy(prompt: Int32Array, tokens: number, ring: Parameters<typeof generate>[3]['ring'] = null) {
  const logits: Float32Array[] = [];
  const r = await generate(cfg, params, prompt, { maxNewTokens: tokens, temperature: 0, seed: 0, engine: engine(), kernel: referenceKernel, ring, onToken: (_, l) => logits.push(l.slice()) });
  return { ...r, logits };
}

const maxAbsDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);

describe('generation with a KV cache', { skip }, () => {
  test('decoding against the cache gives the logits of recomputing the whole prefix, step by step', async () => {
    const prompt = promptOf(13);
    const g = await greedy(prompt, 6);
    assert.equal(g.prefillTokens, 12, 'a ring of one prefills all but the last prompt token (zigzag quantum 2)');
    assert.equal(g.cachedTokens, 13 + 5, 'every token but the last new one is in the cache');
    const seq = [...prompt];
    const model = createModel(engine(), cfg, { maxTokens: 32 });
    const e = model.engine;
    e.write(model.params, params.flat);
    for (const [i, t] of Array.from(g.tokens).entries()) {
      const positions = Int32Array.from(seq, (_, j) => j);
      const full = await model.logits({ tokens: Int32Array.from(seq), positions }, localAttention(cfg, positions), seq.length - 1);
      assert.ok(maxAbsDiff(full, g.logits[i]) < 1e-5, `step ${i}: ${maxAbsDiff(full, g.logits[i])}`);
      seq.push(t);
    }
  });

  for (const n of [2, 3, 4]) {
    test(`greedy decoding on a ring of ${n} gives one process's tokens, logits within 1e-5, for a prompt over every rank`, async () => {
      // 4n + 3 tokens: the prefill spans every rank (zigzag, two chunks each), a tail is decoded.
      const prompt = promptOf(4 * n + 3);
      const one = await greedy(prompt, 8);
      const rings = await openLocalRing(n);
      try {
        const all = await Promise.all(rings.map((ring) => greedy(prompt, 8, ring)));
        for (const [r, g] of all.entries()) {
          assert.deepEqual(Array.from(g.tokens), Array.from(one.tokens), `rank ${r}`);
          for (let i = 0; i < g.logits.length; i++) assert.ok(maxAbsDiff(g.logits[i], one.logits[i]) < 1e-5, `rank ${r}, token ${i}`);
          assert.equal(g.prefillTokens, Math.floor((prompt.length - 1) / (2 * n)) * 2 * n);
        }
        // The cache is spread: the ranks hold all but the last token between them, none more than one over another.
        const held = all.map((g) => g.cachedTokens);
        assert.equal(held.reduce((a, b) => a + b, 0), prompt.length + 7);
        assert.ok(Math.max(...held) - Math.min(...held) <= 1, `cache shards ${held.join(', ')}`);
      } finally {
        await closeAll(rings);
      }
    });
  }

  test('sampling is reproducible by seed, differs across seeds, and top-p keeps only the nucleus', async () => {
    const prompt = promptOf(9);
    const opts = { maxNewTokens: 12, temperature: 1, topK: 50, topP: 0.9, seed: 7, engine: engine(), kernel: referenceKernel };
    const a = (await generate(cfg, params, prompt, opts)).tokens;
    const b = (await generate(cfg, params, prompt, opts)).tokens;
    const c = (await generate(cfg, params, prompt, { ...opts, seed: 8 })).tokens;
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    // Logits where one token holds 0.8 of the mass and the next 0.15: top-p 0.7 can only give the first; 0.9 the first two.
    const logits = new Float32Array(10).fill(Math.log(0.05 / 8));
    logits[3] = Math.log(0.8);
    logits[6] = Math.log(0.15);
    const rng = new Rng(1);
    const draws = (p: number) => new Set(Array.from({ length: 400 }, () => sampleToken(logits, 1, undefined, rng, p)));
    assert.deepEqual([...draws(0.7)], [3]);
    assert.deepEqual([...draws(0.9)].sort(), [3, 6]);
    assert.ok(draws(1).size > 2);
    await assert.rejects(generate(cfg, params, prompt, { ...opts, topP: 0 }), /topP must be in \(0, 1\]/);
  });
});

describe('a long prompt on a ring of worker processes', { skip }, () => {
  test('a 32K-token prompt prefills on 4 workers and decodes the tokens of one worker, each holding a quarter of the cache', { timeout: 180_000 }, async () => {
    const tmp = mkdtempSync(path.join(tmpdir(), 'ra-generate-'));
    try {
      const seqLen = 32768;
      const base = specFromObject({ model: { dModel: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 64, ffnChunk: 256, initStd: 0.3 }, train: { seqLen }, runDir: tmp, hosts: [{ name: 'local', address: '127.0.0.1', slots: 1 }] }, 'test');
      const checkpoint = initCheckpoint(tmp, base, 3);
      const prompt = Array.from(promptOf(seqLen));
      const run = async (n: number) => {
        const spec = specFromObject({ ...base, ring: { ...base.ring, basePort: await freePortRange(n + 1) }, hosts: [{ name: 'local', address: '127.0.0.1', slots: n }] }, `${n} workers`);
        const { value } = await runJob(spec, { kind: 'generate', args: { checkpoint, prompt, maxNewTokens: 6, temperature: 0, seed: 0 } }, { quiet: true, runDir: path.join(tmp, `w${n}`) });
        return value as { tokens: number[]; prefillTokens: number; cachedTokens: number; timeToFirstTokenMs: number };
      };
      const [one, four] = [await run(1), await run(4)];
      assert.deepEqual(four.tokens, one.tokens);
      assert.equal(four.prefillTokens, 32760, 'all but the tail the zigzag quantum of 8 leaves');
      // Rank 0 holds its quarter of the prefill plus its share of the 13 tokens decoded after it.
      assert.equal(four.cachedTokens, 32760 / 4 + 4);
      assert.equal(one.cachedTokens, seqLen + 5);
      console.log(`32K prompt: time to first token ${(one.timeToFirstTokenMs / 1000).toFixed(1)} s on 1 worker, ${(four.timeToFirstTokenMs / 1000).toFixed(1)} s on 4 (2 cores)`);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
