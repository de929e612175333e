import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { freePortRange } from './ports.js';

/**
 * A one-node Slurm cluster on localhost, made by a test in its own folder:
 * munged (its own key and socket), slurmctld and slurmd (node "localhost",
 * address 127.0.0.1, 2 CPUs), state and logs all under `dir`. Root only
 * (slurmd runs tasks as the submitting user and needs to switch to it).
 */

export const SLURM_BINARIES = ['munged', 'slurmctld', 'slurmd', 'sbatch', 'squeue', 'scancel', 'scontrol', 'sinfo'];

/** Why this machine cannot run the cluster, or null. */
export function slurmMissing(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (slurmd switches to the submitting user); run the tests as root, as CI does';
  const missing = SLURM_BINARIES.filter((b) => spawnSync('sh', ['-c', `command -v ${b} || test -x /usr/sbin/${b}`]).status !== 0);
  return missing.length ? `Slurm is not installed (${missing.join(', ')} missing; apt-get install slurm-wlm munge, as .ci/setup-system.sh does)` : null;
}

export interface SlurmCluster {
  dir: string;
  /** The environment slurm commands need (SLURM_CONF). */
  env: NodeJS.ProcessEnv;
  run(cmd: string, args: string[], opts?: { env?: NodeJS.ProcessEnv }): { status: number | null; stdout: string; stderr: string };
  /** Waits until no job of the cluster is queued or running. */
  drained(ms?: number): Promise<void>;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sbin = (b: string) => (existsSync(`/usr/sbin/${b}`) ? `/usr/sbin/${b}` : b);

export async function startSlurm(dir: string): Promise<SlurmCluster> {
  mkdirSync(path.join(dir, 'state'), { recursive: true });
  mkdirSync(path.join(dir, 'spool'), { recursive: true });
  // munged wants its socket's folder reachable by everyone and its key owner-only.
  chmodSync(dir, 0o755);
  const key = path.join(dir, 'munge.key');
  writeFileSync(key, randomBytes(1024), { mode: 0o600 });
  const sock = path.join(dir, 'munge.sock');
  execFileSync(sbin('munged'), ['--force', `--socket=${sock}`, `--key-file=${key}`, `--pid-file=${dir}/munged.pid`, `--log-file=${dir}/munged.log`, `--seed-file=${dir}/munged.seed`]);
  const port = await freePortRange(2);
  const conf = path.join(dir, 'slurm.conf');
  writeFileSync(
    conf,
    [
      'ClusterName=ringattn-test',
      'SlurmctldHost=localhost(127.0.0.1)',
      `SlurmctldPort=${port}`,
      `SlurmdPort=${port + 1}`,
      'AuthType=auth/munge',
      `AuthInfo=socket=${sock}`,
      'CredType=cred/munge',
      'SlurmUser=root',
      'SlurmdUser=root',
      `StateSaveLocation=${dir}/state`,
      `SlurmdSpoolDir=${dir}/spool`,
      `SlurmctldPidFile=${dir}/slurmctld.pid`,
      `SlurmdPidFile=${dir}/slurmd.pid`,
      `SlurmctldLogFile=${dir}/slurmctld.log`,
      `SlurmdLogFile=${dir}/slurmd.log`,
      // No cgroups in a CI container: processes are tracked by parentage, tasks are not confined.
      'ProctrackType=proctrack/linuxproc',
      'TaskPlugin=task/none',
      'SelectType=select/cons_tres',
      'SelectTypeParameters=CR_Core',
      'SchedulerType=sched/builtin',
      'ReturnToService=2',
      'MpiDefault=none',
      'JobAcctGatherType=jobacct_gather/none',
      'AccountingStorageType=accounting_storage/none',
      // scancel: SIGTERM, then SIGKILL after this many seconds.
      'KillWait=5',
      'NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN',
      'PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP',
      '',
    ].join('\n'),
  );
  const env = { ...process.env, SLURM_CONF: conf };
  const run = (cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}) => {
    const r = spawnSync(cmd, args, { env: { ...env, ...opts.env }, encoding: 'utf8', timeout: 300000 });
    return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  };
  const ctld = run(sbin('slurmctld'), ['-f', conf]);
  const d = run(sbin('slurmd'), ['-f', conf, '-N', 'localhost']);
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  // Stops the daemons and waits until they are gone (SIGKILL after 10 s): none outlives the test, none writes into a
  // folder being removed.
  const stop = async () => {
    run('scancel', ['--full', '--user', 'root']);
    const pids: number[] = [];
    for (const file of ['slurmd.pid', 'slurmctld.pid', 'munged.pid']) {
      try {
        const pid = Number(readFileSync(path.join(dir, file), 'utf8').trim());
        process.kill(pid, 'SIGTERM');
        pids.push(pid);
      } catch {
        // not running
      }
    }
    const end = Date.now() + 10000;
    while (pids.some(alive) && Date.now() < end) await sleep(100);
    for (const pid of pids.filter(alive)) process.kill(pid, 'SIGKILL');
  };
  if (ctld.status !== 0 || d.status !== 0) {
    await stop();
    throw new Error(`slurm did not start: slurmctld ${ctld.status} ${ctld.stderr}; slurmd ${d.status} ${d.stderr}`);
  }
  const deadline = Date.now() + 30000;
  for (;;) {
    const s = run('sinfo', ['-h', '-o', '%T']).stdout.trim();
    if (s === 'idle') break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`the node never became idle (sinfo: ${s}); slurmd.log:\n${readFileSync(path.join(dir, 'slurmd.log'), 'utf8').slice(-2000)}`);
    }
    await sleep(250);
  }
  return {
    dir,
    env,
    run,
    async drained(ms = 60000) {
      const end = Date.now() + ms;
      while (run('squeue', ['-h']).stdout.trim() !== '') {
        if (Date.now() > end) throw new Error(`jobs still queued after ${ms} ms:\n${run('squeue', []).stdout}`);
        await sleep(250);
      }
    },
    stop,
  };
}
