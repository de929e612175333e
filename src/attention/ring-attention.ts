import { isFullyMasked } from '../kernels/mask.js';
import { emptyPartial, mergePartial, rowDelta } from '../kernels/merge.js';
import type { AttentionDims, AttentionKernel, BlockArgs, BlockPartial } from '../kernels/types.js';
import type { AttentionOp } from '../model/types.js';
import type { Tensor } from '../ring/frame.js';
import type { Message, Ring } from '../ring/transport.js';
import { fromWire, toWire, type WireFormat } from '../ring/wire.js';
import { Trace, TRACK_COMPUTE, TRACK_TRANSFER, TRACK_WAIT } from './trace.js';

/**
 * Ring Attention (Liu, Zaharia, Abbeel 2023), forward and backward, for one rank.
 *
 * Rank r keeps its query block for the whole layer. At ring step t it holds the
 * KV block of rank (r - t) mod N, computes attention of its queries against it,
 * and at the same time sends that block to its successor and receives the next
 * one from its predecessor. Partial results merge exactly through their lse.
 *
 * Backward: K and V travel the ring again; each rank adds its contribution to
 * the dK/dV of the block it holds and passes that accumulator on, one step
 * behind the block itself, so its transfer too runs under the next compute.
 * After the last step one more hop brings every dK/dV home. dQ stays local.
 *
 * Nothing here knows the layout: the kernel masks by global token position,
 * and `positionsOf(rank)` says which positions a rank's block holds.
 */

export interface RingAttentionConfig extends AttentionDims {
  /** null runs the same loop on a single process (a ring of one). */
  ring: Ring | null;
  kernel: AttentionKernel;
  causal: boolean;
  scale?: number;
  /** false = the naive schedule: a block is sent only after the compute on it. */
  overlap: boolean;
  /** Global token positions of the block rank `r` owns (from the layout). */
  positionsOf: (rank: number) => Int32Array;
  /** The number format of KV blocks on the ring (src/ring/wire.ts); default float32. dK/dV always travel in float32. */
  wire?: WireFormat;
  /** Document ids of this rank's tokens, for packed sequences; they travel with the KV block. */
  segments?: Int32Array;
  trace?: Trace;
  stats?: RingStepStats;
}

/** Cumulative per-rank figures over every ring step run with this config. */
export interface RingStepStats {
  steps: number;
  skippedSteps: number;
  computeMs: number;
  /** Time spent blocked on an incoming block after the compute it could hide behind. */
  waitMs: number;
  bytesSent: number;
}

export function newRingStepStats(): RingStepStats {
  return { steps: 0, skippedSteps: 0, computeMs: 0, waitMs: 0, bytesSent: 0 };
}

interface KVBlock {
  owner: number;
  k: Float32Array;
  v: Float32Array;
  seg?: Int32Array;
  /** The block as it arrived, to pass on unchanged: a 16-bit wire rounds a block once, at its owner. */
  wire?: Tensor[];
}

const mod = (a: number, n: number) => ((a % n) + n) % n;

function ringShape(cfg: RingAttentionConfig): { rank: number; n: number } {
  return cfg.ring ? { rank: cfg.ring.rank, n: cfg.ring.worldSize } : { rank: 0, n: 1 };
}

function blockArgs(cfg: RingAttentionConfig, q: Float32Array, qPos: Int32Array, kv: KVBlock): BlockArgs {
  return {
    heads: cfg.heads,
    kvHeads: cfg.kvHeads,
    headDim: cfg.headDim,
    qLen: qPos.length,
    kvLen: kv.k.length / (cfg.kvHeads * cfg.headDim),
    q,
    k: kv.k,
    v: kv.v,
    qPos,
    kvPos: cfg.positionsOf(kv.owner),
    qSeg: cfg.segments,
    kvSeg: kv.seg,
    causal: cfg.causal,
    scale: cfg.scale ?? 1 / Math.sqrt(cfg.headDim),
  };
}

