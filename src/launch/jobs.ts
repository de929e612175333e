import { UserError } from '../errors.js';
import type { JobDefinition } from './job.js';

/** Job kinds by name; each is imported only by the processes that run it. */
const JOBS: Record<string, () => Promise<JobDefinition>> = {
  ringcheck: async () => (await import('./ringcheck-job.js')).ringcheckJob,
  doctor: async () => (await import('./doctor-job.js')).doctorJob,
  attn: async () => (await import('../attention/attn-job.js')).attnJob,
  bench: async () => (await import('../bench/job.js')).benchJob,
  train: async () => (await import('../train/job.js')).trainJob,
  eval: async () => (await import('../train/eval-job.js')).evalJob,
  generate: async () => (await import('../model/generate-job.js')).generateJob,
};

export const JOB_KINDS = Object.keys(JOBS);

export async function loadJob(kind: string): Promise<JobDefinition> {
  const load = JOBS[kind];
  if (!load) throw new UserError(`unknown job "${kind}" (known: ${JOB_KINDS.join(', ')})`);
  return load();
}
