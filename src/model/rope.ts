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
 * angle (the transpose): `applyRope(dy, table, heads, true)`.
 *
 * Runs in plain JS on the token-major arrays the attention op consumes
 * ([n, heads, headDim]); it is O(n * heads * headDim), far below the matMuls.
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

/**
 * Rotates x: [n, heads, headDim] in place (inverse = rotate back, which is the
 * exact backward of the forward rotation) and returns it.
 */
export function applyRope(x: Float32Array, table: RopeTable, heads: number, inverse = false): Float32Array {
  const { n, headDim, cos, sin } = table;
  if (x.length !== n * heads * headDim) {
    throw new Error(`rope: array has ${x.length} elements, expected ${n} x ${heads} x ${headDim}`);
  }
  const half = headDim / 2;
  const sign = inverse ? -1 : 1;
  for (let i = 0; i < n; i++) {
    const t = i * half;
    for (let h = 0; h < heads; h++) {
      const base = (i * heads + h) * headDim;
      for (let j = 0; j < half; j++) {
        const c = cos[t + j];
        const s = sign * sin[t + j];
        const a = x[base + j];
        const b = x[base + half + j];
        x[base + j] = a * c - b * s;
        x[base + half + j] = b * c + a * s;
      }
    }
  }
  return x;
}

/** Forward rotation into a new array. */
export function ropeForward(x: Float32Array, positions: Int32Array, heads: number, headDim: number, base: number): Float32Array {
  return applyRope(x.slice(), ropeTable(positions, headDim, base), heads);
}

/** Backward of `ropeForward`: dL/dx from dL/dy, into a new array. */
export function ropeBackward(dy: Float32Array, positions: Int32Array, heads: number, headDim: number, base: number): Float32Array {
  return applyRope(dy.slice(), ropeTable(positions, headDim, base), heads, true);
}
