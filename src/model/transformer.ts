import { slice, type Engine, type NormShape, type Tensor } from '../engine/types.js';
import { findSpec, headDimOf, paramSpecs } from './params.js';
import { ropeTable } from './rope.js';
import type { AttentionOp } from '../attention/op.js';
import type { ModelConfig, Shard } from './types.js';

/**
 * The decoder-only transformer on one rank's shard of the sequence, written
 * against the compute engine (src/engine/types.ts): every line below is one
 * engine op, or the attention op, which is where the ring comes in.
 *
 *   x = embed(tokens)
 *   per layer:  h = norm(x);  q, k, v = h Wq, h Wk, h Wv;  rope(q, k) at global positions
 *               o = attention(q, k, v)                       (ring attention)
 *               x1 = x + o Wo
 *               x = x1 + silu(norm(x1) W1) W2               (in chunks of ffnChunk tokens)
 *   loss = cross-entropy(norm(x) Whead, targets)             (in chunks of ffnChunk tokens)
 *
 * then the backward pass, written out in reverse. Saved for backward, per
 * layer: x, q, k, v, o, lse, x1; the norms and the FFN's hidden activations are
 * recomputed chunk by chunk, so the largest token-wise buffer is
 * [ffnChunk, max(ffnHidden, vocab)], as in the blockwise parallel transformer.
 *
 * Parameters and gradients are flat engine buffers in the layout of
 * src/model/params.ts; gradients accumulate (the caller zeroes them).
 */

const NORM_EPS = 1e-5;

interface LayerParams {
  attnNorm: Tensor;
  attnNormBias: Tensor | null;
  wq: Tensor;
  wk: Tensor;
  wv: Tensor;
  wo: Tensor;
  ffnNorm: Tensor;
  ffnNormBias: Tensor | null;
  w1: Tensor;
  w2: Tensor;
}

interface Weights {
  embed: Tensor;
  layers: LayerParams[];
  finalNorm: Tensor;
  finalNormBias: Tensor | null;
  /** [dModel, vocab], or null when tied (the head is embed^T). */
  head: Tensor | null;
}

/** The named slices of a flat buffer in the parameter layout (the parameters, or their gradients). */
function weightsOf(cfg: ModelConfig, flat: Tensor): Weights {
  const specs = paramSpecs(cfg);
  const t = (name: string): Tensor => {
    const s = findSpec(specs, name);
    return slice(flat, s.offset, s.size);
  };
  const bias = (name: string): Tensor | null => (cfg.norm === 'layer' ? t(`${name}_bias`) : null);
  const layers: LayerParams[] = [];
  for (let l = 0; l < cfg.layers; l++) {
    const p = `layers.${l}.`;
    layers.push({
      attnNorm: t(`${p}attn_norm`),
      attnNormBias: bias(`${p}attn_norm`),
      wq: t(`${p}wq`),
      wk: t(`${p}wk`),
      wv: t(`${p}wv`),
      wo: t(`${p}wo`),
      ffnNorm: t(`${p}ffn_norm`),
      ffnNormBias: bias(`${p}ffn_norm`),
      w1: t(`${p}w1`),
      w2: t(`${p}w2`),
    });
  }
  return {
    embed: t('embed'),
    layers,
    finalNorm: t('final_norm'),
    finalNormBias: bias('final_norm'),
    head: cfg.tiedEmbeddings ? null : t('head'),
  };
}

export interface ModelOptions {
  /** The most tokens one shard can hold; buffers are sized for it once. */
  maxTokens: number;
  /** Where to accumulate gradients (at least the parameter count); default a buffer of its own. */
  grads?: Tensor;
}

