import { availableParallelism } from 'node:os';
import { rankTable, type ClusterSpec } from './schema.js';

/** Cores of this machine shared fairly among `workers` processes (at least one each). */
export function hostThreads(workers: number): number {
  return Math.max(1, Math.floor(availableParallelism() / Math.max(1, workers)));
}

/**
 * Compute threads for the worker of `rank`: the spec's number, or with
 * `threads: auto` this host's cores divided by the workers the spec starts on
 * the host that rank runs on.
 */
export function workerThreads(spec: Pick<ClusterSpec, 'threads' | 'hosts' | 'ring'>, rank: number): number {
  if (spec.threads !== 'auto') return spec.threads;
  const table = rankTable(spec);
  const host = table[rank]?.host;
  return hostThreads(host === undefined ? 1 : table.filter((r) => r.host === host).length);
}
