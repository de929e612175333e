import { rmSync } from 'node:fs';
import { hostname } from 'node:os';
import pino, { type Logger } from 'pino';
import * as zmq from 'zeromq';
import { specHash, type ClusterSpec } from '../config/index.js';
import { UserError } from '../errors.js';
import type { Payload } from '../ring/frame.js';
import { shmAvailable, shmPath } from '../ring/shm.js';
import { Ring, type ShmChannelOptions, type RingPeer } from '../ring/transport.js';
import type { CurveKeys } from '../ring/zap.js';
import { faultPointFromEnv } from './fault.js';
import type { WorkerContext } from '../jobs/types.js';
import { loadJob } from '../jobs/index.js';
import { decodeControl, encodeControl, MAX_CONTROL_BYTES, PROTOCOL_VERSION, type CoordinatorMessage } from './protocol.js';

/**
 * One worker process: joins the coordinator, opens its place in the ring, runs
 * one job and exits. It never outlives its launcher: a closed stdin (the
 * launcher died), a lost coordinator link or an abort message ends it.
 */

/** Everything a worker needs to know, handed over on stdin (launched) or built from the environment (external). */
export interface WorkerRole {
  jobId: string;
  rank: number;
  worldSize: number;
  host: string;
  localRank: number;
  /** Ring endpoint this rank binds, as peers reach it (tcp://address:port). */
  endpoint: string;
  coordinator: string;
  spec: ClusterSpec;
  job: { kind: string; args: Record<string, unknown> };
  runDir: string;
  curve?: CurveKeys;
}

function ipcPath(jobId: string, rank: number, reverse = false): string {
  return `ipc:///tmp/ringattn-${jobId}-${rank}${reverse ? '-rev' : ''}.sock`;
}

/**
 * The reverse ring's endpoint of a rank: its ring endpoint's port plus the
 * world size (ring.basePort + 1 + worldSize + rank), on the same address.
 */
function reverseEndpoint(endpoint: string, worldSize: number): string {
  const u = new URL(endpoint.replace('tcp://', 'http://'));
  return `tcp://${u.hostname}:${Number(u.port) + worldSize}`;
}

function bindEndpoint(role: WorkerRole, endpoint = role.endpoint): string {
  const port = new URL(endpoint.replace('tcp://', 'http://')).port;
  const bindAddress = role.spec.ring.bindAddress ?? new URL(endpoint.replace('tcp://', 'http://')).hostname.replace(/^\[|\]$/g, '');
  return `tcp://${bindAddress.includes(':') ? `[${bindAddress}]` : bindAddress}:${port}`;
}

/**
 * The successor's shared-memory channel, where the spec and this host allow
 * one: `auto` does without (saying why) where the addon lacks it or /dev/shm
 * cannot hold it; `shm` makes that the user's error.
 */
function shmChannelFor(role: WorkerRole, next: RingPeer, log: Logger): ShmChannelOptions | undefined {
  const t = role.spec.ring.transport;
  if (!shmLink(role, next)) return undefined;
  const warn = (why: string) => log.warn(`no shared-memory channel to rank ${next.rank} (${why}); its blocks go on ipc`);
  if (!shmAvailable()) {
    const why = 'the native addon is not built, or was built without native/shm.cc';
    if (t === 'shm') throw new UserError(`rank ${role.rank} (${role.host}): ring.transport shm: no shared-memory channel to rank ${next.rank}: ${why}`);
    warn(why);
    return undefined;
  }
  return { path: shmPath(role.jobId, role.rank), maxBytes: role.spec.ring.shmBytes, required: t === 'shm', onUnavailable: warn };
}

/** A link to `to` within this host: ipc when the spec allows it (anything but tcp). */
function ipcLink(role: WorkerRole, to: RingPeer): boolean {
  return to.host === role.host && role.spec.ring.transport !== 'tcp' && role.worldSize > 1;
}

/** A link to `to` within this host whose large blocks may go through a shared-memory channel. */
function shmLink(role: WorkerRole, to: RingPeer): boolean {
  const t = role.spec.ring.transport;
  return to.host === role.host && role.worldSize > 1 && (t === 'auto' || t === 'shm');
}

/** Where a rank connects to reach `to`: its ipc socket on this host, else its tcp endpoint (of the reverse ring's port range for `reverse`). */
function linkEndpoint(role: WorkerRole, to: RingPeer, reverse = false): string {
  if (ipcLink(role, to)) return ipcPath(role.jobId, to.rank, reverse);
  return reverse ? reverseEndpoint(to.endpoint, role.worldSize) : to.endpoint;
}

