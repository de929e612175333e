import { randomBytes } from 'node:crypto';
import * as zmq from 'zeromq';
import { loadAddon } from '../engine/addon.js';
import { byteLengthOf, decodeHeader, encodeHeader, tensorDType, FrameError, payloadFromFrame, type DType, type FrameHeader, type FramePart, type Payload, type Tensor } from './frame.js';

/**
 * The ring's data plane for one worker: a PULL socket bound for the predecessor
 * and a PUSH socket connected to the successor. Everything else (ring pass,
 * all-reduce, ring attention) is built from `send` and `recv`.
 *
 * - `send` is queued: zeromq.js allows one pending send per socket, and a typed
 *   array handed to it is sent zero-copy, so callers must never mutate it again.
 * - A background loop drains the PULL socket and files messages by tag, so
 *   streams with different tags (KV blocks and dKV accumulators) may interleave.
 * - Every message carries the job id and a per-link sequence number; a foreign,
 *   out-of-order or malformed message fails the ring loudly, and every wait has
 *   a timeout that names the peer.
 */

export interface RingPeer {
  rank: number;
  host: string;
  endpoint: string;
}

export interface CurveKeys {
  publicKey: string;
  secretKey: string;
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
  /** Called once when the ring fails (peer lost, protocol error); the job should stop. */
  onFailure?: (err: Error) => void;
}

/**
 * A ZAP (ZeroMQ RFC 27) handler for the sockets that accept connections (the
 * coordinator's ROUTER, each rank's PULL):
 * - with CURVE, a client must prove it holds the job's own key pair (every
 *   member of a job uses the same one); CURVE alone would let in any client
 *   that knows the server's public key;
 * - without, it still matters that ZAP is on: libzmq then refuses peers that
 *   speak the unversioned ZMTP 1.0 or 2.0, as which it would otherwise read any
 *   raw TCP stream (an HTTP request, random bytes) as messages.
 * One handler serves every such socket of the process, told apart by a ZAP
 * domain; it lives while at least one guarded socket does.
 */
const ZAP_ENDPOINT = 'inproc://zeromq.zap.01';
/** Domain -> the client key CURVE peers must present, or null for NULL security. */
const zapDomains = new Map<string, Buffer | null>();
let zapHandler: Promise<zmq.Router> | null = null;

