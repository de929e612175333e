import { renameSync, writeFileSync } from 'node:fs';
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
