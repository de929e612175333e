import { rmSync } from 'node:fs';
import * as zmq from 'zeromq';
import { loadAddon } from '../addon/index.js';
import { byteLengthOf, decodeHeader, encodeHeader, tensorDType, FrameError, payloadFromFrame, type DType, type FrameHeader, type FramePart, type Payload, type Tensor } from './frame.js';
import { SHM_BLOCKS, SHM_MIN_BYTES, ShmReader, ShmWriter, type ShmDescriptor } from './shm.js';
import { guardServer, type CurveKeys, type ServerGuard } from './zap.js';

/**
 * The ring's data plane for one worker: a PULL socket bound for the predecessor
 * and a PUSH socket connected to the successor. Every ring algorithm (ring
 * attention forward and backward, the collectives) runs as one *ring op*:
 * `ring.begin(phase, tags)` opens it, its `sendRecv`/`send`/`recv` move the
 * blocks, `end()` closes it. Every rank begins the same ops in the same order
 * (SPMD), so op n here is op n on both neighbours.
 *
 * - A send with nothing queued ahead goes to ZeroMQ before `send` returns, so a
 *   synchronous compute right after it hides the transfer; zeromq.js sends a
 *   typed array zero-copy, so callers must never mutate what they sent.
 * - A background loop drains the PULL socket and files messages by op and tag,
 *   so streams of different tags (KV blocks and dKV accumulators) interleave.
 * - Each message says job, sequence, step, op, phase and tag. One this rank
 *   cannot be waiting for fails the ring the moment it arrives, naming both
 *   ranks and the expected and received message: a foreign job, a lost or
 *   duplicated sequence number, a stale step, an op already finished, a phase
 *   or tag the op does not have, a chunk stream cut short. Messages for ops not
 *   begun yet (a predecessor ahead) wait, checked when the op begins, within
 *   ring.maxQueuedBytes.
 * - Memory is bounded: ZeroMQ's queues hold at most HIGH_WATER_MARK messages of
 *   at most one chunk each way, the inbox at most maxQueuedBytes, and once the
 *   predecessor is connected nobody else may connect.
 * - Waits for data end when the link dies (ZeroMQ heartbeats) or the ring
 *   fails; opTimeoutMs is only the backstop for a peer that is alive but silent.
 */

export interface RingPeer {
  rank: number;
  host: string;
  endpoint: string;
}

export interface RingOptions {
  rank: number;
  worldSize: number;
  jobId: string;
  /** Endpoint this rank's receive socket binds, e.g. tcp://127.0.0.1:29501. */
  bind: string;
  /** More endpoints for the same socket, e.g. an ipc path for a predecessor on the same host. */
  extraBinds?: string[];
  next: RingPeer;
  prev: RingPeer;
  opTimeoutMs: number;
  connectTimeoutMs: number;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  maxMessageBytes: number;
  /**
   * The most bytes of messages that may wait for a receive that has not been
   * made (default 4 x maxMessageBytes). Past it the ring fails, naming the
   * sender and the tags piling up: a peer sending what this rank never
   * receives cannot grow it without bound.
   */
  maxQueuedBytes?: number;
  /** One key pair per job: a process without it can neither connect nor be connected to. */
  curve?: CurveKeys;
  /**
   * A successor on this host: messages of SHM_MIN_BYTES and more go through a
   * shared-memory channel (src/ring/shm.ts), ZeroMQ carrying only their
   * descriptors; a message that does not fit it now goes on ZeroMQ. The
   * channel is made at the first such message, sized for SHM_BLOCKS of it (at
   * most `maxBytes`): its pages count in both ends' RSS once written, so it is
   * as large as the run's blocks need. The ring closes and unlinks it.
   */
  shmSend?: ShmChannelOptions;
  /** A predecessor on this host: where its channel is, opened at its first such message. */
  shmRecv?: string;
  /** Called once when the ring fails (peer lost, protocol error); the job should stop. */
  onFailure?: (err: Error) => void;
}

