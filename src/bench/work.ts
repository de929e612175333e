import { shardPositions, type Layout } from '../attention/layout.js';
import { mod } from '../ring/mod.js';

/**
 * The work of ring attention counted exactly from token positions: the number
 * of (query, key) score entries the mask allows, per rank and ring step. A
 * causal run does about half the work of a non-causal one, but "about" is not
 * good enough for a GFLOP/s figure: these counts are exact for any layout.
 *
 * FLOP convention (the same as scripts/bench-kernel.ts): the forward pass does
 * two matmuls per allowed entry and head, QK^T and PV, 2 * headDim FLOPs each;
 * the backward pass does five (QK^T again, dO V^T, P^T dO, dS K, dS^T Q), i.e.
 * 2.5x the forward. Softmax, masking and the work a kernel wastes on masked
 * entries inside partially masked tiles are not counted.
 */
export const FWD_MATMULS = 2;
export const BWD_MATMULS = 5;

export function forwardFlopsPerEntry(heads: number, headDim: number): number {
  return FWD_MATMULS * 2 * headDim * heads;
}

export function backwardFlopsPerEntry(heads: number, headDim: number): number {
  return BWD_MATMULS * 2 * headDim * heads;
}

/** The rank whose KV block rank `rank` holds at ring step `t`. */
export function stepOwner(rank: number, t: number, ringSize: number): number {
  return mod(rank - t, ringSize);
}

/** An ascending copy (TypedArray sort is numeric). */
export function sortedCopy(pos: Int32Array): Int32Array {
  return Int32Array.from(pos).sort();
}

/** Number of entries of the ascending `sorted` that are <= x. */
export function countAtMost(sorted: Int32Array, x: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Keys of `kvSorted` a query at q may attend under a window W (src/kernels/types.ts). */
function inWindowCount(kvSorted: Int32Array, q: number, causal: boolean, window: number): number {
  return countAtMost(kvSorted, causal ? q : q + window - 1) - countAtMost(kvSorted, q - window);
}

/** Allowed entries of query positions `qSorted` against key positions `kvSorted`, both ascending. */
export function allowedEntriesSorted(qSorted: Int32Array, kvSorted: Int32Array, causal: boolean, window = 0): number {
  if (window) return allowedEntries(qSorted, kvSorted, causal, window);
  if (!causal) return qSorted.length * kvSorted.length;
  let total = 0;
  let j = 0;
  for (let i = 0; i < qSorted.length; i++) {
    while (j < kvSorted.length && kvSorted[j] <= qSorted[i]) j++;
    total += j;
  }
  return total;
}

/** Allowed entries of query positions in any order against ascending key positions. */
export function allowedEntries(qPos: Int32Array, kvSorted: Int32Array, causal: boolean, window = 0): number {
  let total = 0;
  if (window) {
    for (let i = 0; i < qPos.length; i++) total += inWindowCount(kvSorted, qPos[i], causal, window);
    return total;
  }
  if (!causal) return qPos.length * kvSorted.length;
  for (let i = 0; i < qPos.length; i++) total += countAtMost(kvSorted, qPos[i]);
  return total;
}

/**
 * Allowed entries of every rank at every ring step: `perRank[r][t]`, rank r's
 * queries against the KV block it holds at step t. Linear in the sequence
 * length per (rank, step) pair, so cheap even at millions of tokens.
 */
export function ringEntries(layout: Layout, seqLen: number, ringSize: number, causal: boolean, window = 0): number[][] {
  const sorted = Array.from({ length: ringSize }, (_, r) => sortedCopy(shardPositions(layout, seqLen, ringSize, r)));
  return sorted.map((q, r) =>
    Array.from({ length: ringSize }, (_, t) => allowedEntriesSorted(q, sorted[stepOwner(r, t, ringSize)], causal, window)),
  );
}

/** Half-open row ranges [start, start + len) of the query tiles of a shard. */
export function queryTiles(shardLen: number, tileQ: number): Array<{ start: number; len: number }> {
  const out: Array<{ start: number; len: number }> = [];
  for (let s = 0; s < shardLen; s += tileQ) out.push({ start: s, len: Math.min(tileQ, shardLen - s) });
  return out;
}

/**
 * Allowed entries of each query tile of one rank at each ring step:
 * `entries[tile * ringSize + t]`. The time-limited mode picks tiles to measure
 * and needs the exact share of the work they are.
 */
export function tileEntries(
  qPos: Int32Array,
  tileQ: number,
  kvSortedOf: (owner: number) => Int32Array,
  rank: number,
  ringSize: number,
  causal: boolean,
  window = 0,
): Float64Array {
  const tiles = queryTiles(qPos.length, tileQ);
  const out = new Float64Array(tiles.length * ringSize);
  for (let t = 0; t < ringSize; t++) {
    const kv = kvSortedOf(stepOwner(rank, t, ringSize));
    tiles.forEach((tile, i) => {
      out[i * ringSize + t] = allowedEntries(qPos.subarray(tile.start, tile.start + tile.len), kv, causal, window);
    });
  }
  return out;
}

/**
 * `count` tiles out of `total`, spread evenly over the shard so that a causal
 * mask's cheap and expensive rows (and both zigzag chunks) are represented.
 */
export function spreadTiles(count: number, total: number): number[] {
  const n = Math.max(1, Math.min(count, total));
  return Array.from({ length: n }, (_, j) => Math.floor(((j + 0.5) * total) / n));
}

/** The row indices of the chosen tiles, ascending. */
export function tileRows(tiles: number[], shardLen: number, tileQ: number): Int32Array {
  const rows: number[] = [];
  for (const i of tiles) {
    for (let r = i * tileQ; r < Math.min(shardLen, (i + 1) * tileQ); r++) rows.push(r);
  }
  return Int32Array.from(rows);
}

/** Sum over the chosen tiles of their per-step entries: `[t]`. */
export function chosenEntries(entries: Float64Array, tiles: number[], ringSize: number): number[] {
  const out = new Array<number>(ringSize).fill(0);
  for (const i of tiles) for (let t = 0; t < ringSize; t++) out[t] += entries[i * ringSize + t];
  return out;
}
