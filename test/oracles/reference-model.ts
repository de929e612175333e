/**
 * A float64 oracle of the transformer, for tests only. It shares no code with
 * src/model/transformer.ts or any engine: only the parameter layout
 * (`params.specs`, built by src/model/params.ts) and `headDimOf`. Gradients come
 * from the small reverse-mode tape in ./autodiff.ts.
 *
 * The model, over the whole sequence given, with n tokens:
 *   x = embed[tokens]                                          [n, d]
 *   per layer:
 *     h = norm(x); q = h wq, k = h wk, v = h wv                 (heads of width hd = d / heads)
 *     q, k rotated per head by angle pos * base^(-2j/hd) on the pairs (j, j + hd/2), pos = the GLOBAL positions given
 *     query head i reads kv head floor(i / (heads / kvHeads)); scores q k^T / sqrt(hd),
 *     masked (when causal) to kvPos[j] <= qPos[i], softmax, times v
 *     x = x + concat(heads) wo
 *     x = x + silu(norm(x) w1) w2,  silu(u) = u * sigmoid(u)
 *   logits = norm(x) head   (or norm(x) embed^T with tied embeddings)
 *   loss = sum over positions with target >= 0 of -log softmax(logits)[target]
 * norm: RMSNorm x / sqrt(mean(x^2) + eps) * w, or LayerNorm (x - mean) / sqrt(var + eps) * w + b; eps = 1e-5.
 * Dense [n, n] scores per head: tiny sizes only.
 */
import { headDimOf } from '../../src/model/params.js';
import type { ModelConfig, Params } from '../../src/model/types.js';
import * as ad from './autodiff.js';
import type { Node } from './autodiff.js';

const EPS = 1e-5;

export interface ReferenceResult {
  loss: number;
  tokens: number;
  grads: Float64Array;
}

export interface ReferenceOptions {
  /** Mask attention to kvPos[j] <= qPos[i] (default true); false attends to the whole sequence. */
  causal?: boolean;
}

interface Sequence {
  tokens: Int32Array;
  positions: Int32Array;
}

/** One leaf per parameter tensor, float64 copies of the float32 values. */
function leaves(params: Params): Map<string, Node> {
  const out = new Map<string, Node>();
  for (const s of params.specs) {
    out.set(s.name, ad.param(Float64Array.from(params.flat.subarray(s.offset, s.offset + s.size)), s.shape));
  }
  return out;
}

function norm(cfg: ModelConfig, x: Node, w: Node, b: Node | undefined): Node {
  const eps = ad.scalar(EPS);
  if (cfg.norm === 'rms') {
    const ms = ad.meanLast(ad.mul(x, x));
    return ad.mul(ad.mul(x, ad.rsqrt(ad.add(ms, eps))), w);
  }
  if (!b) throw new Error('reference-model: LayerNorm without a bias');
  const xc = ad.sub(x, ad.meanLast(x));
  const variance = ad.meanLast(ad.mul(xc, xc));
  return ad.add(ad.mul(ad.mul(xc, ad.rsqrt(ad.add(variance, eps))), w), b);
}

/** x: [n, hd] (one head) rotated on the pairs (j, j + hd/2) by the angles whose cos / sin are given, [n, hd/2]. */
function rotary(x: Node, cos: Node, sin: Node): Node {
  const hd = x.shape[1];
  const half = hd / 2;
  const a = ad.sliceLast(x, 0, half);
  const b = ad.sliceLast(x, half, hd);
  return ad.concatLast([ad.sub(ad.mul(a, cos), ad.mul(b, sin)), ad.add(ad.mul(b, cos), ad.mul(a, sin))]);
}

/** Row-wise maximum of a 2-D value over the entries where `allowed` (1) is set, as a constant [rows, 1]. */
function rowMax(v: Float64Array, rows: number, cols: number, allowed?: Float64Array): Node {
  const m = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = -Infinity;
    for (let c = 0; c < cols; c++) if (!allowed || allowed[r * cols + c]) best = Math.max(best, v[r * cols + c]);
    m[r] = Number.isFinite(best) ? best : 0;
  }
  return ad.constant(m, [rows, 1]);
}

/** Softmax over the last axis of s [n, n], restricted to the entries where mask01 is 1. */
function maskedSoftmax(s: Node, mask01: Float64Array): Node {
  const [rows, cols] = s.shape;
  // Subtracting a per-row constant leaves the softmax, and so its gradient, unchanged.
  const e = ad.mul(ad.exp(ad.sub(s, rowMax(s.value, rows, cols, mask01))), ad.constant(mask01, [rows, cols]));
  return ad.div(e, ad.sumLast(e));
}

