
/**
 * Contracts between the model (src/model/) and the trainer (src/train/); the
 * attention op the model calls is ring attention's (src/attention/op.ts).
 * Arrays are token-major: [tokens, heads, headDim].
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

/** One rank's part of one training sequence. */
export interface Shard {
  /** Input token ids at this rank's positions. */
  tokens: Int32Array;
  /** Next-token targets for those positions (token at position p+1 of the full window), -1 = ignore. */
  targets: Int32Array;
  /** Global token positions (from the layout): rotary positions use these. */
  positions: Int32Array;
}
