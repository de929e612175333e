import { layoutQuantum, type Layout } from '../attention/layout.js';
import { headDimOf, paramCount } from '../model/params.js';
import type { ModelConfig } from '../model/types.js';
import { SHM_BLOCKS, SHM_MIN_BYTES } from '../ring/shm.js';
import type { JobTerm } from './job.js';

/**
 * What one worker of our own training run allocates, counted from the code
 * (native engine, float32 everywhere; docs/plan.md lists each line with its source):
 *
 *   src/train/loop.ts          initParams' P floats (kept for the run), the reduce buffer
 *                              (gradients + loss + stop flag + one slot per rank), AdamW m and v
 *   src/model/transformer.ts   params; saved per layer x, q, k, v, o, x1 (+ the final x) and the
 *                              attention lse; the layer working set; the FFN and loss-head chunks
 *   src/attention/ring-attention.ts, src/ring/*   the JS arrays of one attention call: received KV
 *                              blocks, partial outputs, dq/dk/dv and the dK/dV accumulators
 *   src/ring/collectives.ts    allReduceSum's copy of the reduce buffer and its chunk copies
 *   native/ (BufferCache)      the attention kernel's packed blocks and the SGEMM's packs, which
 *                              the addon keeps for reuse once a step has asked for them
 *
 * The native engine's read() returns a view of its own memory, so reading q, k,
 * v, o, dO and the reduce buffer copies nothing (the tfjs engine would copy).
 * A step runs the windows of a batch one after another through the same
 * buffers, so the batch size does not change the peak.
 */

const F32 = 4;
const I32 = 4;

/**
 * The SGEMM's default cache blocking on x86 (native/gemm_avx512.cc, gemm_avx2.cc):
 * KC 512 deep, NC 4096 columns, MC up to 168 rows. `ringattn doctor` may tune mc
 * and kc, never above these.
 */
const GEMM_KC = 512;
const GEMM_NC = 4096;
const GEMM_MC = 168;

/** The attention kernel's largest tiles (tileQ/tileKV auto picks among 64..256) and its SIMD panel width. */
const KERNEL_TILE = 256;
const KERNEL_PANEL = 16;

export interface EngineJob {
  model: ModelConfig;
  /** Tokens of one sequence over the whole ring. */
  seqLen: number;
  worldSize: number;
  layout: Layout;
  /** Compute threads of a worker (engine and kernel share them). */
  threads: number;
  /** RSS of a worker with engine, kernel and ZeroMQ loaded, before the model: measured by `ringattn doctor`. */
  runtimeBytes: number;
  /** Bytes of training text every worker holds (text data; 0 for the synthetic tasks). */
  corpusBytes: number;
  /**
   * Shared-memory channels a worker maps (src/ring/shm.ts), at most: one to a
   * same-host successor, one from a same-host predecessor; each ring.shmBytes.
   * The channel is a ring buffer, so once KV blocks of SHM_MIN_BYTES or more
   * travel, every page has been touched after a few steps and counts in the
   * RSS of both ends. Absent: none.
   */
  shmChannels?: { count: number; bytes: number };
}

const roundUp = (x: number, m: number): number => Math.ceil(x / m) * m;

/** Sequences our ring can split: multiples of the layout's quantum. */
export function engineSeqUnit(job: Pick<EngineJob, 'layout' | 'worldSize'>): number {
  return layoutQuantum(job.layout, job.worldSize);
}