function kvPayload(cfg: RingAttentionConfig, kv: KVBlock): Tensor[] {
  if (kv.wire) return kv.wire;
  const format = cfg.wire ?? 'float32';
  const out = [toWire(kv.k, format), toWire(kv.v, format)];
  return kv.seg ? [...out, { data: kv.seg, shape: [kv.seg.length] }] : out;
}

function kvFromMessage(m: Message, owner: number): KVBlock {
  const [k, v, seg] = m.tensors;
  return { owner, k: fromWire(k), v: fromWire(v), seg: seg?.data as Int32Array | undefined, wire: m.tensors };
}

/** Starts moving `kv` one hop: send to the successor, receive the predecessor's block. */
function startPass(cfg: RingAttentionConfig, tag: string, kv: KVBlock, nextOwner: number) {
  const ring = cfg.ring!;
  const posted = performance.now();
  const payload = kvPayload(cfg, kv);
  const sent = ring.send(tag, payload);
  const received = ring.recvMessage(tag).then((m) => {
    cfg.trace?.span(`${tag} from rank ${ring.prev.rank}`, TRACK_TRANSFER, posted, m.arrivedAt, { owner: nextOwner });
    return kvFromMessage(m, nextOwner);
  });
  // Unobserved rejections would crash the process before the step awaits them.
  sent.catch(() => undefined);
  received.catch(() => undefined);
  if (cfg.stats) cfg.stats.bytesSent += payload.reduce((n, t) => n + t.data.byteLength, 0);
  return { sent, received };
}

/** Awaits a promise, counting the time as waiting (nothing left to compute meanwhile). */
async function waitFor<T>(cfg: RingAttentionConfig, what: string, p: Promise<T>): Promise<T> {
  const start = performance.now();
  const value = await p;
  const end = performance.now();
  if (cfg.stats) cfg.stats.waitMs += end - start;
  if (end - start > 0.05) cfg.trace?.span(what, TRACK_WAIT, start, end);
  return value;
}

async function timed<T>(cfg: RingAttentionConfig, name: string, step: number, owner: number, run: () => Promise<T>): Promise<T> {
  const start = performance.now();
  const value = await run();
  const end = performance.now();
  if (cfg.stats) cfg.stats.computeMs += end - start;
  cfg.trace?.span(name, TRACK_COMPUTE, start, end, { step, owner });
  return value;
}

/** Output and lse of this rank's query block against the whole sequence. */
export async function ringAttentionForward(cfg: RingAttentionConfig, q: Float32Array, k: Float32Array, v: Float32Array): Promise<BlockPartial> {
  const { rank, n } = ringShape(cfg);
  const qPos = cfg.positionsOf(rank);
  const acc = emptyPartial(qPos.length, cfg.heads, cfg.headDim);
  let kv: KVBlock = { owner: rank, k, v, seg: cfg.segments };
  for (let t = 0; t < n; t++) {
    const last = t === n - 1;
    const nextOwner = mod(rank - t - 1, n);
    let pass = !last && cfg.overlap ? startPass(cfg, 'kv', kv, nextOwner) : null;
    const args = blockArgs(cfg, q, qPos, kv);
    if (cfg.stats) cfg.stats.steps++;
    if (isFullyMasked(args)) {
      if (cfg.stats) cfg.stats.skippedSteps++;
    } else {
      const part = await timed(cfg, 'attention fwd', t, kv.owner, () => cfg.kernel.forward(args));
      mergePartial(acc, part, cfg.heads, cfg.headDim);
    }
    if (last) break;
    pass ??= startPass(cfg, 'kv', kv, nextOwner);
    kv = await waitFor(cfg, 'wait kv', pass.received);
    await pass.sent;
  }
  return acc;
}

export interface SavedAttention {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  lse: Float32Array;
}

