import { slotGpu, workerThreads, type ClusterSpec } from '../config/index.js';
import type { AttentionKernel } from '../kernels/types.js';
import { selectBackend, tfjsWant } from '../tensor/backend.js';
import { loadEngine, type Engine, type EngineName } from './index.js';
import { loadTunedKernel } from './tuning.js';


export interface WorkerCompute {
  engine: Engine;
  engineReason: string;
  /** The host kernel ring attention calls; null when the engine has its own attention. */
  kernel: AttentionKernel | null;
  kernelReason: string;
  threads: number;
}

/** What a worker computes with: the spec's engine and tuned attention kernel, on its share of the host's threads. */
export async function workerCompute(spec: ClusterSpec, rank: number): Promise<WorkerCompute> {
  const threads = workerThreads(spec, rank);
  const { engine, reason: engineReason } = await loadEngine(spec.engine as EngineName, { threads, backend: spec.backend, gpu: slotGpu(spec, rank) });
  if (engine.attention) return { engine, engineReason, kernel: null, kernelReason: `on the ${engine.name} engine`, threads };
  if (spec.kernel === 'tfjs' || engine.name === 'tfjs') await selectBackend(tfjsWant(spec.backend));
  const { kernel, reason } = await loadTunedKernel(spec, { heads: spec.model.heads, kvHeads: spec.model.kvHeads, headDim: spec.model.dModel / spec.model.heads, threads });
  return { engine, engineReason, kernel, kernelReason: reason, threads };
}
