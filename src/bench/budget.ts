import { shardPositions } from '../attention/layout.js';
import { blockReach } from '../attention/ring-attention.js';
import { formatSize } from '../config/index.js';
import { UserError } from '../errors.js';
import type { BenchParams } from './params.js';
import { backwardFlopsPerEntry, forwardFlopsPerEntry, ringEntries } from './work.js';

/**
 * What a bench run will do, computed before anything is allocated: exact
 * FLOPs, the bytes of one ring hop, and the memory of the ring attention
 * buffers per worker. Everything is float32.
 */
export const F32 = 4;

/**
 * Share of a host's memory the workers on it may plan to use; the rest is for
 * the OS, the coordinator and garbage the JS collector has not yet returned
 * (a KV block or a block output of the previous ring step can outlive it).
 */
export const HOST_MEMORY_FRACTION = 0.8;
/** Resident memory of a worker before it allocates anything: Node, tfjs, zeromq. */
export const RUNTIME_ALLOWANCE_BYTES = 384 * 2 ** 20;

export interface BufferItem {
  name: string;
  bytes: number;
}

/**
 * The buffers one rank holds at the peak of a ring step. Forward: its query
 * block, the KV block it computes on and the one arriving (double buffer), on
 * rings of three or more its own KV block besides (from step 1 on it computes
 * on another rank's block, and keeps its own for the backward), the
 * output accumulator and the kernel's output for the current block, each with
 * its lse. Backward adds dO and delta, the dq accumulator, the dK/dV of the
 * block it holds and the accumulator arriving from the predecessor.
 */
export function ringBuffers(p: Pick<BenchParams, 'heads' | 'kvHeads' | 'headDim' | 'backward'>, shardLen: number, ringSize: number): BufferItem[] {
  const seqLen = shardLen * ringSize;
  const qBytes = shardLen * p.heads * p.headDim * F32;
  const kvBytes = 2 * shardLen * p.kvHeads * p.headDim * F32;
  const lseBytes = shardLen * p.heads * F32;
  const items: BufferItem[] = [
    { name: 'query block q', bytes: qBytes },
    { name: 'KV block (k, v)', bytes: kvBytes },
  ];
  if (ringSize > 1) items.push({ name: 'incoming KV block', bytes: kvBytes });
  // From step 1 on the block computed on is another rank's; the rank's own k and v stay (the backward needs them).
  if (ringSize > 2) items.push({ name: "the rank's own KV block, kept", bytes: kvBytes });
  items.push({ name: 'output accumulator (o, lse)', bytes: qBytes + lseBytes });
  items.push({ name: 'block output (o, lse)', bytes: qBytes + lseBytes });
  if (p.backward) {
    items.push({ name: 'dO and delta', bytes: qBytes + lseBytes });
    items.push({ name: 'dq accumulator', bytes: qBytes });
    items.push({ name: 'dK/dV of the held block', bytes: kvBytes });
    if (ringSize > 1) items.push({ name: 'incoming dK/dV', bytes: kvBytes });
  }
  // The bench keeps the positions of every block (the kernel masks by them): one int32 per token.
  items.push({ name: 'token positions of every block', bytes: seqLen * F32 });
  return items;
}

export interface BenchBudget {
  seqLen: number;
  workers: number;
  shardLen: number;
  /** Allowed (query, key) score entries: the whole sequence, and per rank. */
  entries: { total: number; perRank: number[] };
  flops: { forward: number; backward: number; total: number; perRank: number[] };
  /** One KV block (k and v): what travels one hop per ring step. */
  bytesPerHop: number;
  /** The largest single frame (k or v alone): what ring.maxMessageBytes must admit. */
  frameBytes: number;
  /** Hops a rank sends per iteration: forward N-1 KV blocks; backward N-1 KV blocks and N dK/dV blocks. */
  hopsPerRank: { forward: number; backward: number };
  bytesSentPerRank: number;
  /**
   * ringBytes: the buffers above. slackBytes: the previous step's block output
   * and KV block, which stay allocated until the collector reaches them.
   * perWorkerBytes: both plus the runtime allowance, what a host must have per worker.
   */
  memory: { items: BufferItem[]; ringBytes: number; slackBytes: number; perWorkerBytes: number };
}

/** The cheap part of the plan: sizes and memory, no counting of entries. */
export function memoryBudget(p: BenchParams): Pick<BenchBudget, 'shardLen' | 'bytesPerHop' | 'frameBytes' | 'memory'> {
  const shardLen = p.seqLen / p.workers;
  const frameBytes = shardLen * p.kvHeads * p.headDim * F32;
  const items = ringBuffers(p, shardLen, p.workers);
  const ringBytes = items.reduce((a, b) => a + b.bytes, 0);
  // The previous step's block output and the KV block received before this one, both
  // garbage by then, stay allocated until the collector gets to them.
  const slackBytes = shardLen * p.heads * (p.headDim + 1) * F32 + (p.workers > 1 ? 2 * frameBytes : 0);
  return {
    shardLen,
    frameBytes,
    bytesPerHop: 2 * frameBytes,
    memory: { items, ringBytes, slackBytes, perWorkerBytes: ringBytes + slackBytes + RUNTIME_ALLOWANCE_BYTES },
  };
}

