import { Command } from 'commander';
import { createInterface } from 'node:readline';
import { loadSpec } from '../config/index.js';
import { UserError } from '../errors.js';
import { runExternalWorker } from '../launch/external.js';
import { runWorker, workerLogger, type WorkerRole } from '../launch/worker.js';

/**
 * `ringattn worker`: one rank. Launched by `ringattn` it reads its role from
 * stdin and exits when stdin closes. Started by an outside scheduler (Slurm,
 * mpirun, Kubernetes) it takes rank and world size from the environment, and
 * rank 0 also hosts the coordinator.
 */
export function workerCommand(): Command {
  return new Command('worker')
    .description('run one rank of a ring (started by the launcher, or by a scheduler with --config and --job)')
    .option('--config <file>', 'cluster spec (scheduler mode)')
    .option('--job <kind>', 'job to run (scheduler mode): train, bench, doctor', 'train')
    .option('--run-dir <dir>', 'run directory (scheduler mode; must be the same on every rank)')
    .action(async (opts: { config?: string; job: string; runDir?: string }) => {
      if (opts.config) {
        await runExternalWorker(loadSpec(opts.config), opts.config, opts.job, opts.runDir);
        process.exit(0);
      }
      const role = await readRole();
      const log = workerLogger(role);
      // The launcher holds our stdin open for the whole job; EOF means it is gone.
      process.stdin.on('end', () => {
        log.error('launcher went away: stopping');
        process.exit(1);
      });
      process.stdin.resume();
      try {
        await runWorker(role, log);
      } catch {
        process.exit(1);
      }
      process.exit(0);
    });
}

async function readRole(): Promise<WorkerRole> {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    rl.close();
    try {
      return JSON.parse(line) as WorkerRole;
    } catch {
      break;
    }
  }
  throw new UserError('ringattn worker: expected the role on stdin from the launcher, or --config with scheduler environment variables');
}

