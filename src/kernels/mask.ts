import type { BlockArgs } from './types.js';

/**
 * Block- and tile-level mask tests, from global positions and document ids
 * (see the rule in types.ts). All are O(qLen + kvLen): they never look at
 * individual (query, key) pairs.
 */
export interface MaskArgs {
  causal: boolean;
  /** Sliding window W (types.ts); 0 or absent = none. */
  window?: number;
  qPos: Int32Array;
  kvPos: Int32Array;
  qSeg?: Int32Array;
  kvSeg?: Int32Array;
}

/** Whether query row i may attend to key j: the mask rule of types.ts, for one pair. */
export function canAttend(m: MaskArgs, i: number, j: number): boolean {
  if (m.causal && m.kvPos[j] > m.qPos[i]) return false;
  if (m.qSeg && m.kvSeg && m.qSeg[i] !== m.kvSeg[j]) return false;
  return inWindow(m, m.qPos[i], m.kvPos[j]);
}

/** The window's part of the rule for one pair of positions (true without a window). */
export function inWindow(m: Pick<MaskArgs, 'causal' | 'window'>, q: number, k: number): boolean {
  const w = m.window ?? 0;
  if (!w) return true;
  return q - k < w && (m.causal || k - q < w);
}

function range(pos: Int32Array): { min: number; max: number } {
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < pos.length; i++) {
    if (pos[i] < min) min = pos[i];
    if (pos[i] > max) max = pos[i];
  }
  return { min, max };
}

/** No pair of the two position sets is within the window: every key is too old, or (not causal) too far ahead, for every query. */
function outsideWindow(m: MaskArgs): boolean {
  const w = m.window ?? 0;
  if (!w) return false;
  const q = range(m.qPos);
  const k = range(m.kvPos);
  return q.min - k.max >= w || (!m.causal && k.min - q.max >= w);
}

/** Every pair of the two position sets is within the window. */
function insideWindow(m: MaskArgs): boolean {
  const w = m.window ?? 0;
  if (!w) return true;
  const q = range(m.qPos);
  const k = range(m.kvPos);
  return q.max - k.min < w && (m.causal || k.max - q.min < w);
}

/**
 * True iff no query row may attend to any key, so the block contributes nothing
 * and the ring loop can skip the kernel call. Exact, not a heuristic:
 * - causal only: every kv position is after every query position;
 * - segments only: the two blocks share no document id;
 * - both: for each shared document, its earliest key comes after its latest query.
 */
export function isFullyMasked(m: MaskArgs): boolean {
  const nq = m.qPos.length;
  const nk = m.kvPos.length;
  if (nq === 0 || nk === 0) return true;
  if ((m.qSeg === undefined) !== (m.kvSeg === undefined)) {
    throw new Error('qSeg and kvSeg must be both present or both absent');
  }
  // Exact: the window alone rules every pair out (with segments too, which only remove more).
  if (outsideWindow(m)) return true;
  if (m.window && !insideWindow(m)) return !anyInWindow(m);
  if (!m.qSeg || !m.kvSeg) {
    if (!m.causal) return false;
    let maxQ = -Infinity;
    for (let i = 0; i < nq; i++) if (m.qPos[i] > maxQ) maxQ = m.qPos[i];
    for (let j = 0; j < nk; j++) if (m.kvPos[j] <= maxQ) return false;
    return true;
  }
  // Latest query position per document (only the set of ids matters without causal).
  const latest = new Map<number, number>();
  for (let i = 0; i < nq; i++) {
    const d = m.qSeg[i];
    const prev = latest.get(d);
    if (prev === undefined || m.qPos[i] > prev) latest.set(d, m.qPos[i]);
  }
  for (let j = 0; j < nk; j++) {
    const last = latest.get(m.kvSeg[j]);
    if (last !== undefined && (!m.causal || m.kvPos[j] <= last)) return false;
  }
  return true;
}

/**
 * Whether some (query, key) pair passes the whole rule under a window: per
 * document (one without segments), the query positions sorted, and for each
 * key the nearest query at or after it (causal) or on either side. O((nq + nk) log nq).
 */
function anyInWindow(m: MaskArgs): boolean {
  const byDoc = new Map<number, number[]>();
  for (let i = 0; i < m.qPos.length; i++) {
    const d = m.qSeg ? m.qSeg[i] : 0;
    const list = byDoc.get(d);
    if (list) list.push(m.qPos[i]);
    else byDoc.set(d, [m.qPos[i]]);
  }
  for (const list of byDoc.values()) list.sort((a, b) => a - b);
  for (let j = 0; j < m.kvPos.length; j++) {
    const qs = byDoc.get(m.kvSeg ? m.kvSeg[j] : 0);
    if (!qs) continue;
    const k = m.kvPos[j];
    // First query position >= k.
    let lo = 0;
    let hi = qs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (qs[mid] < k) lo = mid + 1;
      else hi = mid;
    }
    if (lo < qs.length && inWindow(m, qs[lo], k)) return true;
    if (!m.causal && lo > 0 && inWindow(m, qs[lo - 1], k)) return true;
  }
  return false;
}

