import { engineSeqUnit, engineTerms, type EngineJob } from './engine-memory.js';
import { engineBytes, jobMaxContext, jobMemory, type JobContext, type JobMemory } from './job.js';
import { paperTerms, type PaperJob } from './paper-memory.js';

/**
 * Which whole-job count a plan uses: our engine's training run (a cluster spec's
 * model on this machine), or the paper's setting (a model preset on a device preset).
 */
export type JobSetting =
  | { kind: 'engine'; engine: Omit<EngineJob, 'seqLen'>; /** The engine's memory cap per worker (RINGATTN_ENGINE_MAX_BYTES), if planned for. */ engineMaxBytes?: number }
  | { kind: 'paper'; paper: Omit<PaperJob, 'seqLen' | 'hosts' | 'batch'> };

export interface JobReport extends JobMemory, JobContext {
  kind: JobSetting['kind'];
  /** Parameters, gradients and optimizer state sharded over the hosts (paper setting with --fsdp). */
  fsdp: boolean;
  budgetBytes: number;
  fits: boolean;
  /** Under the engine's memory cap: what its buffers hold now, and the longest sequence whose buffers fit it. */
  engineCap: ({ capBytes: number; engineBytes: number; fits: boolean } & JobContext) | null;
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
  let engineCap: JobReport['engineCap'] = null;
  if (setting.kind === 'engine' && setting.engineMaxBytes !== undefined) {
    const capBytes = setting.engineMaxBytes;
    const held = (s: number) => engineBytes(peakAt(setting, { ...shape, seqLen: s }).terms);
    const now = held(shape.seqLen);
    engineCap = { capBytes, engineBytes: now, fits: now <= capBytes, ...jobMaxContext(held, capBytes, unit) };
  }
  return {
    kind: setting.kind,
    engineCap,
    fsdp: setting.kind === 'paper' && setting.paper.fsdp,
    budgetBytes,
    fits: memory.peakBytesPerWorker <= budgetBytes,
    ...memory,
    ...context,
  };
}
