import { loadAddon } from '../addon/index.js';
import type {
  AttentionKernel,
  BlockArgs,
  BlockGradArgs,
  BlockGrads,
  BlockPartial,
  TileSizes,
} from './types.js';

/**
 * The native CPU kernel (native/, built by scripts/build-native.mjs at install):
 * fused blockwise attention forward and backward in C++, vectorised (AVX-512,
 * AVX2+FMA or portable, chosen at run time) and multi-threaded. Every call runs
 * on a libuv worker thread and resolves a promise, so the event loop (ring
 * transfers, heartbeats, logs) keeps running while it computes.
 */

/** What the addon takes: the block itself plus how to compute it. */
interface NativeCall extends BlockArgs {
  tileQ: number;
  tileKV: number;
  threads: number;
  isa?: string;
}

interface NativeAddon {
  forward(args: NativeCall & { o: Float32Array; lse: Float32Array }): Promise<void>;
  backward(
    args: NativeCall & {
      dO: Float32Array;
      lse: Float32Array;
      delta: Float32Array;
      dq: Float32Array;
      dk: Float32Array;
      dv: Float32Array;
    },
  ): Promise<void>;
  isas(): string[];
}

export interface NativeKernelOptions extends TileSizes {
  /** Threads this kernel uses per call (the calling libuv thread included). */
  threads: number;
  /**
   * Force one instruction-set path ('avx512' | 'avx2' | 'portable'); default:
   * RINGATTN_NATIVE_ISA if set, else the best the CPU runs.
   */
  isa?: string;
}

export interface NativeInfo {
  available: boolean;
  /** The instruction-set path used by default: RINGATTN_NATIVE_ISA, else the first of `isas`. */
  isa?: string;
  /** Every path this CPU can run, best first. */
  isas?: string[];
  /** Why the kernel is unavailable. */
  reason?: string;
}

function loadKernelAddon(): { addon?: NativeAddon; reason?: string } {
  return loadAddon<NativeAddon>();
}

/** Whether the native kernel loads here and which SIMD path it uses; never throws (for `doctor`). */
export function nativeInfo(): NativeInfo {
  const { addon, reason } = loadKernelAddon();
  if (!addon) return { available: false, reason };
  const isas = addon.isas();
  const forced = process.env.RINGATTN_NATIVE_ISA;
  if (forced && !isas.includes(forced)) {
    return { available: false, isas, reason: `RINGATTN_NATIVE_ISA=${forced} is not usable on this CPU (usable: ${isas.join(', ')})` };
  }
  return { available: true, isa: forced || isas[0], isas };
}

function positiveInt(name: string, x: number): void {
  if (!Number.isInteger(x) || x < 1) throw new RangeError(`native kernel: ${name} must be a positive integer, got ${x}`);
}

function checkLength(name: string, a: ArrayLike<number>, n: number): void {
  if (a.length !== n) throw new RangeError(`native kernel: ${name} has length ${a.length}, expected ${n}`);
}

function callArgs(args: BlockArgs, opts: NativeKernelOptions): NativeCall {
  const { qLen, kvLen, heads, kvHeads, headDim } = args;
  if (heads % kvHeads !== 0) throw new RangeError(`native kernel: heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
  checkLength('q', args.q, qLen * heads * headDim);
  checkLength('k', args.k, kvLen * kvHeads * headDim);
  checkLength('v', args.v, kvLen * kvHeads * headDim);
  checkLength('qPos', args.qPos, qLen);
  checkLength('kvPos', args.kvPos, kvLen);
  if (!args.qSeg !== !args.kvSeg) throw new RangeError('native kernel: qSeg and kvSeg must be given together');
  if (args.qSeg) checkLength('qSeg', args.qSeg, qLen);
  if (args.kvSeg) checkLength('kvSeg', args.kvSeg, kvLen);
  return {
    qLen,
    kvLen,
    heads,
    kvHeads,
    headDim,
    causal: args.causal,
    window: args.window ?? 0,
    scale: args.scale,
    tileQ: opts.tileQ,
    tileKV: opts.tileKV,
    threads: opts.threads,
    isa: opts.isa,
    q: args.q,
    k: args.k,
    v: args.v,
    qPos: args.qPos,
    kvPos: args.kvPos,
    qSeg: args.qSeg,
    kvSeg: args.kvSeg,
  };
}

/**
 * The native kernel, or an Error saying why it is unavailable (not built, build
 * failure recorded at install, load failure, unknown `isa`). The caller owns
 * every array it passes until the returned promise settles: the addon reads
 * and writes them in place from another thread.
 */
export async function loadNativeKernel(opts: NativeKernelOptions): Promise<AttentionKernel> {
  positiveInt('tileQ', opts.tileQ);
  positiveInt('tileKV', opts.tileKV);
  positiveInt('threads', opts.threads);
  const { addon, reason } = loadKernelAddon();
  if (!addon) throw new Error(reason);
  const isas = addon.isas();
  const isa = opts.isa ?? (process.env.RINGATTN_NATIVE_ISA || undefined);
  if (isa !== undefined && !isas.includes(isa)) {
    throw new Error(`native kernel: instruction set '${isa}' is not usable on this CPU (usable: ${isas.join(', ')})`);
  }
  opts = { ...opts, isa };

  return {
    name: 'native',

    async forward(args: BlockArgs): Promise<BlockPartial> {
      const call = callArgs(args, opts);
      const o = new Float32Array(args.qLen * args.heads * args.headDim);
      const lse = new Float32Array(args.heads * args.qLen);
      await addon.forward({ ...call, o, lse });
      return { o, lse };
    },

    async backward(args: BlockArgs, grad: BlockGradArgs, acc: BlockGrads): Promise<void> {
      const call = callArgs(args, opts);
      const { qLen, kvLen, heads, kvHeads, headDim } = args;
      checkLength('dO', grad.dO, qLen * heads * headDim);
      checkLength('lse', grad.lse, heads * qLen);
      checkLength('delta', grad.delta, heads * qLen);
      checkLength('dq', acc.dq, qLen * heads * headDim);
      checkLength('dk', acc.dk, kvLen * kvHeads * headDim);
      checkLength('dv', acc.dv, kvLen * kvHeads * headDim);
      await addon.backward({ ...call, dO: grad.dO, lse: grad.lse, delta: grad.delta, dq: acc.dq, dk: acc.dk, dv: acc.dv });
    },
  };
}
