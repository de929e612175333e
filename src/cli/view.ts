import { Command } from 'commander';
import { intFlag } from './common.js';
import type { ViewServer } from '../view/server.js';

export interface ViewFlags {
  port: string;
  bind: string;
  allowRemote?: boolean;
}

export const DEFAULT_VIEW_PORT = 8470;

/** The dashboard's flags, shared by `view` and `train --view`. */
export function viewOptions(cmd: Command): Command {
  return cmd
    .option('--port <p>', 'dashboard port (0: any free port)', String(DEFAULT_VIEW_PORT))
    .option('--bind <address>', 'dashboard address', '127.0.0.1')
    .option('--allow-remote', 'allow a --bind that is not loopback: anyone who can reach it sees the run, without authentication');
}

/** Starts the dashboard of `runDir` and says where it is (stderr: stdout stays the command's result). */
export async function serveRun(runDir: string, flags: ViewFlags): Promise<ViewServer> {
  const { startView } = await import('../view/server.js');
  const server = await startView({
    runDir,
    port: intFlag(flags.port, '--port', 0),
    bind: flags.bind,
    allowRemote: flags.allowRemote,
    warn: (line) => process.stderr.write(`${line}\n`),
  });
  process.stderr.write(`dashboard: ${server.url}\n`);
  return server;
}

export function viewCommand(): Command {
  return viewOptions(new Command('view').description("serve a run's live dashboard: loss, throughput and MFU, every rank's step, memory, ring health, checkpoints").argument('<run-dir>', 'a run directory (running or finished)')).action(
    async (runDir: string, flags: ViewFlags) => {
      const server = await serveRun(runDir, flags);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await server.close();
    },
  );
}