export function benchBudget(p: BenchParams): BenchBudget {
  const n = p.workers;
  const mem = memoryBudget(p);
  const perRankSteps = ringEntries(p.layout, p.seqLen, n, p.causal, p.window);
  const perRank = perRankSteps.map((steps) => steps.reduce((a, b) => a + b, 0));
  const total = perRank.reduce((a, b) => a + b, 0);
  const fwdPer = forwardFlopsPerEntry(p.heads, p.headDim);
  const bwdPer = p.backward ? backwardFlopsPerEntry(p.heads, p.headDim) : 0;
  // Hops as the ring makes them: each block as far as its reach (a window shortens it), and in the backward
  // each dK/dV accumulator home; without a window, n - 1 and 2n - 1 per rank.
  const reach = blockReach({ causal: p.causal, window: p.window, positionsOf: (r) => shardPositions(p.layout, p.seqLen, n, r) }, n);
  const kvHops = reach.reduce((a, b) => a + b, 0);
  // With a window the workers open the reverse ring, and each dK/dV comes back the way its block went, carrying
  // its owner's rank (one int32); without, it travels on with the block and its one hop home carries the rank.
  const back = Boolean(p.window) && n > 1;
  const dkvHops = back ? kvHops : reach.reduce((a, r) => a + (r > 0 ? n : 0), 0);
  const homeHops = back ? kvHops : reach.reduce((a, r) => a + (r > 0 ? n - r : 0), 0);
  const hopsPerRank = { forward: kvHops / n, backward: p.backward ? (kvHops + dkvHops) / n : 0 };
  return {
    seqLen: p.seqLen,
    workers: n,
    shardLen: mem.shardLen,
    entries: { total, perRank },
    flops: {
      forward: total * fwdPer,
      backward: total * bwdPer,
      total: total * (fwdPer + bwdPer),
      perRank: perRank.map((e) => e * (fwdPer + bwdPer)),
    },
    bytesPerHop: mem.bytesPerHop,
    frameBytes: mem.frameBytes,
    hopsPerRank,
    bytesSentPerRank: (hopsPerRank.forward + hopsPerRank.backward) * mem.bytesPerHop + (p.backward ? (homeHops * 4) / n : 0),
    memory: mem.memory,
  };
}

/** Bytes in binary units, e.g. "5.06 GiB". */
export function formatBytes(b: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = b;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`;
}

/** A ZeroMQ frame larger than maxMessageBytes makes the receiver drop the link: refuse it up front. */
export function checkMessageSize(plan: Pick<BenchBudget, 'shardLen' | 'frameBytes'>, workers: number, maxMessageBytes: number): void {
  if (workers > 1 && plan.frameBytes > maxMessageBytes) {
    throw new UserError(
      `a KV block of ${formatSize(plan.shardLen)} tokens per worker is sent as frames of ${formatBytes(plan.frameBytes)} ` +
        `(k and v each), more than ring.maxMessageBytes (${formatBytes(maxMessageBytes)}): raise ring.maxMessageBytes ` +
        `in the spec, use fewer --kv-heads or a smaller --head-dim, or more workers`,
    );
  }
}

export interface HostFit {
  host: string;
  workers: number;
  totalBytes: number;
  usableBytes: number;
  neededBytes: number;
  fits: boolean;
}

/** Whether `workers` workers of `perWorkerBytes` each fit a host with `totalBytes` of memory. */
export function hostFit(host: string, workers: number, totalBytes: number, perWorkerBytes: number): HostFit {
  const usableBytes = (totalBytes * HOST_MEMORY_FRACTION) / workers;
  return { host, workers, totalBytes, usableBytes, neededBytes: perWorkerBytes, fits: perWorkerBytes <= usableBytes };
}

/** Stops before allocating when a worker would not fit its host. */
export function checkHostFit(fit: HostFit): void {
  if (fit.fits) return;
  throw new UserError(
    `not enough memory on host ${fit.host}: each of its ${fit.workers} worker(s) needs ${formatBytes(fit.neededBytes)} ` +
      `(ring attention buffers, the previous step's block output and KV block until collected, and ${formatBytes(RUNTIME_ALLOWANCE_BYTES)} of runtime), but ${formatBytes(fit.usableBytes)} is usable ` +
      `(${Math.round(HOST_MEMORY_FRACTION * 100)}% of ${formatBytes(fit.totalBytes)} / ${fit.workers}); ` +
      `use more workers, fewer heads or KV heads, a smaller head dim, or drop --backward`,
  );
}