export async function runWorker(role: WorkerRole, log: Logger): Promise<void> {
  const spec = role.spec;
  const dealer = new zmq.Dealer({
    linger: 2000,
    routingId: `rank-${role.rank}`,
    heartbeatInterval: spec.ring.heartbeatIntervalMs,
    heartbeatTimeout: spec.ring.heartbeatTimeoutMs,
    heartbeatTimeToLive: spec.ring.heartbeatTimeoutMs,
  });
  if (role.curve) {
    dealer.curveServerKey = role.curve.publicKey;
    dealer.curvePublicKey = role.curve.publicKey;
    dealer.curveSecretKey = role.curve.secretKey;
  }
  let ring: Ring | null = null;
  let reverse: Ring | null = null;
  let finishing = false;
  const die = (why: string) => {
    if (finishing) return;
    log.error(why);
    // The job cannot go on; exiting is the cleanup (sockets and files are released by the OS).
    process.exit(1);
  };
  // A ring failure is reported once, through onFailure, and rejects every wait; a wait that no code awaits any more
  // (a receive posted ahead by a pass that has already given up) must not crash the process before that report.
  process.on('unhandledRejection', (reason) => {
    if (reason !== null && (reason === ring?.failedWith || reason === reverse?.failedWith)) return;
    throw reason;
  });
  dealer.connect(role.coordinator);
  dealer.events.on('disconnect', () => die('lost the coordinator: stopping'));

  const inputs = new Map<string, Array<{ value: unknown; blobs: Payload[] }>>();
  const inputWaiters = new Map<string, Array<(x: { value: unknown; blobs: Payload[] }) => void>>();
  let peersResolve: (p: RingPeer[]) => void = () => undefined;
  const peersP = new Promise<RingPeer[]>((r) => (peersResolve = r));
  let byeResolve: () => void = () => undefined;
  const byeP = new Promise<void>((r) => (byeResolve = r));
  void (async () => {
    for await (const frames of dealer) {
      const { msg, blobs } = decodeControl<CoordinatorMessage>(frames);
      if (msg.type === 'peers') peersResolve(msg.peers);
      else if (msg.type === 'bye') byeResolve();
      else if (msg.type === 'abort') die(`aborted by the launcher: ${msg.reason}`);
      else if (msg.type === 'input') {
        const w = inputWaiters.get(msg.name);
        if (w?.length) w.shift()!({ value: msg.value, blobs });
        else inputs.set(msg.name, [...(inputs.get(msg.name) ?? []), { value: msg.value, blobs }]);
      }
    }
  })().catch((err) => die(`coordinator link failed: ${(err as Error).message}`));

  // zeromq.js takes one send at a time per socket: results, failures and heartbeats queue here.
  let sendChain: Promise<void> = Promise.resolve();
  const send = (msg: object, blobs: Payload[] = []): Promise<void> => {
    const frames = encodeControl({ ...msg, rank: role.rank }, blobs);
    // The coordinator would drop the connection without a word: say it here.
    const big = frames.find((f) => f.byteLength > MAX_CONTROL_BYTES);
    if (big) return Promise.reject(new Error(`a control message part of ${big.byteLength} bytes exceeds the coordinator's limit of ${MAX_CONTROL_BYTES} bytes`));
    const p = sendChain.then(() => dealer.send(frames));
    sendChain = p.catch(() => undefined);
    return p;
  };
  let beating = false;
  const beat = setInterval(() => {
    // One beat in flight at most: a coordinator that is slow to read must not queue a backlog of them.
    if (beating || finishing) return;
    beating = true;
    void send({ type: 'status' }).catch(() => undefined).finally(() => (beating = false));
  }, spec.ring.heartbeatIntervalMs);
  beat.unref();
  try {
    await send({ type: 'hello', host: role.host, endpoint: role.endpoint, protocol: PROTOCOL_VERSION, specHash: specHash(spec), pid: process.pid, node: process.version });
    const peers = await withTimeout(peersP, spec.ring.rendezvousTimeoutMs, `rank ${role.rank}: no peer table from the coordinator at ${role.coordinator}`);
    const n = role.worldSize;
    const next = peers[(role.rank + 1) % n];
    const prev = peers[(role.rank + n - 1) % n];
    const binds = [bindEndpoint(role)];
    // Under a window the backward's dK/dV come back the way their blocks went: the ring the other way round.
    const withReverse = Boolean(spec.attention.window) && n > 1;
    // A ring's ipc socket is for the peer that connects to it: the predecessor, or on the reverse ring the successor.
    const ipcBinds = ipcLink(role, prev) ? [ipcPath(role.jobId, role.rank)] : [];
    const revBinds = withReverse && ipcLink(role, next) ? [ipcPath(role.jobId, role.rank, true)] : [];
    const shmSend = shmChannelFor(role, next, log);
    const shmRecv = shmLink(role, prev) ? shmPath(role.jobId, prev.rank) : undefined;
    // However this process ends (abort, lost launcher), its socket and channel files go with it.
    process.once('exit', () => {
      for (const ep of [...ipcBinds, ...revBinds]) rmSync(ep.slice('ipc://'.length), { force: true });
      if (shmSend) rmSync(shmSend.path, { force: true });
    });
    const job = await loadJob(role.job.kind);
    // What both rings share: the job, the timeouts and limits, the keys, and how a failure is reported.
    const links = {
      rank: role.rank,
      worldSize: n,
      jobId: role.jobId,
      opTimeoutMs: spec.ring.opTimeoutMs,
      connectTimeoutMs: spec.ring.connectTimeoutMs,
      heartbeatIntervalMs: spec.ring.heartbeatIntervalMs,
      heartbeatTimeoutMs: spec.ring.heartbeatTimeoutMs,
      maxMessageBytes: spec.ring.maxMessageBytes,
      maxQueuedBytes: spec.ring.maxQueuedBytes,
      curve: role.curve,
      onFailure: (err: Error) => {
        void send({ type: 'failed', message: err.message }).catch(() => undefined);
      },
    };
    ring = await Ring.open({
      ...links,
      bind: binds[0],
      extraBinds: ipcBinds,
      next: { ...next, endpoint: linkEndpoint(role, next) },
      prev,
      shmSend,
      shmRecv,
    });
    log.debug({ next: next.rank, prev: prev.rank }, 'ring open');
    if (withReverse) {
      reverse = await Ring.open({
        ...links,
        bind: bindEndpoint(role, reverseEndpoint(role.endpoint, n)),
        extraBinds: revBinds,
        next: { ...prev, endpoint: linkEndpoint(role, prev, true) },
        prev: { ...next, endpoint: reverseEndpoint(next.endpoint, n) },
      });
    }
    const ctx: WorkerContext = {
      rank: role.rank,
      worldSize: n,
      host: role.host,
      localRank: role.localRank,
      spec,
      ring,
      reverse,
      peers,
      runDir: role.runDir,
      args: role.job.args,
      log,
      input: (name) => {
        const q = inputs.get(name);
        if (q?.length) return Promise.resolve(q.shift()!);
        return new Promise((resolve) => inputWaiters.set(name, [...(inputWaiters.get(name) ?? []), resolve]));
      },
      result: (name, value, blobs = []) => send({ type: 'result', name, value }, blobs),
      status: (info) => send({ type: 'status', info }),
      fault: faultPointFromEnv(role.rank, log),
    };
    await job.worker(ctx);
    finishing = true;
    clearInterval(beat);
    await reverse?.close();
    await ring.close();
    await send({ type: 'done' });
    // Exiting as soon as `done` is queued could lose it; the coordinator's bye says it arrived.
    await withTimeout(byeP, spec.ring.connectTimeoutMs, 'no goodbye from the coordinator').catch((err: Error) => log.warn(err.message));
  } catch (err) {
    const message = (err as Error).message;
    log.error(message);
    await send({ type: 'failed', message, userError: err instanceof UserError }).catch(() => undefined);
    finishing = true;
    clearInterval(beat);
    await reverse?.close().catch(() => undefined);
    await ring?.close().catch(() => undefined);
    dealer.close();
    throw err;
  }
  dealer.close();
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} within ${(ms / 1000).toFixed(0)} s`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

/** The worker's logger: JSON lines on stdout, which the launcher merges and files per rank. */
export function workerLogger(role: Pick<WorkerRole, 'rank' | 'host' | 'spec'>): Logger {
  return pino({ level: role.spec.logLevel, base: { rank: role.rank, host: role.host }, timestamp: pino.stdTimeFunctions.epochTime }, pino.destination({ fd: 1, sync: true }));
}

export const thisHost = hostname;
