import { emptyPartial, mergePartial } from '../kernels/merge.js';
import type { AttentionDims, AttentionKernel, BlockPartial } from '../kernels/types.js';
import { onHostArrays } from './op.js';
import type { AttentionOp } from './op.js';
import { allGather } from '../ring/collectives.js';
import type { Ring } from '../ring/transport.js';
import { ringAttentionForward, type RingAttentionConfig } from './ring-attention.js';

/**
 * Inference on the ring: each rank keeps the K and V of its share of the
 * context, per layer (its part of the KV cache, memory proportional to the
 * share), filled by the prefill and grown by one token per decode step on the
 * rank with the fewest.
 *
 * Decoding is SPMD: every rank computes the new token's hidden state (the
 * parameters are replicated), attends its q to its own cache shard, and the
 * partial outputs of all ranks are gathered and merged by lse in rank order,
 * so every rank holds the same bits and samples the same next token.
 */

/** One layer's cached keys and values: the first `len` rows, in arrival order, with their global positions. */
interface LayerCache {
  len: number;
  positions: Int32Array;
  k: Float32Array;
  v: Float32Array;
}

export interface KvCache {
  /** Floats per cached row of K (and of V): kvHeads * headDim. */
  readonly width: number;
  readonly layers: LayerCache[];
}

export function newKvCache(layers: number, width: number): KvCache {
  return { width, layers: Array.from({ length: layers }, () => ({ len: 0, positions: new Int32Array(0), k: new Float32Array(0), v: new Float32Array(0) })) };
}

/** Tokens this rank holds (every layer holds the same positions). */
export function cachedTokens(cache: KvCache): number {
  return cache.layers[0]?.len ?? 0;
}

function append(cache: KvCache, layer: number, positions: Int32Array, k: Float32Array, v: Float32Array): void {
  const c = cache.layers[layer];
  const w = cache.width;
  const need = c.len + positions.length;
  if (need > c.positions.length) {
    // Doubling keeps a decode step's append amortised O(1).
    const cap = Math.max(need, 2 * c.positions.length, 16);
    const grow = <T extends Int32Array | Float32Array>(a: T, width: number, make: (n: number) => T): T => {
      const b = make(cap * width);
      b.set(a.subarray(0, c.len * width));
      return b;
    };
    c.positions = grow(c.positions, 1, (n) => new Int32Array(n));
    c.k = grow(c.k, w, (n) => new Float32Array(n));
    c.v = grow(c.v, w, (n) => new Float32Array(n));
  }
  c.positions.set(positions, c.len);
  c.k.set(k, c.len * w);
  c.v.set(v, c.len * w);
  c.len = need;
}

/** Counts the model's attention calls: it makes one per layer, in layer order, per forward. */
function layerCounter(layers: number): () => number {
  let calls = 0;
  return () => calls++ % layers;
}

const noBackward = async (): Promise<never> => {
  throw new Error('inference attention has no backward pass');
};

/** Ring attention over the prompt shard (`cfg.positionsOf`), keeping each layer's K and V (rotated) in the cache. */
export function prefillAttention(cfg: RingAttentionConfig, cache: KvCache): AttentionOp {
  const rank = cfg.ring?.rank ?? 0;
  const layer = layerCounter(cache.layers.length);
  return onHostArrays({
    forward: async (q, k, v) => {
      append(cache, layer(), cfg.positionsOf(rank), k, v);
      return ringAttentionForward(cfg, q, k, v);
    },
    backward: noBackward,
  });
}

export interface DecodeConfig extends AttentionDims {
  ring: Ring | null;
  kernel: AttentionKernel;
  window?: number;
  scale?: number;
}

/** The rank whose cache takes the next token: the one holding fewest, the lowest on a tie (the same on every rank). */
export function decodeOwner(counts: number[]): number {
  let best = 0;
  for (let r = 1; r < counts.length; r++) if (counts[r] < counts[best]) best = r;
  return best;
}

/**
 * Attention of one new token at global `position` (already rotated there by
 * the model) against the whole cache: rank `owner` first appends its K and V;
 * each rank attends to its shard; the partials are merged by lse.
 */
export function decodeAttention(cfg: DecodeConfig, cache: KvCache, position: number, owner: number): AttentionOp {
  const rank = cfg.ring?.rank ?? 0;
  const layer = layerCounter(cache.layers.length);
  const { heads, headDim } = cfg;
  return onHostArrays({
    forward: async (q, k, v) => {
      const l = layer();
      if (rank === owner) append(cache, l, Int32Array.of(position), k, v);
      const c = cache.layers[l];
      const mine: BlockPartial =
        c.len === 0
          ? emptyPartial(1, heads, headDim)
          : await cfg.kernel.forward({
              heads,
              kvHeads: cfg.kvHeads,
              headDim,
              qLen: 1,
              kvLen: c.len,
              q,
              k: c.k.subarray(0, c.len * cache.width),
              v: c.v.subarray(0, c.len * cache.width),
              qPos: Int32Array.of(position),
              kvPos: c.positions.subarray(0, c.len),
              causal: true,
              window: cfg.window,
              scale: cfg.scale ?? 1 / Math.sqrt(headDim),
            });
      if (!cfg.ring || cfg.ring.worldSize === 1) return mine;
      // o and lse of every rank in one message; merged in rank order, so every rank gets the same bits.
      const packed = new Float32Array(mine.o.length + mine.lse.length);
      packed.set(mine.o);
      packed.set(mine.lse, mine.o.length);
      const all = await allGather(cfg.ring, packed, 'decode');
      const acc = emptyPartial(1, heads, headDim);
      for (const p of all) mergePartial(acc, { o: p.subarray(0, mine.o.length), lse: p.subarray(mine.o.length) }, heads, headDim);
      return acc;
    },
    backward: noBackward,
  });
}