export interface ShmChannelOptions {
  path: string;
  maxBytes: number;
  /** No channel is the ring's failure (ring.transport shm), else a fallback to ZeroMQ, said once. */
  required: boolean;
  onUnavailable?: (why: string) => void;
}

export class RingError extends Error {
  override name = 'RingError';
}

export interface RingStats {
  /** Messages whose first frames have been handed to ZeroMQ (counted as they are handed). */
  messagesHanded: number;
  messagesSent: number;
  bytesSent: number;
  messagesReceived: number;
  bytesReceived: number;
  /** Total time `recv` callers spent waiting for a message that had not arrived yet. */
  waitMs: number;
  /** Messages sent through the shared-memory channel (the rest went on ZeroMQ). */
  messagesViaShm: number;
}

/** A received message with the time (performance.now()) its last frame was taken off the socket. */
export interface Message {
  tensors: Tensor[];
  arrivedAt: number;
}

export type Sendable = Payload | Tensor;

/**
 * One run of a ring algorithm, the helper every one of them moves blocks with
 * (in the spirit of ring-flash-attention's RingComm). Its tags are declared at
 * `begin`: a message of another tag, or one more than the op takes, is a
 * protocol error.
 */
export interface RingOp {
  readonly index: number;
  readonly phase: string;
  readonly step: number;
  /**
   * One hop: hands `items` to the successor now (to ZeroMQ before this returns
   * when nothing is queued ahead, so the caller's next compute hides the
   * transfer) and returns the predecessor's next message of the same tag. Both
   * promises are observed here, so one left unawaited after a failure cannot
   * crash the process.
   */
  sendRecv(tag: string, items: Sendable[]): { sent: Promise<void>; received: Promise<Message> };
  /** Queues a message to the successor; resolves once ZeroMQ has taken it. Never mutate what was sent. */
  send(tag: string, items: Sendable[]): Promise<void>;
  /** The predecessor's next message of `tag` in this op. */
  recv(tag: string, timeoutMs?: number): Promise<Tensor[]>;
  recvMessage(tag: string, timeoutMs?: number): Promise<Message>;
  /** Closes the op: a message of it left unreceived, or arriving later, fails the ring. */
  end(): void;
}

interface Waiter {
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** What this rank knows of one op: begun here (tags known), or only heard of from the predecessor. */
interface OpState {
  op: number;
  /** Set at begin; until then, what the predecessor's first message of it said. */
  phase: string;
  step: number;
  tags: Set<string> | null;
  inbox: Map<string, Message[]>;
  waiters: Map<string, Waiter[]>;
  /** The header of the first message heard for an op not begun yet, to check at begin. */
  heard?: FrameHeader;
}

/** Op 0: the ring's own hello and goodbye, open for the ring's whole life. */
const CONTROL_OP = 0;
const CONTROL_PHASE = 'ring';

/**
 * ZeroMQ's queue bound per link and direction, in messages. No frame exceeds
 * one chunk (CHUNK_BYTES), so each queue holds at most ~64 MiB; past it a
 * sender waits (backpressure) instead of growing either process.
 */
export const HIGH_WATER_MARK = 16;

const opName = (h: Pick<FrameHeader, 'op' | 'phase' | 'step'>) => `op ${h.op} (${h.phase}, step ${h.step})`;

export class Ring {
  readonly rank: number;
  readonly worldSize: number;
  readonly next: RingPeer;
  readonly prev: RingPeer;
  readonly stats: RingStats = { messagesHanded: 0, messagesSent: 0, bytesSent: 0, messagesReceived: 0, bytesReceived: 0, waitMs: 0, messagesViaShm: 0 };