/** Logits [n, vocab] as a tape node, plus the parameter leaves. */
function forward(cfg: ModelConfig, params: Params, seq: Sequence, opts: ReferenceOptions): { logits: Node; leaves: Map<string, Node> } {
  const { tokens, positions } = seq;
  const n = tokens.length;
  if (positions.length !== n) throw new Error(`reference-model: ${n} tokens but ${positions.length} positions`);
  const causal = opts.causal ?? true;
  const H = cfg.heads;
  const KV = cfg.kvHeads;
  const hd = headDimOf(cfg);
  const half = hd / 2;
  const group = H / KV;
  const p = leaves(params);
  const get = (name: string): Node => {
    const t = p.get(name);
    if (!t) throw new Error(`reference-model: no parameter ${name}`);
    return t;
  };

  const cosA = new Float64Array(n * half);
  const sinA = new Float64Array(n * half);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < half; j++) {
      const ang = positions[i] * Math.pow(cfg.ropeBase, (-2 * j) / hd);
      cosA[i * half + j] = Math.cos(ang);
      sinA[i * half + j] = Math.sin(ang);
    }
  }
  const cos = ad.constant(cosA, [n, half]);
  const sin = ad.constant(sinA, [n, half]);
  const mask01 = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) mask01[i * n + j] = !causal || positions[j] <= positions[i] ? 1 : 0;

  let x = ad.gatherRows(get('embed'), tokens);
  for (let l = 0; l < cfg.layers; l++) {
    const w = (name: string): Node => get(`layers.${l}.${name}`);
    const bias = (name: string): Node | undefined => p.get(`layers.${l}.${name}_bias`);
    const h = norm(cfg, x, w('attn_norm'), bias('attn_norm'));
    const q = ad.matmul(h, w('wq'));
    const k = ad.matmul(h, w('wk'));
    const v = ad.matmul(h, w('wv'));
    const kHeads: Node[] = [];
    const vHeads: Node[] = [];
    for (let g = 0; g < KV; g++) {
      kHeads.push(rotary(ad.sliceLast(k, g * hd, (g + 1) * hd), cos, sin));
      vHeads.push(ad.sliceLast(v, g * hd, (g + 1) * hd));
    }
    const outs: Node[] = [];
    for (let hh = 0; hh < H; hh++) {
      const g = Math.floor(hh / group);
      const qh = rotary(ad.sliceLast(q, hh * hd, (hh + 1) * hd), cos, sin);
      const scores = ad.scale(ad.matmul(qh, kHeads[g], false, true), 1 / Math.sqrt(hd));
      outs.push(ad.matmul(maskedSoftmax(scores, mask01), vHeads[g]));
    }
    x = ad.add(x, ad.matmul(ad.concatLast(outs), w('wo')));
    const h2 = norm(cfg, x, w('ffn_norm'), bias('ffn_norm'));
    const a = ad.matmul(h2, w('w1'));
    x = ad.add(x, ad.matmul(ad.mul(a, ad.sigmoid(a)), w('w2')));
  }
  const hf = norm(cfg, x, get('final_norm'), p.get('final_norm_bias'));
  const logits = cfg.tiedEmbeddings ? ad.matmul(hf, get('embed'), false, true) : ad.matmul(hf, get('head'));
  return { logits, leaves: p };
}

/** The summed loss as a [1, 1] node and the number of counted tokens. */
function lossNode(logits: Node, targets: Int32Array): { loss: Node; tokens: number } {
  const [n, V] = logits.shape;
  if (targets.length !== n) throw new Error(`reference-model: ${n} tokens but ${targets.length} targets`);
  const onehot = new Float64Array(n * V);
  const valid = new Float64Array(n);
  let count = 0;
  for (let i = 0; i < n; i++) {
    const t = targets[i];
    if (t < 0) continue;
    if (t >= V) throw new Error(`reference-model: target ${t} outside the vocabulary (${V})`);
    onehot[i * V + t] = 1;
    valid[i] = 1;
    count++;
  }
  // log-sum-exp with a constant per-row shift m: m + log(sum(exp(z - m))) is log-sum-exp for every z, so its gradient is exact.
  const m = rowMax(logits.value, n, V);
  const lse = ad.add(ad.log(ad.sumLast(ad.exp(ad.sub(logits, m)))), m);
  const picked = ad.sumLast(ad.mul(logits, ad.constant(onehot, [n, V])));
  const per = ad.mul(ad.sub(lse, picked), ad.constant(valid, [n, 1]));
  return { loss: ad.sumLast(ad.reshape(per, [1, n])), tokens: count };
}

/** Sum of token losses over the whole sequence, and d(lossSum * lossScale)/d(params) in the flat layout of params.specs. */
export function referenceLossAndGrads(
  cfg: ModelConfig,
  params: Params,
  seq: { tokens: Int32Array; targets: Int32Array; positions: Int32Array },
  lossScale = 1,
  opts: ReferenceOptions = {},
): ReferenceResult {
  const { logits, leaves: p } = forward(cfg, params, seq, opts);
  const { loss, tokens } = lossNode(logits, seq.targets);
  ad.backward(ad.scale(loss, lossScale));
  const grads = new Float64Array(params.flat.length);
  for (const s of params.specs) {
    const g = p.get(s.name)!.grad;
    if (g) grads.set(g, s.offset);
  }
  return { loss: loss.value[0], tokens, grads };
}

/** Forward only: the summed loss and the number of counted tokens. */
export function referenceLoss(
  cfg: ModelConfig,
  params: Params,
  seq: { tokens: Int32Array; targets: Int32Array; positions: Int32Array },
  opts: ReferenceOptions = {},
): { loss: number; tokens: number } {
  const { logits } = forward(cfg, params, seq, opts);
  const { loss, tokens } = lossNode(logits, seq.targets);
  return { loss: loss.value[0], tokens };
}

/** logits [n, vocab] in float64 */
export function referenceLogits(
  cfg: ModelConfig,
  params: Params,
  seq: { tokens: Int32Array; positions: Int32Array },
  opts: ReferenceOptions = {},
): Float64Array {
  return forward(cfg, params, seq, opts).logits.value;
}
