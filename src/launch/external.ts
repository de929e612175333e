import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { rankTable, resolvedSecurity, specHash, type ClusterSpec } from '../config/index.js';
import { UserError } from '../errors.js';
import { isCurveKeys, type CurveKeys } from '../ring/zap.js';
import { Coordinator } from './coordinator.js';
import { loadJob } from '../jobs/index.js';
import { driverContext, rootCause, tcp } from './launcher.js';
import { startRingHealth } from './ring-health.js';
import { runWorker, workerLogger, type WorkerRole } from './worker.js';

/**
 * Scheduler mode: Slurm, mpirun or Kubernetes starts `ringattn worker --config
 * FILE --job KIND` once per rank. Rank and world size come from the
 * environment; rank 0 also hosts the coordinator and the job's driver. The
 * scheduler supervises the processes; any rank's failure aborts every rank.
 */

function envInt(names: string[]): { value: number; from: string } | null {
  for (const n of names) {
    const v = process.env[n];
    if (v === undefined || v === '') continue;
    const x = Number(v);
    if (!Number.isInteger(x) || x < 0) throw new UserError(`${n}=${v}: expected a non-negative integer`);
    return { value: x, from: n };
  }
  return null;
}

/** The job's key pair from a file only its owner can read (like ssh, a readable key is refused); `what` names it in errors. */
export function readKeyFile(file: string, what = 'RINGATTN_CURVE_KEY_FILE'): CurveKeys {
  let mode: number;
  let text: string;
  try {
    mode = statSync(file).mode;
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new UserError(`${what} ${file}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (process.platform !== 'win32' && (mode & 0o077) !== 0) {
    throw new UserError(`${what} ${file}: mode ${(mode & 0o777).toString(8)} lets other users read the job's keys; chmod 600 it`);
  }
  let keys: unknown;
  try {
    keys = JSON.parse(text);
  } catch {
    keys = null;
  }
  if (!isCurveKeys(keys)) throw new UserError(`${what} ${file}: expected JSON {"publicKey","secretKey"}, each 40 Z85 characters`);
  return { publicKey: keys.publicKey, secretKey: keys.secretKey };
}

// JOB_COMPLETION_INDEX: a Kubernetes Indexed Job's pod index (src/launch/emit.ts makes one pod per rank).
export const RANK_VARS = ['RINGATTN_RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK', 'JOB_COMPLETION_INDEX', 'RANK'];
export const WORLD_VARS = ['RINGATTN_WORLD_SIZE', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'WORLD_SIZE'];

export async function runExternalWorker(spec: ClusterSpec, configFile: string, kind: string, runDir?: string): Promise<void> {
  const table = rankTable(spec);
  const rank = envInt(RANK_VARS);
  const world = envInt(WORLD_VARS);
  if (!rank || !world) throw new UserError(`scheduler mode needs the rank and world size in the environment (${RANK_VARS[0]}/${WORLD_VARS[0]}, SLURM_PROCID/SLURM_NTASKS or OMPI_COMM_WORLD_RANK/_SIZE)`);
  if (world.value !== table.length) throw new UserError(`${world.from}=${world.value}, but ${configFile} describes ${table.length} worker slot(s)`);
  if (rank.value >= world.value) throw new UserError(`${rank.from}=${rank.value} is not below the world size ${world.value}`);
  const coordinator = process.env.RINGATTN_COORDINATOR ? `tcp://${process.env.RINGATTN_COORDINATOR}` : tcp(table[0].address, spec.ring.basePort);
  let curve: CurveKeys | undefined;
  if (resolvedSecurity(spec) === 'curve') {
    const keyFile = process.env.RINGATTN_CURVE_KEY_FILE;
    if (!keyFile) throw new UserError('security is curve: scheduler mode needs RINGATTN_CURVE_KEY_FILE (a 0600 JSON file {"publicKey","secretKey"} shared by every rank)');
    curve = readKeyFile(keyFile);
  }
  const e = table[rank.value];
  // Slurm says where it started the task: it must be the spec's host for that rank (block distribution).
  const node = process.env.SLURMD_NODENAME;
  if (node && rank.from === 'SLURM_PROCID' && node !== e.host && node !== e.address) {
    throw new UserError(`rank ${e.rank}: Slurm started it on ${node}, but ${configFile} puts it on ${e.host}: tasks must be laid out in blocks (srun --distribution=block), in the order of the spec's hosts`);
  }
  // A scheduler stops a job with SIGTERM: exit through 'exit', which removes this rank's ipc sockets and shared-memory files.
  let onStop: (sig: string) => void = () => undefined;
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      onStop(sig);
      process.exit(sig === 'SIGTERM' ? 143 : 130);
    });
  }
  const hash = specHash(spec);
  const role: WorkerRole = {
    jobId: hash.slice(0, 16),
    rank: e.rank,
    worldSize: table.length,
    host: e.host,
    localRank: e.localRank,
    endpoint: tcp(e.address, e.port),
    coordinator,
    spec,
    job: { kind, args: {} },
    runDir: path.resolve(runDir ?? path.join(spec.runDir, `${kind}-${hash.slice(0, 8)}`)),
    curve,
  };
  const log = workerLogger(role);
  if (rank.value !== 0) {
    await runWorker(role, log);
    return;
  }
  const job = await loadJob(kind);
  const coord = await Coordinator.start({
    bind: tcp(spec.ring.bindAddress ?? table[0].address, spec.ring.basePort),
    worldSize: table.length,
    specHash: hash,
    rendezvousTimeoutMs: spec.ring.rendezvousTimeoutMs,
    heartbeatIntervalMs: spec.ring.heartbeatIntervalMs,
    heartbeatTimeoutMs: spec.ring.heartbeatTimeoutMs,
    // The ring's backstop, and one goodbye: every rank's end is within that of another's.
    doneSpreadMs: spec.ring.opTimeoutMs + spec.ring.connectTimeoutMs,
    hostOf: (r) => table[r].host,
    curve,
  });
  // ring.json, as the launcher writes it: `ringattn view` shows a scheduler's job like any other.
  const health = startRingHealth(role.runDir, { job: kind, attempt: 0, heartbeatIntervalMs: spec.ring.heartbeatIntervalMs, heartbeatTimeoutMs: spec.ring.heartbeatTimeoutMs }, () => coord.status(), (line) => log.warn(line));
  onStop = (sig) => health.end('failed', `stopped by the scheduler (${sig})`);
  // A neighbour's report of a lost link names the rank that went: blame that one, as the launcher does.
  const blame = (f: { rank: number; host: string; message: string }) => {
    const root = rootCause([{ ...f, died: false }]);
    return { who: `rank ${root.rank} (${root.host})`, why: root.message.replace(/^rank \d+: /, '') };
  };
  coord.onFailure = (reported) => {
    const { who, why } = blame(reported);
    log.error(`${who} failed: ${why}: aborting every rank`);
    health.end('failed', `${who} ${why}`);
    void coord.abort(`rank ${reported.rank} failed`).finally(() => process.exit(1));
  };
  const driving = (async () => {
    await coord.rendezvous();
    if (job.driver) await job.driver(driverContext(coord, spec, role.runDir, {}, (line) => process.stderr.write(`${line}\n`)));
    await coord.allDone();
  })();
  let ended: { state: 'finished' | 'failed'; failure?: string } = { state: 'failed', failure: 'rank 0 stopped' };
  try {
    await Promise.all([runWorker(role, log), driving]);
    ended = { state: 'finished' };
  } catch (err) {
    // Rank 0's own job may be the first to see a neighbour's loss: blame as the coordinator would.
    const { who, why } = blame({ rank: 0, host: e.host, message: (err as Error).message.split('\n')[0] });
    ended = { state: 'failed', failure: `${who} ${why}` };
    throw err;
  } finally {
    health.end(ended.state, ended.failure);
    coord.close();
  }
}
