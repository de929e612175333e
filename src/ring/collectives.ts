import type { Tensor } from './frame.js';
import type { Ring, Sendable } from './transport.js';

/**
 * Collectives built on the ring's two links. Every rank calls them in the same
 * order (SPMD); each works for any ring size, including 1 and odd sizes.
 */

/** Sends `items` to the successor and returns what the predecessor sent: one ring hop. */
export async function ringPass(ring: Ring, tag: string, items: Sendable[]): Promise<Tensor[]> {
  const sent = ring.send(tag, items);
  const got = await ring.recv(tag);
  await sent;
  return got;
}

/** Chunk i of a length split into n nearly equal parts: [start, end). */
function chunkBounds(length: number, n: number, i: number): [number, number] {
  return [Math.floor((i * length) / n), Math.floor(((i + 1) * length) / n)];
}

const mod = (a: number, n: number) => ((a % n) + n) % n;

/**
 * Elementwise sum over all ranks, bandwidth-optimal: a reduce-scatter then an
 * all-gather, 2(N-1) hops each moving 1/N of the array. Every rank ends with
 * bit-identical values (each chunk is reduced once, then copied around), which
 * keeps replicated parameters identical. The input is not modified.
 */
export async function allReduceSum(ring: Ring, x: Float32Array, tag = 'allreduce'): Promise<Float32Array> {
  const n = ring.worldSize;
  const acc = Float32Array.from(x);
  if (n === 1) return acc;
  const r = ring.rank;
  const chunk = (i: number) => {
    const [a, b] = chunkBounds(acc.length, n, mod(i, n));
    return acc.subarray(a, b);
  };
  // Sent chunks are copies: zeromq sends zero-copy and `acc` keeps changing.
  for (let s = 0; s < n - 1; s++) {
    const [got] = await ringPass(ring, tag, [chunk(r - s).slice()]);
    const into = chunk(r - s - 1);
    const add = got.data as Float32Array;
    for (let i = 0; i < into.length; i++) into[i] += add[i];
  }
  for (let s = 0; s < n - 1; s++) {
    const [got] = await ringPass(ring, tag, [chunk(r + 1 - s).slice()]);
    chunk(r - s).set(got.data as Float32Array);
  }
  return acc;
}

/** Returns once every rank has entered the barrier. */
export async function barrier(ring: Ring): Promise<void> {
  const [count] = await allReduceSum(ring, new Float32Array([1]), 'barrier');
  if (count !== ring.worldSize) throw new Error(`barrier counted ${count} ranks, expected ${ring.worldSize}`);
}

/** Rank `root`'s items, delivered to every rank (N-1 hops along the ring). */
export async function broadcast(ring: Ring, items: Sendable[] | null, root = 0, tag = 'broadcast'): Promise<Tensor[]> {
  const n = ring.worldSize;
  const last = mod(root - 1, n);
  if (ring.rank === root) {
    const tensors = items!.map((x) => (ArrayBuffer.isView(x) ? { data: x, shape: [x.length] } : x));
    if (n > 1) await ring.send(tag, tensors);
    return tensors;
  }
  const got = await ring.recv(tag);
  if (ring.rank !== last) await ring.send(tag, got);
  return got;
}
