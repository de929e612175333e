import type { RingPeer } from '../ring/transport.js';
import * as zmq from 'zeromq';
import type { Payload } from '../ring/frame.js';
import { guardServer, type CurveKeys } from '../ring/zap.js';
import { decodeControl, encodeControl, MAX_CONTROL_BYTES, PROTOCOL_VERSION, type CoordinatorMessage, type WorkerMessage } from './protocol.js';

/**
 * The coordinator: a ROUTER socket that workers (DEALERs) report to. It runs
 * the rendezvous (every rank says hello; once all have, each gets the peer
 * table), relays driver inputs and worker results, and collects failures.
 *
 * Every wait of the control plane is bounded: the rendezvous by
 * rendezvousTimeoutMs; waits whose length is the job's own (results, done) by
 * liveness: a ping to each rank every heartbeat interval fails once ZeroMQ has
 * dropped that rank's link (silent past heartbeatTimeoutMs: killed, frozen, its
 * host gone), which fails the job naming the rank; and once one rank is done,
 * the others must be within `doneSpreadMs`.
 */

export interface CoordinatorOptions {
  bind: string;
  worldSize: number;
  specHash: string;
  rendezvousTimeoutMs: number;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  hostOf: (rank: number) => string;
  curve?: CurveKeys;
  /** Keep retrying a bind that finds the port in use for this long (a restart right after a stop). */
  bindRetryMs?: number;
  /** Once one rank has finished, the longest wait for all others (they end within a ring goodbye of each other). */
  doneSpreadMs: number;
}

export interface WorkerFailure {
  rank: number;
  host: string;
  message: string;
  /** A mistake the user can fix (a bad flag, an engine asked for that cannot load): exit 2, never restarted. */
  userError?: boolean;
}

type Pending = { value: unknown; blobs: Payload[] };

/** What the coordinator knows of a rank: for ring.json and the dashboard's ring health. */
export interface RankStatus {
  rank: number;
  host: string;
  pid?: number;
  /** Wall-clock ms of the rank's last control message (heartbeat, result, hello); undefined before its hello. */
  lastSeen?: number;
  state: 'starting' | 'running' | 'done' | 'lost';
  /** What its job said it runs on (engine, threads, measured GEMM rate, ...). */
  info: Record<string, unknown>;
}

export class Coordinator {
  readonly opts: CoordinatorOptions;
  /** Process id of each rank as it reported in its hello. */
  readonly pids = new Map<number, number>();
  private readonly router: zmq.Router;
  private readonly identities = new Map<number, Buffer>();
  private readonly hellos = new Map<number, Extract<WorkerMessage, { type: 'hello' }>>();
  private readonly results = new Map<string, Pending[]>();
  private readonly resultWaiters = new Map<string, Array<(p: Pending) => void>>();
  private readonly done = new Set<number>();
  private readonly lastSeen = new Map<number, number>();
  private readonly info = new Map<number, Record<string, unknown>>();
  private onChange: () => void = () => undefined;
  private closed = false;
  /** Sends one at a time: zeromq.js allows one pending send per socket, and a mandatory ROUTER can block. */
  private sendChain: Promise<void> = Promise.resolve();
  private readonly lost = new Set<number>();
  private pinger: NodeJS.Timeout | null = null;
  private pinging = false;
  private releaseGuard: () => void = () => undefined;
  /** Called for every failure a worker reports, and for protocol violations. */
  onFailure: (f: WorkerFailure) => void = () => undefined;

  private constructor(opts: CoordinatorOptions) {
    this.opts = opts;
    this.router = new zmq.Router({
      linger: 500,
      // A send to a rank whose link is gone fails (EHOSTUNREACH) instead of vanishing: that is the liveness probe.
      mandatory: true,
      // Mandatory also makes a send wait (EAGAIN) while a peer's link is being torn down: one heartbeat at most,
      // so the next ping finds it gone. (Queues are counted in messages, so a live peer never fills one.)
      sendTimeout: opts.heartbeatIntervalMs,
      maxMessageSize: MAX_CONTROL_BYTES,
      heartbeatInterval: opts.heartbeatIntervalMs,
      heartbeatTimeout: opts.heartbeatTimeoutMs,
      heartbeatTimeToLive: opts.heartbeatTimeoutMs,
    });
    if (opts.curve) {
      this.router.curveServer = true;
      this.router.curveSecretKey = opts.curve.secretKey;
    }
  }

