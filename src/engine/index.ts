import { UserError } from '../errors.js';
import { selectBackend, type BackendWant } from '../tensor/backend.js';
import { createNativeEngine, nativeEngineUnavailable } from './native.js';
import { tunedGemm } from './tuning.js';
import type { Engine } from './types.js';

export type * from './types.js';
export { slice } from './types.js';

/**
 * Engine selection (`engine:` in the spec):
 *   native - the C++ addon (native/engine.cc), fastest; may be absent;
 *   tfjs   - the tfjs engine on the spec's tfjs `backend`;
 *   auto   - native if it loads, otherwise tfjs.
 */
export type EngineName = 'auto' | 'native' | 'tfjs';
export const ENGINE_NAMES: readonly EngineName[] = ['auto', 'native', 'tfjs'];

export interface EngineOptions {
  threads: number;
  /** The tfjs backend the tfjs engine runs on. */
  backend?: BackendWant;
}

export interface LoadedEngine {
  engine: Engine;
  /** Why this engine was chosen, and for auto why native was not: one line for the log. */
  reason: string;
}

export async function loadEngine(name: EngineName, opts: EngineOptions): Promise<LoadedEngine> {
  if (!ENGINE_NAMES.includes(name)) throw new UserError(`unknown engine '${String(name)}' (choose one of: ${ENGINE_NAMES.join(', ')})`);
  if (!Number.isInteger(opts.threads) || opts.threads < 1) throw new UserError(`engine threads must be a positive integer, got ${opts.threads}`);
  const tfjs = async (why: string): Promise<LoadedEngine> => {
    await selectBackend(opts.backend ?? 'auto');
    const { createTfjsEngine } = await import('./tfjs.js');
    const engine = createTfjsEngine();
    return { engine, reason: `${engine.description} (${why})` };
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
      return { engine, reason: `${engine.description}${tuned} (${name === 'native' ? 'requested' : 'auto'})` };
    } catch (e) {
      if (name === 'native') throw new UserError(`native engine unavailable: ${(e as Error).message.split('\n')[0]}`);
      return tfjs(`native engine skipped: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  if (name === 'native') throw new UserError(`native engine unavailable: ${missing}`);
  return tfjs(`native engine skipped: ${missing}`);
}