  private readonly opts: RingOptions;
  private readonly push: zmq.Push;
  private readonly pull: zmq.Pull;
  private sendChain: Promise<void> = Promise.resolve();
  /** Sends called and not yet finished: counted at the call, so a send never overtakes one queued before it. */
  private sendsQueued = 0;
  private sendSeq = 0;
  private recvSeq = 0;
  private step = 0;
  /** Index the next `begin` takes; ops below it not in `ops` are finished. */
  private nextOp = CONTROL_OP + 1;
  private readonly ops = new Map<number, OpState>();
  private readonly control: OpState;
  private queuedBytes = 0;
  /** A chunked message being received: its buffers and how far they are filled. */
  private assembly: { header: FrameHeader; tensors: Tensor[]; index: number; offset: number; chunks: number; expected: number } | null = null;
  private failure: Error | null = null;
  private closed = false;
  /** Set once our goodbye is sent: from then on the successor may leave at any moment. */
  private leaving = false;
  private guard: ServerGuard = { release: () => undefined, lock: () => undefined };
  private shmOut: ShmWriter | null = null;
  /** The channel could not be had: ZeroMQ carries everything. */
  private shmOff = false;
  private shmIn: ShmReader | null = null;

  private constructor(opts: RingOptions) {
    this.opts = opts;
    this.rank = opts.rank;
    this.worldSize = opts.worldSize;
    this.next = opts.next;
    this.prev = opts.prev;
    this.control = { op: CONTROL_OP, phase: CONTROL_PHASE, step: 0, tags: new Set(['hello', 'bye']), inbox: new Map(), waiters: new Map() };
    this.ops.set(CONTROL_OP, this.control);
    const common = {
      linger: 1000,
      heartbeatInterval: opts.heartbeatIntervalMs,
      heartbeatTimeout: opts.heartbeatTimeoutMs,
      heartbeatTimeToLive: opts.heartbeatTimeoutMs,
    };
    // Large messages arrive in chunks, so no legitimate frame exceeds a chunk.
    this.pull = new zmq.Pull({ ...common, maxMessageSize: CHUNK_BYTES + 65536, receiveHighWaterMark: HIGH_WATER_MARK });
    this.push = new zmq.Push({ ...common, sendHighWaterMark: HIGH_WATER_MARK, connectTimeout: opts.connectTimeoutMs });
    if (opts.curve) {
      this.pull.curveServer = true;
      this.pull.curveSecretKey = opts.curve.secretKey;
      this.push.curveServerKey = opts.curve.publicKey;
      this.push.curvePublicKey = opts.curve.publicKey;
      this.push.curveSecretKey = opts.curve.secretKey;
    }
  }

  /** Binds, connects, and proves both links with one hello around the ring; then admits no other connection. */
  static async open(opts: RingOptions): Promise<Ring> {
    // Loading the native addon fixes glibc's mmap threshold (native/addon.cc): ZeroMQ's
    // multi-MiB receive buffers then go back to the OS when freed instead of staying
    // resident in its I/O thread's malloc arena. Without the addon, nothing changes.
    loadAddon();
    const ring = new Ring(opts);
    try {
      ring.guard = await guardServer(ring.pull, opts.curve);
      for (const ep of [opts.bind, ...(opts.extraBinds ?? [])]) await ring.pull.bind(ep);
      ring.push.connect(opts.next.endpoint);
      ring.watchLinks();
      void ring.receiveLoop();
      await ring.sendIn(ring.control, 'hello', [new Int32Array([opts.rank])]);
      await ring.recvIn(ring.control, 'hello', opts.connectTimeoutMs);
      // The hello came over the predecessor's connection: nobody else needs one.
      ring.guard.lock();
      return ring;
    } catch (err) {
      ring.closed = true;
      ring.failWaiters(err as Error);
      ring.push.close();
      ring.pull.close();
      ring.guard.release();
      ring.closeShm();
      throw err;
    }
  }

  /** The training step every later message carries; a message of an earlier step is stale. */
  setStep(step: number): void {
    this.step = step;
  }

