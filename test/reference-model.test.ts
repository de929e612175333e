import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { initParams, paramView } from '../src/model/params.js';
import type { ModelConfig, Params } from '../src/model/types.js';
import { Rng } from '../src/tensor/random.js';
import * as ad from './oracles/autodiff.js';
import type { Node } from './oracles/autodiff.js';
import { referenceLoss, referenceLossAndGrads, referenceLogits } from './oracles/reference-model.js';

/** |a - b| relative to the larger magnitude, with a floor so that zero gradients compare absolutely. */
function rel(a: number, b: number, floor: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), floor);
}

// ------------------------------------------------------------------ (1) primitives

interface Input {
  shape: number[];
  /** Values drawn from [lo, hi) (keeps log / rsqrt / div away from their poles). */
  lo?: number;
  hi?: number;
}

/**
 * Checks d/dx of sum(f(inputs) * W), W a fixed random weighting, against
 * central differences on every coordinate of every input.
 */
function checkPrimitive(name: string, inputs: Input[], f: (xs: Node[]) => Node, seed: number): number {
  const rng = new Rng(seed);
  const values = inputs.map((inp) => {
    const v = new Float64Array(inp.shape.reduce((a, b) => a * b, 1));
    return rng.fillUniform(v, inp.lo ?? -1.5, inp.hi ?? 1.5);
  });
  let weights: Float64Array | null = null;
  const objective = (vals: Float64Array[]): { out: Node; leaves: Node[] } => {
    const leaves = vals.map((v, i) => ad.param(v.slice(), inputs[i].shape));
    const y = f(leaves);
    if (!weights) weights = rng.fillUniform(new Float64Array(y.value.length), -1, 1);
    const n = y.value.length;
    const out = ad.sumLast(ad.reshape(ad.mul(y, ad.constant(weights, y.shape)), [1, n]));
    return { out, leaves };
  };
  const { out, leaves } = objective(values);
  ad.backward(out);
  const h = 1e-5;
  let worst = 0;
  values.forEach((v, k) => {
    const g = leaves[k].grad;
    assert.ok(g, `${name}: input ${k} got no gradient`);
    for (let i = 0; i < v.length; i++) {
      const plus = values.map((u) => u.slice());
      const minus = values.map((u) => u.slice());
      plus[k][i] += h;
      minus[k][i] -= h;
      const fd = (objective(plus).out.value[0] - objective(minus).out.value[0]) / (2 * h);
      const e = rel(g[i], fd, 1e-3);
      worst = Math.max(worst, e);
      assert.ok(e <= 1e-7, `${name}: d/dx${k}[${i}] autodiff ${g[i]} vs finite difference ${fd} (relative error ${e.toExponential(2)})`);
    }
  });
  return worst;
}

