import { UserError } from '../errors.js';
import type { JobDefinition } from './types.js';

/** Job kinds by name; each is imported only by the processes that run it. */
const JOBS: Record<string, () => Promise<JobDefinition>> = {
  ringcheck: async () => (await import('./ringcheck.js')).ringcheckJob,
  doctor: async () => (await import('./doctor.js')).doctorJob,
  attn: async () => (await import('./attn.js')).attnJob,
  bench: async () => (await import('./bench.js')).benchJob,
  train: async () => (await import('./train.js')).trainJob,
  eval: async () => (await import('./eval.js')).evalJob,
  generate: async () => (await import('./generate.js')).generateJob,
};

export const JOB_KINDS = Object.keys(JOBS);

export async function loadJob(kind: string): Promise<JobDefinition> {
  const load = JOBS[kind];
  if (!load) throw new UserError(`unknown job "${kind}" (known: ${JOB_KINDS.join(', ')})`);
  return load();
}
