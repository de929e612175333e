import type { ParamSpec } from '../model/types.js';

/** AdamW hyper-parameters for one update; `lr` comes from the schedule. */
export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/**
 * Optimizer state as flat arrays aligned with Params.flat, so that checkpoints
 * write it exactly like the parameters. `step` counts completed updates.
 */
export interface AdamWState {
  m: Float32Array;
  v: Float32Array;
  step: number;
}

export function createAdamWState(size: number): AdamWState {
  return { m: new Float32Array(size), v: new Float32Array(size), step: 0 };
}

/**
 * 1 where weight decay applies. Norm weights and biases are 1-D (shape of length
 * <= 1); decaying them pulls gains towards zero, which only hurts, so they are exempt.
 */
export function decayMask(specs: readonly ParamSpec[], size: number): Uint8Array {
  const mask = new Uint8Array(size);
  for (const s of specs) {
    if (s.shape.length >= 2) mask.fill(1, s.offset, s.offset + s.size);
  }
  return mask;
}

/**
 * One AdamW update in place (decoupled weight decay, as in Loshchilov & Hutter):
 *   p <- p * (1 - lr*wd*mask);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
 *   p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
 * Arithmetic is in float64 and stored as float32, element by element in index
 * order, so every rank (same inputs) produces bit-identical parameters.
 */
export function adamwStep(
  params: Float32Array,
  grads: Float32Array,
  state: AdamWState,
  hp: AdamWHyper,
  mask?: Uint8Array,
): void {
  const n = params.length;
  if (grads.length < n || state.m.length !== n || state.v.length !== n) {
    throw new Error(`adamwStep: size mismatch (params ${n}, grads ${grads.length}, m ${state.m.length}, v ${state.v.length})`);
  }
  const t = state.step + 1;
  const { lr, beta1, beta2, eps, weightDecay } = hp;
  const bc1 = 1 - Math.pow(beta1, t);
  const bc2 = 1 - Math.pow(beta2, t);
  const decay = lr * weightDecay;
  const m = state.m;
  const v = state.v;
  for (let i = 0; i < n; i++) {
    const g = grads[i];
    const mi = beta1 * m[i] + (1 - beta1) * g;
    const vi = beta2 * v[i] + (1 - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let p = params[i];
    if (decay !== 0 && (mask === undefined || mask[i] === 1)) p -= decay * p;
    p -= (lr * (mi / bc1)) / (Math.sqrt(vi / bc2) + eps);
    params[i] = p;
  }
  state.step = t;
}

/** Global L2 norm, accumulated in float64 in index order (deterministic). */
export function globalNorm(x: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.sqrt(s);
}

/**
 * Scales `grads` in place so their global L2 norm is at most `maxNorm`
 * (0 = no clipping). Returns the norm before clipping, which is what the
 * metrics report: it shows how far above the threshold training runs.
 */
export function clipByGlobalNorm(grads: Float32Array, maxNorm: number): number {
  const norm = globalNorm(grads);
  if (maxNorm > 0 && Number.isFinite(norm) && norm > maxNorm) {
    const scale = maxNorm / norm;
    for (let i = 0; i < grads.length; i++) grads[i] *= scale;
  }
  return norm;
}