  /** Opens the next ring op. Every rank must begin the same ops, with the same phases and tags, in the same order. */
  begin(phase: string, tags: string[]): RingOp {
    this.throwIfFailed();
    const index = this.nextOp++;
    const heard = this.ops.get(index);
    const st: OpState = heard ?? { op: index, phase, step: this.step, tags: null, inbox: new Map(), waiters: new Map() };
    st.phase = phase;
    st.step = this.step;
    st.tags = new Set(tags);
    this.ops.set(index, st);
    // Messages of this op that arrived before it began are checked now.
    const h = st.heard;
    if (h) {
      const why = this.mismatch(st, h);
      if (why) {
        const err = this.protocolError(why);
        this.fail(err);
        throw err;
      }
    }
    return {
      index,
      phase,
      step: st.step,
      sendRecv: (tag, items) => {
        const sent = this.sendIn(st, tag, items);
        const received = this.recvIn(st, tag);
        sent.catch(() => undefined);
        received.catch(() => undefined);
        return { sent, received };
      },
      send: (tag, items) => this.sendIn(st, tag, items),
      recv: (tag, timeoutMs) => {
        // Posted ahead and held (the backward's next dK/dV): handled here, as recvIn's own promise is.
        const tensors = this.recvIn(st, tag, timeoutMs).then((m) => m.tensors);
        tensors.catch(() => undefined);
        return tensors;
      },
      recvMessage: (tag, timeoutMs) => this.recvIn(st, tag, timeoutMs),
      end: () => this.endOp(st),
    };
  }

  /** A tag the op did not declare is this rank's own bug, found before anything travels. */
  private checkTag(op: OpState, tag: string): void {
    if (!op.tags!.has(tag)) throw new Error(`rank ${this.rank}: "${tag}" is not a tag of ${op.phase} (declared: ${[...op.tags!].join(', ')})`);
  }

  private sendIn(op: OpState, tag: string, items: Sendable[]): Promise<void> {
    this.throwIfFailed();
    this.checkTag(op, tag);
    const tensors = items.map(asTensor);
    for (const t of tensors) {
      // The receiver would drop the connection without a word: say it here.
      if (t.data.byteLength > this.opts.maxMessageBytes) {
        throw new RingError(`rank ${this.rank}: a "${tag}" payload of ${t.data.byteLength} bytes exceeds ring.maxMessageBytes (${this.opts.maxMessageBytes}); raise it in the spec`);
      }
    }
    const bytes = bytesOf(tensors);
    const header = (part: FramePart, described: Tensor[]) =>
      encodeHeader({
        jobId: this.opts.jobId,
        part,
        seq: this.sendSeq++,
        srcRank: this.rank,
        step: op.step,
        op: op.op,
        phase: op.phase,
        tag,
        tensors: described.map((t) => ({ dtype: tensorDType(t), shape: t.shape })),
      });
    // Sequence numbers are taken now, in call order; the frames go out in the same order,
    // which is the order the shared-memory channel's reader must take its messages in.
    const channel = bytes >= SHM_MIN_BYTES ? this.shmChannel(bytes) : null;
    const inShm = channel ? channel.put(tensors.map(bytesView)) : null;
    if (inShm) this.stats.messagesViaShm++;
    const messages: Array<Array<Buffer | Payload>> = inShm
      ? [[header('shm', tensors), Float64Array.of(inShm.offset, inShm.bytes, inShm.end)]]
      : bytes <= CHUNK_BYTES
        ? [[header('whole', tensors), ...tensors.map((t) => t.data)]]
        : [[header('head', tensors)], ...chunksOf(tensors).map((c) => [header('chunk', []), c])];
    const run = async () => {
      try {
        for (const [i, frames] of messages.entries()) {
          this.throwIfFailed();
          const handed = this.push.send(frames);
          if (i === 0) this.stats.messagesHanded++;
          await handed;
        }
        this.stats.messagesSent++;
        this.stats.bytesSent += bytes;
      } finally {
        this.sendsQueued--;
      }
    };
    // With nothing ahead of it, the message goes to ZeroMQ now, before the caller's next
    // (possibly synchronous) compute, so its transfer runs under that compute; behind
    // another send it waits its turn, which keeps the order and ZeroMQ's one send at a time.
    const done = this.sendsQueued++ === 0 ? run() : this.sendChain.then(run);
    // Keep the chain alive after a failure so later sends report the ring's error, not this one's.
    this.sendChain = done.catch(() => undefined);
    return done;
  }

