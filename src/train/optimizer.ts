import { slice, type Engine, type Tensor } from '../engine/index.js';
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

/**
 * Norm weights and biases are 1-D; decaying them pulls gains towards zero,
 * which only hurts, so only tensors of two or more dimensions are decayed.
 */
export function isDecayed(spec: ParamSpec): boolean {
  return spec.shape.length >= 2;
}

/** The optimizer's buffers in the engine, aligned with the flat parameters. */
export interface OptimizerBuffers {
  params: Tensor;
  grads: Tensor;
  m: Tensor;
  v: Tensor;
}

/**
 * One AdamW update (decoupled weight decay, as in Loshchilov & Hutter), with
 * global-norm clipping folded in as a gradient scale:
 *   g <- g * gradScale;  p <- p * (1 - lr*wd*decayed);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
 *   p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
 * in float64 element by element on every engine, so every rank (same inputs)
 * produces bit-identical parameters. `t` is the 1-based update number.
 */
export function adamwUpdate(engine: Engine, specs: readonly ParamSpec[], b: OptimizerBuffers, t: number, hp: AdamWHyper, gradScale: number): void {
  const bc1 = 1 - Math.pow(hp.beta1, t);
  const bc2 = 1 - Math.pow(hp.beta2, t);
  for (const s of specs) {
    const part = (x: Tensor): Tensor => slice(x, s.offset, s.size);
    engine.adamw(
      { lr: hp.lr, beta1: hp.beta1, beta2: hp.beta2, eps: hp.eps, decay: isDecayed(s) ? hp.lr * hp.weightDecay : 0, bc1, bc2, gradScale },
      part(b.params),
      part(b.grads),
      part(b.m),
      part(b.v),
    );
  }
}

/**
 * The factor that brings a gradient of global L2 norm `norm` down to `maxNorm`
 * (1 when it is already below, or when maxNorm is 0: no clipping).
 */
export function clipScale(norm: number, maxNorm: number): number {
  return maxNorm > 0 && Number.isFinite(norm) && norm > maxNorm ? maxNorm / norm : 1;
}
