import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/**
 * The one place that loads the native addon (native/, built by
 * scripts/build-native.mjs at install): the attention kernel, the SGEMM and the
 * engine all live in it. Loading never throws; a missing or broken build
 * yields the reason, which callers turn into a fallback or a user error.
 */

// Same relative path from src/engine/ (tsx) and dist/engine/ (compiled).
const ADDON_PATH = fileURLToPath(new URL('../../build/Release/ringattn_native.node', import.meta.url));
const STATUS_PATH = fileURLToPath(new URL('../../build/native-status.json', import.meta.url));

let cached: { addon?: unknown; reason?: string } | undefined;

/** Why the build did not produce the addon, as recorded by scripts/build-native.mjs. */
function recordedBuildFailure(): string | undefined {
  if (!existsSync(STATUS_PATH)) return undefined;
  try {
    const status = JSON.parse(readFileSync(STATUS_PATH, 'utf8')) as { ok?: boolean; reason?: string };
    return status.ok ? undefined : status.reason;
  } catch {
    return undefined;
  }
}

export function loadAddon<T>(): { addon?: T; reason?: string } {
  if (cached) return cached as { addon?: T; reason?: string };
  if (!existsSync(ADDON_PATH)) {
    const why = recordedBuildFailure();
    cached = {
      reason:
        `native addon not built (${ADDON_PATH} missing)` +
        (why ? `: ${why}` : '; run `node scripts/build-native.mjs` in the package root'),
    };
  } else {
    try {
      cached = { addon: createRequire(import.meta.url)(ADDON_PATH) };
    } catch (err) {
      cached = { reason: `native addon failed to load: ${(err as Error).message.split('\n')[0]}` };
    }
  }
  return cached as { addon?: T; reason?: string };
}

/** The SGEMM's calls (native/gemm_napi.cc): C (+)= op(A) op(B), row-major. */
export interface SgemmArgs {
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  a: Float32Array;
  lda: number;
  b: Float32Array;
  ldb: number;
  c: Float32Array;
  ldc: number;
  /** 0: C = op(A) op(B); 1: C += op(A) op(B). */
  beta: number;
  threads: number;
  isa?: string;
  /** Cache blocking overrides; absent = the variant's defaults. */
  kc?: number;
  mc?: number;
  nc?: number;
}

export interface GemmAddon {
  sgemm(args: SgemmArgs): Promise<void>;
  sgemmSync(args: SgemmArgs): void;
  gemmIsas(): string[];
}

/** The addon's SGEMM, or why it cannot be had. */
export function loadGemm(): { gemm?: GemmAddon; reason?: string } {
  const { addon, reason } = loadAddon<Partial<GemmAddon>>();
  if (!addon) return { reason: reason ?? 'native addon unavailable' };
  if (typeof addon.sgemmSync !== 'function') return { reason: 'the native addon was built without the SGEMM; rebuild it (node scripts/build-native.mjs)' };
  return { gemm: addon as GemmAddon };
}

/** The addon's in-place float32 add (the all-reduce's additions), or null where the addon is absent. */
export function loadSumInto(): ((dst: Float32Array, src: Float32Array) => void) | null {
  const { addon } = loadAddon<{ sumInto?: (dst: Float32Array, src: Float32Array) => void }>();
  return typeof addon?.sumInto === 'function' ? addon.sumInto : null;
}