async function startZapHandler(): Promise<zmq.Router> {
  const router = new zmq.Router({ linger: 0 });
  // A handler just released may still hold the endpoint while its close completes.
  for (let attempt = 0; ; attempt++) {
    try {
      await router.bind(ZAP_ENDPOINT);
      break;
    } catch (err) {
      if ((err as { code?: string }).code !== 'EADDRINUSE' || attempt >= 200) throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  void (async () => {
    try {
      for await (const frames of router) {
        // [peer id, empty, version, request id, domain, address, identity, mechanism, credentials...]
        const [id, empty, version, requestId, domain, , , mechanism, key] = frames;
        const allowed = zapDomains.get(domain?.toString() ?? '');
        const mech = mechanism?.toString();
        const ok =
          version?.toString() === '1.0' &&
          allowed !== undefined &&
          (allowed === null ? mech === 'NULL' : mech === 'CURVE' && key !== undefined && allowed.equals(key));
        await router.send([id, empty ?? Buffer.alloc(0), '1.0', requestId ?? Buffer.alloc(0), ok ? '200' : '400', ok ? 'OK' : 'not a member of this job', '', '']);
      }
    } catch {
      // closed
    }
  })();
  return router;
}

/**
 * Puts `socket` (not yet bound) under the ZAP handler: with `keys` (a CURVE
 * server) it accepts only clients holding them; without, only ZMTP 3 peers.
 * Returns the release to call when the socket closes.
 */
export async function guardServer(socket: zmq.Socket, keys?: CurveKeys): Promise<() => void> {
  const domain = `ringattn-${randomBytes(8).toString('hex')}`;
  socket.zapDomain = domain;
  zapDomains.set(domain, keys ? z85Decode(keys.publicKey) : null);
  zapHandler ??= startZapHandler();
  try {
    await zapHandler;
  } catch (err) {
    zapDomains.delete(domain);
    zapHandler = null;
    throw err;
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    zapDomains.delete(domain);
    if (zapDomains.size === 0 && zapHandler) {
      const h = zapHandler;
      zapHandler = null;
      void h.then((r) => r.close()).catch(() => undefined);
    }
  };
}

const Z85 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';

/** Z85 (ZeroMQ RFC 32) text to bytes: each 5 characters are a big-endian base-85 number of 4 bytes. */
export function z85Decode(text: string): Buffer {
  if (text.length % 5 !== 0) throw new Error('a Z85 string has a multiple of 5 characters');
  const out = Buffer.alloc((text.length / 5) * 4);
  for (let i = 0; i < text.length; i += 5) {
    let v = 0;
    for (let j = 0; j < 5; j++) {
      const d = Z85.indexOf(text[i + j]);
      if (d < 0) throw new Error(`not a Z85 character: ${JSON.stringify(text[i + j])}`);
      v = v * 85 + d;
    }
    if (v > 0xffffffff) throw new Error('Z85 group out of range');
    out.writeUInt32BE(v, (i / 5) * 4);
  }
  return out;
}

/** A well-formed key pair: two 40-character Z85 strings (32 bytes each). */
export function isCurveKeys(x: unknown): x is CurveKeys {
  const k = x as Partial<CurveKeys> | null;
  const ok = (s: unknown) => typeof s === 'string' && s.length === 40 && [...s].every((c) => Z85.includes(c));
  return typeof k === 'object' && k !== null && ok(k.publicKey) && ok(k.secretKey);
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
}

/** A received message with the time (performance.now()) its last frame was taken off the socket. */
export interface Message {
  tensors: Tensor[];
  arrivedAt: number;
}

interface Waiter {
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export type Sendable = Payload | Tensor;

export class Ring {
  readonly rank: number;
  readonly worldSize: number;
  readonly next: RingPeer;
  readonly prev: RingPeer;
  readonly stats: RingStats = { messagesHanded: 0, messagesSent: 0, bytesSent: 0, messagesReceived: 0, bytesReceived: 0, waitMs: 0 };

  private readonly opts: RingOptions;
  private readonly push: zmq.Push;
  private readonly pull: zmq.Pull;
  private sendChain: Promise<void> = Promise.resolve();
  /** Sends called and not yet finished: counted at the call, so a send never overtakes one queued before it. */
  private sendsQueued = 0;
  private sendSeq = 0;
  private recvSeq = 0;
  private readonly inbox = new Map<string, Message[]>();
  private queuedBytes = 0;
  /** A chunked message being received: its buffers and how far they are filled. */
  private assembly: { tag: string; tensors: Tensor[]; index: number; offset: number } | null = null;
  private readonly waiters = new Map<string, Waiter[]>();
  private failure: Error | null = null;
  private closed = false;
  /** Set once our goodbye is sent: from then on the successor may leave at any moment. */
  private leaving = false;
  private releaseGuard: () => void = () => undefined;

  private constructor(opts: RingOptions) {
    this.opts = opts;
    this.rank = opts.rank;
    this.worldSize = opts.worldSize;
    this.next = opts.next;
    this.prev = opts.prev;
    const common = {
      linger: 1000,
      heartbeatInterval: opts.heartbeatIntervalMs,
      heartbeatTimeout: opts.heartbeatTimeoutMs,
      heartbeatTimeToLive: opts.heartbeatTimeoutMs,
    };
    // Large messages arrive in chunks, so no legitimate frame exceeds a chunk.
    this.pull = new zmq.Pull({ ...common, maxMessageSize: CHUNK_BYTES + 65536, receiveHighWaterMark: 0 });
    this.push = new zmq.Push({ ...common, sendHighWaterMark: 0, connectTimeout: opts.connectTimeoutMs });
    if (opts.curve) {
      this.pull.curveServer = true;
      this.pull.curveSecretKey = opts.curve.secretKey;
      this.push.curveServerKey = opts.curve.publicKey;
      this.push.curvePublicKey = opts.curve.publicKey;
      this.push.curveSecretKey = opts.curve.secretKey;
    }
  }

  /** Binds, connects, and proves both links with one hello around the ring. */
  static async open(opts: RingOptions): Promise<Ring> {
    // Loading the native addon fixes glibc's mmap threshold (native/addon.cc): ZeroMQ's
    // multi-MiB receive buffers then go back to the OS when freed instead of staying
    // resident in its I/O thread's malloc arena. Without the addon, nothing changes.
    loadAddon();
    const ring = new Ring(opts);
    try {
      ring.releaseGuard = await guardServer(ring.pull, opts.curve);
      for (const ep of [opts.bind, ...(opts.extraBinds ?? [])]) await ring.pull.bind(ep);
      ring.push.connect(opts.next.endpoint);
      ring.watchLinks();
      void ring.receiveLoop();
      await ring.send('hello', [new Int32Array([opts.rank])]);
      await ring.recv('hello', opts.connectTimeoutMs);
      return ring;
    } catch (err) {
      ring.closed = true;
      ring.failWaiters(err as Error);
      ring.push.close();
      ring.pull.close();
      ring.releaseGuard();
      throw err;
    }
  }

  /**
   * One hop of the ring, the helper every ring algorithm moves blocks with:
   * hands `items` to the successor now (to ZeroMQ before this returns when
   * nothing is queued ahead, so the caller's next compute hides the transfer)
   * and returns the predecessor's next message of the same tag. Both promises
   * are observed here, so one left unawaited after a failure cannot crash the process.
   */
  sendRecv(tag: string, items: Sendable[]): { sent: Promise<void>; received: Promise<Message> } {
    const sent = this.send(tag, items);
    const received = this.recvMessage(tag);
    sent.catch(() => undefined);
    received.catch(() => undefined);
    return { sent, received };
  }

  /** Queues a message to the successor; resolves once zeromq has taken it. Never mutate what was sent. */
  send(tag: string, items: Sendable[]): Promise<void> {
    this.throwIfFailed();
    const tensors = items.map(asTensor);
    for (const t of tensors) {
      // The receiver would drop the connection without a word: say it here.
      if (t.data.byteLength > this.opts.maxMessageBytes) {
        throw new RingError(`rank ${this.rank}: a "${tag}" payload of ${t.data.byteLength} bytes exceeds ring.maxMessageBytes (${this.opts.maxMessageBytes}); raise it in the spec`);
      }
    }
    const bytes = bytesOf(tensors);
    const header = (part: FramePart, described: Tensor[]) =>
      encodeHeader({ jobId: this.opts.jobId, part, seq: this.sendSeq++, srcRank: this.rank, tag, tensors: described.map((t) => ({ dtype: tensorDType(t), shape: t.shape })) });
    // Sequence numbers are taken now, in call order; the frames go out in the same order.
    const messages: Array<Array<Buffer | Payload>> =
      bytes <= CHUNK_BYTES
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

  /** Waits for the next message with `tag` from the predecessor. */
  async recv(tag: string, timeoutMs = this.opts.opTimeoutMs): Promise<Tensor[]> {
    return (await this.recvMessage(tag, timeoutMs)).tensors;
  }

  recvMessage(tag: string, timeoutMs = this.opts.opTimeoutMs): Promise<Message> {
    this.throwIfFailed();
    const queued = this.inbox.get(tag);
    if (queued && queued.length > 0) {
      const m = queued.shift()!;
      this.queuedBytes -= bytesOf(m.tensors);
      return Promise.resolve(m);
    }
    const started = performance.now();
    return new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.removeWaiter(tag, waiter);
        reject(
          new RingError(
            `rank ${this.rank}: timed out after ${(timeoutMs / 1000).toFixed(1)} s waiting for "${tag}" from rank ${this.prev.rank} (${this.prev.host})`,
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
      const list = this.waiters.get(tag) ?? [];
      list.push(waiter);
      this.waiters.set(tag, list);
    });
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
        const bye = this.send('bye', []);
        this.leaving = true;
        await bye;
        await this.recv('bye', this.opts.connectTimeoutMs);
      } catch {
        // The job is over either way; a neighbour that vanished during goodbye changes nothing.
      }
    }
    this.closed = true;
    await this.sendChain.catch(() => undefined);
    this.failWaiters(new RingError(`rank ${this.rank}: ring closed`));
    this.push.close();
    this.pull.close();
    this.releaseGuard();
  }

  get failed(): Error | null {
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
        this.fail(new RingError(`rank ${this.rank}: bad message from rank ${this.prev.rank} (${this.prev.host}): ${why}${hint}`));
        return;
      }
    }
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
    if (h.seq !== this.recvSeq >>> 0) throw new FrameError(`sequence number ${h.seq}, expected ${this.recvSeq >>> 0} (a message was lost or reordered)`);
    this.recvSeq++;
    const tensors = this.assemble(h, frames);
    if (!tensors) return;
    this.stats.messagesReceived++;
    this.stats.bytesReceived += bytesOf(tensors);
    const message = { tensors, arrivedAt: performance.now() };
    this.file(h.tag, message);
  }

  /**
   * The tensors of a whole message, or of a chunked one once its last chunk is
   * in (null before that). A chunked message's buffers are allocated from its
   * head, bounded by ring.maxMessageBytes, and filled chunk by chunk.
   */
  private assemble(h: FrameHeader, frames: Buffer[]): Tensor[] | null {
    const a = this.assembly;
    if (h.part === 'chunk') {
      if (!a || a.tag !== h.tag || frames.length !== 2) throw new FrameError(`unexpected chunk of "${h.tag}"`);
      const chunk = frames[1];
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
    if (a) throw new FrameError(`"${h.tag}" arrived in the middle of chunked "${a.tag}"`);
    if (h.part === 'head') {
      if (frames.length !== 1) throw new FrameError('a chunked head with payload frames');
      const total = h.tensors.reduce((s, d) => s + byteLengthOf(d.dtype, d.shape), 0);
      if (total > this.opts.maxMessageBytes) throw new FrameError(`a "${h.tag}" message of ${total} bytes exceeds ring.maxMessageBytes (${this.opts.maxMessageBytes})`);
      this.assembly = { tag: h.tag, tensors: h.tensors.map((d) => ({ data: allocate(d.dtype, d.shape), shape: d.shape, dtype: d.dtype })), index: 0, offset: 0 };
      return null;
    }
    if (frames.length !== h.tensors.length + 1) throw new FrameError(`${frames.length - 1} payload frames, header lists ${h.tensors.length}`);
    return h.tensors.map((d, i) => ({ data: payloadFromFrame(frames[i + 1], d.dtype, d.shape), shape: d.shape, dtype: d.dtype }));
  }

  /** Hands a message to the oldest waiter for its tag, or queues it. */
  private file(tag: string, message: Message): void {
    const waiting = this.waiters.get(tag);
    if (waiting && waiting.length > 0) {
      const w = waiting.shift()!;
      clearTimeout(w.timer);
      w.resolve(message);
      return;
    }
    const list = this.inbox.get(tag) ?? [];
    list.push(message);
    this.inbox.set(tag, list);
    this.queuedBytes += bytesOf(message.tensors);
    const max = this.opts.maxQueuedBytes ?? 4 * this.opts.maxMessageBytes;
    if (this.queuedBytes > max) {
      const piling = [...this.inbox].filter(([, l]) => l.length > 0).map(([t, l]) => `"${t}" x${l.length}`).join(', ');
      this.fail(
        new RingError(
          `rank ${this.rank}: ${this.queuedBytes} bytes from rank ${this.prev.rank} (${this.prev.host}) wait for receives that were never made (${piling}), ` +
            `past ring.maxQueuedBytes (${max}): the two ranks disagree on what is sent`,
        ),
      );
      // Nothing will take them now.
      this.inbox.clear();
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
      // Someone without the job's keys tried to connect: refused by CURVE; the ring continues.
    });
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.failWaiters(err);
    this.opts.onFailure?.(err);
  }

  private failWaiters(err: Error): void {
    for (const list of this.waiters.values()) {
      for (const w of list) {
        clearTimeout(w.timer);
        w.reject(err);
      }
    }
    this.waiters.clear();
  }

  private removeWaiter(tag: string, w: Waiter): void {
    const list = this.waiters.get(tag);
    if (!list) return;
    const i = list.indexOf(w);
    if (i >= 0) list.splice(i, 1);
  }
}

/** Payload bytes per chunk of a large message. */
export const CHUNK_BYTES = 4 << 20;

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
