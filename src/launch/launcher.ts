import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, readdirSync, rmSync, type WriteStream } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as zmq from 'zeromq';
import { rankTable, resolvedLaunch, resolvedSecurity, specHash, isLoopback, type ClusterSpec, type HostSpec, type RankEntry } from '../config/index.js';
import { ADAPTERS_ENV } from '../engine/webgpu/device.js';
import { UserError } from '../errors.js';
import type { CurveKeys } from '../ring/zap.js';
import { Coordinator, type WorkerFailure } from './coordinator.js';
import { startRingHealth } from './ring-health.js';
import type { DriverContext } from '../jobs/types.js';
import { loadJob } from '../jobs/index.js';
import type { WorkerRole } from './worker.js';

/**
 * The launcher: turns a cluster spec into running workers (local processes or
 * ssh), hosts the coordinator and the job's driver, merges the workers' logs,
 * and enforces gang semantics: the first worker to fail stops all the others,
 * and its failure is what the user is told.
 */

export interface LaunchOptions {
  /** Run directory; default `<spec.runDir>/<kind>-<timestamp>`. */
  runDir?: string;
  /** Print no worker log lines on the console (files still get them). */
  quiet?: boolean;
  /** Show only these ranks' log lines on the console. */
  ranks?: number[];
  /** Where console lines go; stderr by default, so results on stdout stay clean. */
  print?: (line: string) => void;
  /** Attempt number (0 first, counting restarts), exported to workers as RINGATTN_ATTEMPT. */
  attempt?: number;
  /** CURVE keys for this job instead of fresh ones (tests, or a site that manages its own keys). */
  curve?: CurveKeys;
}

export interface RestartOptions extends LaunchOptions {
  /** Restarts after a failure (0 = fail at once). */
  maxRestarts?: number;
  /** The job's arguments for a restart, from the first attempt's (train: resume from the last checkpoint). */
  restartArgs?: (args: Record<string, unknown>) => Record<string, unknown>;
  /** Delay before restart k (1-based); default 2^(k-1) s, at most 30 s. */
  backoffMs?: (k: number) => number;
}

export interface JobOutcome {
  runDir: string;
  value: unknown;
}

/** A job that failed on the ring: the message names the root cause. Exit code 1, or 2 when the root cause is a user error. */
export class LaunchError extends UserError {
  /** The root cause, when a rank (or the launcher, rank -1) was found to blame. */
  readonly root?: WorkerFailure;
  /** False when retrying cannot help (the user interrupted the job). */
  readonly retryable: boolean;
  constructor(message: string, info: { root?: WorkerFailure; retryable?: boolean } = {}) {
    super(message, info.root?.userError ? 2 : 1);
    this.name = 'LaunchError';
    this.root = info.root;
    this.retryable = info.retryable ?? true;
  }
}

const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI_ENTRY = path.join(PACKAGE_ROOT, 'bin', 'ringattn.js');
const GRACE_MS = 2000;
/** How long after the first failure other reports are gathered before choosing the root cause. */
const SETTLE_MS = 400;

interface RankProcess {
  entry: RankEntry;
  host: HostSpec;
  child: ChildProcess;
  lastLines: string[];
  exited: boolean;
  reported: boolean;
}

function timestamp(): string {
  return new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-');
}

function coordinatorAddress(spec: ClusterSpec): string {
  if (process.env.RINGATTN_COORDINATOR_ADDRESS) return process.env.RINGATTN_COORDINATOR_ADDRESS;
  return spec.hosts.every((h) => isLoopback(h.address)) ? '127.0.0.1' : spec.hosts[0].address;
}

