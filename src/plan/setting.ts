import { engineSeqUnit, engineTerms, type EngineJob } from './engine-memory.js';
import { jobMaxContext, jobMemory, type JobContext, type JobMemory } from './job.js';
import { paperTerms, type PaperJob } from './paper-memory.js';

/**
 * Which whole-job count a plan uses: our engine's training run (a cluster spec's
 * model on this machine), or the paper's setting (a model preset on a device preset).
 */
export type JobSetting =
  | { kind: 'engine'; engine: Omit<EngineJob, 'seqLen'> }
  | { kind: 'paper'; paper: Omit<PaperJob, 'seqLen' | 'hosts' | 'batch'> };

export interface JobReport extends JobMemory, JobContext {
  kind: JobSetting['kind'];
  /** Parameters, gradients and optimizer state sharded over the hosts (paper setting with --fsdp). */
  fsdp: boolean;
  budgetBytes: number;
  fits: boolean;
}

export interface JobShape {
  batch: number;
  seqLen: number;
  hosts: number;
}

function peakAt(setting: JobSetting, shape: JobShape): JobMemory {
  if (setting.kind === 'engine') return jobMemory(engineTerms({ ...setting.engine, seqLen: shape.seqLen }));
  return jobMemory(paperTerms({ ...setting.paper, seqLen: shape.seqLen, hosts: shape.hosts, batch: shape.batch }));
}

export function jobReport(setting: JobSetting, shape: JobShape, budgetBytes: number): JobReport {
  const memory = peakAt(setting, shape);
  // Our ring splits only multiples of its layout's quantum; the paper's hosts take ceil(s/N) each.
  const unit = setting.kind === 'engine' ? engineSeqUnit(setting.engine) : 1;
  const context = jobMaxContext((s) => peakAt(setting, { ...shape, seqLen: s }).peakBytesPerWorker, budgetBytes, unit);
  return {
    kind: setting.kind,
    fsdp: setting.kind === 'paper' && setting.paper.fsdp,
    budgetBytes,
    fits: memory.peakBytesPerWorker <= budgetBytes,
    ...memory,
    ...context,
  };
}
