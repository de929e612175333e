import { UserError } from '../errors.js';

/**
 * A layout maps the tokens of one sequence to the ranks of the ring.
 * - contiguous: rank r holds tokens [r*s/N, (r+1)*s/N).
 * - zigzag: the sequence is cut into 2N chunks; rank r holds chunks r and 2N-1-r,
 *   so under a causal mask every rank does the same amount of work.
 * - striped: token t lives on rank t mod N; every block pair is near-diagonal.
 * Every rank holds the same number of tokens, s/N.
 */
export type Layout = 'contiguous' | 'zigzag' | 'striped';
export const LAYOUTS: readonly Layout[] = ['contiguous', 'zigzag', 'striped'];

/** zigzag under a causal mask (balanced work), contiguous otherwise (no mask to balance). */
export function defaultLayout(causal: boolean): Layout {
  return causal ? 'zigzag' : 'contiguous';
}

/** The multiple the sequence length must be for a layout on a ring of `ringSize`. */
export function layoutQuantum(layout: Layout, ringSize: number): number {
  return layout === 'zigzag' ? 2 * ringSize : ringSize;
}

export function checkLayout(layout: Layout, seqLen: number, ringSize: number): void {
  if (!Number.isInteger(ringSize) || ringSize < 1) throw new UserError(`ring size must be a positive integer, got ${ringSize}`);
  const q = layoutQuantum(layout, ringSize);
  if (!Number.isInteger(seqLen) || seqLen < q || seqLen % q !== 0) {
    throw new UserError(
      `sequence length ${seqLen} cannot be split by the ${layout} layout over ${ringSize} rank(s): ` +
        `it must be a positive multiple of ${q} (e.g. ${Math.max(q, Math.floor(seqLen / q) * q)} or ${(Math.floor(seqLen / q) + 1) * q})`,
    );
  }
}

/** Global token positions held by `rank`, in the order the rank stores them. */
export function shardPositions(layout: Layout, seqLen: number, ringSize: number, rank: number): Int32Array {
  checkLayout(layout, seqLen, ringSize);
  const n = seqLen / ringSize;
  const pos = new Int32Array(n);
  if (layout === 'contiguous') {
    for (let i = 0; i < n; i++) pos[i] = rank * n + i;
  } else if (layout === 'striped') {
    for (let i = 0; i < n; i++) pos[i] = i * ringSize + rank;
  } else {
    const c = n / 2;
    const second = 2 * ringSize - 1 - rank;
    for (let i = 0; i < c; i++) {
      pos[i] = rank * c + i;
      pos[c + i] = second * c + i;
    }
  }
  return pos;
}

/**
 * Gathers rows of a token-major array [seqLen, rowWidth] into the shard of `positions`.
 * Used to shard inputs and, in reverse (`scatterShard`), to reassemble outputs.
 */
export function gatherShard<T extends Float32Array | Int32Array>(full: T, positions: Int32Array, rowWidth: number): T {
  const out = new (full.constructor as new (n: number) => T)(positions.length * rowWidth);
  for (let i = 0; i < positions.length; i++) {
    out.set(full.subarray(positions[i] * rowWidth, (positions[i] + 1) * rowWidth), i * rowWidth);
  }
  return out;
}

export function scatterShard<T extends Float32Array | Int32Array>(full: T, shard: T, positions: Int32Array, rowWidth: number): void {
  for (let i = 0; i < positions.length; i++) {
    full.set(shard.subarray(i * rowWidth, (i + 1) * rowWidth), positions[i] * rowWidth);
  }
}
