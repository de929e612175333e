import { rowDelta } from '../kernels/merge.js';
import type { AttentionDims, AttentionKernel, BlockArgs } from '../kernels/types.js';
import { Rng } from '../tensor/random.js';
import { backwardFlopsPerEntry, forwardFlopsPerEntry } from './work.js';

/**
 * A short measurement of the kernel's speed on real tiles: one query tile
 * against a growing slice of a KV block, unmasked, until a call takes long
 * enough to time. Used to estimate a run before it starts and to decide how
 * much of the work a time-limited run can measure. A causal run is slower per
 * allowed entry than this (diagonal tiles compute masked entries too), which is
 * why the time-limited mode leaves a margin and never reports this figure as a
 * result.
 */
export interface Calibration {
  qRows: number;
  kvRows: number;
  /** Allowed entries per millisecond, forward and (when asked) backward. */
  fwdEntriesPerMs: number;
  bwdEntriesPerMs: number | null;
  fwdGflops: number;
  bwdGflops: number | null;
  ms: number;
}

export interface CalibrationData {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
}

/** Fills `out` with uniform values of unit variance; one PRNG draw per value keeps 8M tokens in seconds. */
export function fillUnitUniform(out: Float32Array, seed: number): Float32Array {
  const rng = new Rng(seed);
  const scale = Math.sqrt(12) / 4294967296;
  for (let i = 0; i < out.length; i++) out[i] = (rng.nextU32() - 2147483648) * scale;
  return out;
}

const iota = (n: number) => Int32Array.from({ length: n }, (_, i) => i);

export async function calibrateKernel(
  kernel: AttentionKernel,
  dims: AttentionDims,
  opts: {
    shardLen: number;
    tileQ: number;
    tileKV: number;
    backward: boolean;
    /** Real shards to take the tiles from; random ones of the needed size otherwise. */
    data?: CalibrationData;
    /** Time one measured call should take. */
    targetMs?: number;
    /** Largest KV slice, in rows. */
    maxKvRows?: number;
  },
): Promise<Calibration> {
  const started = performance.now();
  const { heads: H, kvHeads: G, headDim: D } = dims;
  const target = opts.targetMs ?? 100;
  const qRows = Math.min(opts.shardLen, opts.tileQ);
  const maxKv = Math.min(opts.shardLen, opts.maxKvRows ?? 1 << 16);
  const data = opts.data ?? {
    q: fillUnitUniform(new Float32Array(qRows * H * D), 11),
    k: fillUnitUniform(new Float32Array(maxKv * G * D), 12),
    v: fillUnitUniform(new Float32Array(maxKv * G * D), 13),
  };
  const args = (kvRows: number): BlockArgs => ({
    heads: H,
    kvHeads: G,
    headDim: D,
    qLen: qRows,
    kvLen: kvRows,
    q: data.q.subarray(0, qRows * H * D),
    k: data.k.subarray(0, kvRows * G * D),
    v: data.v.subarray(0, kvRows * G * D),
    qPos: iota(qRows),
    kvPos: iota(kvRows),
    causal: false,
    scale: 1 / Math.sqrt(D),
  });
  const timeIt = async (run: () => Promise<unknown>): Promise<number> => {
    const t = performance.now();
    await run();
    return performance.now() - t;
  };

  let kvRows = Math.min(maxKv, opts.tileKV * 4);
  await kernel.forward(args(kvRows)); // first call: compilation, allocation, thread start
  let fwdMs = await timeIt(() => kernel.forward(args(kvRows)));
  while (fwdMs < target / 2 && kvRows < maxKv) {
    kvRows = Math.min(maxKv, kvRows * 4);
    fwdMs = await timeIt(() => kernel.forward(args(kvRows)));
  }
  fwdMs = Math.min(fwdMs, await timeIt(() => kernel.forward(args(kvRows))));
  const entries = qRows * kvRows;
  const fwdEntriesPerMs = entries / Math.max(fwdMs, 1e-3);

  let bwdEntriesPerMs: number | null = null;
  if (opts.backward) {
    const a = args(kvRows);
    const fwd = await kernel.forward(a);
    const dO = fillUnitUniform(new Float32Array(qRows * H * D), 14);
    const grad = { dO, lse: fwd.lse, delta: rowDelta(dO, fwd.o, qRows, H, D) };
    const acc = () => ({ dq: new Float32Array(qRows * H * D), dk: new Float32Array(kvRows * G * D), dv: new Float32Array(kvRows * G * D) });
    await kernel.backward(a, grad, acc());
    const bwdMs = await timeIt(() => kernel.backward(a, grad, acc()));
    bwdEntriesPerMs = entries / Math.max(bwdMs, 1e-3);
  }
  return {
    qRows,
    kvRows,
    fwdEntriesPerMs,
    bwdEntriesPerMs,
    fwdGflops: (fwdEntriesPerMs * forwardFlopsPerEntry(H, D)) / 1e6,
    bwdGflops: bwdEntriesPerMs === null ? null : (bwdEntriesPerMs * backwardFlopsPerEntry(H, D)) / 1e6,
    ms: performance.now() - started,
  };
}

/** Estimated kernel milliseconds for `entries` allowed entries (forward, plus backward when calibrated). */
export function estimateKernelMs(cal: Calibration, entries: number, backward: boolean): number {
  let ms = entries / cal.fwdEntriesPerMs;
  if (backward && cal.bwdEntriesPerMs) ms += entries / cal.bwdEntriesPerMs;
  return ms;
}
