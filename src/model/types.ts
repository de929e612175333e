import type { Engine, Tensor } from '../engine/types.js';

/**
 * Contracts between the model (src/model/), ring attention (src/attention/) and
 * the trainer (src/train/). Arrays are token-major: [tokens, heads, headDim].
 */

/** Mirrors the spec's `model` section (src/config/schema.ts). */
export interface ModelConfig {
  vocabSize: number;
  dModel: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffnHidden: number;
  /** Tokens per blockwise-FFN chunk: the FFN intermediate never spans more than this. */
  ffnChunk: number;
  norm: 'rms' | 'layer';
  tiedEmbeddings: boolean;
  ropeBase: number;
  initStd: number;
}

/** One parameter tensor inside the flat parameter vector. */
export interface ParamSpec {
  name: string;
  shape: number[];
  offset: number;
  size: number;
}

/**
 * All parameters live in one flat Float32Array so that the all-reduce, the
 * optimizer and checkpoints each handle a single buffer; `specs` names the slices.
 */
export interface Params {
  flat: Float32Array;
  specs: ParamSpec[];
}

/** The attention tensors of one layer, on the model's engine: q [n, heads, headDim]; k, v [n, kvHeads, headDim]; o like q; lse [heads, n]. */
export interface AttentionTensors {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  o: Tensor;
  lse: Tensor;
}

/**
 * What the attention layer of the model needs from ring attention, for the
 * local shard, on engine tensors: an engine with its own attention (webgpu)
 * keeps them on the device; others run on host arrays (`onHostArrays`).
 */
export interface AttentionOp {
  /** Writes o and lse from q, k, v. */
  forward(engine: Engine, t: AttentionTensors): Promise<void>;
  /** Writes dq, dk, dv from the forward's tensors and dL/do. */
  backward(engine: Engine, saved: AttentionTensors, dO: Tensor, grads: { dq: Tensor; dk: Tensor; dv: Tensor }): Promise<void>;
}

/** Attention on host arrays: q [n, heads, headDim]; k, v [n, kvHeads, headDim]; returns o [n, heads, headDim], lse [heads, n]. */
export interface HostAttentionOp {
  forward(q: Float32Array, k: Float32Array, v: Float32Array): Promise<{ o: Float32Array; lse: Float32Array }>;
  backward(
    saved: { q: Float32Array; k: Float32Array; v: Float32Array; o: Float32Array; lse: Float32Array },
    dO: Float32Array,
  ): Promise<{ dq: Float32Array; dk: Float32Array; dv: Float32Array }>;
}

/** One rank's part of one training sequence. */
export interface Shard {
  /** Input token ids at this rank's positions. */
  tokens: Int32Array;
  /** Next-token targets for those positions (token at position p+1 of the full window), -1 = ignore. */
  targets: Int32Array;
  /** Global token positions (from the layout): rotary positions use these. */
  positions: Int32Array;
}
