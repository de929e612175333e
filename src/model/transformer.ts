import * as tf from '@tensorflow/tfjs';
import { findSpec, headDimOf, paramSpecs } from './params.js';
import { applyRope, ropeTable, type RopeTable } from './rope.js';
import type { AttentionOp, ModelConfig, ParamSpec, Params, Shard, ShardStep } from './types.js';

/**
 * The decoder-only transformer on one rank's shard, cut into segments around
 * attention (see docs/model.md):
 *
 *   embed (JS gather)
 *   per layer:  A: x -> norm -> [q|k|v] = h @ Wqkv -> rope(q, k)      (tfjs, + JS rope)
 *               attention (AttentionOp: ring attention in production)
 *               B: x1 = x + o @ Wo;  y = x1 + silu(norm(x1) @ W1) @ W2   (tfjs; FFN in chunks of ffnChunk tokens)
 *   head:       per chunk: norm -> logits = h @ head -> cross-entropy    (tfjs)
 *
 * Activations between segments are plain Float32Arrays, so nothing tfjs holds
 * outlives a segment. Backward recomputes each segment's forward inside a vjp
 * (tf.grads), keeping only each layer's input x and attention's q, k, v, o, lse.
 * The FFN and the head work chunk by chunk in backward too, so the largest
 * token-wise intermediate is [ffnChunk, max(ffnHidden, vocab)].
 */

const NORM_EPS = 1e-5;

/**
 * 2-D matMul whose gradient transposes its operands explicitly and then runs
 * plain matMuls: on wasm a transposed or batched matMul leaves the fast path
 * (about 10x slower here), and tfjs's own matMul gradient uses exactly those.
 */
