import type { Tensor } from './frame.js';
import type { Ring, Sendable } from './transport.js';
import { mod } from './mod.js';

/**
 * Collectives built on the ring's two links, each one ring op (its phase is
 * its tag). Every rank calls them in the same order (SPMD); each works for any
 * ring size, including 1 and odd sizes.
 */

/** Sends `items` to the successor and returns what the predecessor sent: one ring hop. */
export async function ringPass(ring: Ring, tag: string, items: Sendable[]): Promise<Tensor[]> {
  const op = ring.begin(tag, [tag]);
  const { sent, received } = op.sendRecv(tag, items);
  const got = await received;
  await sent;
  op.end();
  return got.tensors;
}

/**
 * The one hop measurement (bench, doctor, bench:ring): `runs` ring passes of
 * what `send` returns, each timed from the send to the arrival of the
 * predecessor's message (and `received`, which runs inside the timing: a 16-bit
 * wire's conversion back counts). With `barrier` (the default) every pass starts
 * together, after `before` (bench collects garbage there): a hop alone; without,
 * the passes run back to back, as a stream of blocks does.
 */
export async function timeHops(
  ring: Ring,
  tag: string,
  send: () => Sendable[],
  opts: { runs: number; barrier?: boolean; before?: () => Promise<void>; received?: (got: Tensor[]) => void },
): Promise<Array<{ start: number; end: number; ms: number }>> {
  const out: Array<{ start: number; end: number; ms: number }> = [];
  for (let i = 0; i < opts.runs; i++) {
    await opts.before?.();
    if (opts.barrier ?? true) await barrier(ring);
    const start = performance.now();
    const got = await ringPass(ring, tag, send());
    opts.received?.(got);
    const end = performance.now();
    out.push({ start, end, ms: end - start });
  }
  return out;
}

/** Chunk i of a length split into n nearly equal parts: [start, end). */
function chunkBounds(length: number, n: number, i: number): [number, number] {
  return [Math.floor((i * length) / n), Math.floor(((i + 1) * length) / n)];
}


function addInto(dst: Float32Array, src: Float32Array): void {
  for (let i = 0, m = dst.length; i < m; i++) dst[i] += src[i];
}

/** Bytes of one all-reduce message: small enough to go as one frame (no chunked reassembly), large enough that per-message costs vanish. */
export const ALLREDUCE_SEGMENT_BYTES = 1 << 20;

/**
 * Elementwise sum over all ranks, bandwidth-optimal: a reduce-scatter then an
 * all-gather, 2(N-1) stages each moving 1/N of the array, pipelined in
 * segments: a segment received at one stage is added (or stored) and sent on
 * for the next stage at once, so every link carries the whole array's worth
 * of segments back to back instead of waiting for each chunk. Each element is
 * reduced once, in the same order on every rank (own partial + received), then
 * copied around: every rank ends with bit-identical values, which keeps
 * replicated parameters identical. The input is not modified.
 *
 * Messages arrive in the order they were sent (one tag, one link), and a rank
 * sends stage t+1's segment j only after stage t's segment j arrived, so the
 * k-th message received is stage floor(k / S), segment k mod S.
 *
 * ZeroMQ sends zero-copy and its promise resolves before the bytes have left,
 * so a sent array must not change until the peer has it. Reduce-scatter
 * segments go straight from the array: the chunk sent at stage t is written
 * again only at all-gather stage t, by a segment reduced from the one we sent,
 * so by then our successor has received it. All-gather segments are copies:
 * nothing that reaches us before we return proves the successor received
 * them, and the caller may reuse the array at once.
 */
export interface AllReduceOptions {
  tag?: string;
  segmentBytes?: number;
  /** Sum into `x` itself instead of a copy: no allocation of the array's size. */
  inPlace?: boolean;
  /** dst[i] += src[i]; the native addon's (src/addon loadSumInto) where the caller has it. Same bits either way. */
  add?: (dst: Float32Array, src: Float32Array) => void;
}

export async function allReduceSum(ring: Ring, x: Float32Array, opts: AllReduceOptions | string = {}): Promise<Float32Array> {
  const { tag = 'allreduce', segmentBytes = ALLREDUCE_SEGMENT_BYTES, inPlace = false, add = addInto } = typeof opts === 'string' ? { tag: opts } : opts;
  const n = ring.worldSize;
  // slice is a memcpy; Float32Array.from walks the array as an iterable (measured 55 ms for 64 MiB).
  const acc = inPlace ? x : x.slice();
  if (n === 1) return acc;
  const r = ring.rank;
  const op = ring.begin(tag, [tag]);
  const seg = Math.max(1, Math.floor(segmentBytes / 4));
  const chunkLen = Math.ceil(acc.length / n);
  const S = Math.max(1, Math.ceil(chunkLen / seg));
  // Segment j of chunk c (chunks of nearly equal length; a short or empty segment is still a message).
  const segment = (c: number, j: number): Float32Array => {
    const [a, b] = chunkBounds(acc.length, n, mod(c, n));
    const start = Math.min(b, a + j * seg);
    return acc.subarray(start, Math.min(b, start + seg));
  };
  // The chunk a stage sends: reduce-scatter stage t sends chunk r - t; all-gather stage t sends chunk r + 1 - (t - (n - 1)).
  const stages = 2 * (n - 1);
  const sentChunk = (t: number) => (t < n - 1 ? r - t : r + 1 - (t - (n - 1)));
  const sends: Promise<void>[] = [];
  const send = (t: number, j: number) => {
    const data = segment(sentChunk(t), j);
    const p = op.send(tag, [t < n - 1 ? data : data.slice()]);
    p.catch(() => undefined);
    sends.push(p);
  };
  for (let j = 0; j < S; j++) send(0, j);
  for (let t = 0; t < stages; t++) {
    // What arrives at stage t is the chunk our predecessor sent: the one we send at stage t + 1.
    const into = sentChunk(t + 1);
    for (let j = 0; j < S; j++) {
      const [got] = await op.recv(tag);
      const dst = segment(into, j);
      const src = got.data as Float32Array;
      if (src.length !== dst.length) throw new Error(`allReduceSum: rank ${r} got a segment of ${src.length} values at stage ${t}, expected ${dst.length}`);
      if (t < n - 1) add(dst, src);
      else dst.set(src);
      if (t + 1 < stages) send(t + 1, j);
    }
  }
  await Promise.all(sends);
  op.end();
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
  const op = ring.begin(tag, [tag]);
  let got: Tensor[];
  if (ring.rank === root) {
    got = items!.map((x) => (ArrayBuffer.isView(x) ? { data: x, shape: [x.length] } : x));
    if (n > 1) await op.send(tag, got);
  } else {
    got = await op.recv(tag);
    if (ring.rank !== last) await op.send(tag, got);
  }
  op.end();
  return got;
}

/** Every rank's `block`, indexed by rank, on every rank: N-1 hops, each passing on what arrived (one ring op). */
export async function allGather(ring: Ring, block: Float32Array, tag = 'gather'): Promise<Float32Array[]> {
  const n = ring.worldSize;
  const out: Float32Array[] = new Array(n);
  out[ring.rank] = block;
  if (n === 1) return out;
  const op = ring.begin(tag, [tag]);
  let held = block;
  for (let t = 1; t < n; t++) {
    const { sent, received } = op.sendRecv(tag, [held]);
    held = (await received).tensors[0].data as Float32Array;
    await sent;
    out[mod(ring.rank - t, n)] = held;
  }
  op.end();
  return out;
}
