import { isFullyMasked } from '../kernels/mask.js';
import { emptyPartial, mergePartial, rowDelta } from '../kernels/merge.js';
import type { AttentionDims, AttentionKernel, BlockArgs, BlockPartial } from '../kernels/types.js';
import { slice, type AttentionMask, type AttentionShape, type Engine, type EngineAttention, type IntTensor, type Tensor as Tensor32 } from '../engine/types.js';
import { onHostArrays } from './op.js';
import type { AttentionOp, AttentionTensors } from './op.js';
import type { Tensor } from '../ring/frame.js';
import type { Message, Ring, RingOp } from '../ring/transport.js';
import { mod } from '../ring/mod.js';
import { fromWire, loadWireNative, toWire, type WireFormat } from '../ring/wire.js';
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
 *
 * With a sliding window, a KV block travels only as far as some rank still
 * attends to it (its *reach*, the same on every rank: from positions alone), in
 * both passes. A dK/dV accumulator leaves its block at the last rank that
 * needs it; from there it has to come back to its owner. With a reverse ring
 * (`reverse`: each rank to its predecessor) it comes straight back, added to
 * on the way ("dkv-back"), so the backward's dK/dV route shortens with the
 * window too. Without one it goes on alone round the rest of the ring
 * ("dkv-home"), and those hops are not saved.
 */