  static async start(opts: CoordinatorOptions): Promise<Coordinator> {
    const c = new Coordinator(opts);
    c.releaseGuard = (await guardServer(c.router, opts.curve)).release;
    const until = Date.now() + (opts.bindRetryMs ?? 0);
    for (;;) {
      try {
        await c.router.bind(opts.bind);
        break;
      } catch (err) {
        if ((err as { code?: string }).code !== 'EADDRINUSE' || Date.now() >= until) {
          c.router.close();
          c.releaseGuard();
          throw err;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    void c.loop();
    c.pinger = setInterval(() => c.ping(), opts.heartbeatIntervalMs);
    c.pinger.unref();
    return c;
  }

  /** Pings every rank that joined and has not finished; one whose link ZeroMQ dropped is reported once. */
  private ping(): void {
    // One round at a time: a round held up by a peer that takes nothing must not pile more behind it.
    if (this.pinging || this.closed) return;
    this.pinging = true;
    const round = [...this.identities].filter(([rank]) => !this.done.has(rank) && !this.lost.has(rank));
    const pings = round.map(([rank, id]) =>
      this.enqueue([id, ...encodeControl({ type: 'ping' })]).catch((err: { code?: string }) => {
        // EAGAIN (a peer not reading, e.g. a long synchronous compute) is not a lost link; ZeroMQ's heartbeats decide that.
        if (err.code !== 'EHOSTUNREACH' || this.closed || this.done.has(rank) || this.lost.has(rank)) return;
        this.lost.add(rank);
        this.onFailure({ rank, host: this.opts.hostOf(rank), message: `lost the link to the launcher: silent past ring.heartbeatTimeoutMs (${(this.opts.heartbeatTimeoutMs / 1000).toFixed(1)} s)` });
        this.onChange();
      }),
    );
    void Promise.all(pings).then(() => (this.pinging = false));
  }

  private enqueue(frames: Array<Buffer | Payload>): Promise<void> {
    const p = this.sendChain.then(() => this.router.send(frames));
    this.sendChain = p.catch(() => undefined);
    return p;
  }

  /** Waits for every rank's hello, checks them, and sends out the peer table. */
  async rendezvous(): Promise<RingPeer[]> {
    const deadline = Date.now() + this.opts.rendezvousTimeoutMs;
    while (this.hellos.size < this.opts.worldSize) {
      if (this.closed) throw new Error('the coordinator closed during the rendezvous');
      const left = deadline - Date.now();
      if (left <= 0) {
        const missing = [...Array(this.opts.worldSize).keys()].filter((r) => !this.hellos.has(r));
        throw new Error(
          `rendezvous timed out after ${(this.opts.rendezvousTimeoutMs / 1000).toFixed(0)} s: ` +
            `missing ${missing.map((r) => `rank ${r} (${this.opts.hostOf(r)})`).join(', ')}`,
        );
      }
      await this.changed(left);
    }
    for (const h of this.hellos.values()) {
      if (h.protocol !== PROTOCOL_VERSION) throw new Error(`rank ${h.rank} (${h.host}) speaks protocol ${h.protocol}, this launcher ${PROTOCOL_VERSION}: install the same ringattn version on every host`);
      if (h.specHash !== this.opts.specHash) throw new Error(`rank ${h.rank} (${h.host}) runs a different cluster spec (hash ${h.specHash.slice(0, 12)}, expected ${this.opts.specHash.slice(0, 12)})`);
    }
    const peers = [...this.hellos.values()].sort((a, b) => a.rank - b.rank).map((h) => ({ rank: h.rank, host: h.host, endpoint: h.endpoint }));
    for (let r = 0; r < this.opts.worldSize; r++) await this.send(r, { type: 'peers', peers });
    return peers;
  }

  async send(rank: number, msg: CoordinatorMessage, blobs: Payload[] = []): Promise<void> {
    const id = this.identities.get(rank);
    if (!id || this.closed) return;
    await this.enqueue([id, ...encodeControl(msg, blobs)]);
  }

  result(rank: number, name: string): Promise<Pending> {
    const key = `${rank}/${name}`;
    const queued = this.results.get(key);
    if (queued?.length) return Promise.resolve(queued.shift()!);
    return new Promise((resolve) => {
      const list = this.resultWaiters.get(key) ?? [];
      list.push(resolve);
      this.resultWaiters.set(key, list);
    });
  }

  /** Resolves when every rank has reported that its job finished; throws naming the ranks still out `doneSpreadMs` after the first. */
  async allDone(): Promise<void> {
    let deadline = Infinity;
    while (this.done.size < this.opts.worldSize && !this.closed) {
      if (this.done.size > 0 && deadline === Infinity) deadline = Date.now() + this.opts.doneSpreadMs;
      const left = deadline - Date.now();
      if (left <= 0) {
        const first = [...this.done][0];
        const missing = [...Array(this.opts.worldSize).keys()].filter((r) => !this.done.has(r));
        throw new Error(
          `${missing.map((r) => `rank ${r} (${this.opts.hostOf(r)})`).join(', ')} did not finish within ${(this.opts.doneSpreadMs / 1000).toFixed(0)} s of rank ${first}`,
        );
      }
      await this.changed(Number.isFinite(left) ? left : undefined);
    }
  }

  /** Every rank's liveness and job info, by rank. */
  status(): RankStatus[] {
    return Array.from({ length: this.opts.worldSize }, (_, rank) => ({
      rank,
      host: this.opts.hostOf(rank),
      pid: this.pids.get(rank),
      lastSeen: this.lastSeen.get(rank),
      state: this.done.has(rank) ? 'done' : this.lost.has(rank) ? 'lost' : this.hellos.has(rank) ? 'running' : 'starting',
      info: this.info.get(rank) ?? {},
    }));
  }

  hasFinished(rank: number): boolean {
    return this.done.has(rank);
  }

  async abort(reason: string): Promise<void> {
    await Promise.all([...this.identities.keys()].map((r) => this.send(r, { type: 'abort', reason }).catch(() => undefined)));
  }

  close(): void {
    this.closed = true;
    if (this.pinger) clearInterval(this.pinger);
    this.router.close();
    this.releaseGuard();
    this.onChange();
  }

  private changed(timeoutMs?: number): Promise<void> {
    return new Promise((resolve) => {
      const t = timeoutMs === undefined ? null : setTimeout(resolve, timeoutMs);
      this.onChange = () => {
        if (t) clearTimeout(t);
        resolve();
      };
    });
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        frames = await this.router.receive();
      } catch {
        return; // closed
      }
      const [id, ...rest] = frames;
      try {
        this.handle(id, decodeControl<WorkerMessage>(rest));
      } catch {
        // Not a ringattn worker speaking: ignore it; a real worker's silence is caught by the deadlines.
        continue;
      }
      this.onChange();
    }
  }

  private handle(id: Buffer, { msg, blobs }: { msg: WorkerMessage; blobs: Payload[] }): void {
    const rank = msg.rank;
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.opts.worldSize) throw new Error('bad rank');
    if (msg.type === 'hello') {
      if (this.hellos.has(rank)) {
        this.onFailure({ rank, host: msg.host, message: `two workers claim rank ${rank} (${this.hellos.get(rank)!.host} and ${msg.host})` });
        return;
      }
      this.hellos.set(rank, msg);
      this.identities.set(rank, id);
      this.lastSeen.set(rank, Date.now());
      this.pids.set(rank, msg.pid);
      return;
    }
    if (!this.identities.get(rank)?.equals(id)) throw new Error('message from an unknown peer');
    this.lastSeen.set(rank, Date.now());
    if (msg.type === 'status') {
      if (msg.info && typeof msg.info === 'object') this.info.set(rank, { ...this.info.get(rank), ...msg.info });
    } else if (msg.type === 'result') {
      const key = `${rank}/${msg.name}`;
      const waiting = this.resultWaiters.get(key);
      if (waiting?.length) waiting.shift()!({ value: msg.value, blobs });
      else {
        const list = this.results.get(key) ?? [];
        list.push({ value: msg.value, blobs });
        this.results.set(key, list);
      }
    } else if (msg.type === 'done') {
      this.done.add(rank);
      void this.send(rank, { type: 'bye' }).catch(() => undefined);
    } else if (msg.type === 'failed') {
      this.onFailure({ rank, host: this.opts.hostOf(rank), message: msg.message, ...(msg.userError ? { userError: true } : {}) });
    }
  }
}
