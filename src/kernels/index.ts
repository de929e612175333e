import { UserError } from '../errors.js';
import { referenceKernel } from './reference.js';
import type { AttentionKernel } from './types.js';

export type * from './types.js';
export { mergePartial, emptyPartial, rowDelta } from './merge.js';
export { isFullyMasked, isFullyAllowed, canAttend, classifyTile, type MaskArgs, type TileKind } from './mask.js';
export { referenceKernel } from './reference.js';

/**
 * Kernel selection (`kernel:` in the spec):
 *   native    - the C++ addon (src/kernels/native.ts), fastest; may be absent;
 *   tfjs      - built from tfjs ops, runs on whichever tfjs backend is active;
 *   reference - plain float64 loops, for tests and debugging;
 *   auto      - native if it loads, otherwise tfjs.
 */
export type KernelName = 'auto' | 'native' | 'tfjs' | 'reference';
export const KERNEL_NAMES: readonly KernelName[] = ['auto', 'native', 'tfjs', 'reference'];

export interface KernelOptions {
  tileQ: number;
  tileKV: number;
  threads: number;
}

export interface LoadedKernel {
  kernel: AttentionKernel;
  /** Why this kernel was chosen (and, for auto, why native was not). */
  reason: string;
}

interface NativeModule {
  loadNativeKernel(opts: KernelOptions): Promise<AttentionKernel>;
}

// A variable specifier: the native module may be missing from a checkout or a
// build, and its absence must only yield a reason, not a type or load error.
const NATIVE_MODULE = './native.js';

async function tryNative(opts: KernelOptions): Promise<{ kernel: AttentionKernel } | { reason: string }> {
  try {
    const mod = (await import(NATIVE_MODULE)) as Partial<NativeModule>;
    if (typeof mod.loadNativeKernel !== 'function') return { reason: 'src/kernels/native has no loadNativeKernel export' };
    return { kernel: await mod.loadNativeKernel(opts) };
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    if ((e as { code?: string }).code === 'ERR_MODULE_NOT_FOUND' && /kernels[\\/]native\.(js|ts)/.test(msg)) {
      return { reason: 'the native kernel module (src/kernels/native.ts) is not present in this build' };
    }
    return { reason: msg.split('\n')[0] || 'unknown error' };
  }
}

function checkOptions(opts: KernelOptions): void {
  for (const key of ['tileQ', 'tileKV', 'threads'] as const) {
    const v = opts[key];
    if (!Number.isInteger(v) || v < 1) throw new UserError(`kernel option ${key} must be a positive integer, got ${v}`);
  }
}

export async function loadKernel(name: KernelName, opts: KernelOptions): Promise<LoadedKernel> {
  if (!KERNEL_NAMES.includes(name)) throw new UserError(`unknown kernel '${String(name)}' (choose one of: ${KERNEL_NAMES.join(', ')})`);
  checkOptions(opts);
  const tiles = `tiles ${opts.tileQ}x${opts.tileKV}`;
  switch (name) {
    case 'reference':
      return { kernel: referenceKernel, reason: 'reference kernel requested (float64 loops, slow)' };
    case 'tfjs': {
      const { createTfjsKernel } = await import('./tfjs.js');
      return { kernel: createTfjsKernel(opts), reason: `tfjs kernel requested (${tiles})` };
    }
    case 'native': {
      const r = await tryNative(opts);
      if ('reason' in r) throw new UserError(`native kernel unavailable: ${r.reason}`);
      return { kernel: r.kernel, reason: `native kernel requested (${tiles}, ${opts.threads} thread(s))` };
    }
    case 'auto': {
      const r = await tryNative(opts);
      if ('kernel' in r) return { kernel: r.kernel, reason: `native kernel loaded (${tiles}, ${opts.threads} thread(s))` };
      const { createTfjsKernel } = await import('./tfjs.js');
      return { kernel: createTfjsKernel(opts), reason: `tfjs kernel (${tiles}); native skipped: ${r.reason}` };
    }
  }
}