export interface Model {
  readonly cfg: ModelConfig;
  readonly engine: Engine;
  /** Flat parameters, the layout of paramSpecs(cfg). */
  readonly params: Tensor;
  /** Flat gradients, same layout; step() adds into them. */
  readonly grads: Tensor;
  /**
   * Forward and backward of one shard: adds d(lossSum * lossScale)/dparams to
   * `grads` and returns the shard's loss sum (targets of -1 excluded). Every
   * rank makes the same attention calls in the same order (forward per layer,
   * then backward per layer in reverse), even for a shard without targets.
   */
  step(shard: Shard, attn: AttentionOp, lossScale: number): Promise<{ lossSum: number; tokens: number }>;
  /** Forward only: the shard's loss sum, with the same attention calls as step's forward. */
  loss(shard: Shard, attn: AttentionOp): Promise<{ lossSum: number; tokens: number; correct: number }>;
  /** Forward only: logits [n - fromRow, vocab] of the shard's rows from `fromRow`. */
  logits(shard: Pick<Shard, 'tokens' | 'positions'>, attn: AttentionOp, fromRow?: number): Promise<Float32Array>;
}

export function createModel(engine: Engine, cfg: ModelConfig, opts: ModelOptions): Model {
  const specs = paramSpecs(cfg);
  const P = specs[specs.length - 1].offset + specs[specs.length - 1].size;
  const cap = opts.maxTokens;
  if (!Number.isInteger(cap) || cap < 1) throw new RangeError(`model: maxTokens must be a positive integer, got ${cap}`);
  const { dModel: d, layers: L, vocabSize: V, ffnHidden: F } = cfg;
  const hd = headDimOf(cfg);
  const qDim = cfg.heads * hd;
  const kvDim = cfg.kvHeads * hd;
  const chunk = Math.min(cfg.ffnChunk, cap);

  const params = engine.floats(P);
  const grads = opts.grads ? slice(opts.grads, 0, P) : engine.floats(P);
  const W = weightsOf(cfg, params);
  const G = weightsOf(cfg, grads);

  // Saved per layer: the layer's input x, q, k, v (rotated), o, and x1 = x + o Wo. xs[L] is the final hidden state.
  const perLayer = (count: number, width: number): Tensor[] => Array.from({ length: count }, () => engine.floats(cap * width));
  const xs = perLayer(L + 1, d);
  const qs = perLayer(L, qDim);
  const ks = perLayer(L, kvDim);
  const vs = perLayer(L, kvDim);
  const os = perLayer(L, qDim);
  const x1s = perLayer(L, d);
  const lses = perLayer(L, cfg.heads);
  // Working buffers.
  const h = engine.floats(cap * d);
  const dx = engine.floats(cap * d);
  const dh = engine.floats(cap * d);
  const dq = engine.floats(cap * qDim);
  const dk = engine.floats(cap * kvDim);
  const dv = engine.floats(cap * kvDim);
  const dO = engine.floats(cap * qDim);
  const hc = engine.floats(chunk * d);
  const dhc = engine.floats(chunk * d);
  const u = engine.floats(chunk * F);
  const a = engine.floats(chunk * F);
  const logits = engine.floats(chunk * V);
  const loss = engine.floats(1);
  const tokens = engine.ints(cap);
  const targets = engine.ints(cap);
  const cos = engine.floats((cap * hd) / 2);
  const sin = engine.floats((cap * hd) / 2);
  let ropeFor: Int32Array | null = null;

  const rows = (t: Tensor, start: number, count: number, width: number): Tensor => slice(t, start * width, count * width);
  const normShape = (n: number): NormShape => ({ kind: cfg.norm, rows: n, dim: d, eps: NORM_EPS });
  const chunksOf = (n: number): Array<[number, number]> => {
    const out: Array<[number, number]> = [];
    for (let s = 0; s < n; s += chunk) out.push([s, Math.min(chunk, n - s)]);
    return out;
  };

  function load(shard: Pick<Shard, 'tokens' | 'positions'> & { targets?: Int32Array }): number {
    const n = shard.tokens.length;
    if (n < 1) throw new Error('model: empty shard');
    if (n > cap) throw new Error(`model: a shard of ${n} tokens exceeds the ${cap} the model was built for`);
    if (shard.positions.length !== n) throw new Error(`model: ${shard.positions.length} positions for ${n} tokens`);
    if (shard.targets && shard.targets.length !== n) throw new Error(`model: ${shard.targets.length} targets for ${n} tokens`);
    for (let i = 0; i < n; i++) {
      const t = shard.tokens[i];
      if (!(t >= 0 && t < V)) throw new Error(`model: token id ${t} outside the vocabulary of ${V}`);
      const y = shard.targets?.[i];
      if (y !== undefined && y !== -1 && !(y >= 0 && y < V)) {
        throw new Error(`model: target id ${y} outside the vocabulary of ${V} (use -1 to ignore a position)`);
      }
    }
    engine.writeInts(slice(tokens, 0, n), shard.tokens);
    if (shard.targets) engine.writeInts(slice(targets, 0, n), shard.targets);
    // Training asks with the same positions every step: the table is written once.
    if (ropeFor !== shard.positions) {
      const table = ropeTable(shard.positions, hd, cfg.ropeBase);
      engine.write(slice(cos, 0, (n * hd) / 2), Float32Array.from(table.cos));
      engine.write(slice(sin, 0, (n * hd) / 2), Float32Array.from(table.sin));
      ropeFor = shard.positions;
    }
    return n;
  }

  async function forward(n: number, attn: AttentionOp): Promise<void> {
    engine.embed(rows(xs[0], 0, n, d), W.embed, tokens, n, d);
    for (let l = 0; l < L; l++) {
      const w = W.layers[l];
      const x = rows(xs[l], 0, n, d);
      const q = rows(qs[l], 0, n, qDim);
      const k = rows(ks[l], 0, n, kvDim);
      const v = rows(vs[l], 0, n, kvDim);
      const o = rows(os[l], 0, n, qDim);
      const x1 = rows(x1s[l], 0, n, d);
      const hn = rows(h, 0, n, d);
      engine.norm(normShape(n), hn, x, w.attnNorm, w.attnNormBias);
      engine.matmul({ m: n, n: qDim, k: d }, q, hn, w.wq);
      engine.matmul({ m: n, n: kvDim, k: d }, k, hn, w.wk);
      engine.matmul({ m: n, n: kvDim, k: d }, v, hn, w.wv);
      engine.rope({ rows: n, heads: cfg.heads, headDim: hd }, q, cos, sin);
      engine.rope({ rows: n, heads: cfg.kvHeads, headDim: hd }, k, cos, sin);
      await attn.forward(engine, { q, k, v, o, lse: slice(lses[l], 0, cfg.heads * n) });
      engine.matmul({ m: n, n: d, k: qDim }, x1, o, w.wo);
      engine.add(x1, x1, x, n * d);
      const y = rows(xs[l + 1], 0, n, d);
      for (const [s, len] of chunksOf(n)) {
        const hcs = slice(hc, 0, len * d);
        const us = slice(u, 0, len * F);
        const ys = rows(y, s, len, d);
        const x1c = rows(x1, s, len, d);
        engine.norm(normShape(len), hcs, x1c, w.ffnNorm, w.ffnNormBias);
        engine.matmul({ m: len, n: F, k: d }, us, hcs, w.w1);
        engine.silu(slice(a, 0, len * F), us, len * F);
        engine.matmul({ m: len, n: d, k: F }, ys, slice(a, 0, len * F), w.w2);
        engine.add(ys, ys, x1c, len * d);
      }
    }
  }

  /** Logits of rows [s, s + len) of the final hidden state into the logits buffer; the normed rows stay in hc. */
  function headLogits(s: number, len: number): { hcs: Tensor; lg: Tensor } {
    const hcs = slice(hc, 0, len * d);
    const lg = slice(logits, 0, len * V);
    engine.norm(normShape(len), hcs, rows(xs[L], s, len, d), W.finalNorm, W.finalNormBias);
    if (W.head) engine.matmul({ m: len, n: V, k: d }, lg, hcs, W.head);
    else engine.matmul({ m: len, n: V, k: d, transB: true }, lg, hcs, W.embed);
    return { hcs, lg };
  }

  /**
   * Loss of the final hidden state, chunk by chunk; with a gradient scale, dL/dx
   * into dx as well, without one (evaluation) also how many targets are the
   * logits' argmax (ties go to the lower id).
   */
  async function head(n: number, targetIds: Int32Array, gradScale: number | null): Promise<{ lossSum: number; tokens: number; correct: number }> {
    engine.zero(loss);
    if (gradScale !== null) engine.zero(rows(dx, 0, n, d));
    let count = 0;
    let correct = 0;
    for (const [s, len] of chunksOf(n)) {
      let c = 0;
      for (let i = s; i < s + len; i++) if (targetIds[i] >= 0) c++;
      if (c === 0) continue; // nothing to predict here: no loss, no gradient
      count += c;
      const { hcs, lg } = headLogits(s, len);
      engine.crossEntropy(len, V, lg, slice(targets, s, len), loss, gradScale);
      if (gradScale === null) {
        correct += argmaxHits(await engine.read(lg), targetIds, s, len);
        continue;
      }
      const dhs = slice(dhc, 0, len * d);
      if (G.head && W.head) {
        engine.matmul({ m: len, n: d, k: V, transB: true }, dhs, lg, W.head);
        engine.matmul({ m: d, n: V, k: len, transA: true, accumulate: true }, G.head, hcs, lg);
      } else {
        engine.matmul({ m: len, n: d, k: V }, dhs, lg, W.embed);
        engine.matmul({ m: V, n: d, k: len, transA: true, accumulate: true }, G.embed, lg, hcs);
      }
      engine.normBackward(normShape(len), rows(dx, s, len, d), G.finalNorm, G.finalNormBias, dhs, rows(xs[L], s, len, d), W.finalNorm);
    }
    const lossSum = (await engine.read(loss))[0];
    return { lossSum, tokens: count, correct };
  }

  /** Rows of logits [len, V] (rows s.. of the shard) whose largest entry is the target. */
  function argmaxHits(lg: Float32Array, targetIds: Int32Array, s: number, len: number): number {
    let hits = 0;
    for (let r = 0; r < len; r++) {
      const t = targetIds[s + r];
      if (t < 0) continue;
      let best = 0;
      for (let c = 1; c < V; c++) if (lg[r * V + c] > lg[r * V + best]) best = c;
      if (best === t) hits++;
    }
    return hits;
  }

  async function backward(n: number, attn: AttentionOp): Promise<void> {
    for (let l = L - 1; l >= 0; l--) {
      const w = W.layers[l];
      const g = G.layers[l];
      const x = rows(xs[l], 0, n, d);
      const x1 = rows(x1s[l], 0, n, d);
      const o = rows(os[l], 0, n, qDim);
      const dxn = rows(dx, 0, n, d);
      // FFN, chunk by chunk; dx becomes dL/dx1 in place (the residual passes dx through).
      for (const [s, len] of chunksOf(n)) {
        const hcs = slice(hc, 0, len * d);
        const dhs = slice(dhc, 0, len * d);
        const us = slice(u, 0, len * F);
        const as = slice(a, 0, len * F);
        const x1c = rows(x1, s, len, d);
        const dxc = rows(dxn, s, len, d);
        engine.norm(normShape(len), hcs, x1c, w.ffnNorm, w.ffnNormBias);
        engine.matmul({ m: len, n: F, k: d }, us, hcs, w.w1);
        engine.silu(as, us, len * F);
        engine.matmul({ m: F, n: d, k: len, transA: true, accumulate: true }, g.w2, as, dxc);
        engine.matmul({ m: len, n: F, k: d, transB: true }, as, dxc, w.w2);
        engine.siluBackward(as, as, us, len * F);
        engine.matmul({ m: d, n: F, k: len, transA: true, accumulate: true }, g.w1, hcs, as);
        engine.matmul({ m: len, n: d, k: F, transB: true }, dhs, as, w.w1);
        engine.normBackward(normShape(len), dxc, g.ffnNorm, g.ffnNormBias, dhs, x1c, w.ffnNorm);
      }
      // x1 = x + o Wo
      const dOn = rows(dO, 0, n, qDim);
      engine.matmul({ m: qDim, n: d, k: n, transA: true, accumulate: true }, g.wo, o, dxn);
      engine.matmul({ m: n, n: qDim, k: d, transB: true }, dOn, dxn, w.wo);
      const saved = { q: rows(qs[l], 0, n, qDim), k: rows(ks[l], 0, n, kvDim), v: rows(vs[l], 0, n, kvDim), o, lse: slice(lses[l], 0, cfg.heads * n) };
      const dqn = rows(dq, 0, n, qDim);
      const dkn = rows(dk, 0, n, kvDim);
      const dvn = rows(dv, 0, n, kvDim);
      await attn.backward(engine, saved, dOn, { dq: dqn, dk: dkn, dv: dvn });
      // Rope is a rotation: its backward rotates back.
      engine.rope({ rows: n, heads: cfg.heads, headDim: hd, inverse: true }, dqn, cos, sin);
      engine.rope({ rows: n, heads: cfg.kvHeads, headDim: hd, inverse: true }, dkn, cos, sin);
      const hn = rows(h, 0, n, d);
      const dhn = rows(dh, 0, n, d);
      engine.norm(normShape(n), hn, x, w.attnNorm, w.attnNormBias);
      engine.matmul({ m: d, n: qDim, k: n, transA: true, accumulate: true }, g.wq, hn, dqn);
      engine.matmul({ m: d, n: kvDim, k: n, transA: true, accumulate: true }, g.wk, hn, dkn);
      engine.matmul({ m: d, n: kvDim, k: n, transA: true, accumulate: true }, g.wv, hn, dvn);
      engine.matmul({ m: n, n: d, k: qDim, transB: true }, dhn, dqn, w.wq);
      engine.matmul({ m: n, n: d, k: kvDim, transB: true, accumulate: true }, dhn, dkn, w.wk);
      engine.matmul({ m: n, n: d, k: kvDim, transB: true, accumulate: true }, dhn, dvn, w.wv);
      // dx (= dL/dx1) reaches x through the residual; the norm adds its share.
      engine.normBackward(normShape(n), dxn, g.attnNorm, g.attnNormBias, dhn, x, w.attnNorm);
    }
    engine.embedBackward(G.embed, rows(dx, 0, n, d), tokens, n, d);
    await engine.flush();
  }

  return {
    cfg,
    engine,
    params,
    grads,
    async step(shard, attn, lossScale) {
      if (!Number.isFinite(lossScale)) throw new Error(`model: lossScale must be finite, got ${lossScale}`);
      const n = load(shard);
      await forward(n, attn);
      const r = await head(n, shard.targets, lossScale);
      await backward(n, attn);
      return r;
    },
    async loss(shard, attn) {
      const n = load(shard);
      await forward(n, attn);
      return head(n, shard.targets, null);
    },
    async logits(shard, attn, fromRow = 0) {
      const n = load(shard);
      if (!(Number.isInteger(fromRow) && fromRow >= 0 && fromRow < n)) throw new Error(`model: fromRow ${fromRow} outside the shard of ${n} tokens`);
      await forward(n, attn);
      const out = new Float32Array((n - fromRow) * V);
      for (let s = fromRow; s < n; s += chunk) {
        const { lg } = headLogits(s, Math.min(chunk, n - s));
        out.set(await engine.read(lg), (s - fromRow) * V);
      }
      return out;
    },
  };
}
