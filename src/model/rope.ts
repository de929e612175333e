/**
 * Rotary position embedding, from GLOBAL token positions.
 *
 * Within each head of width hd, dimension j (j < hd/2) is paired with j + hd/2
 * ("half-split" pairing) and the pair is rotated by the angle pos * base^(-2j/hd).
 * Because the angle depends only on the token's global position, a rank that
 * rotates its shard (any layout: contiguous, zigzag, striped) gets exactly the
 * rows that rotating the whole sequence would give it; and since q_i . k_j then
 * depends only on pos_i - pos_j, attention across shards sees the right relative
 * positions.
 *
 * The rotation is orthogonal, so its backward is the rotation by the opposite
 * angle (the transpose). The rotation itself is an engine op (`rope`); this
 * file makes the table of angles it reads, once per set of positions.
 */
export interface RopeTable {
  /** Rows of the table: one per token, in shard order. */
  n: number;
  headDim: number;
  /** cos and sin of the angles, [n, headDim / 2], in float64. */
  cos: Float64Array;
  sin: Float64Array;
}

export function ropeTable(positions: Int32Array, headDim: number, base: number): RopeTable {
  if (headDim % 2 !== 0) throw new Error(`rope: head dimension ${headDim} must be even`);
  const half = headDim / 2;
  const n = positions.length;
  const cos = new Float64Array(n * half);
  const sin = new Float64Array(n * half);
  const invFreq = new Float64Array(half);
  for (let j = 0; j < half; j++) invFreq[j] = Math.pow(base, (-2 * j) / headDim);
  for (let i = 0; i < n; i++) {
    const p = positions[i];
    for (let j = 0; j < half; j++) {
      const a = p * invFreq[j];
      cos[i * half + j] = Math.cos(a);
      sin[i * half + j] = Math.sin(a);
    }
  }
  return { n, headDim, cos, sin };
}
