import * as tf from '@tensorflow/tfjs';
import { UserError } from '../errors.js';

/**
 * Picks the tfjs backend at run time. The union package '@tensorflow/tfjs' is
 * always loaded (it registers the gradients; tfjs-core plus a backend alone
 * fails with "gradient function not found"). The TensorFlow bindings are
 * optional dependencies that may be absent, so they are imported dynamically
 * through a variable specifier (the type checker must not require them).
 */
export type BackendName = 'tensorflow-gpu' | 'tensorflow' | 'wasm' | 'cpu';
export type BackendWant = 'auto' | BackendName;
export const BACKEND_NAMES: readonly BackendName[] = ['tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'];
export const BACKEND_WANTS: readonly BackendWant[] = ['auto', ...BACKEND_NAMES];

/** The tfjs backend for a spec's `backend`: webgpu is no tfjs backend, so the tfjs pieces take auto there. */
export function tfjsWant(backend: BackendWant | 'webgpu'): BackendWant {
  return backend === 'webgpu' ? 'auto' : backend;
}

export interface BackendSkip {
  name: BackendName;
  reason: string;
}

export interface BackendChoice {
  /** The option that was selected. */
  name: BackendName;
  /** The tfjs backend it runs on ('tensorflow' for both TensorFlow options). */
  tfBackend: string;
  gpu: boolean;
  /** Options tried before `name` and why each was not used (auto only). */
  skipped: BackendSkip[];
}

export interface BackendProbe {
  name: BackendName;
  available: boolean;
  gpu: boolean;
  reason?: string;
}

const MODULES: Partial<Record<BackendName, string>> = {
  'tensorflow-gpu': '@tensorflow/tfjs-node-gpu',
  tensorflow: '@tensorflow/tfjs-node',
  wasm: '@tensorflow/tfjs-backend-wasm',
};

type Attempt = { ok: true; tfBackend: string; gpu: boolean } | { ok: false; reason: string };

function firstLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.split('\n').find((line) => line.trim() !== '')?.trim() ?? 'unknown error';
}

async function importModule(spec: string): Promise<string | null> {
  try {
    await import(spec);
    return null;
  } catch (e) {
    const code = (e as { code?: string }).code;
    const msg = e instanceof Error ? e.message : '';
    if ((code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && msg.includes(`'${spec}'`)) {
      return `module not installed (${spec})`;
    }
    return `${spec} failed to load: ${firstLine(e)}`;
  }
}

/**
 * tf.setBackend reports an initialisation failure only as `false` plus a
 * console.warn; capture that warning so the reason reaches the caller instead.
 */
async function switchTo(tfName: string): Promise<string | null> {
  if (tf.engine().backendName === tfName) return null;
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    warnings.push(args.map((x) => firstLine(x)).join(' '));
  };
  let ok: boolean;
  try {
    ok = await tf.setBackend(tfName);
  } catch (e) {
    return `backend '${tfName}' failed to initialise: ${firstLine(e)}`;
  } finally {
    console.warn = warn;
  }
  if (!ok) {
    const why = warnings.filter((w) => !/^Initialization of backend .* failed$/.test(w))[0];
    return `backend '${tfName}' failed to initialise${why ? `: ${why}` : ''}`;
  }
  await tf.ready();
  return null;
}

function usingGpu(): boolean {
  return Boolean((tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice);
}

async function attempt(name: BackendName): Promise<Attempt> {
  switch (name) {
    case 'tensorflow-gpu': {
      const missing = await importModule(MODULES['tensorflow-gpu']!);
      if (missing) return { ok: false, reason: missing };
      const failed = await switchTo('tensorflow');
      if (failed) return { ok: false, reason: failed };
      // libtensorflow silently runs on the CPU when it finds no usable GPU.
      if (!usingGpu()) return { ok: false, reason: 'tfjs-node-gpu loaded, but TensorFlow found no usable GPU (no device, or CUDA/cuDNN missing)' };
      return { ok: true, tfBackend: 'tensorflow', gpu: true };
    }
    case 'tensorflow': {
      // tfjs-node-gpu, if it loaded, already registered 'tensorflow' (its CPU
      // fallback is what tfjs-node would give); loading a second libtensorflow is pointless.
      if (!tf.findBackendFactory('tensorflow')) {
        const missing = await importModule(MODULES.tensorflow!);
        if (missing) return { ok: false, reason: missing };
      }
      const failed = await switchTo('tensorflow');
      if (failed) return { ok: false, reason: failed };
      return { ok: true, tfBackend: 'tensorflow', gpu: usingGpu() };
    }
    case 'wasm': {
      const missing = await importModule(MODULES.wasm!);
      if (missing) return { ok: false, reason: missing };
      const failed = await switchTo('wasm');
      if (failed) return { ok: false, reason: failed };
      return { ok: true, tfBackend: 'wasm', gpu: false };
    }
    case 'cpu': {
      const failed = await switchTo('cpu');
      if (failed) return { ok: false, reason: failed };
      return { ok: true, tfBackend: 'cpu', gpu: false };
    }
  }
}

/**
 * Switches tfjs to the wanted backend. 'auto' tries, in order, tensorflow-gpu,
 * tensorflow, wasm, cpu and keeps the first that works, recording why each
 * earlier one was skipped. A specific request that cannot be met is a
 * UserError. Safe to call repeatedly.
 */
export async function selectBackend(want: BackendWant, log?: (msg: string) => void): Promise<BackendChoice> {
  if (!BACKEND_WANTS.includes(want)) {
    throw new UserError(`unknown backend '${String(want)}' (choose one of: ${BACKEND_WANTS.join(', ')})`);
  }
  const candidates: BackendName[] = want === 'auto' ? [...BACKEND_NAMES] : [want];
  const skipped: BackendSkip[] = [];
  for (const name of candidates) {
    const r = await attempt(name);
    if (r.ok) {
      log?.(`backend: ${name}${r.gpu ? ' (GPU)' : ''}`);
      return { name, tfBackend: r.tfBackend, gpu: r.gpu, skipped };
    }
    if (want !== 'auto') throw new UserError(`cannot use backend '${name}': ${r.reason}`);
    skipped.push({ name, reason: r.reason });
    log?.(`backend: skipped ${name}: ${r.reason}`);
  }
  // Unreachable while 'cpu' ships inside @tensorflow/tfjs, but say so if it ever is.
  throw new UserError(`no tfjs backend could be loaded: ${skipped.map((s) => `${s.name}: ${s.reason}`).join('; ')}`);
}

/**
 * The same probe as 'auto', for `doctor`: tries every backend and reports each,
 * then switches back to the backend that was active before (if one was).
 */
export async function describeBackends(): Promise<BackendProbe[]> {
  const before = tf.engine().backendName;
  const out: BackendProbe[] = [];
  try {
    for (const name of BACKEND_NAMES) {
      const r = await attempt(name);
      out.push(r.ok ? { name, available: true, gpu: r.gpu } : { name, available: false, gpu: false, reason: r.reason });
    }
  } finally {
    if (before) await switchTo(before);
  }
  return out;
}