describe('autodiff primitives match central finite differences (float64)', () => {
  const m = [3, 4];
  const cases: Array<[string, Input[], (xs: Node[]) => Node]> = [
    ['add', [{ shape: m }, { shape: m }], ([a, b]) => ad.add(a, b)],
    ['add broadcast [d]', [{ shape: m }, { shape: [4] }], ([a, b]) => ad.add(a, b)],
    ['sub broadcast [n,1]', [{ shape: m }, { shape: [3, 1] }], ([a, b]) => ad.sub(a, b)],
    ['sub broadcast [n,1] - [n,d]', [{ shape: [3, 1] }, { shape: m }], ([a, b]) => ad.sub(a, b)],
    ['mul', [{ shape: m }, { shape: m }], ([a, b]) => ad.mul(a, b)],
    ['mul broadcast scalar', [{ shape: m }, { shape: [1] }], ([a, b]) => ad.mul(a, b)],
    ['mul self', [{ shape: m }], ([a]) => ad.mul(a, a)],
    ['div broadcast [n,1]', [{ shape: m }, { shape: [3, 1], lo: 0.5, hi: 2 }], ([a, b]) => ad.div(a, b)],
    ['neg', [{ shape: m }], ([a]) => ad.neg(a)],
    ['scale', [{ shape: m }], ([a]) => ad.scale(a, -0.7)],
    ['exp', [{ shape: m }], ([a]) => ad.exp(a)],
    ['log', [{ shape: m, lo: 0.3, hi: 3 }], ([a]) => ad.log(a)],
    ['sqrt', [{ shape: m, lo: 0.3, hi: 3 }], ([a]) => ad.sqrt(a)],
    ['rsqrt', [{ shape: m, lo: 0.3, hi: 3 }], ([a]) => ad.rsqrt(a)],
    ['sigmoid', [{ shape: m, lo: -4, hi: 4 }], ([a]) => ad.sigmoid(a)],
    ['sumLast 2-D', [{ shape: m }], ([a]) => ad.sumLast(a)],
    ['sumLast 3-D', [{ shape: [2, 3, 4] }], ([a]) => ad.sumLast(a)],
    ['meanLast', [{ shape: m }], ([a]) => ad.meanLast(a)],
    ['reshape', [{ shape: m }], ([a]) => ad.reshape(a, [2, 6])],
    ['sliceLast', [{ shape: [3, 6] }], ([a]) => ad.sliceLast(a, 2, 5)],
    ['concatLast', [{ shape: [3, 2] }, { shape: [3, 3] }, { shape: [3, 1] }], (xs) => ad.concatLast(xs)],
    ['gatherRows (repeated rows)', [{ shape: [5, 3] }], ([t]) => ad.gatherRows(t, Int32Array.of(4, 0, 4, 2, 4))],
    ['matmul', [{ shape: [3, 4] }, { shape: [4, 2] }], ([a, b]) => ad.matmul(a, b)],
    ['matmul A^T', [{ shape: [4, 3] }, { shape: [4, 2] }], ([a, b]) => ad.matmul(a, b, true, false)],
    ['matmul B^T', [{ shape: [3, 4] }, { shape: [2, 4] }], ([a, b]) => ad.matmul(a, b, false, true)],
    ['matmul A^T B^T', [{ shape: [4, 3] }, { shape: [2, 4] }], ([a, b]) => ad.matmul(a, b, true, true)],
    ['matmul a a^T (shared input)', [{ shape: [3, 4] }], ([a]) => ad.matmul(a, a, false, true)],
    [
      'composite: softmax-like chain',
      [{ shape: m }, { shape: [4] }],
      ([a, w]) => {
        const e = ad.exp(ad.mul(a, w));
        return ad.div(e, ad.sumLast(e));
      },
    ],
  ];
  cases.forEach(([name, inputs, f], i) => {
    test(name, () => {
      checkPrimitive(name, inputs, f, 1000 + i);
    });
  });

  test('constants get no gradient and gradients reset between backward passes', () => {
    const a = ad.param(Float64Array.of(1, 2, 3), [1, 3]);
    const c = ad.constant([4, 5, 6], [1, 3]);
    const out = ad.sumLast(ad.mul(a, c));
    ad.backward(out);
    ad.backward(out);
    assert.deepEqual([...a.grad!], [4, 5, 6]);
    assert.equal(c.grad, null);
  });
});

// ------------------------------------------------------------------ (2) whole model

function tinyConfig(over: Partial<ModelConfig> = {}): ModelConfig {
  return {
    vocabSize: 11,
    dModel: 8,
    layers: 2,
    heads: 2,
    kvHeads: 1,
    ffnHidden: 12,
    ffnChunk: 4,
    norm: 'rms',
    tiedEmbeddings: false,
    ropeBase: 10000,
    initStd: 0.3,
    ...over,
  };
}

/** H = 2^-16: every parameter is a multiple of 2^-20 below 8 in magnitude, so x +- H and x +- 2H are exact in float32. */
const H = 2 ** -16;

/**
 * Parameters from initParams with the norm weights and biases moved off 1 and 0
 * (so their gradients are generic), rounded to multiples of 2^-20 so that the
 * finite-difference steps below are exact in the Float32Array.
 */
function testParams(cfg: ModelConfig, seed: number): Params {
  const params = initParams(cfg, seed);
  const rng = new Rng(seed + 17);
  for (const s of params.specs) {
    const v = paramView(params, s.name);
    if (/_norm$|^final_norm$/.test(s.name)) for (let i = 0; i < v.length; i++) v[i] = 1 + 0.2 * rng.normal();
    if (s.name.endsWith('_bias')) for (let i = 0; i < v.length; i++) v[i] = 0.2 * rng.normal();
  }
  for (let i = 0; i < params.flat.length; i++) params.flat[i] = Math.round(params.flat[i] * 2 ** 20) / 2 ** 20;
  return params;
}

function sequence(n: number, vocab: number, seed: number, positions?: Int32Array) {
  const rng = new Rng(seed);
  const all = Int32Array.from({ length: n + 1 }, () => rng.int(vocab));
  const targets = all.slice(1);
  targets[2] = -1;
  return { tokens: all.slice(0, n), targets, positions: positions ?? Int32Array.from({ length: n }, (_, i) => i) };
}

/** One coordinate from every parameter tensor, then random ones up to `count`. */
function sampleCoords(params: Params, count: number, seed: number): number[] {
  const rng = new Rng(seed);
  const coords = params.specs.map((s) => s.offset + rng.int(s.size));
  while (coords.length < count) coords.push(rng.int(params.flat.length));
  return coords;
}

function specOf(params: Params, i: number): string {
  return params.specs.find((s) => i >= s.offset && i < s.offset + s.size)!.name;
}

