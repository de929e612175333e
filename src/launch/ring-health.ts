import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { RankStatus } from './coordinator.js';

/**
 * `<runDir>/ring.json`: the launcher's view of a job's ranks, rewritten while
 * the job runs (about once a heartbeat interval) and once at its end. It is how
 * `ringattn view` shows ring health for a run in another process, or a finished
 * one: the last heartbeat of every rank as the coordinator received it.
 */
export const RING_FILE = 'ring.json';

export interface RingHealth {
  job: string;
  attempt: number;
  state: 'running' | 'finished' | 'failed';
  /** When the launcher started the job, and when it wrote this file (ISO 8601). */
  started: string;
  updated: string;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  /** The failure the user was told, for a failed job. */
  failure?: string;
  ranks: Array<{ rank: number; host: string; pid?: number; state: RankStatus['state']; lastHeartbeat?: string; info: Record<string, unknown> }>;
}

export function ringHealth(job: Omit<RingHealth, 'updated' | 'ranks'>, ranks: RankStatus[]): RingHealth {
  return {
    ...job,
    updated: new Date().toISOString(),
    ranks: ranks.map((r) => ({
      rank: r.rank,
      host: r.host,
      ...(r.pid !== undefined ? { pid: r.pid } : {}),
      state: r.state,
      ...(r.lastSeen !== undefined ? { lastHeartbeat: new Date(r.lastSeen).toISOString() } : {}),
      info: r.info,
    })),
  };
}

/** Replaces ring.json whole (a reader never sees half a file); not fsynced: it is a live view, not a record to recover. */
export function writeRingHealth(runDir: string, health: RingHealth): void {
  const file = path.join(runDir, RING_FILE);
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(health, null, 2) + '\n', { mode: 0o600 });
  renameSync(tmp, file);
}

/** What keeps ring.json current for one job: the launcher's, or scheduler mode's rank 0. */
export interface RingHealthWriter {
  /** Writes the job's end and stops; the first end is the one kept, later ones are ignored. */
  end(state: Exclude<RingHealth['state'], 'running'>, failure?: string): void;
}

/** Writes ring.json now and every heartbeat interval from `status()`, until `end`; a failed write is reported to `warn`, never thrown. */
export function startRingHealth(
  runDir: string,
  job: Pick<RingHealth, 'job' | 'attempt' | 'heartbeatIntervalMs' | 'heartbeatTimeoutMs'>,
  status: () => RankStatus[],
  warn: (line: string) => void,
): RingHealthWriter {
  const started = new Date().toISOString();
  const write = (state: RingHealth['state'], failure?: string) => {
    try {
      writeRingHealth(runDir, ringHealth({ ...job, started, state, ...(failure !== undefined ? { failure } : {}) }, status()));
    } catch (err) {
      warn(`cannot write ${path.join(runDir, RING_FILE)}: ${(err as Error).message}`);
    }
  };
  try {
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
  } catch {
    // reported by the first write
  }
  write('running');
  const timer = setInterval(() => write('running'), job.heartbeatIntervalMs);
  timer.unref();
  let ended = false;
  return {
    end(state, failure) {
      if (ended) return;
      ended = true;
      clearInterval(timer);
      write(state, failure);
    },
  };
}