/** dq, dk, dv of this rank's blocks, given dL/do for its query block. */
export async function ringAttentionBackward(
  cfg: RingAttentionConfig,
  saved: SavedAttention,
  dO: Float32Array,
): Promise<{ dq: Float32Array; dk: Float32Array; dv: Float32Array }> {
  const { rank, n } = ringShape(cfg);
  const ring = cfg.ring;
  const qPos = cfg.positionsOf(rank);
  const grad = { dO, lse: saved.lse, delta: rowDelta(dO, saved.o, qPos.length, cfg.heads, cfg.headDim) };
  const dq = new Float32Array(saved.q.length);
  // Our share of a block's dK/dV is computed into zeros, then added into the accumulator that
  // arrived, and that accumulator travels on. So from step 1 on the share is one scratch pair,
  // never sent (a sent array cannot be reused: ZeroMQ sends it zero-copy, later), zeroed per step.
  let scratch: { dk: Float32Array; dv: Float32Array } | null = null;
  let kv: KVBlock = { owner: rank, k: saved.k, v: saved.v, seg: cfg.segments };
  for (let t = 0; t < n; t++) {
    const last = t === n - 1;
    const nextOwner = mod(rank - t - 1, n);
    let pass = !last && cfg.overlap ? startPass(cfg, 'bkv', kv, nextOwner) : null;
    // The accumulator for this block arrives from the predecessor while we compute our share into zeros.
    const incoming = t > 0 ? ring!.recv('dkv') : null;
    incoming?.catch(() => undefined);
    let dk: Float32Array;
    let dv: Float32Array;
    if (incoming) {
      scratch ??= { dk: new Float32Array(kv.k.length), dv: new Float32Array(kv.v.length) };
      ({ dk, dv } = scratch);
      dk.fill(0);
      dv.fill(0);
    } else {
      dk = new Float32Array(kv.k.length);
      dv = new Float32Array(kv.v.length);
    }
    const args = blockArgs(cfg, saved.q, qPos, kv);
    if (cfg.stats) cfg.stats.steps++;
    if (isFullyMasked(args)) {
      if (cfg.stats) cfg.stats.skippedSteps++;
    } else {
      await timed(cfg, 'attention bwd', t, kv.owner, () => cfg.kernel.backward(args, grad, { dq, dk, dv }));
    }
    if (incoming) {
      const [pk, pv] = (await waitFor(cfg, 'wait dkv', incoming)).map((x) => x.data as Float32Array);
      // pk + dk is dk + pk bit for bit: the sum is the one the share-then-add order always made.
      for (let i = 0; i < pk.length; i++) pk[i] += dk[i];
      for (let i = 0; i < pv.length; i++) pv[i] += dv[i];
      dk = pk;
      dv = pv;
    }
    if (n === 1) return { dq, dk, dv };
    // After the last step the block we hold belongs to our successor: this send is its trip home.
    const sentD = ring!.send(last ? 'dkv-home' : 'dkv', [dk, dv]);
    sentD.catch(() => undefined);
    if (cfg.stats) cfg.stats.bytesSent += dk.byteLength + dv.byteLength;
    if (last) {
      const [hk, hv] = (await waitFor(cfg, 'wait dkv home', ring!.recv('dkv-home'))).map((x) => x.data as Float32Array);
      await sentD;
      return { dq, dk: hk, dv: hv };
    }
    pass ??= startPass(cfg, 'bkv', kv, nextOwner);
    kv = await waitFor(cfg, 'wait kv', pass.received);
    await pass.sent;
  }
  throw new Error('unreachable');
}

/** Ring attention as the model's attention layer for this rank's shard. */
export function ringAttentionOp(cfg: RingAttentionConfig): AttentionOp {
  return {
    forward: (q, k, v) => ringAttentionForward(cfg, q, k, v),
    backward: (saved, dO) => ringAttentionBackward(cfg, saved, dO),
  };
}