/** True iff every query row may attend to every key: the mask can be left out entirely. */
export function isFullyAllowed(m: MaskArgs): boolean {
  const nq = m.qPos.length;
  const nk = m.kvPos.length;
  if (nq === 0 || nk === 0) return true;
  if (!insideWindow(m)) return false;
  if (m.causal) {
    let minQ = Infinity;
    let maxK = -Infinity;
    for (let i = 0; i < nq; i++) if (m.qPos[i] < minQ) minQ = m.qPos[i];
    for (let j = 0; j < nk; j++) if (m.kvPos[j] > maxK) maxK = m.kvPos[j];
    if (maxK > minQ) return false;
  }
  if (m.qSeg && m.kvSeg) {
    const d = m.qSeg[0];
    for (let i = 1; i < nq; i++) if (m.qSeg[i] !== d) return false;
    for (let j = 0; j < nk; j++) if (m.kvSeg[j] !== d) return false;
  }
  return true;
}

export type TileKind = 'skip' | 'full' | 'partial';

/** Classify the tile of query rows [q0, q1) against keys [k0, k1). */
export function classifyTile(m: MaskArgs, q0: number, q1: number, k0: number, k1: number): TileKind {
  const sub: MaskArgs = {
    causal: m.causal,
    window: m.window,
    qPos: m.qPos.subarray(q0, q1),
    kvPos: m.kvPos.subarray(k0, k1),
    qSeg: m.qSeg?.subarray(q0, q1),
    kvSeg: m.kvSeg?.subarray(k0, k1),
  };
  if (isFullyMasked(sub)) return 'skip';
  if (isFullyAllowed(sub)) return 'full';
  return 'partial';
}

/** [start, length) pairs covering 0..n in steps of `size`; the last may be shorter. */
export function tileRanges(n: number, size: number): Array<{ start: number; len: number }> {
  const out: Array<{ start: number; len: number }> = [];
  for (let s = 0; s < n; s += size) out.push({ start: s, len: Math.min(size, n - s) });
  return out;
}

/**
 * Checks that the arrays of a kernel call agree with its dimensions. A mismatch
 * is a bug in the caller (not something a user can cause), hence a plain Error.
 */
export function checkBlockArgs(a: BlockArgs): void {
  const { qLen, kvLen, heads, kvHeads, headDim } = a;
  for (const [name, v] of Object.entries({ qLen, kvLen, heads, kvHeads, headDim })) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`kernel: ${name} must be a non-negative integer, got ${v}`);
  }
  if (heads < 1 || kvHeads < 1 || headDim < 1) throw new Error('kernel: heads, kvHeads and headDim must be >= 1');
  if (heads % kvHeads !== 0) throw new Error(`kernel: heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
  const expect = (name: string, arr: { length: number } | undefined, n: number): void => {
    if (!arr) throw new Error(`kernel: ${name} is missing`);
    if (arr.length !== n) throw new Error(`kernel: ${name} has ${arr.length} elements, expected ${n}`);
  };
  expect('q', a.q, qLen * heads * headDim);
  expect('k', a.k, kvLen * kvHeads * headDim);
  expect('v', a.v, kvLen * kvHeads * headDim);
  expect('qPos', a.qPos, qLen);
  expect('kvPos', a.kvPos, kvLen);
  if ((a.qSeg === undefined) !== (a.kvSeg === undefined)) throw new Error('kernel: qSeg and kvSeg must be both present or both absent');
  if (a.qSeg) expect('qSeg', a.qSeg, qLen);
  if (a.kvSeg) expect('kvSeg', a.kvSeg, kvLen);
  if (!Number.isFinite(a.scale)) throw new Error(`kernel: scale must be finite, got ${a.scale}`);
}

/** Same as checkBlockArgs, for the extra arrays of a backward call. */
export function checkGradArgs(
  a: BlockArgs,
  g: { dO: Float32Array; lse: Float32Array; delta: Float32Array },
  acc: { dq: Float32Array; dk: Float32Array; dv: Float32Array },
): void {
  const expect = (name: string, arr: { length: number } | undefined, n: number): void => {
    if (!arr) throw new Error(`kernel backward: ${name} is missing`);
    if (arr.length !== n) throw new Error(`kernel backward: ${name} has ${arr.length} elements, expected ${n}`);
  };
  const qn = a.qLen * a.heads * a.headDim;
  const kn = a.kvLen * a.kvHeads * a.headDim;
  expect('dO', g.dO, qn);
  expect('lse', g.lse, a.heads * a.qLen);
  expect('delta', g.delta, a.heads * a.qLen);
  expect('dq', acc.dq, qn);
  expect('dk', acc.dk, kn);
  expect('dv', acc.dv, kn);
}
