import * as tf from '@tensorflow/tfjs';
import { headDimOf, paramSpecs } from './params.js';
import type { ModelConfig, Params } from './types.js';

/**
 * An independent, unsharded implementation of the same model, for tests only:
 * the whole sequence in one process, the embedding as a one-hot matMul, rotary
 * embedding from tfjs slices, dense causal softmax attention with the full
 * [heads, s, s] score tensor, the FFN over all tokens at once, and gradients by
 * plain tfjs autodiff of the whole loss. It shares no code with transformer.ts
 * beyond the parameter layout, so agreement between the two is evidence for both.
 * Float32, O(s^2) memory: tiny sizes only.
 */

const EPS = 1e-5;

function norm(kind: ModelConfig['norm'], x: tf.Tensor, w: tf.Tensor, b: tf.Tensor | undefined): tf.Tensor {
  if (kind === 'rms') {
    const ms = tf.mean(tf.mul(x, x), -1, true);
    return tf.mul(tf.div(x, tf.sqrt(tf.add(ms, EPS))), w);
  }
  const { mean, variance } = tf.moments(x, -1, true);
  const y = tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, EPS)));
  return tf.add(tf.mul(y, w), b as tf.Tensor);
}

/** x: [s, heads, hd] rotated by position p * base^(-2j/hd) on pairs (j, j + hd/2). */
function rotary(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  const [s, h, hd] = x.shape;
  const half = hd / 2;
  const a = tf.slice(x, [0, 0, 0], [s, h, half]);
  const b = tf.slice(x, [0, 0, half], [s, h, half]);
  return tf.concat([tf.sub(tf.mul(a, cos), tf.mul(b, sin)), tf.add(tf.mul(b, cos), tf.mul(a, sin))], 2);
}

/** Sum of next-token cross-entropies over the sequence (targets -1 ignored), built from named parameter tensors. */
function lossOf(cfg: ModelConfig, p: Record<string, tf.Tensor>, tokens: Int32Array, targets: Int32Array): tf.Scalar {
  const s = tokens.length;
  const V = cfg.vocabSize;
  const H = cfg.heads;
  const KV = cfg.kvHeads;
  const hd = headDimOf(cfg);
  const half = hd / 2;
  const cosA = new Float32Array(s * half);
  const sinA = new Float32Array(s * half);
  for (let i = 0; i < s; i++) {
    for (let j = 0; j < half; j++) {
      const ang = i / Math.pow(cfg.ropeBase, (2 * j) / hd);
      cosA[i * half + j] = Math.cos(ang);
      sinA[i * half + j] = Math.sin(ang);
    }
  }
  const cos = tf.tensor3d(cosA, [s, 1, half]);
  const sin = tf.tensor3d(sinA, [s, 1, half]);
  const mask = new Float32Array(s * s);
  for (let i = 0; i < s; i++) for (let j = i + 1; j < s; j++) mask[i * s + j] = -1e9;
  const maskT = tf.tensor3d(mask, [1, s, s]);

  let x = tf.matMul(tf.cast(tf.oneHot(tf.tensor1d(tokens, 'int32'), V), 'float32'), p.embed);
  for (let l = 0; l < cfg.layers; l++) {
    const w = (n: string): tf.Tensor => p[`layers.${l}.${n}`];
    const h = norm(cfg.norm, x, w('attn_norm'), p[`layers.${l}.attn_norm_bias`]);
    const q = rotary(tf.reshape(tf.matMul(h, w('wq')), [s, H, hd]), cos, sin);
    const k = rotary(tf.reshape(tf.matMul(h, w('wk')), [s, KV, hd]), cos, sin);
    const v = tf.reshape(tf.matMul(h, w('wv')), [s, KV, hd]);
    // [heads, s, hd]; query head h reads KV head floor(h / group) (GQA), so each KV head is repeated group times.
    const group = H / KV;
    const repeatKV = (t: tf.Tensor): tf.Tensor =>
      tf.reshape(tf.tile(tf.expandDims(tf.transpose(t, [1, 0, 2]), 1), [1, group, 1, 1]), [H, s, hd]);
    const qh = tf.transpose(q, [1, 0, 2]);
    const kh = repeatKV(k);
    const vh = repeatKV(v);
    const scores = tf.add(tf.mul(tf.matMul(qh, kh, false, true), 1 / Math.sqrt(hd)), maskT);
    const o = tf.matMul(tf.softmax(scores), vh); // [heads, s, hd]
    const oFlat = tf.reshape(tf.transpose(o, [1, 0, 2]), [s, H * hd]);
    x = tf.add(x, tf.matMul(oFlat, w('wo')));
    const h2 = norm(cfg.norm, x, w('ffn_norm'), p[`layers.${l}.ffn_norm_bias`]);
    const a = tf.matMul(h2, w('w1'));
    const act = tf.div(a, tf.add(1, tf.exp(tf.neg(a)))); // SiLU
    x = tf.add(x, tf.matMul(act, w('w2')));
  }
  const hf = norm(cfg.norm, x, p.final_norm, p.final_norm_bias);
  const logits = cfg.tiedEmbeddings ? tf.matMul(hf, p.embed, false, true) : tf.matMul(hf, p.head);
  const oh = new Float32Array(s * V);
  for (let i = 0; i < s; i++) if (targets[i] >= 0) oh[i * V + targets[i]] = 1;
  const logZ = tf.logSumExp(logits, -1, true);
  return tf.sum(tf.mul(tf.tensor2d(oh, [s, V]), tf.sub(logZ, logits)));
}

/** The loss summed over the sequence's tokens and its gradient d(lossSum)/dparams in the flat layout. */
export function referenceLossAndGrads(
  cfg: ModelConfig,
  params: Params,
  tokens: Int32Array,
  targets: Int32Array,
): { lossSum: number; grads: Float32Array } {
  const specs = paramSpecs(cfg);
  if (tokens.length !== targets.length) throw new Error('reference: tokens and targets differ in length');
  const grads = new Float32Array(params.flat.length);
  let lossSum = 0;
  tf.tidy(() => {
    const tensors = specs.map((s) => tf.tensor(params.flat.subarray(s.offset, s.offset + s.size), s.shape));
    const f = (...ts: tf.Tensor[]): tf.Scalar => {
      const named: Record<string, tf.Tensor> = {};
      specs.forEach((s, i) => (named[s.name] = ts[i]));
      return lossOf(cfg, named, tokens, targets);
    };
    const { value, grads: g } = tf.valueAndGrads(f)(tensors);
    lossSum = value.dataSync()[0];
    specs.forEach((s, i) => grads.set(g[i].dataSync(), s.offset));
  });
  return { lossSum, grads };
}

/** The loss summed over the sequence, forward only (for finite differences). */
export function referenceLoss(cfg: ModelConfig, params: Params, tokens: Int32Array, targets: Int32Array): number {
  const specs = paramSpecs(cfg);
  let loss = NaN;
  tf.tidy(() => {
    const named: Record<string, tf.Tensor> = {};
    for (const s of specs) named[s.name] = tf.tensor(params.flat.subarray(s.offset, s.offset + s.size), s.shape);
    loss = lossOf(cfg, named, tokens, targets).dataSync()[0];
  });
  return loss;
}
