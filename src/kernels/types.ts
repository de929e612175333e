/**
 * The contract every blockwise attention kernel implements: one query block
 * against one KV block, on one host. Ring attention (src/attention/) calls a
 * kernel once per ring step and merges the partial results with `mergePartial`.
 *
 * Memory layout, everywhere: row-major, token-major.
 *   q, o, dO, dq : [qLen,  heads,   headDim]
 *   k, v, dk, dv : [kvLen, kvHeads, headDim]
 *   lse, delta   : [heads, qLen]
 * Query head h reads KV head floor(h / (heads / kvHeads)) (GQA / MQA grouping).
 *
 * Masks are defined by *global* token positions, so a kernel never needs to know
 * which layout (contiguous, zigzag, striped) produced the blocks:
 *   query row i may attend to key j  iff
 *     (!causal || kvPos[j] <= qPos[i]) && (!qSeg || qSeg[i] === kvSeg[j])
 *     && (!window || qPos[i] - kvPos[j] < window)                   (causal: the W keys up to and including i)
 *     && (!window || causal || kvPos[j] - qPos[i] < window)          (not causal: |i - j| < W).
 * window 0 (or absent) is no window.
 * A query row with no allowed key has lse = -Infinity and an all-zero output row.
 */
export interface AttentionDims {
  heads: number;
  kvHeads: number;
  headDim: number;
}

export interface BlockArgs extends AttentionDims {
  qLen: number;
  kvLen: number;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  qPos: Int32Array;
  kvPos: Int32Array;
  /** Document ids for packed sequences; both present or both absent. */
  qSeg?: Int32Array;
  kvSeg?: Int32Array;
  causal: boolean;
  /** Sliding window W: keys within W positions of the query (see the rule above); 0 or absent = none. */
  window?: number;
  /** Softmax scale; 1/sqrt(headDim) by convention. */
  scale: number;
}

/** Partial attention of a query block against one KV block, normalised within that block. */
export interface BlockPartial {
  o: Float32Array; // [qLen, heads, headDim]
  lse: Float32Array; // [heads, qLen]
}

export interface BlockGradArgs {
  /** Gradient of the loss w.r.t. the final (merged) output: [qLen, heads, headDim]. */
  dO: Float32Array;
  /** Final lse of the query block after merging all KV blocks: [heads, qLen]. */
  lse: Float32Array;
  /** rowsum(dO * o) with the final o: [heads, qLen]. */
  delta: Float32Array;
}

/** Gradient accumulators; a kernel's backward *adds* its contribution into them. */
export interface BlockGrads {
  dq: Float32Array; // [qLen, heads, headDim]
  dk: Float32Array; // [kvLen, kvHeads, headDim]
  dv: Float32Array; // [kvLen, kvHeads, headDim]
}

/** Inner tile sizes: no kernel holds more than tileQ x tileKV scores at once. */
export interface TileSizes {
  tileQ: number;
  tileKV: number;
}

export interface AttentionKernel {
  readonly name: string;
  forward(args: BlockArgs): Promise<BlockPartial>;
  backward(args: BlockArgs, grad: BlockGradArgs, acc: BlockGrads): Promise<void>;
}