/** The ring schedule's settings, whichever memory the blocks live in. */
export interface RingConfig extends AttentionDims {
  /** null runs the same loop on a single process (a ring of one). */
  ring: Ring | null;
  /** The same ranks linked the other way (to the predecessor): under a window, dK/dV come back on it. */
  reverse?: Ring | null;
  causal: boolean;
  /** Sliding window W (src/kernels/types.ts); 0 or absent = none. */
  window?: number;
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

/** Ring attention on host arrays, one kernel call per ring step. */
export interface RingAttentionConfig extends RingConfig {
  kernel: AttentionKernel;
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

function ringShape(cfg: RingConfig): { rank: number; n: number } {
  return cfg.ring ? { rank: cfg.ring.rank, n: cfg.ring.worldSize } : { rank: 0, n: 1 };
}

/**
 * reach[o]: the farthest ring distance t at which some rank's queries may attend
 * to block o (0: only its owner's). Computed from positions only, which every
 * rank knows, so all agree; without a window every block goes all the way.
 */
export function blockReach(cfg: Pick<RingConfig, 'causal' | 'window' | 'positionsOf'>, n: number): number[] {
  return Array.from({ length: n }, (_, o) => {
    if (!cfg.window) return n - 1;
    for (let t = n - 1; t > 0; t--) {
      if (!isFullyMasked({ causal: cfg.causal, window: cfg.window, qPos: cfg.positionsOf(mod(o + t, n)), kvPos: cfg.positionsOf(o) })) return t;
    }
    return 0;
  });
}

/** Home-bound dK/dV accumulators rank r passes on or keeps: those of blocks whose last holder is behind it. */
function homeArrivals(reach: number[], r: number): number {
  const n = reach.length;
  let count = 0;
  for (let o = 0; o < n; o++) {
    const d = mod(r - o, n) || n;
    if (reach[o] >= 1 && d > reach[o]) count++;
  }
  return count;
}

function blockArgs(cfg: RingAttentionConfig, q: Float32Array, qPos: Int32Array, kv: KVBlock): BlockArgs {
  return {
    heads: cfg.heads,
    kvHeads: cfg.kvHeads,
    headDim: cfg.headDim,
    window: cfg.window,
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

// The addon's conversions when it is built: in JavaScript they cost more than the halved bytes save on loopback.
const wireNative = loadWireNative();

function kvPayload(cfg: RingConfig, kv: Pick<KVBlock, 'k' | 'v' | 'seg' | 'wire'>): Tensor[] {
  if (kv.wire) return kv.wire;
  const format = cfg.wire ?? 'float32';
  // Our own block: on the native engine k and v are views of the engine's buffers, which the model overwrites (the next
  // layer, the next window) while ZeroMQ may still be sending them zero-copy. float32 goes as a copy; a 16-bit wire
  // converts into fresh arrays anyway.
  const own = (x: Float32Array) => (format === 'float32' ? x.slice() : x);
  const out = [toWire(own(kv.k), format, wireNative), toWire(own(kv.v), format, wireNative)];
  return kv.seg ? [...out, { data: kv.seg, shape: [kv.seg.length] }] : out;
}

function kvFromMessage(m: Message, owner: number): KVBlock {
  const [k, v, seg] = m.tensors;
  return { owner, k: fromWire(k, wireNative), v: fromWire(v, wireNative), seg: seg?.data as Int32Array | undefined, wire: m.tensors };
}

/** The ring op of one forward or backward pass (null on a ring of one): its phase and the tags it moves. */
function beginPass(cfg: RingConfig, pass: 'fwd' | 'bwd'): RingOp | null {
  return cfg.ring ? cfg.ring.begin(`attn.${pass}`, pass === 'fwd' ? ['kv'] : ['bkv', 'dkv', 'dkv-home']) : null;
}

/** Sends a block's payload one hop on (counted in the stats); the promise resolves once ZeroMQ has it. */
function sendPass(cfg: RingConfig, op: RingOp, tag: string, payload: Tensor[]): Promise<void> {
  const sent = op.send(tag, payload);
  sent.catch(() => undefined);
  if (cfg.stats) cfg.stats.bytesSent += payload.reduce((n, t) => n + t.data.byteLength, 0);
  return sent;
}

/** A block arriving from the predecessor, traced from when its receive was posted to when its last frame came. */
function traced(cfg: RingConfig, tag: string, incoming: Promise<Message>, owner: number, posted = performance.now()): Promise<Message> {
  const p = incoming.then((m) => {
    cfg.trace?.span(`${tag} from rank ${cfg.ring!.prev.rank}`, TRACK_TRANSFER, posted, m.arrivedAt, { owner });
    return m;
  });
  p.catch(() => undefined);
  return p;
}

type Grad = { dk: Float32Array; dv: Float32Array };

/**
 * Where each dK/dV share of the backward goes, the same for the host and the
 * engine loops. The forward route: a share computed where an accumulator
 * arrived (`incoming`) is added to it and travels on with the block, then
 * home round the ring. The back route (a window and a reverse ring): every
 * share waits where it was computed; the farthest rank's goes back first, and
 * each rank adds its own to what comes back and passes it on, to the owner.
 */
interface DkvRouter {
  incoming(owner: number, t: number): Promise<Tensor[]> | null;
  place(owner: number, t: number, share: Grad): void;
  /** After the loop: the rank's own dK/dV (null when it stayed where it was computed, a block nobody else needs). */
  finish(): Promise<Grad | null>;
}

function dkvRouter(cfg: RingConfig, op: RingOp | null, reach: number[], rank: number): DkvRouter {
  const n = reach.length;
  const sends: Promise<void>[] = [];
  const send = (o: RingOp, tag: string, items: Array<Float32Array | Int32Array>) => {
    sends.push(sendPass(cfg, o, tag, items.map((x) => ({ data: x, shape: [x.length] }))));
  };
  let home: Grad | null = null;
  const rev = cfg.window && cfg.reverse && n > 1 ? cfg.reverse.begin('attn.bwd.back', ['dkv-back']) : null;
  if (rev) {
    const pending = new Map<number, Grad>();
    return {
      incoming: () => null,
      place(owner, t, share) {
        if (owner === rank && reach[rank] === 0) home = share;
        else if (owner !== rank && t === reach[owner]) send(rev, 'dkv-back', [share.dk, share.dv, Int32Array.of(owner)]);
        else pending.set(owner, share);
      },
      async finish() {
        for (let i = pending.size; i > 0; i--) {
          const [bk, bv, id] = (await waitFor(cfg, 'wait dkv back', rev.recv('dkv-back'))).map((x) => x.data as Float32Array | Int32Array);
          const owner = id[0];
          const mine = pending.get(owner);
          if (!mine) throw new Error(`ring attention backward: rank ${rank} got dK/dV of block ${owner}, which it never held`);
          for (let j = 0; j < mine.dk.length; j++) mine.dk[j] += bk[j];
          for (let j = 0; j < mine.dv.length; j++) mine.dv[j] += bv[j];
          if (owner === rank) home = mine;
          else send(rev, 'dkv-back', [mine.dk, mine.dv, id]);
        }
        await Promise.all(sends);
        rev.end();
        return home;
      },
    };
  }
  return {
    incoming: (_, t) => (t > 0 ? op!.recv('dkv') : null),
    place(owner, t, share) {
      if (t + 1 <= reach[owner]) send(op!, 'dkv', [share.dk, share.dv]);
      else if (owner === rank) home = share;
      else send(op!, 'dkv-home', [share.dk, share.dv, Int32Array.of(owner)]);
    },
    async finish() {
      // Accumulators on their way home pass through: ours is kept, the others go on.
      for (let i = homeArrivals(reach, rank); i > 0; i--) {
        const [hk, hv, id] = (await waitFor(cfg, 'wait dkv home', op!.recv('dkv-home'))).map((x) => x.data as Float32Array | Int32Array);
        if (id[0] === rank) home = { dk: hk as Float32Array, dv: hv as Float32Array };
        else send(op!, 'dkv-home', [hk, hv, id]);
      }
      await Promise.all(sends);
      return home;
    },
  };
}

/** Awaits a promise, counting the time as waiting (nothing left to compute meanwhile). */
async function waitFor<T>(cfg: RingConfig, what: string, p: Promise<T>): Promise<T> {
  const start = performance.now();
  const value = await p;
  const end = performance.now();
  if (cfg.stats) cfg.stats.waitMs += end - start;
  if (end - start > 0.05) cfg.trace?.span(what, TRACK_WAIT, start, end);
  return value;
}

async function timed<T>(cfg: RingConfig, name: string, step: number, owner: number, run: () => Promise<T>): Promise<T> {
  const start = performance.now();
  const value = await run();
  const end = performance.now();
  if (cfg.stats) cfg.stats.computeMs += end - start;
  cfg.trace?.span(name, TRACK_COMPUTE, start, end, { step, owner });
  return value;
}

/**
 * The dK/dV accumulator that arrived for the block we hold, with our share added: what travels on.
 * pk + dk is dk + pk bit for bit: the sum is the one the share-then-add order always made.
 */
async function accumulate(cfg: RingConfig, incoming: Promise<Tensor[]>, dk: Float32Array, dv: Float32Array): Promise<{ dk: Float32Array; dv: Float32Array }> {
  const [pk, pv] = (await waitFor(cfg, 'wait dkv', incoming)).map((x) => x.data as Float32Array);
  for (let i = 0; i < pk.length; i++) pk[i] += dk[i];
  for (let i = 0; i < pv.length; i++) pv[i] += dv[i];
  return { dk: pk, dv: pv };
}

/** Output and lse of this rank's query block against the whole sequence. */
export async function ringAttentionForward(cfg: RingAttentionConfig, q: Float32Array, k: Float32Array, v: Float32Array): Promise<BlockPartial> {
  const { rank, n } = ringShape(cfg);
  const qPos = cfg.positionsOf(rank);
  const acc = emptyPartial(qPos.length, cfg.heads, cfg.headDim);
  const op = beginPass(cfg, 'fwd');
  const reach = blockReach(cfg, n);
  let kv: KVBlock | null = { owner: rank, k, v, seg: cfg.segments };
  for (let t = 0; t < n; t++) {
    // Block r - t - 1 reaches us at step t + 1 if it goes that far; ours (r - t) goes on if it goes farther.
    const nextOwner = mod(rank - t - 1, n);
    const posted = performance.now();
    const incoming = t + 1 <= reach[nextOwner] ? op!.recvMessage('kv') : null;
    incoming?.catch(() => undefined);
    const forward = kv !== null && t + 1 <= reach[kv.owner];
    let sent = forward && cfg.overlap ? sendPass(cfg, op!, 'kv', kvPayload(cfg, kv!)) : null;
    if (kv) {
      const args = blockArgs(cfg, q, qPos, kv);
      if (cfg.stats) cfg.stats.steps++;
      if (isFullyMasked(args)) {
        if (cfg.stats) cfg.stats.skippedSteps++;
      } else {
        const part = await timed(cfg, 'attention fwd', t, kv.owner, () => cfg.kernel.forward(args));
        mergePartial(acc, part, cfg.heads, cfg.headDim);
      }
      if (forward) sent ??= sendPass(cfg, op!, 'kv', kvPayload(cfg, kv));
    }
    kv = incoming ? kvFromMessage(await waitFor(cfg, 'wait kv', traced(cfg, 'kv', incoming, nextOwner, posted)), nextOwner) : null;
    await sent;
  }
  op?.end();
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
  const op = beginPass(cfg, 'bwd');
  const reach = blockReach(cfg, n);
  const qPos = cfg.positionsOf(rank);
  const grad = { dO, lse: saved.lse, delta: rowDelta(dO, saved.o, qPos.length, cfg.heads, cfg.headDim) };
  const dq = new Float32Array(saved.q.length);
  // Our share of a block's dK/dV is computed into zeros, then added into the accumulator that
  // arrived, and that accumulator travels on. So from step 1 on the share is one scratch pair,
  // never sent (a sent array cannot be reused: ZeroMQ sends it zero-copy, later), zeroed per step.
  let scratch: Grad | null = null;
  const route = dkvRouter(cfg, op, reach, rank);
  const sends: Promise<void>[] = [];
  let kv: KVBlock | null = { owner: rank, k: saved.k, v: saved.v, seg: cfg.segments };
  for (let t = 0; t < n; t++) {
    const nextOwner = mod(rank - t - 1, n);
    const posted = performance.now();
    const incoming = t + 1 <= reach[nextOwner] ? op!.recvMessage('bkv') : null;
    incoming?.catch(() => undefined);
    if (kv) {
      const forward = t + 1 <= reach[kv.owner];
      let sent = forward && cfg.overlap ? sendPass(cfg, op!, 'bkv', kvPayload(cfg, kv)) : null;
      // The accumulator for this block arrives from the predecessor while we compute our share into zeros.
      const acc = route.incoming(kv.owner, t);
      acc?.catch(() => undefined);
      let dk: Float32Array;
      let dv: Float32Array;
      if (acc) {
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
      if (acc) ({ dk, dv } = await accumulate(cfg, acc, dk, dv));
      route.place(kv.owner, t, { dk, dv });
      if (forward) sent ??= sendPass(cfg, op!, 'bkv', kvPayload(cfg, kv));
      if (sent) sends.push(sent);
    }
    kv = incoming ? kvFromMessage(await waitFor(cfg, 'wait kv', traced(cfg, 'bkv', incoming, nextOwner, posted)), nextOwner) : null;
  }
  const home = await route.finish();
  await Promise.all(sends);
  op?.end();
  if (!home) throw new Error(`ring attention backward: rank ${rank}'s dK/dV never came home`);
  return { dq, dk: home.dk, dv: home.dv };
}

/**
 * Ring attention on an engine's own memory (engine.attention: webgpu). The
 * same schedule as above; the query block, the running o and lse, dq and every
 * rank's share of dK/dV are computed on the device. What crosses to the host
 * is what the ring carries: the rank's own K, V (read back once per pass and
 * sent before the first compute is submitted: on lavapipe a read queued ahead
 * of a compute resolved only after that compute had finished, so the send
 * would wait for it), each received block (uploaded into one of two device
 * slots) and the dK/dV shares. The accumulators travel and add on
 * the host, in the host loop's order.
 */
class EngineRing {
  private readonly att: EngineAttention;
  private slots: Array<{ k: Tensor32; v: Tensor32 }> = [];
  private positions = new Map<number, IntTensor>();
  private seg: { q: IntTensor; kv: IntTensor[] } | null = null;
  private share: { dk: Tensor32; dv: Tensor32 } | null = null;
  private deltaT: Tensor32 | null = null;
  private rows = 0;

  constructor(
    private readonly cfg: RingConfig,
    private readonly engine: Engine,
  ) {
    this.att = engine.attention!;
  }

  /** Device buffers sized for the longest block of the ring, allocated on first use. */
  private ensure(): void {
    const { n } = ringShape(this.cfg);
    let rows = 0;
    for (let r = 0; r < n; r++) rows = Math.max(rows, this.cfg.positionsOf(r).length);
    if (rows <= this.rows) return;
    const kvw = this.cfg.kvHeads * this.cfg.headDim;
    const e = this.engine;
    this.rows = rows;
    this.slots = [0, 1].map(() => ({ k: e.floats(rows * kvw), v: e.floats(rows * kvw) }));
    this.share = { dk: e.floats(rows * kvw), dv: e.floats(rows * kvw) };
    this.deltaT = e.floats(rows * this.cfg.heads);
    this.positions.clear();
    for (let r = 0; r < n; r++) {
      const pos = this.cfg.positionsOf(r);
      const t = e.ints(Math.max(1, pos.length));
      e.writeInts(t, pos);
      this.positions.set(r, slice(t, 0, pos.length));
    }
    this.seg = this.cfg.segments ? { q: e.ints(rows), kv: [e.ints(rows), e.ints(rows)] } : null;
    if (this.seg && this.cfg.segments) e.writeInts(this.seg.q, this.cfg.segments);
  }

  private shape(qLen: number, kvLen: number): AttentionShape {
    const c = this.cfg;
    return { heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, qLen, kvLen, causal: c.causal, window: c.window, scale: c.scale ?? 1 / Math.sqrt(c.headDim) };
  }

  private mask(owner: number, slot: number, kvSeg: Int32Array | undefined, qLen: number): AttentionMask {
    const { rank } = ringShape(this.cfg);
    const kvPos = this.positions.get(owner)!;
    if (!this.seg || !kvSeg) return { qPos: this.positions.get(rank)!, kvPos, qSeg: null, kvSeg: null };
    const kv = slice(this.seg.kv[slot], 0, kvSeg.length);
    this.engine.writeInts(kv, kvSeg);
    return { qPos: this.positions.get(rank)!, kvPos, qSeg: slice(this.seg.q, 0, qLen), kvSeg: kv };
  }

  private skip(owner: number, kvSeg: Int32Array | undefined): boolean {
    const { rank } = ringShape(this.cfg);
    const c = this.cfg;
    return isFullyMasked({ causal: c.causal, window: c.window, qPos: c.positionsOf(rank), kvPos: c.positionsOf(owner), qSeg: c.segments, kvSeg });
  }

  /** The rank's own K, V as the ring's payload (rounded once here for a 16-bit wire); the reads are submitted now. */
  private ownPayload(k: Tensor32, v: Tensor32): Promise<Tensor[]> {
    return Promise.all([this.engine.read(k), this.engine.read(v)]).then(([hk, hv]) => kvPayload(this.cfg, { k: hk, v: hv, seg: this.cfg.segments }));
  }

  /** A received block into device slot `slot`: its k, v tensors there, its segments and payload as they came. */
  private upload(m: Message, slot: number, kvLen: number): { k: Tensor32; v: Tensor32; seg?: Int32Array; payload: Tensor[] } {
    const w = kvLen * this.cfg.kvHeads * this.cfg.headDim;
    const k = slice(this.slots[slot].k, 0, w);
    const v = slice(this.slots[slot].v, 0, w);
    const [mk, mv, seg] = m.tensors;
    this.engine.write(k, fromWire(mk, wireNative));
    this.engine.write(v, fromWire(mv, wireNative));
    return { k, v, seg: seg?.data as Int32Array | undefined, payload: m.tensors };
  }

  /** One ring step's compute on the block we hold (skipped, and counted so, when the mask leaves nothing), timed with the flush. */
  private async attend(name: string, step: number, kv: { owner: number; seg?: Int32Array }, qLen: number, record: (s: AttentionShape, m: AttentionMask) => void): Promise<void> {
    const cfg = this.cfg;
    if (cfg.stats) cfg.stats.steps++;
    if (this.skip(kv.owner, kv.seg)) {
      if (cfg.stats) cfg.stats.skippedSteps++;
      return;
    }
    const s = this.shape(qLen, cfg.positionsOf(kv.owner).length);
    const m = this.mask(kv.owner, step % 2, kv.seg, qLen);
    await timed(cfg, name, step, kv.owner, async () => {
      record(s, m);
      await this.engine.flush();
    });
  }

  /** The next block of a pass, into the device slot of step + 1; its payload goes on as it came. */
  private async receive(tag: 'kv' | 'bkv', incoming: Promise<Message>, step: number, owner: number, posted: number) {
    const got = this.upload(await waitFor(this.cfg, 'wait kv', traced(this.cfg, tag, incoming, owner, posted)), (step + 1) % 2, this.cfg.positionsOf(owner).length);
    return { kv: { owner, k: got.k, v: got.v, seg: got.seg }, payload: Promise.resolve(got.payload) };
  }

  async forward(t: AttentionTensors): Promise<void> {
    const cfg = this.cfg;
    const { rank, n } = ringShape(cfg);
    this.ensure();
    const qLen = cfg.positionsOf(rank).length;
    this.att.reset(this.shape(qLen, qLen), t.o, t.lse);
    const op = beginPass(cfg, 'fwd');
    const reach = blockReach(cfg, n);
    let kv: { owner: number; k: Tensor32; v: Tensor32; seg?: Int32Array } | null = { owner: rank, k: t.k, v: t.v, seg: cfg.segments };
    let payload: Promise<Tensor[]> = reach[rank] > 0 ? this.ownPayload(t.k, t.v) : Promise.resolve([]);
    for (let step = 0; step < n; step++) {
      const nextOwner = mod(rank - step - 1, n);
      const posted = performance.now();
      const incoming = step + 1 <= reach[nextOwner] ? op!.recvMessage('kv') : null;
      incoming?.catch(() => undefined);
      let sent: Promise<void> | null = null;
      if (kv) {
        const forward = step + 1 <= reach[kv.owner];
        if (forward && cfg.overlap) sent = sendPass(cfg, op!, 'kv', await payload);
        const held = kv;
        await this.attend('attention fwd', step, held, qLen, (s, m) => this.att.forward(s, m, t.q, held.k, held.v, t.o, t.lse));
        if (forward) sent ??= sendPass(cfg, op!, 'kv', await payload);
      }
      kv = null;
      if (incoming) ({ kv, payload } = await this.receive('kv', incoming, step, nextOwner, posted));
      await sent;
    }
    op?.end();
  }

  async backward(saved: AttentionTensors, dO: Tensor32, g: { dq: Tensor32; dk: Tensor32; dv: Tensor32 }): Promise<void> {
    const cfg = this.cfg;
    const { rank, n } = ringShape(cfg);
    this.ensure();
    const op = beginPass(cfg, 'bwd');
    const reach = blockReach(cfg, n);
    const e = this.engine;
    const qLen = cfg.positionsOf(rank).length;
    const delta = slice(this.deltaT!, 0, cfg.heads * qLen);
    this.att.delta(this.shape(qLen, qLen), dO, saved.o, delta);
    e.zero(g.dq);
    const grads = { q: saved.q, k: saved.k, v: saved.v, dO, lse: saved.lse, delta };
    const sends: Promise<void>[] = [];
    const route = dkvRouter(cfg, op, reach, rank);
    let kv: { owner: number; k: Tensor32; v: Tensor32; seg?: Int32Array } | null = { owner: rank, k: saved.k, v: saved.v, seg: cfg.segments };
    let payload: Promise<Tensor[]> = reach[rank] > 0 ? this.ownPayload(saved.k, saved.v) : Promise.resolve([]);
    for (let step = 0; step < n; step++) {
      const nextOwner = mod(rank - step - 1, n);
      const posted = performance.now();
      const incoming = step + 1 <= reach[nextOwner] ? op!.recvMessage('bkv') : null;
      incoming?.catch(() => undefined);
      if (kv) {
        const forward = step + 1 <= reach[kv.owner];
        let sent = forward && cfg.overlap ? sendPass(cfg, op!, 'bkv', await payload) : null;
        const acc = route.incoming(kv.owner, step);
        acc?.catch(() => undefined);
        const w = cfg.positionsOf(kv.owner).length * cfg.kvHeads * cfg.headDim;
        // A block nobody else needs (a ring of one, or a short window) adds straight into the model's dk, dv.
        const direct = kv.owner === rank && !forward;
        const share = direct ? { dk: g.dk, dv: g.dv } : { dk: slice(this.share!.dk, 0, w), dv: slice(this.share!.dv, 0, w) };
        e.zero(share.dk);
        e.zero(share.dv);
        const held = kv;
        await this.attend('attention bwd', step, held, qLen, (s, m) =>
          this.att.backward(s, m, { ...grads, k: held.k, v: held.v }, { dq: g.dq, dk: share.dk, dv: share.dv }),
        );
        if (!direct) {
          // The share is read into fresh arrays: they are what travels on.
          let dk: Float32Array = Float32Array.from(await e.read(share.dk));
          let dv: Float32Array = Float32Array.from(await e.read(share.dv));
          if (acc) ({ dk, dv } = await accumulate(cfg, acc, dk, dv));
          route.place(held.owner, step, { dk, dv });
        }
        if (forward) sent ??= sendPass(cfg, op!, 'bkv', await payload);
        if (sent) sends.push(sent);
      }
      kv = null;
      if (incoming) ({ kv, payload } = await this.receive('bkv', incoming, step, nextOwner, posted));
    }
    const home = await route.finish();
    await Promise.all(sends);
    op?.end();
    if (home) {
      e.write(g.dk, home.dk);
      e.write(g.dv, home.dv);
    }
    await e.flush();
  }
}

/**
 * Ring attention as the model's attention layer for this rank's shard: on the
 * engine's memory where the engine has its own attention (webgpu), else on
 * host arrays with the config's kernel.
 */
export function ringAttentionOp(cfg: RingConfig & { kernel?: AttentionKernel }): AttentionOp {
  const host = cfg.kernel
    ? onHostArrays({
        forward: (q, k, v) => ringAttentionForward(cfg as RingAttentionConfig, q, k, v),
        backward: (saved, dO) => ringAttentionBackward(cfg as RingAttentionConfig, saved, dO),
      })
    : null;
  const onEngine = new WeakMap<Engine, AttentionOp>();
  const pick = (engine: Engine): AttentionOp => {
    if (!engine.attention) {
      if (!host) throw new Error(`ring attention: engine ${engine.name} has no attention of its own and no kernel was given`);
      return host;
    }
    let op = onEngine.get(engine);
    if (!op) {
      const r = new EngineRing(cfg, engine);
      onEngine.set(engine, (op = { forward: (_, t) => r.forward(t), backward: (_, saved, dO, g) => r.backward(saved, dO, g) }));
    }
    return op;
  };
  return {
    forward: (engine, t) => pick(engine).forward(engine, t),
    backward: (engine, saved, dO, g) => pick(engine).backward(engine, saved, dO, g),
  };
}