export function engineTerms(job: EngineJob): JobTerm[] {
  const cfg = job.model;
  const N = job.worldSize;
  const n = job.seqLen / N;
  const P = paramCount(cfg);
  const { dModel: d, layers: L, vocabSize: V, ffnHidden: F, heads, kvHeads } = cfg;
  const hd = headDimOf(cfg);
  const qDim = heads * hd;
  const kvDim = kvHeads * hd;
  const chunk = Math.min(cfg.ffnChunk, n);
  const reduceLen = P + 2 + N;
  const kv = n * kvDim;
  // Arrays one attention call allocates stay alive until it returns: it allocates
  // too few objects to start a collection (as for the all-reduce below), so every
  // received KV block of the N - 1 steps counts.
  const hops = N - 1;
  const dp = roundUp(hd, KERNEL_PANEL);
  const qPacked = heads * n * dp;
  const kvPacked = kvHeads * n * dp;
  const scratch = 2 * (KERNEL_TILE * dp + KERNEL_TILE * roundUp(KERNEL_TILE, KERNEL_PANEL) + KERNEL_TILE * dp + KERNEL_TILE);
  const dqAcc = (heads / kvHeads) * roundUp(n, Math.min(KERNEL_TILE, n)) * dp;
  // One B pack per distinct output width N of the model's matmuls, plus one A block.
  const widths = new Set([qDim, kvDim, d, F, V]);
  const gemmFloats = [...widths].reduce((s, w) => s + Math.min(w, GEMM_NC) * GEMM_KC, 0) + GEMM_MC * GEMM_KC;

  const t = (name: string, floats: number, phase: JobTerm['phase'], count: string): JobTerm => ({ name, bytes: floats * F32, phase, count });
  // Buffers from engine.floats()/ints(): what the engine's memory cap counts.
  const e = (name: string, floats: number, count: string): JobTerm => ({ ...t(name, floats, 'always', count), engine: true });
  // The channel's pages count in the RSS once written, and only blocks of SHM_MIN_BYTES or more are (K and V
  // in float32; the all-reduce's segments are smaller). A ring buffer: after a few steps, every page.
  const kvBlockBytes = 2 * kv * F32;
  const shmTouched = kvBlockBytes >= SHM_MIN_BYTES;
  const terms: JobTerm[] = [
    { name: 'runtime', bytes: job.runtimeBytes, phase: 'always', count: 'node, engine, kernel and ZeroMQ before the model (ringattn doctor)' },
    e('parameters', P, `P = ${P} floats (engine)`),
    e('gradients', reduceLen, `P + 2 + worldSize floats: the reduce buffer that holds the gradients`),
    e('adamState', 2 * P, '2P floats: AdamW m and v'),
    e('savedActivations', (L + 1) * n * d + L * n * (2 * qDim + 2 * kvDim + d), `per layer x, q, k, v, o and x1 for n = ${n} tokens, plus the final x`),
    e('attentionLse', L * heads * n, 'per layer lse [heads, n], saved for backward'),
    e('layerWorkingSet', 3 * n * d + 2 * n * qDim + 2 * n * kvDim, 'h, dx, dh [n, d]; dq, dO [n, q]; dk, dv [n, kv]'),
    e('ffnChunk', 2 * chunk * d + 2 * chunk * F, `hc, dhc [chunk, d]; u, a [chunk, ffnHidden], chunk = ${chunk}`),
    e('logitsChunk', chunk * V, `logits [chunk, vocab], chunk = ${chunk}`),
    { name: 'tokensAndRope', bytes: 2 * n * I32 + n * hd * F32 + 2 * F32, phase: 'always', count: 'tokens, targets; rope cos, sin [n, headDim/2]; loss, norm', engine: true },
    t('kernelPacks', 4 * kvPacked + 4 * qPacked + 2 * heads * n + job.threads * (scratch + dqAcc), 'always',
      'attention backward packs kept by the addon: K, K^T, V, V^T; Q, dO twice; lse, delta; scratch per thread'),
    t('gemmPacks', gemmFloats, 'always', `SGEMM packs kept by the addon: KC x min(width, NC) per output width, one MC x KC block`),
    t('ringForward', (1 + N) * (n * qDim + heads * n) + hops * 2 * kv, 'attentionForward',
      `merged o, lse and each of the ${N} steps' partial o, lse; ${hops} received KV block(s)`),
    // Step 0's share is a fresh dk, dv (sent on); later steps compute into one scratch pair and add it
    // into the accumulator that arrived (sent on too); after the last step the rank's own dK/dV comes home.
    t('ringBackward', n * qDim + heads * n + 2 * kv + (N > 1 ? 2 * kv + hops * 2 * kv + 2 * kv : 0) + hops * 2 * kv, 'attentionBackward',
      `dq, delta; step 0's dk, dv${N > 1 ? `; the scratch pair; ${hops} dK/dV accumulator(s) received; the rank's own dK/dV home` : ''}; ${hops} received KV block(s)`),
    { name: 'corpus', bytes: job.corpusBytes, phase: 'always', count: 'the training text, joined (text data only)' },
    {
      name: 'shmChannels',
      bytes: shmTouched ? (job.shmChannels?.count ?? 0) * Math.min(job.shmChannels?.bytes ?? 0, SHM_BLOCKS * kvBlockBytes) : 0,
      phase: 'always',
      count: !job.shmChannels?.count
        ? 'none (no same-host neighbour, or ring.transport tcp or ipc)'
        : shmTouched
          ? `${job.shmChannels.count} shared-memory channel(s) to same-host neighbours, each ${SHM_BLOCKS} KV blocks (at most ring.shmBytes), every page touched`
          : `none: the KV blocks (${kvBlockBytes} bytes) stay under SHM_MIN_BYTES, so the channels' pages are never touched`,
    },
    // In place: what the all-reduce allocates is the segments it receives (a chunk per stage) and the copies
    // it sends in the all-gather (a chunk per stage), none reclaimed before the call returns.
    t('allReduce', 3 * (N - 1) * Math.ceil(reduceLen / N), 'allReduce',
      N > 1 ? `the segments received at each of its ${2 * (N - 1)} stages and the copies sent at its ${N - 1} all-gather stages, a chunk of (P + 2 + worldSize) / worldSize floats each` : 'nothing (a ring of one)'),
  ];
  return terms;
}
