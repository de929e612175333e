import { UserError } from '../errors.js';
import { selectBackend, type BackendWant } from '../tensor/backend.js';
import type { AdapterWant } from './webgpu/device.js';
import { createNativeEngine, nativeEngineUnavailable } from './native.js';
import { tunedGemm } from './tuning.js';
import type { Engine } from './types.js';

export type * from './types.js';
export { slice } from './types.js';

/**
 * Engine selection (`engine:` and `backend:` in the spec):
 *   backend webgpu - the webgpu engine (src/engine/webgpu/) on the slot's adapter,
 *                    a software one included; never falls back to the CPU;
 *   native - the C++ addon (native/engine.cc), fastest on a CPU; may be absent;
 *   tfjs   - the tfjs engine on the spec's tfjs `backend`;
 *   auto   - with backend auto: webgpu on a hardware adapter, else tfjs on
 *            tensorflow-gpu where tfjs-node-gpu loads, else native, else tfjs.
 */
export type EngineName = 'auto' | 'native' | 'tfjs';
export const ENGINE_NAMES: readonly EngineName[] = ['auto', 'native', 'tfjs'];

/** The spec's `backend`: where the compute runs. */
export type ComputeBackend = BackendWant | 'webgpu';
export const COMPUTE_BACKENDS: readonly ComputeBackend[] = ['auto', 'webgpu', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'];

export interface EngineOptions {
  threads: number;
  /** webgpu, or the tfjs backend the tfjs engine runs on. */
  backend?: ComputeBackend;
  /** The GPU of the worker's slot: the host's `gpus` entry (adapter index or name) if it lists one, and the slot's index on its host. */
  gpu?: { want: AdapterWant; slot: number };
}

export interface LoadedEngine {
  engine: Engine;
  /** Why this engine was chosen, and for auto why native was not: one line for the log. */
  reason: string;
}

export async function loadEngine(name: EngineName, opts: EngineOptions): Promise<LoadedEngine> {
  if (!ENGINE_NAMES.includes(name)) throw new UserError(`unknown engine '${String(name)}' (choose one of: ${ENGINE_NAMES.join(', ')})`);
  if (!Number.isInteger(opts.threads) || opts.threads < 1) throw new UserError(`engine threads must be a positive integer, got ${opts.threads}`);
  const backend = opts.backend ?? 'auto';
  if (!COMPUTE_BACKENDS.includes(backend)) throw new UserError(`unknown backend '${String(backend)}' (choose one of: ${COMPUTE_BACKENDS.join(', ')})`);
  const skips: string[] = [];
  if (backend === 'webgpu') {
    if (name !== 'auto') throw new UserError(`backend webgpu runs the webgpu engine; engine ${name} cannot run on it (leave engine: auto)`);
    return webgpuEngine(opts, true, 'requested');
  }
  if (backend === 'auto' && name === 'auto') {
    const { autoAdapter } = await import('./webgpu/device.js');
    const pick = await autoAdapter(opts.gpu?.want, opts.gpu?.slot ?? 0);
    if (typeof pick === 'string') {
      skips.push(`webgpu skipped: ${pick}`);
    } else {
      try {
        return await webgpuEngine(opts, false, 'auto: a hardware adapter');
      } catch (e) {
        skips.push(`webgpu skipped: ${(e as Error).message.replace(/^backend auto: /, '')}`);
      }
    }
    try {
      const choice = await selectBackend('tensorflow-gpu');
      if (choice.gpu) {
        const { createTfjsEngine } = await import('./tfjs.js');
        const engine = createTfjsEngine();
        return { engine, reason: `${engine.description} (auto: tensorflow-gpu loaded; ${skips.join('; ')})` };
      }
    } catch (e) {
      skips.push(`tensorflow-gpu skipped: ${(e as Error).message.replace(/^cannot use backend 'tensorflow-gpu': /, '')}`);
    }
  }
  const tfBackend: BackendWant = backend;
  const tfjs = async (why: string): Promise<LoadedEngine> => {
    await selectBackend(tfBackend);
    const { createTfjsEngine } = await import('./tfjs.js');
    const engine = createTfjsEngine();
    return { engine, reason: `${engine.description} (${[...skips, why].join('; ')})` };
  };
  if (name === 'tfjs') return tfjs('requested');
  const missing = nativeEngineUnavailable();
  if (!missing) {
    try {
      let blocking: { mc: number; kc: number; nc: number } | undefined;
      let tuned = '';
      try {
        const t = await tunedGemm({ threads: opts.threads });
        blocking = t.value;
        tuned = t.source === 'cached' ? ', tuned for this machine' : ', blocking measured on this machine just now';
      } catch (e) {
        tuned = `, default blocking (tuning failed: ${(e as Error).message.split('\n')[0]})`;
      }
      const engine = createNativeEngine({ threads: opts.threads, blocking });
      const why = name === 'native' ? 'requested' : ['auto', ...skips].join('; ');
      return { engine, reason: `${engine.description}${tuned} (${why})` };
    } catch (e) {
      if (name === 'native') throw new UserError(`native engine unavailable: ${(e as Error).message.split('\n')[0]}`);
      return tfjs(`native engine skipped: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  if (name === 'native') throw new UserError(`native engine unavailable: ${missing}`);
  return tfjs(`native engine skipped: ${missing}`);
}

async function webgpuEngine(opts: EngineOptions, allowSoftware: boolean, why: string): Promise<LoadedEngine> {
  const { openGpu } = await import('./webgpu/device.js');
  const { createWebGPUEngine } = await import('./webgpu/engine.js');
  const gpu = await openGpu(opts.gpu?.want, { allowSoftware, slot: opts.gpu?.slot, what: `backend ${allowSoftware ? 'webgpu' : 'auto'}`, hint: allowSoftware });
  const opened = createWebGPUEngine(gpu);
  // The engine owns the device here: its dispose closes it.
  const engine: Engine = {
    ...opened,
    dispose() {
      opened.dispose();
      gpu.close();
    },
  };
  const kind = gpu.adapter.software ? 'a software adapter: right answers, no speed' : 'hardware';
  return { engine, reason: `${engine.description}, adapter ${gpu.adapter.index} of Dawn's list, ${kind} (${why})` };
}