const mm = tf.customGrad(((a: tf.Tensor2D, b: tf.Tensor2D, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a, b),
    gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => {
      const [sa, sb] = saved as tf.Tensor2D[];
      return [tf.matMul(dy, tf.transpose(sb)), tf.matMul(tf.transpose(sa), dy)];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor2D;

/**
 * RMSNorm over the last axis with its backward written out: tfjs's generic
 * gradients of mean/rsqrt/broadcast cost ~30 small kernels, this ~8, and at
 * shard sizes the per-kernel overhead is what dominates the norms.
 *   y = xh * w,  xh = x * r,  r = 1/sqrt(mean(x^2) + eps)
 *   dx = r * (g - xh * mean(g * xh)),  g = dy * w;   dw = sum_rows(dy * xh)
 */
const rmsNorm = tf.customGrad(((x: tf.Tensor2D, w: tf.Tensor1D, save: tf.GradSaveFunc) => {
  const r = tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), NORM_EPS));
  const xh = tf.mul(x, r);
  save([xh, r, w]);
  return {
    value: tf.mul(xh, w),
    gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => {
      const [sxh, sr, sw] = saved;
      const g = tf.mul(dy, sw);
      const dx = tf.mul(sr, tf.sub(g, tf.mul(sxh, tf.mean(tf.mul(g, sxh), -1, true))));
      return [dx, tf.sum(tf.mul(dy, sxh), 0)];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, w: tf.Tensor) => tf.Tensor2D;

/**
 * LayerNorm over the last axis, backward written out like rmsNorm's:
 *   y = xh * w + b,  xh = (x - mean(x)) * r,  r = 1/sqrt(var(x) + eps)
 *   dx = r * (g - mean(g) - xh * mean(g * xh)),  g = dy * w;   dw = sum_rows(dy * xh), db = sum_rows(dy)
 */
const layerNorm = tf.customGrad(((x: tf.Tensor2D, w: tf.Tensor1D, b: tf.Tensor1D, save: tf.GradSaveFunc) => {
  const xc = tf.sub(x, tf.mean(x, -1, true));
  const r = tf.rsqrt(tf.add(tf.mean(tf.square(xc), -1, true), NORM_EPS));
  const xh = tf.mul(xc, r);
  save([xh, r, w]);
  return {
    value: tf.add(tf.mul(xh, w), b),
    gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => {
      const [sxh, sr, sw] = saved;
      const g = tf.mul(dy, sw);
      const inner = tf.sub(tf.sub(g, tf.mean(g, -1, true)), tf.mul(sxh, tf.mean(tf.mul(g, sxh), -1, true)));
      return [tf.mul(sr, inner), tf.sum(tf.mul(dy, sxh), 0), tf.sum(dy, 0)];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor2D;

/** RMSNorm (p = [weight]) or LayerNorm (p = [weight, bias]) over the last axis. */
function normalize(kind: ModelConfig['norm'], x: tf.Tensor, p: tf.Tensor[]): tf.Tensor {
  return kind === 'rms' ? rmsNorm(x, p[0]) : layerNorm(x, p[0], p[1]);
}

/** SiLU (x * sigmoid(x)): smooth, cheap, and its gradient is built from ops every backend has. */
function silu(x: tf.Tensor): tf.Tensor {
  return tf.mul(x, tf.sigmoid(x));
}

/** Position-wise block after attention's output projection, with its residual: x1 + silu(norm(x1) @ w1) @ w2. */
function ffnBlock(kind: ModelConfig['norm'], x1: tf.Tensor, normP: tf.Tensor[], w1: tf.Tensor, w2: tf.Tensor): tf.Tensor {
  return tf.add(x1, mm(silu(mm(normalize(kind, x1, normP), w1)), w2));
}

/** Sum over rows of -log softmax(logits)[target]; rows whose one-hot row is all zero (target -1) add nothing. */
function headLoss(kind: ModelConfig['norm'], x: tf.Tensor, normP: tf.Tensor[], headW: tf.Tensor, onehot: tf.Tensor): tf.Scalar {
  const logp = tf.logSoftmax(mm(normalize(kind, x, normP), headW));
  return tf.neg(tf.sum(tf.mul(onehot, logp))) as tf.Scalar;
}

/** Runs a synchronous tfjs computation, disposing every tensor it made; returns plain JS values. */
function tidyRun<T>(f: () => T): T {
  let out: T | undefined;
  tf.tidy(() => {
    out = f();
  });
  return out as T;
}

function readF32(t: tf.Tensor): Float32Array {
  return t.dataSync() as Float32Array;
}

function addInto(dst: Float32Array, offset: number, src: ArrayLike<number>): void {
  for (let i = 0; i < src.length; i++) dst[offset + i] += src[i];
}

interface LayerWeights {
  /** Norm parameters: [weight] or [weight, bias]. */
  attnNorm: tf.Tensor1D[];
  /** wq | wk | wv side by side, [dModel, (heads + 2 kvHeads) * headDim]: one matMul for all three. */
  wqkv: tf.Tensor2D;
  wo: tf.Tensor2D;
  ffnNorm: tf.Tensor1D[];
  w1: tf.Tensor2D;
  w2: tf.Tensor2D;
  spec: {
    attnNorm: ParamSpec[];
    wq: ParamSpec;
    wk: ParamSpec;
    wv: ParamSpec;
    wo: ParamSpec;
    ffnNorm: ParamSpec[];
    w1: ParamSpec;
    w2: ParamSpec;
  };
}

/** Everything one call needs: sizes, the parameters as tfjs tensors (made once per call), the rope table. */
interface Ctx {
  cfg: ModelConfig;
  params: Params;
  n: number;
  d: number;
  hd: number;
  qDim: number;
  kvDim: number;
  chunk: number;
  rope: RopeTable;
  layers: LayerWeights[];
  finalNorm: tf.Tensor1D[];
  finalNormSpec: ParamSpec[];
  /** The output projection [dModel, vocab]: `head`, or embed^T when tied. */
  headW: tf.Tensor2D;
  embedSpec: ParamSpec;
  headSpec: ParamSpec | null;
  owned: tf.Tensor[];
}

function checkShard(cfg: ModelConfig, params: Params, shard: Pick<Shard, 'tokens' | 'positions'> & { targets?: Int32Array }): void {
  const n = shard.tokens.length;
  if (n < 1) throw new Error('model: empty shard');
  if (shard.positions.length !== n) throw new Error(`model: ${shard.positions.length} positions for ${n} tokens`);
  if (shard.targets && shard.targets.length !== n) throw new Error(`model: ${shard.targets.length} targets for ${n} tokens`);
  const last = params.specs[params.specs.length - 1];
  if (params.flat.length !== last.offset + last.size) throw new Error('model: parameter vector does not match its specs');
  for (let i = 0; i < n; i++) {
    const t = shard.tokens[i];
    if (!(t >= 0 && t < cfg.vocabSize)) throw new Error(`model: token id ${t} outside the vocabulary of ${cfg.vocabSize}`);
    const y = shard.targets?.[i];
    if (y !== undefined && y !== -1 && !(y >= 0 && y < cfg.vocabSize)) {
      throw new Error(`model: target id ${y} outside the vocabulary of ${cfg.vocabSize} (use -1 to ignore a position)`);
    }
  }
}

function makeCtx(cfg: ModelConfig, params: Params, positions: Int32Array): Ctx {
  const specs = params.specs;
  const expected = paramSpecs(cfg);
  if (expected.length !== specs.length || expected.some((s, i) => s.name !== specs[i].name || s.size !== specs[i].size)) {
    throw new Error('model: parameter specs do not match the model configuration');
  }
  const owned: tf.Tensor[] = [];
  const view = (s: ParamSpec): Float32Array => params.flat.subarray(s.offset, s.offset + s.size);
  const t1 = (s: ParamSpec): tf.Tensor1D => {
    const t = tf.tensor1d(view(s));
    owned.push(t);
    return t;
  };
  const t2 = (s: ParamSpec, data: Float32Array = view(s), shape = s.shape as [number, number]): tf.Tensor2D => {
    const t = tf.tensor2d(data, shape);
    owned.push(t);
    return t;
  };
  const normSpecs = (name: string): ParamSpec[] =>
    cfg.norm === 'layer' ? [findSpec(specs, name), findSpec(specs, `${name}_bias`)] : [findSpec(specs, name)];
  const d = cfg.dModel;
  const hd = headDimOf(cfg);
  const qDim = cfg.heads * hd;
  const kvDim = cfg.kvHeads * hd;
  const width = qDim + 2 * kvDim;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.layers; l++) {
    const p = `layers.${l}.`;
    const spec = {
      attnNorm: normSpecs(`${p}attn_norm`),
      wq: findSpec(specs, `${p}wq`),
      wk: findSpec(specs, `${p}wk`),
      wv: findSpec(specs, `${p}wv`),
      wo: findSpec(specs, `${p}wo`),
      ffnNorm: normSpecs(`${p}ffn_norm`),
      w1: findSpec(specs, `${p}w1`),
      w2: findSpec(specs, `${p}w2`),
    };
    const wq = view(spec.wq);
    const wk = view(spec.wk);
    const wv = view(spec.wv);
    const wqkv = new Float32Array(d * width);
    for (let r = 0; r < d; r++) {
      wqkv.set(wq.subarray(r * qDim, (r + 1) * qDim), r * width);
      wqkv.set(wk.subarray(r * kvDim, (r + 1) * kvDim), r * width + qDim);
      wqkv.set(wv.subarray(r * kvDim, (r + 1) * kvDim), r * width + qDim + kvDim);
    }
    layers.push({
      attnNorm: spec.attnNorm.map(t1),
      wqkv: t2(spec.wq, wqkv, [d, width]),
      wo: t2(spec.wo),
      ffnNorm: spec.ffnNorm.map(t1),
      w1: t2(spec.w1),
      w2: t2(spec.w2),
      spec,
    });
  }
  const finalNormSpec = normSpecs('final_norm');
  const embedSpec = findSpec(specs, 'embed');
  const headSpec = cfg.tiedEmbeddings ? null : findSpec(specs, 'head');
  let headW: tf.Tensor2D;
  if (headSpec) headW = t2(headSpec);
  else {
    const e = view(embedSpec);
    const V = cfg.vocabSize;
    const et = new Float32Array(d * V);
    for (let v = 0; v < V; v++) for (let j = 0; j < d; j++) et[j * V + v] = e[v * d + j];
    headW = t2(embedSpec, et, [d, V]);
  }
  return {
    cfg,
    params,
    n: positions.length,
    d,
    hd,
    qDim,
    kvDim,
    chunk: cfg.ffnChunk,
    rope: ropeTable(positions, hd, cfg.ropeBase),
    layers,
    finalNorm: finalNormSpec.map(t1),
    finalNormSpec,
    headW,
    embedSpec,
    headSpec,
    owned,
  };
}

function disposeCtx(ctx: Ctx): void {
  for (const t of ctx.owned) t.dispose();
  ctx.owned.length = 0;
}

/** Token-wise chunks [start, start + len) covering the shard. */
function chunks(n: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let s = 0; s < n; s += size) out.push([s, Math.min(size, n - s)]);
  return out;
}

function embedLookup(ctx: Ctx, tokens: Int32Array): Float32Array {
  const { d, n } = ctx;
  const e = ctx.params.flat.subarray(ctx.embedSpec.offset, ctx.embedSpec.offset + ctx.embedSpec.size);
  const x = new Float32Array(n * d);
  for (let i = 0; i < n; i++) x.set(e.subarray(tokens[i] * d, (tokens[i] + 1) * d), i * d);
  return x;
}

/** The exact backward of a row gather: scatter-add each row's gradient into its token's embedding row. */
function embedBackward(ctx: Ctx, tokens: Int32Array, dx: Float32Array, grads: Float32Array): void {
  const { d, n } = ctx;
  const off = ctx.embedSpec.offset;
  for (let i = 0; i < n; i++) {
    const row = off + tokens[i] * d;
    for (let j = 0; j < d; j++) grads[row + j] += dx[i * d + j];
  }
}

// ---- segment A: norm, q/k/v projections, rope -------------------------------------------

function segmentAFn(ctx: Ctx): (...args: tf.Tensor[]) => tf.Tensor {
  const nn = ctx.cfg.norm === 'layer' ? 2 : 1;
  return (x, ...rest) => mm(normalize(ctx.cfg.norm, x, rest.slice(0, nn)), rest[nn]);
}

function segmentAArgs(ctx: Ctx, lw: LayerWeights, x: tf.Tensor): tf.Tensor[] {
  return [x, ...lw.attnNorm, lw.wqkv];
}

function segmentAForward(ctx: Ctx, lw: LayerWeights, x: Float32Array): { q: Float32Array; k: Float32Array; v: Float32Array } {
  const { n, d, qDim, kvDim } = ctx;
  const qkv = tidyRun(() => readF32(segmentAFn(ctx)(...segmentAArgs(ctx, lw, tf.tensor2d(x, [n, d])))));
  const width = qDim + 2 * kvDim;
  const q = new Float32Array(n * qDim);
  const k = new Float32Array(n * kvDim);
  const v = new Float32Array(n * kvDim);
  for (let i = 0; i < n; i++) {
    const r = i * width;
    q.set(qkv.subarray(r, r + qDim), i * qDim);
    k.set(qkv.subarray(r + qDim, r + qDim + kvDim), i * kvDim);
    v.set(qkv.subarray(r + qDim + kvDim, r + width), i * kvDim);
  }
  applyRope(q, ctx.rope, ctx.cfg.heads);
  applyRope(k, ctx.rope, ctx.cfg.kvHeads);
  return { q, k, v };
}

/** Given dL/dq, dL/dk (of the rotated q, k) and dL/dv: adds parameter gradients, returns dL/dx through this segment. */
function segmentABackward(
  ctx: Ctx,
  lw: LayerWeights,
  x: Float32Array,
  dq: Float32Array,
  dk: Float32Array,
  dv: Float32Array,
  grads: Float32Array,
): Float32Array {
  const { n, d, qDim, kvDim } = ctx;
  const width = qDim + 2 * kvDim;
  // Rope is orthogonal: its vjp is the inverse rotation. Copies, so the attention op's arrays stay untouched.
  const dqr = applyRope(dq.slice(), ctx.rope, ctx.cfg.heads, true);
  const dkr = applyRope(dk.slice(), ctx.rope, ctx.cfg.kvHeads, true);
  const dqkv = new Float32Array(n * width);
  for (let i = 0; i < n; i++) {
    const r = i * width;
    dqkv.set(dqr.subarray(i * qDim, (i + 1) * qDim), r);
    dqkv.set(dkr.subarray(i * kvDim, (i + 1) * kvDim), r + qDim);
    dqkv.set(dv.subarray(i * kvDim, (i + 1) * kvDim), r + qDim + kvDim);
  }
  return tidyRun(() => {
    const g = tf.grads(segmentAFn(ctx))(segmentAArgs(ctx, lw, tf.tensor2d(x, [n, d])), tf.tensor2d(dqkv, [n, width]));
    const nn = lw.attnNorm.length;
    for (let i = 0; i < nn; i++) addInto(grads, lw.spec.attnNorm[i].offset, readF32(g[1 + i]));
    const gw = readF32(g[1 + nn]);
    const { wq, wk, wv } = lw.spec;
    for (let r = 0; r < d; r++) {
      addInto(grads, wq.offset + r * qDim, gw.subarray(r * width, r * width + qDim));
      addInto(grads, wk.offset + r * kvDim, gw.subarray(r * width + qDim, r * width + qDim + kvDim));
      addInto(grads, wv.offset + r * kvDim, gw.subarray(r * width + qDim + kvDim, (r + 1) * width));
    }
    return readF32(g[0]);
  });
}

// ---- segment B: output projection, residual, blockwise FFN, residual ---------------------

function ffnChunkFn(ctx: Ctx): (...args: tf.Tensor[]) => tf.Tensor {
  const nn = ctx.cfg.norm === 'layer' ? 2 : 1;
  return (x1, ...rest) => ffnBlock(ctx.cfg.norm, x1, rest.slice(0, nn), rest[nn], rest[nn + 1]);
}

function segmentBForward(ctx: Ctx, lw: LayerWeights, x: Float32Array, o: Float32Array): Float32Array {
  const { n, d, qDim } = ctx;
  const y = new Float32Array(n * d);
  const f = ffnChunkFn(ctx);
  tf.tidy(() => {
    const x1 = tf.add(tf.tensor2d(x, [n, d]), mm(tf.tensor2d(o, [n, qDim]), lw.wo));
    for (const [s, len] of chunks(n, ctx.chunk)) {
      tf.tidy(() => {
        y.set(readF32(f(tf.slice(x1, [s, 0], [len, d]), ...lw.ffnNorm, lw.w1, lw.w2)), s * d);
      });
    }
  });
  return y;
}

/** Given dL/dy: adds parameter gradients, returns dL/dx (through the residuals) and dL/do. */
function segmentBBackward(
  ctx: Ctx,
  lw: LayerWeights,
  x: Float32Array,
  o: Float32Array,
  dy: Float32Array,
  grads: Float32Array,
): { dx: Float32Array; dO: Float32Array } {
  const { n, d, qDim } = ctx;
  const dx1 = new Float32Array(n * d);
  const f = tf.grads(ffnChunkFn(ctx));
  const nn = lw.ffnNorm.length;
  const dO = tidyRun(() => {
    const oT = tf.tensor2d(o, [n, qDim]);
    const x1 = tf.add(tf.tensor2d(x, [n, d]), mm(oT, lw.wo));
    const dyT = tf.tensor2d(dy, [n, d]);
    for (const [s, len] of chunks(n, ctx.chunk)) {
      tf.tidy(() => {
        const g = f([tf.slice(x1, [s, 0], [len, d]), ...lw.ffnNorm, lw.w1, lw.w2], tf.slice(dyT, [s, 0], [len, d]));
        dx1.set(readF32(g[0]), s * d);
        for (let i = 0; i < nn; i++) addInto(grads, lw.spec.ffnNorm[i].offset, readF32(g[1 + i]));
        addInto(grads, lw.spec.w1.offset, readF32(g[1 + nn]));
        addInto(grads, lw.spec.w2.offset, readF32(g[2 + nn]));
      });
    }
    const [gO, gWo] = tf.grads((a: tf.Tensor, b: tf.Tensor) => mm(a, b))([oT, lw.wo], tf.tensor2d(dx1, [n, d]));
    addInto(grads, lw.spec.wo.offset, readF32(gWo));
    return readF32(gO);
  });
  // x1 = x + o @ Wo: the residual passes dL/dx1 straight through to x.
  return { dx: dx1, dO };
}

// ---- head: final norm, output projection, cross-entropy ----------------------------------

function oneHotRows(targets: Int32Array, s: number, len: number, V: number): { onehot: Float32Array; count: number } {
  const onehot = new Float32Array(len * V);
  let count = 0;
  for (let i = 0; i < len; i++) {
    const t = targets[s + i];
    if (t >= 0) {
      onehot[i * V + t] = 1;
      count++;
    }
  }
  return { onehot, count };
}

function headFn(ctx: Ctx, onehot: tf.Tensor): (...args: tf.Tensor[]) => tf.Scalar {
  const nn = ctx.cfg.norm === 'layer' ? 2 : 1;
  return (x, ...rest) => headLoss(ctx.cfg.norm, x, rest.slice(0, nn), rest[nn], onehot);
}

/** Loss of the final hidden states, chunk by chunk; with `grads`, also backward (scaled by lossScale). */
function headSegment(
  ctx: Ctx,
  x: Float32Array,
  targets: Int32Array,
  backward: { grads: Float32Array; lossScale: number } | null,
): { lossSum: number; tokens: number; dx: Float32Array | null } {
  const { n, d } = ctx;
  const V = ctx.cfg.vocabSize;
  let lossSum = 0;
  let tokens = 0;
  const dx = backward ? new Float32Array(n * d) : null;
  const dHead = backward ? new Float32Array(d * V) : null;
  const nn = ctx.finalNorm.length;
  tf.tidy(() => {
    const xT = tf.tensor2d(x, [n, d]);
    for (const [s, len] of chunks(n, ctx.chunk)) {
      const { onehot, count } = oneHotRows(targets, s, len, V);
      if (count === 0) continue; // nothing to predict here: no loss, no gradient
      tokens += count;
      tf.tidy(() => {
        const oh = tf.tensor2d(onehot, [len, V]);
        const args = [tf.slice(xT, [s, 0], [len, d]), ...ctx.finalNorm, ctx.headW];
        if (!backward || !dx || !dHead) {
          lossSum += readF32(headFn(ctx, oh)(...args))[0];
          return;
        }
        const { value, grads: g } = tf.valueAndGrads(headFn(ctx, oh))(args, tf.scalar(backward.lossScale));
        lossSum += readF32(value)[0];
        dx.set(readF32(g[0]), s * d);
        for (let i = 0; i < nn; i++) addInto(backward.grads, ctx.finalNormSpec[i].offset, readF32(g[1 + i]));
        addInto(dHead, 0, readF32(g[1 + nn]));
      });
    }
  });
  if (backward && dHead) {
    if (ctx.headSpec) addInto(backward.grads, ctx.headSpec.offset, dHead);
    else {
      // Tied: head = embed^T, so d(embed)[v, j] += d(head)[j, v].
      const off = ctx.embedSpec.offset;
      for (let j = 0; j < d; j++) for (let v = 0; v < V; v++) backward.grads[off + v * d + j] += dHead[j * V + v];
    }
  }
  return { lossSum, tokens, dx };
}

// ---- whole shard ---------------------------------------------------------------------------

interface Saved {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  lse: Float32Array;
}

/** Runs every layer; keeps each layer's input and attention tensors when `keep`, else only the current x. */
async function forwardLayers(
  ctx: Ctx,
  tokens: Int32Array,
  attn: AttentionOp,
  keep: boolean,
): Promise<{ xs: Float32Array[]; saved: Saved[]; out: Float32Array }> {
  const xs: Float32Array[] = [];
  const saved: Saved[] = [];
  let x = embedLookup(ctx, tokens);
  for (const lw of ctx.layers) {
    const { q, k, v } = segmentAForward(ctx, lw, x);
    const { o, lse } = await attn.forward(q, k, v);
    if (o.length !== ctx.n * ctx.qDim) throw new Error(`model: attention returned ${o.length} outputs, expected ${ctx.n * ctx.qDim}`);
    if (keep) {
      xs.push(x);
      saved.push({ q, k, v, o, lse });
    }
    x = segmentBForward(ctx, lw, x, o);
  }
  return { xs, saved, out: x };
}

/**
 * Forward and backward of one rank's shard. Returns the loss summed over this
 * shard's tokens (targets of -1 excluded) and dL/dparams of lossSum * lossScale
 * in the flat layout. Attention is the only part that talks to other ranks:
 * every rank must make the same sequence of attn calls (forward per layer,
 * then backward per layer in reverse), which this function always does, even
 * for a shard without any target.
 */
export async function shardForwardBackward(
  cfg: ModelConfig,
  params: Params,
  shard: Shard,
  attn: AttentionOp,
  lossScale: number,
): Promise<ShardStep> {
  checkShard(cfg, params, shard);
  if (!Number.isFinite(lossScale)) throw new Error(`model: lossScale must be finite, got ${lossScale}`);
  const ctx = makeCtx(cfg, params, shard.positions);
  try {
    const grads = new Float32Array(params.flat.length);
    const { xs, saved, out } = await forwardLayers(ctx, shard.tokens, attn, true);
    const head = headSegment(ctx, out, shard.targets, { grads, lossScale });
    let dx = head.dx as Float32Array;
    for (let l = cfg.layers - 1; l >= 0; l--) {
      const lw = ctx.layers[l];
      const b = segmentBBackward(ctx, lw, xs[l], saved[l].o, dx, grads);
      const { dq, dk, dv } = await attn.backward(saved[l], b.dO);
      const dxA = segmentABackward(ctx, lw, xs[l], dq, dk, dv, grads);
      dx = b.dx;
      for (let i = 0; i < dx.length; i++) dx[i] += dxA[i];
      // Let this layer's activations go as soon as they are used.
      xs.length = l;
      saved.length = l;
    }
    embedBackward(ctx, shard.tokens, dx, grads);
    return { lossSum: head.lossSum, tokens: head.tokens, grads };
  } finally {
    disposeCtx(ctx);
  }
}

/** Forward only: the loss summed over this shard's tokens (for evaluation). Makes the same attn.forward calls as training. */
export async function shardLoss(
  cfg: ModelConfig,
  params: Params,
  shard: Shard,
  attn: AttentionOp,
): Promise<{ lossSum: number; tokens: number }> {
  checkShard(cfg, params, shard);
  const ctx = makeCtx(cfg, params, shard.positions);
  try {
    const { out } = await forwardLayers(ctx, shard.tokens, attn, false);
    const { lossSum, tokens } = headSegment(ctx, out, shard.targets, null);
    return { lossSum, tokens };
  } finally {
    disposeCtx(ctx);
  }
}

/**
 * Forward only: logits [rows, vocab] of the shard's rows [fromRow, n) (default:
 * all). Generation asks only for the last row.
 */
export async function shardLogits(
  cfg: ModelConfig,
  params: Params,
  shard: Pick<Shard, 'tokens' | 'positions'>,
  attn: AttentionOp,
  fromRow = 0,
): Promise<Float32Array> {
  checkShard(cfg, params, shard);
  const ctx = makeCtx(cfg, params, shard.positions);
  try {
    const { out } = await forwardLayers(ctx, shard.tokens, attn, false);
    const rows = ctx.n - fromRow;
    if (!(fromRow >= 0 && rows >= 1)) throw new Error(`model: fromRow ${fromRow} outside the shard of ${ctx.n} tokens`);
    return tidyRun(() => {
      const x = tf.tensor2d(out.subarray(fromRow * ctx.d), [rows, ctx.d]);
      return readF32(mm(normalize(cfg.norm, x, ctx.finalNorm), ctx.headW));
    });
  } finally {
    disposeCtx(ctx);
  }
}