describe('whole-model gradients match central finite differences (float64)', () => {
  // Positions out of order and with gaps: the mask and the rotary angles both follow them.
  const scrambled = Int32Array.of(103, 100, 107, 101, 105, 102, 108, 104, 106);
  const configs: Array<[string, Partial<ModelConfig>, boolean]> = [
    ['rms, untied', { norm: 'rms', tiedEmbeddings: false }, true],
    ['rms, tied', { norm: 'rms', tiedEmbeddings: true }, true],
    ['layer, untied', { norm: 'layer', tiedEmbeddings: false }, true],
    ['layer, tied', { norm: 'layer', tiedEmbeddings: true }, true],
    ['layer, untied, non-causal, heads 4 kvHeads 2', { norm: 'layer', heads: 4, kvHeads: 2 }, false],
  ];
  configs.forEach(([name, over, causal], ci) => {
    test(name, () => {
      const cfg = tinyConfig(over);
      const params = testParams(cfg, 7 + ci);
      const seq = sequence(scrambled.length, cfg.vocabSize, 50 + ci, scrambled);
      const opts = { causal };
      const lossScale = 0.37;
      const r = referenceLossAndGrads(cfg, params, seq, lossScale, opts);
      assert.equal(r.tokens, seq.targets.length - 1);
      assert.ok(Number.isFinite(r.loss) && r.loss > 0);
      const coords = sampleCoords(params, Math.max(40, params.specs.length + 10), 90 + ci);
      let worst = 0;
      for (const i of coords) {
        const x = params.flat[i];
        const at = (step: number): number => {
          params.flat[i] = x + step;
          assert.equal(params.flat[i] - x, step, 'the step is exact in float32');
          const l = referenceLoss(cfg, params, seq, opts).loss;
          params.flat[i] = x;
          return l;
        };
        // Fourth-order central difference: truncation error O(H^4), far below the tolerance.
        const fd = ((8 * (at(H) - at(-H)) - (at(2 * H) - at(-2 * H))) / (12 * H)) * lossScale;
        const e = rel(r.grads[i], fd, 1e-3);
        worst = Math.max(worst, e);
        assert.ok(e <= 1e-6, `${name}: d/d${specOf(params, i)}[${i}] autodiff ${r.grads[i]} vs finite difference ${fd} (relative ${e.toExponential(2)})`);
      }
      assert.ok(worst <= 1e-6);
    });
  });

  test('loss, logits and lossScale are consistent', () => {
    const cfg = tinyConfig({ norm: 'layer', tiedEmbeddings: true });
    const params = testParams(cfg, 3);
    const seq = sequence(9, cfg.vocabSize, 4);
    const logits = referenceLogits(cfg, params, seq);
    const V = cfg.vocabSize;
    let want = 0;
    for (let i = 0; i < seq.tokens.length; i++) {
      const t = seq.targets[i];
      if (t < 0) continue;
      const row = logits.subarray(i * V, (i + 1) * V);
      want += Math.log(row.reduce((s, z) => s + Math.exp(z), 0)) - row[t];
    }
    const a = referenceLossAndGrads(cfg, params, seq);
    const b = referenceLossAndGrads(cfg, params, seq, 4);
    assert.ok(rel(a.loss, want, 1e-12) < 1e-12);
    assert.equal(referenceLoss(cfg, params, seq).loss, a.loss);
    assert.equal(b.loss, a.loss);
    for (let i = 0; i < a.grads.length; i++) assert.ok(Math.abs(b.grads[i] - 4 * a.grads[i]) <= 1e-12 * Math.max(1, Math.abs(a.grads[i])));
  });

  test('rotary uses relative positions and the causal mask follows the positions', () => {
    const cfg = tinyConfig();
    const params = testParams(cfg, 5);
    const seq = sequence(8, cfg.vocabSize, 6);
    const shifted = { ...seq, positions: seq.positions.map((p) => p + 1000) };
    assert.ok(rel(referenceLoss(cfg, params, seq).loss, referenceLoss(cfg, params, shifted).loss, 1) < 1e-9);
    // Changing the token at the latest position leaves every other position's logits unchanged.
    const base = referenceLogits(cfg, params, seq);
    const changed = { ...seq, tokens: seq.tokens.slice() };
    changed.tokens[7] = (changed.tokens[7] + 1) % cfg.vocabSize;
    const other = referenceLogits(cfg, params, changed);
    const V = cfg.vocabSize;
    for (let i = 0; i < 7 * V; i++) assert.equal(other[i], base[i]);
    assert.ok(other.subarray(7 * V).some((z, j) => z !== base[7 * V + j]));
    // Non-causal: every position sees it.
    const nc = referenceLogits(cfg, params, seq, { causal: false });
    const ncChanged = referenceLogits(cfg, params, changed, { causal: false });
    assert.ok(nc.subarray(0, V).some((z, j) => z !== ncChanged[j]));
  });
});

// ------------------------------------------------------------------ (3) tfjs reference