export function tcp(address: string, port: number): string {
  return `tcp://${address.includes(':') ? `[${address}]` : address}:${port}`;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function workerEnv(spec: ClusterSpec, e: RankEntry, host: HostSpec, world: number, coordinator: string, attempt: number, adapters: string | null): Record<string, string> {
  const localWorld = host.slots;
  return {
    ...host.env,
    // This machine's WebGPU adapters, probed once for the job; only its own workers may use the list.
    ...(adapters !== null && resolvedLaunch(host) === 'local' ? { [ADAPTERS_ENV]: adapters } : {}),
    RINGATTN_ATTEMPT: String(attempt),
    RINGATTN_RANK: String(e.rank),
    RINGATTN_WORLD_SIZE: String(world),
    RINGATTN_LOCAL_RANK: String(e.localRank),
    RINGATTN_COORDINATOR: coordinator,
    RANK: String(e.rank),
    LOCAL_RANK: String(e.localRank),
    WORLD_SIZE: String(world),
    LOCAL_WORLD_SIZE: String(localWorld),
    MASTER_ADDR: new URL(coordinator.replace('tcp://', 'http://')).hostname,
    MASTER_PORT: String(spec.ring.basePort),
    // A GPU named (webgpu) rather than numbered leaves CUDA's view alone.
    ...(typeof e.gpu === 'number' ? { CUDA_VISIBLE_DEVICES: String(e.gpu) } : {}),
  };
}

/** Dawn's notice that a software Vulkan driver's limits were lowered: harmless, kept in the rank's log only. */
const DAWN_NOTICE = /^Warning: maxDynamic\w+ artificially reduced /;

function spawnRank(spec: ClusterSpec, e: RankEntry, host: HostSpec, env: Record<string, string>): ChildProcess {
  const launch = resolvedLaunch(host);
  if (launch === 'local') {
    // `ip netns exec` execs the worker in place (no fork), so the child's pid is the
    // worker's own and stopAll's signals reach it directly.
    const command = host.netns ? 'ip' : process.execPath;
    const argv = [...(host.netns ? ['netns', 'exec', host.netns, process.execPath] : []), CLI_ENTRY, 'worker'];
    return spawn(command, argv, {
      cwd: host.workdir ?? process.cwd(),
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
  }
  // Remote: the same Node and package paths are expected on every host (a shared
  // install); the role, including any keys, travels on stdin, never in argv.
  const ssh = host.ssh ?? { port: 22, options: [] as string[] };
  // ssh keeps the first value of each option: BatchMode first (never a password
  // prompt), then the user's options, then our defaults.
  const args = ['-o', 'BatchMode=yes', ...(ssh.options ?? []).flatMap((o) => ['-o', o]), '-o', 'StrictHostKeyChecking=accept-new', '-p', String(ssh.port)];
  if (ssh.identityFile) args.push('-i', ssh.identityFile);
  const target = ssh.user ? `${ssh.user}@${host.address}` : host.address;
  const envs = Object.entries(env).map(([k, v]) => `${k}=${shellQuote(v)}`).join(' ');
  const remote = `${host.workdir ? `cd ${shellQuote(host.workdir)} && ` : ''}exec env ${envs} ${shellQuote(process.execPath)} ${shellQuote(CLI_ENTRY)} worker`;
  return spawn('ssh', [...args, target, remote], { stdio: ['pipe', 'pipe', 'pipe'] });
}

/** One console line per worker log line: `[rank N host] LEVEL message key=value`. */
function formatLogLine(line: string, prefix: string): string {
  try {
    const rec = JSON.parse(line) as Record<string, unknown>;
    const { level, msg, time: _t, pid: _p, hostname: _h, rank: _r, host: _host, ...rest } = rec;
    const lvl = ({ 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' } as Record<number, string>)[level as number] ?? String(level);
    const extras = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' ');
    return `${prefix} ${lvl} ${msg ?? ''}${extras ? ` ${extras}` : ''}`;
  } catch {
    return `${prefix} ${line}`;
  }
}

function describeExit(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `was killed by ${signal}` : `exited with code ${code}`;
}

/**
 * backend webgpu on hosts of this machine: every slot's adapter must exist
 * before anything starts, so a missing driver or a wrong `gpus` entry is one
 * line naming the host and slot, and no run directory is left behind. (A
 * remote host's workers report the same error themselves.)
 */
async function checkLocalAdapters(spec: ClusterSpec): Promise<string | null> {
  // auto looks for a hardware adapter too: one probe here spares each local worker its own.
  const probes = spec.backend === 'webgpu' || (spec.backend === 'auto' && spec.engine === 'auto');
  const local = spec.hosts.map((h, i) => ({ h, i })).filter(({ h }) => resolvedLaunch(h) === 'local');
  if (!probes || local.length === 0) return null;
  const { adapterFor, listAdaptersQuietly } = await import('../engine/webgpu/device.js');
  const adapters = await listAdaptersQuietly();
  if (!adapters) return null;
  if (spec.backend === 'webgpu') {
    for (const { h, i } of local) {
      for (let slot = 0; slot < h.slots; slot++) {
        const pick = adapterFor(adapters, h.gpus?.[slot], slot, true);
        if (typeof pick === 'string') throw new UserError(`hosts[${i}] (${h.name}) slot ${slot}: backend webgpu: ${pick}`);
      }
    }
  }
  return JSON.stringify(adapters);
}

/** Messages that are consequences of another rank's failure rather than causes. */
const SECONDARY = /lost the link|lost the coordinator|timed out after|aborted by the launcher|ring closed|ring is closed|see its log/;

export async function runJob(spec: ClusterSpec, job: { kind: string; args: Record<string, unknown> }, opts: LaunchOptions = {}): Promise<JobOutcome> {
  const jobDef = await loadJob(job.kind);
  const print = opts.print ?? ((line: string) => process.stderr.write(`${line}\n`));
  const runDir = path.resolve(opts.runDir ?? defaultRunDir(spec, job.kind));
  const attempt = opts.attempt ?? 0;
  const adapters = await checkLocalAdapters(spec);
  mkdirSync(path.join(runDir, 'logs'), { recursive: true, mode: 0o700 });
  const table = rankTable(spec);
  const world = table.length;
  const hostByName = new Map(spec.hosts.map((h) => [h.name, h]));
  const jobId = randomBytes(8).toString('hex');
  const curve: CurveKeys | undefined = resolvedSecurity(spec) === 'curve' ? (opts.curve ?? (zmq.curveKeyPair() as CurveKeys)) : undefined;
  const coordinatorEndpoint = tcp(coordinatorAddress(spec), spec.ring.basePort);
  const coordinator = await Coordinator.start({
    bind: coordinatorEndpoint,
    worldSize: world,
    specHash: specHash(spec),
    rendezvousTimeoutMs: spec.ring.rendezvousTimeoutMs,
    heartbeatIntervalMs: spec.ring.heartbeatIntervalMs,
    heartbeatTimeoutMs: spec.ring.heartbeatTimeoutMs,
    // The ring's backstop, and one goodbye: every rank's end is within that of another's.
    doneSpreadMs: spec.ring.opTimeoutMs + spec.ring.connectTimeoutMs,
    hostOf: (r) => table[r].host,
    curve,
    // The previous attempt's coordinator may still be releasing the port.
    bindRetryMs: attempt > 0 ? 5000 : 0,
  }).catch((err: Error) => {
    throw new LaunchError(`cannot start the coordinator on ${coordinatorEndpoint}: ${err.message} (is ring.basePort ${spec.ring.basePort} free?)`);
  });

  // ring.json: the ranks' liveness for `ringattn view`, while the job runs and as it ended.
  const health = startRingHealth(runDir, { job: job.kind, attempt, heartbeatIntervalMs: spec.ring.heartbeatIntervalMs, heartbeatTimeoutMs: spec.ring.heartbeatTimeoutMs }, () => coordinator.status(), (line) => print(`[launcher] ${line}`));
  let ended: { state: 'finished' | 'failed'; failure?: string } = { state: 'failed', failure: 'the launcher stopped' };

  const failures: Array<WorkerFailure & { died: boolean }> = [];
  let failed: (() => void) | null = null;
  const failedP = new Promise<void>((resolve) => (failed = resolve));
  let reported = false;
  let stopping = false;
  let succeeded = false;
  const noteFailure = (f: WorkerFailure & { died: boolean }) => {
    if ((stopping || succeeded) && f.rank >= 0) return; // our own stop, or a consequence of it
    failures.push(f);
    if (!reported) {
      reported = true;
      print(`[launcher] ${f.rank >= 0 ? `rank ${f.rank} (${f.host}) ` : ''}${f.message.replace(/^rank \d+: /, '')}: stopping the ring`);
    }
    failed?.();
  };
  coordinator.onFailure = (f) => {
    const p = procs[f.rank];
    if (p) p.reported = true;
    noteFailure({ ...f, died: false });
  };

  const logFiles: WriteStream[] = [];
  const procs: RankProcess[] = table.map((e) => {
    const host = hostByName.get(e.host)!;
    const child = spawnRank(spec, e, host, workerEnv(spec, e, host, world, coordinatorEndpoint, attempt, adapters));
    const proc: RankProcess = { entry: e, host, child, lastLines: [], exited: false, reported: false };
    const role: WorkerRole = {
      jobId,
      rank: e.rank,
      worldSize: world,
      host: e.host,
      localRank: e.localRank,
      endpoint: tcp(e.address, e.port),
      coordinator: coordinatorEndpoint,
      spec,
      job,
      runDir,
      curve,
    };
    // stdin stays open for the whole job: its closing is how a worker learns the launcher is gone.
    child.stdin!.on('error', () => undefined);
    child.stdin!.write(`${JSON.stringify(role)}\n`);
    // Appended: a restart (or a --resume) keeps the log of the attempt that failed.
    const file = createWriteStream(path.join(runDir, 'logs', `rank-${e.rank}.log`), { mode: 0o600, flags: 'a' });
    if (attempt > 0) file.write(`${JSON.stringify({ level: 30, time: Date.now(), rank: e.rank, host: e.host, msg: `launcher: attempt ${attempt} (restart ${attempt}) begins` })}\n`);
    logFiles.push(file);
    const prefix = `[rank ${e.rank} ${e.host}]`;
    const show = !opts.quiet && (!opts.ranks || opts.ranks.includes(e.rank));
    for (const stream of [child.stdout!, child.stderr!]) {
      createInterface({ input: stream }).on('line', (line) => {
        file.write(`${line}\n`);
        proc.lastLines.push(line);
        if (proc.lastLines.length > 8) proc.lastLines.shift();
        if (show && !DAWN_NOTICE.test(line)) print(formatLogLine(line, prefix));
      });
    }
    child.on('error', (err) => noteFailure({ rank: e.rank, host: e.host, message: `could not be started: ${err.message}`, died: true }));
    child.on('exit', (code, signal) => {
      proc.exited = true;
      if (code === 0) {
        // The exit can overtake the worker's last message on the coordinator socket.
        setTimeout(() => {
          if (!coordinator.hasFinished(e.rank) && !stopping) noteFailure({ rank: e.rank, host: e.host, message: 'exited before finishing its job', died: false });
        }, 2000).unref();
        return;
      }
      noteFailure({ rank: e.rank, host: e.host, message: describeExit(code, signal), died: !proc.reported });
    });
    return proc;
  });

  const stopAll = async () => {
    if (stopping) return;
    stopping = true;
    await coordinator.abort('another worker failed');
    for (const p of procs) p.child.stdin?.end();
    const alive = () => procs.filter((p) => !p.exited);
    for (const p of alive()) {
      p.child.kill('SIGTERM');
      // A stopped (hung) worker acts on the SIGTERM only once continued.
      p.child.kill('SIGCONT');
    }
    await waitUntil(() => alive().length === 0, GRACE_MS);
    for (const p of alive()) p.child.kill('SIGKILL');
    await Promise.all(procs.filter((p) => resolvedLaunch(p.host) === 'ssh').map((p) => killRemote(p, coordinator.pids.get(p.entry.rank))));
    await waitUntil(() => alive().length === 0, GRACE_MS);
  };
  const onSignal = (sig: NodeJS.Signals) => noteFailure({ rank: -1, host: 'launcher', message: `interrupted by ${sig}`, died: true });
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const cleanup = () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    coordinator.close();
    for (const f of logFiles) f.end();
    removeIpcFiles(jobId);
  };

  try {
    const work = (async () => {
      await coordinator.rendezvous();
      const driverCtx = driverContext(coordinator, spec, runDir, job.args, print);
      const value = jobDef.driver ? await jobDef.driver(driverCtx) : undefined;
      await coordinator.allDone();
      return value;
    })();
    work.catch(() => undefined);
    const outcome = await Promise.race([work.then((value) => ({ value })), failedP.then(() => null)]);
    if (outcome) {
      succeeded = true;
      // Every rank reported done: give them a moment to exit on their own.
      await waitUntil(() => procs.every((p) => p.exited), 10000);
      for (const p of procs) p.child.stdin?.end();
      await waitUntil(() => procs.every((p) => p.exited), GRACE_MS);
      if (procs.some((p) => !p.exited)) await stopAll();
      ended = { state: 'finished' };
      return { runDir, value: outcome.value };
    }
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const root = rootCause(failures);
    await stopAll();
    const proc = procs[root.rank];
    const tail = proc?.lastLines.filter((l) => l.trim()).slice(-3).map((l) => formatLogLine(l, '   ')) ?? [];
    const where = root.rank >= 0 ? `rank ${root.rank} (${root.host}) ${root.message}` : root.message;
    throw new LaunchError(`job ${job.kind} failed: ${where}${tail.length ? `\n  last log lines of rank ${root.rank}:\n${tail.join('\n')}` : ''}\n  logs: ${path.join(runDir, 'logs')}`, {
      root,
      retryable: root.rank !== -1 && !root.userError,
    });
  } catch (err) {
    ended = { state: 'failed', failure: (err as Error).message.split('\n')[0] };
    if (!(err instanceof LaunchError)) {
      await stopAll();
      throw new LaunchError(`job ${job.kind} failed: ${(err as Error).message}\n  logs: ${path.join(runDir, 'logs')}`);
    }
    throw err;
  } finally {
    health.end(ended.state, ended.failure);
    cleanup();
  }
}

/** `<spec.runDir>/<kind>-<timestamp>`: where a job writes unless told. */
export function defaultRunDir(spec: ClusterSpec, kind: string): string {
  return path.join(spec.runDir, `${kind}-${timestamp()}`);
}

/**
 * runJob, restarted after a failure up to `maxRestarts` times in the same run
 * directory, with `restartArgs` applied to the job's arguments (train resumes
 * from the last valid checkpoint). Workers see RINGATTN_ATTEMPT. An interrupted
 * job (Ctrl-C) is not restarted; the last failure is what the user is told.
 */
export async function runJobWithRestarts(spec: ClusterSpec, job: { kind: string; args: Record<string, unknown> }, opts: RestartOptions = {}): Promise<JobOutcome & { restarts: number }> {
  const maxRestarts = opts.maxRestarts ?? 0;
  const print = opts.print ?? ((line: string) => process.stderr.write(`${line}\n`));
  const runDir = path.resolve(opts.runDir ?? defaultRunDir(spec, job.kind));
  const backoff = opts.backoffMs ?? ((k: number) => Math.min(30000, 1000 * 2 ** (k - 1)));
  for (let attempt = 0; ; attempt++) {
    const args = attempt === 0 || !opts.restartArgs ? job.args : opts.restartArgs(job.args);
    try {
      const out = await runJob(spec, { kind: job.kind, args }, { ...opts, runDir, attempt });
      return { ...out, restarts: attempt };
    } catch (err) {
      if (!(err instanceof LaunchError) || !err.retryable || attempt >= maxRestarts) {
        if (err instanceof LaunchError && attempt > 0) {
          throw new LaunchError(`${err.message}\n  (gave up after ${attempt} restart${attempt === 1 ? '' : 's'}; --max-restarts ${maxRestarts})`, err);
        }
        throw err;
      }
      const wait = backoff(attempt + 1);
      print(`[launcher] ${err.message.split('\n')[0]}`);
      print(`[launcher] restart ${attempt + 1} of ${maxRestarts} in ${(wait / 1000).toFixed(1)} s, in ${runDir}`);
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

/** The driver's view of a running job, served by the coordinator. */
export function driverContext(coordinator: Coordinator, spec: ClusterSpec, runDir: string, args: Record<string, unknown>, print: (line: string) => void): DriverContext {
  const table = rankTable(spec);
  return {
    spec,
    worldSize: table.length,
    peers: table.map((e) => ({ rank: e.rank, host: e.host, endpoint: tcp(e.address, e.port) })),
    runDir,
    args,
    send: (rank, name, value, blobs) => coordinator.send(rank, { type: 'input', name, value }, blobs),
    result: (rank, name) => coordinator.result(rank, name),
    print,
  };
}

/**
 * The failure to tell the user about, gathered over a short settling window:
 * a rank killed by a signal, else a rank's own error, else a neighbour's report
 * that a rank went silent (which names that rank), else any exit code.
 */
export function rootCause(failures: Array<WorkerFailure & { died: boolean }>): WorkerFailure {
  const interrupted = failures.find((f) => f.rank === -1);
  if (interrupted) return interrupted;
  const killed = failures.find((f) => f.died && /killed by|could not be started/.test(f.message));
  if (killed) return killed;
  const reported = failures.filter((f) => !f.died && !/exited with code|exited before/.test(f.message));
  const primary = reported.find((f) => !SECONDARY.test(f.message));
  if (primary) return primary;
  // A neighbour's report names the rank that went silent: blame that one.
  for (const f of reported) {
    const lost = /lost the link to its successor, rank (\d+) \(([^)]*)\)$/.exec(f.message);
    if (lost) return { rank: Number(lost[1]), host: lost[2], message: `stopped answering (its predecessor, rank ${f.rank}, lost the link to it)` };
  }
  for (const f of reported) {
    const waited = /timed out after ([\d.]+ s) waiting for "([^"]*)" of op \d+ \([^)]*\) from rank (\d+) \(([^)]*)\)/.exec(f.message);
    if (waited) return { rank: Number(waited[3]), host: waited[4], message: `did not send "${waited[2]}" to rank ${f.rank} within ${waited[1]}` };
  }
  // Only the launcher saw it: no ring neighbour did (a ring of one, or a hang outside the ring's waits).
  const silent = reported.find((f) => /^lost the link to the launcher/.test(f.message));
  if (silent) return { ...silent, message: `stopped answering (its link to the launcher went silent)` };
  return reported[0] ?? failures.find((f) => f.died) ?? failures[0];
}

async function killRemote(p: RankProcess, pid: number | undefined): Promise<void> {
  if (!pid) return;
  const ssh = p.host.ssh ?? { port: 22, options: [] as string[] };
  const args = ['-o', 'BatchMode=yes', '-p', String(ssh.port)];
  if (ssh.identityFile) args.push('-i', ssh.identityFile);
  for (const o of ssh.options ?? []) args.push('-o', o);
  const target = ssh.user ? `${ssh.user}@${p.host.address}` : p.host.address;
  await new Promise<void>((resolve) => {
    const k = spawn('ssh', [...args, target, `kill -9 ${pid} 2>/dev/null; true`], { stdio: 'ignore' });
    const t = setTimeout(() => {
      k.kill('SIGKILL');
      resolve();
    }, 5000);
    k.on('exit', () => {
      clearTimeout(t);
      resolve();
    });
    k.on('error', () => resolve());
  });
}

/** The job's ipc sockets (/tmp) and shared-memory channels (/dev/shm), whatever became of the workers that made them. */
function removeIpcFiles(jobId: string): void {
  for (const dir of ['/tmp', '/dev/shm']) {
    try {
      for (const f of readdirSync(dir)) if (f.startsWith(`ringattn-${jobId}-`)) rmSync(path.join(dir, f), { force: true });
    } catch {
      // Unreadable or absent: nothing of ours can be there.
    }
  }
}

async function waitUntil(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 25));
}