  private recvIn(op: OpState, tag: string, timeoutMs = this.opts.opTimeoutMs): Promise<Message> {
    this.throwIfFailed();
    this.checkTag(op, tag);
    const queued = op.inbox.get(tag);
    if (queued && queued.length > 0) {
      const m = queued.shift()!;
      this.queuedBytes -= bytesOf(m.tensors);
      return Promise.resolve(m);
    }
    const started = performance.now();
    const received = new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        const list = op.waiters.get(tag);
        const i = list?.indexOf(waiter) ?? -1;
        if (i >= 0) list!.splice(i, 1);
        reject(
          new RingError(
            `rank ${this.rank}: timed out after ${(timeoutMs / 1000).toFixed(1)} s waiting for "${tag}" of ${opName(op)} from rank ${this.prev.rank} (${this.prev.host}), whose link is alive`,
          ),
        );
      }, timeoutMs);
      const waiter: Waiter = {
        resolve: (m) => {
          this.stats.waitMs += performance.now() - started;
          resolve(m);
        },
        reject,
        timer,
      };
      op.waiters.set(tag, [...(op.waiters.get(tag) ?? []), waiter]);
    });
    // A receive posted ahead (the next KV block, under this block's compute) may fail while its caller awaits
    // something else: that is the ring's failure, reported through onFailure and to whoever awaits this; it must
    // not also crash the process as an unhandled rejection before the report is out.
    received.catch(() => undefined);
    return received;
  }

  private endOp(op: OpState): void {
    if (this.ops.get(op.op) !== op) return;
    this.ops.delete(op.op);
    const left = [...op.inbox].filter(([, l]) => l.length > 0);
    for (const [, l] of left) for (const m of l) this.queuedBytes -= bytesOf(m.tensors);
    const waiting = [...op.waiters.values()].flat();
    const err = left.length
      ? this.protocolError(`${left.map(([t, l]) => `${l.length} "${t}" message${l.length > 1 ? 's' : ''}`).join(', ')} of ${opName(op)} more than this rank received in it`)
      : new RingError(`rank ${this.rank}: ${opName(op)} ended with receives still waiting`);
    for (const w of waiting) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    if (left.length || waiting.length) this.fail(err);
  }

  /** Resolves when every queued send has been handed to zeromq. */
  async flush(): Promise<void> {
    await this.sendChain;
    this.throwIfFailed();
  }

  /**
   * Leaves the ring cleanly: a goodbye goes to the successor and one is awaited
   * from the predecessor, so no rank mistakes a neighbour's normal exit for a
   * crash. After a failure the sockets are simply closed.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    if (!this.failure) {
      try {
        const bye = this.sendIn(this.control, 'bye', []);
        this.leaving = true;
        await bye;
        await this.recvIn(this.control, 'bye', this.opts.connectTimeoutMs);
      } catch {
        // The job is over either way; a neighbour that vanished during goodbye changes nothing.
      }
    }
    this.closed = true;
    await this.sendChain.catch(() => undefined);
    this.failWaiters(new RingError(`rank ${this.rank}: ring closed`));
    this.push.close();
    this.pull.close();
    this.guard.release();
    this.closeShm();
  }

  /** The successor's channel, made at the first message that wants it. */
  private shmChannel(bytes: number): ShmWriter | null {
    const o = this.opts.shmSend;
    if (!o || this.shmOff) return null;
    if (this.shmOut) return this.shmOut;
    try {
      // A channel left by an earlier attempt of this job (killed before it could remove it) is ours to replace.
      rmSync(o.path, { force: true });
      this.shmOut = ShmWriter.create(o.path, Math.min(o.maxBytes, SHM_BLOCKS * bytes));
      return this.shmOut;
    } catch (err) {
      const why = (err as Error).message.replace(/^ringattn shm: /, '');
      if (o.required) throw new RingError(`rank ${this.rank}: ring.transport shm: no shared-memory channel to rank ${this.next.rank} (${this.next.host}): ${why}`);
      this.shmOff = true;
      o.onUnavailable?.(why);
      return null;
    }
  }

  private closeShm(): void {
    this.shmOut?.close();
    this.shmOut?.unlink();
    this.shmIn?.close();
    this.shmOut = this.shmIn = null;
  }

  get failed(): Error | null {
    return this.failure;
  }

  /** The error the ring failed with (every later wait rejects with this same object), or null while it works. */
  get failedWith(): Error | null {
    return this.failure;
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new RingError(`rank ${this.rank}: ring is closed`);
  }

  private async receiveLoop(): Promise<void> {
    while (!this.closed && !this.failure) {
      let frames: Buffer[];
      try {
        frames = await this.pull.receive();
      } catch (err) {
        if (!this.closed) this.fail(new RingError(`rank ${this.rank}: receive failed: ${(err as Error).message}`));
        return;
      }
      try {
        this.deliver(frames);
      } catch (err) {
        const why = err instanceof FrameError ? err.message : String(err);
        const stranger = err instanceof FrameError && (err as FrameError & { foreign?: boolean }).foreign;
        const hint = stranger ? ` (not from this job's ring: another process is connected to rank ${this.rank}'s ring port)` : '';
        this.fail(this.protocolError(`${why}${hint}`));
        return;
      }
    }
  }

  private protocolError(why: string): RingError {
    return new RingError(`rank ${this.rank}: bad message from rank ${this.prev.rank} (${this.prev.host}): ${why}`);
  }

  /** Why a message cannot belong to an op this rank has begun, or null. */
  private mismatch(op: OpState, h: FrameHeader): string | null {
    if (h.phase !== op.phase || h.step !== op.step) return `"${h.tag}" of ${opName(h)}, but op ${op.op} here is ${op.phase} at step ${op.step}: the ranks run different sequences of ring ops`;
    if (!op.tags!.has(h.tag)) return `"${h.tag}" in ${opName(h)}, which takes only ${[...op.tags!].map((t) => `"${t}"`).join(', ')}`;
    return null;
  }

  private deliver(frames: Buffer[]): void {
    const foreign = (e: FrameError) => Object.assign(e, { foreign: true });
    let h: FrameHeader;
    try {
      h = decodeHeader(frames[0]);
    } catch (e) {
      throw e instanceof FrameError && /bad magic/.test(e.message) ? foreign(e) : e;
    }
    if (h.jobId !== this.opts.jobId) throw foreign(new FrameError(`message of job ${h.jobId}, this job is ${this.opts.jobId}`));
    if (h.srcRank !== this.prev.rank) throw foreign(new FrameError(`message claims to come from rank ${h.srcRank}`));
    const expected = this.recvSeq >>> 0;
    if (h.seq !== expected) {
      throw new FrameError(
        h.seq < expected
          ? `"${h.tag}" with sequence number ${h.seq} again (a duplicate; expected ${expected})`
          : `"${h.tag}" with sequence number ${h.seq}, expected ${expected} (${h.seq - expected} message${h.seq - expected > 1 ? 's' : ''} lost)`,
      );
    }
    this.recvSeq++;
    const a = this.assembly;
    if (a && (h.part !== 'chunk' || h.op !== a.header.op || h.tag !== a.header.tag)) {
      throw new FrameError(`"${h.tag}" of ${opName(h)} arrived after chunk ${a.chunks} of ${a.expected} of "${a.header.tag}": its chunk stream was cut short`);
    }
    if (h.op !== CONTROL_OP) {
      if (h.step < this.step) throw new FrameError(`"${h.tag}" of ${opName(h)}, a stale step: this rank is at step ${this.step}`);
      if (h.op < this.nextOp && !this.ops.has(h.op)) throw new FrameError(`"${h.tag}" of ${opName(h)}, which this rank has finished`);
    }
    let op = this.ops.get(h.op);
    if (op?.tags) {
      const why = this.mismatch(op, h);
      if (why) throw new FrameError(why);
    } else if (op?.heard) {
      const first = op.heard;
      if (first.phase !== h.phase || first.step !== h.step) throw new FrameError(`"${h.tag}" of ${opName(h)} after "${first.tag}" of ${opName(first)}: one op cannot be both`);
    } else {
      op = { op: h.op, phase: h.phase, step: h.step, tags: null, inbox: new Map(), waiters: new Map(), heard: h };
      this.ops.set(h.op, op);
    }
    const tensors = this.assemble(h, frames);
    if (!tensors) return;
    this.stats.messagesReceived++;
    this.stats.bytesReceived += bytesOf(tensors);
    this.file(op, h.tag, { tensors, arrivedAt: performance.now() });
  }

  /**
   * The tensors of a whole message, or of a chunked one once its last chunk is
   * in (null before that). A chunked message's buffers are allocated from its
   * head, bounded by ring.maxMessageBytes, and filled chunk by chunk.
   */
  private assemble(h: FrameHeader, frames: Buffer[]): Tensor[] | null {
    const a = this.assembly;
    if (h.part === 'chunk') {
      if (!a || frames.length !== 2) throw new FrameError(`a chunk of "${h.tag}" without its head`);
      const chunk = frames[1];
      a.chunks++;
      let offset = 0;
      while (offset < chunk.length) {
        const t = a.tensors[a.index];
        if (!t) throw new FrameError(`chunks of "${h.tag}" overrun the sizes its head declared`);
        const dst = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
        const n = Math.min(chunk.length - offset, dst.length - a.offset);
        dst.set(chunk.subarray(offset, offset + n), a.offset);
        offset += n;
        a.offset += n;
        if (a.offset === dst.length) {
          a.index++;
          a.offset = 0;
        }
      }
      while (a.index < a.tensors.length && a.tensors[a.index].data.byteLength === 0) a.index++;
      if (a.index < a.tensors.length) return null;
      this.assembly = null;
      return a.tensors;
    }
    if (h.part === 'head') {
      if (frames.length !== 1) throw new FrameError('a chunked head with payload frames');
      const sizes = h.tensors.map((d) => byteLengthOf(d.dtype, d.shape));
      const total = sizes.reduce((s, b) => s + b, 0);
      if (total > this.opts.maxMessageBytes) throw new FrameError(`a "${h.tag}" message of ${total} bytes exceeds ring.maxMessageBytes (${this.opts.maxMessageBytes})`);
      const expected = sizes.reduce((n, b) => n + Math.ceil(b / CHUNK_BYTES), 0);
      this.assembly = { header: h, tensors: h.tensors.map((d) => ({ data: allocate(d.dtype, d.shape), shape: d.shape, dtype: d.dtype })), index: 0, offset: 0, chunks: 0, expected };
      return null;
    }
    if (h.part === 'shm') {
      if (!this.opts.shmRecv) throw new FrameError(`"${h.tag}" in shared memory on a link that has none`);
      if (frames.length !== 2 || frames[1].length !== 24) throw new FrameError(`"${h.tag}" in shared memory without its descriptor`);
      const d = new Float64Array(new Uint8Array(frames[1]).buffer);
      const desc: ShmDescriptor = { offset: d[0], bytes: d[1], end: d[2] };
      const tensors = h.tensors.map((t) => ({ data: allocate(t.dtype, t.shape), shape: t.shape, dtype: t.dtype }));
      if (tensors.reduce((n, t) => n + t.data.byteLength, 0) !== desc.bytes) throw new FrameError(`"${h.tag}" in shared memory: ${desc.bytes} bytes, its header lists ${bytesOf(tensors)}`);
      try {
        this.shmIn ??= ShmReader.open(this.opts.shmRecv);
        this.shmIn.take(desc, tensors.map(bytesView));
      } catch (err) {
        throw new FrameError(`"${h.tag}" in shared memory: ${(err as Error).message}`);
      }
      return tensors;
    }
    if (frames.length !== h.tensors.length + 1) throw new FrameError(`${frames.length - 1} payload frames, header lists ${h.tensors.length}`);
    return h.tensors.map((d, i) => ({ data: payloadFromFrame(frames[i + 1], d.dtype, d.shape), shape: d.shape, dtype: d.dtype }));
  }

  /** Hands a message to the oldest waiter for its op and tag, or queues it. */
  private file(op: OpState, tag: string, message: Message): void {
    const waiting = op.waiters.get(tag);
    if (waiting && waiting.length > 0) {
      const w = waiting.shift()!;
      clearTimeout(w.timer);
      w.resolve(message);
      return;
    }
    op.inbox.set(tag, [...(op.inbox.get(tag) ?? []), message]);
    this.queuedBytes += bytesOf(message.tensors);
    const max = this.opts.maxQueuedBytes ?? 4 * this.opts.maxMessageBytes;
    if (this.queuedBytes > max) {
      const piling = [...this.ops.values()]
        .flatMap((o) => [...o.inbox].filter(([, l]) => l.length > 0).map(([t, l]) => `"${t}" of ${opName(o)} x${l.length}`))
        .join(', ');
      this.fail(
        new RingError(
          `rank ${this.rank}: ${this.queuedBytes} bytes from rank ${this.prev.rank} (${this.prev.host}) wait for receives that were never made (${piling}), ` +
            `past ring.maxQueuedBytes (${max}): the two ranks disagree on what is sent`,
        ),
      );
      // Nothing will take them now.
      for (const o of this.ops.values()) o.inbox.clear();
      this.queuedBytes = 0;
    }
  }

  /** The successor link dropping (peer killed, or silent past the heartbeat timeout) fails the ring, naming the peer. */
  private watchLinks(): void {
    this.push.events.on('disconnect', () => {
      if (!this.closed && !this.leaving) this.fail(new RingError(`rank ${this.rank}: lost the link to its successor, rank ${this.next.rank} (${this.next.host})`));
    });
    // A predecessor's departure is reported by its own predecessor (whose push link
    // drops) or by the launcher; here it is expected at every clean shutdown.
    this.pull.events.on('handshake:error:auth', () => {
      // Someone without the job's keys (or anyone, once locked) tried to connect: refused; the ring continues.
    });
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.failWaiters(err);
    this.opts.onFailure?.(err);
  }

  private failWaiters(err: Error): void {
    for (const op of this.ops.values()) {
      for (const list of op.waiters.values()) {
        for (const w of list) {
          clearTimeout(w.timer);
          w.reject(err);
        }
      }
      op.waiters.clear();
    }
  }
}

/** Payload bytes per chunk of a large message. */
export const CHUNK_BYTES = 4 << 20;


const bytesView = (t: Tensor): Uint8Array => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);

const bytesOf = (tensors: Tensor[]): number => tensors.reduce((a, t) => a + t.data.byteLength, 0);

/** Zero-copy byte views of the tensors' payloads, cut into chunks of at most CHUNK_BYTES. */
function chunksOf(tensors: Tensor[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const t of tensors) {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    for (let o = 0; o < bytes.length; o += CHUNK_BYTES) out.push(bytes.subarray(o, Math.min(bytes.length, o + CHUNK_BYTES)));
  }
  return out;
}

function allocate(dtype: DType, shape: number[]): Payload {
  const n = shape.reduce((a, b) => a * b, 1);
  switch (dtype) {
    case 'float32':
      return new Float32Array(n);
    case 'int32':
      return new Int32Array(n);
    case 'float64':
      return new Float64Array(n);
    case 'bfloat16':
    case 'float16':
      return new Uint16Array(n);
    default:
      return new Uint8Array(n);
  }
}

function asTensor(x: Sendable): Tensor {
  if (ArrayBuffer.isView(x)) return { data: x, shape: [x.length] };
  return x;
}
