/**
 * The analytic model of Ring Attention (Liu, Zaharia, Abbeel 2023, sections 3-4,
 * Tables 1 and 2): activation memory per device for four ways of running a layer,
 * the block size at which the ring hides its communication, the longest context a
 * memory budget allows, and the FLOPs and time of a step at peak rate.
 *
 * Units: bytes, tokens, FLOPs, seconds. Device figures arrive as TFLOP/s (10^12),
 * GB/s and GB (10^9) because that is how vendors and the paper quote them.
 */

/**
 * Table 1's formulas are already in bytes: the paper counts bfloat16 activations,
 * so the factor 2 in "2bsh" is the two bytes of one b x s x h tensor. We keep the
 * formulas exactly as printed rather than re-deriving them with our own factors.
 */
export const BYTES_PER_ELEMENT = 2;

/** The paper's smallest useful sequence per host, in blocks (Table 2: min seq = 6c). */
export const MIN_SEQ_BLOCKS = 6;

/**
 * Key/value chunk of memory-efficient attention when the device holds the whole
 * sequence. It only changes that row's attention column: its peak is 8bsh for any
 * chunk up to 1.5s, so the choice never moves the peak or the maximum context.
 */
export const MEMORY_EFFICIENT_CHUNK = 1024;

/** Training (forward + backward) costs three forwards: backward does twice the forward's matmuls. */
export const TRAINING_FLOPS_FACTOR = 3;

export type Scheme = 'vanilla' | 'memoryEfficient' | 'blockwise' | 'ring';
export const SCHEMES: readonly Scheme[] = ['vanilla', 'memoryEfficient', 'blockwise', 'ring'];

export const SCHEME_LABELS: Record<Scheme, string> = {
  vanilla: 'vanilla attention',
  memoryEfficient: 'memory-efficient attention',
  blockwise: 'blockwise attention + FFN (BPT)',
  ring: 'ring attention',
};

/** Table 1's formula for each scheme, as printed (b batch, n heads, s sequence, h hidden, c block). */
export const SCHEME_FORMULAS: Record<Scheme, { attention: string; ffn: string; peak: string }> = {
  vanilla: { attention: '2bns^2', ffn: '8bsh', peak: '2bns^2' },
  memoryEfficient: { attention: '2bsh + 4bch', ffn: '8bsh', peak: '8bsh' },
  blockwise: { attention: '2bsh', ffn: '2bsh', peak: '2bsh' },
  ring: { attention: '6bch', ffn: '2bch', peak: '6bch' },
};

export interface ModelShape {
  hidden: number;
  layers: number;
  heads: number;
}

export interface DeviceSpec {
  /** Dense bf16 peak, TFLOP/s. */
  tflops: number;
  /** One-way bandwidth to the ring neighbour, GB/s. */
  linkGBps: number;
  /** Memory per host, GB (10^9 bytes). */
  memoryGB: number;
}

export interface Workload {
  batch: number;
  seqLen: number;
  hidden: number;
  heads: number;
  hosts: number;
}

/** Bytes of activation one layer holds at its peak on one device. */
export interface LayerMemory {
  attention: number;
  ffn: number;
  /** The larger of the two: attention and FFN activations are not alive at the same time. */
  peak: number;
}

export const flopsPerSecond = (d: DeviceSpec): number => d.tflops * 1e12;
export const bytesPerSecond = (d: DeviceSpec): number => d.linkGBps * 1e9;
export const memoryBytes = (d: DeviceSpec): number => d.memoryGB * 1e9;

/** Tokens on the busiest host: the ring's query block, c = s/N rounded up. */
export function tokensPerHost(seqLen: number, hosts: number): number {
  return Math.ceil(seqLen / hosts);
}

/**
 * One layer's activation memory per device, Table 1. Only ring attention splits the
 * sequence over hosts; the other three keep the whole sequence on each device, so
 * their figure does not depend on the number of hosts.
 *
 * Vanilla's total is printed as "2bhs^2" in the table, but its own columns give
 * max(2bns^2, 8bsh), which is what the other three rows' totals are (the larger
 * column), so we read the h as a misprint for n.
 */
export function layerMemory(scheme: Scheme, w: Workload, chunk = MEMORY_EFFICIENT_CHUNK): LayerMemory {
  const { batch: b, seqLen: s, hidden: h, heads: n } = w;
  let attention: number;
  let ffn: number;
  switch (scheme) {
    case 'vanilla':
      attention = 2 * b * n * s * s;
      ffn = 8 * b * s * h;
      break;
    case 'memoryEfficient': {
      const c = Math.min(s, chunk);
      attention = 2 * b * s * h + 4 * b * c * h;
      ffn = 8 * b * s * h;
      break;
    }
    case 'blockwise':
      attention = 2 * b * s * h;
      ffn = 2 * b * s * h;
      break;
    case 'ring': {
      const c = tokensPerHost(s, w.hosts);
      attention = 6 * b * c * h;
      ffn = 2 * b * c * h;
      break;
    }
  }
  return { attention, ffn, peak: Math.max(attention, ffn) };
}

/**
 * Longest sequence whose peak layer memory fits `budgetBytes` on every device.
 * Ring attention is searched in whole multiples of the host count (every host
 * holds the same s/N tokens), which makes its answer exactly N times the one-host
 * answer. Returns 0 when not even the smallest sequence fits.
 */
export function maxContext(
  scheme: Scheme,
  shape: { batch: number; hidden: number; heads: number; hosts: number },
  budgetBytes: number,
  chunk = MEMORY_EFFICIENT_CHUNK,
): number {
  const unit = scheme === 'ring' ? shape.hosts : 1;
  const fits = (k: number): boolean =>
    layerMemory(scheme, { ...shape, seqLen: k * unit }, chunk).peak <= budgetBytes;
  if (!fits(1)) return 0;
  // Every peak is non-decreasing in s, so the largest fitting multiple is found by
  // doubling to an upper bound and bisecting; the cap keeps k * unit a safe integer.
  const cap = Math.floor(Number.MAX_SAFE_INTEGER / unit);
  let lo = 1;
  let hi = Math.min(cap, 2);
  while (hi < cap && fits(hi)) {
    lo = hi;
    hi = Math.min(cap, hi * 2);
  }
  if (fits(hi)) return hi * unit;
  while (hi - lo > 1) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid;
  }
  return lo * unit;
}

/**
 * Smallest block c (tokens) for which a ring step's compute covers its transfer.
 * Per step a host computes 4·b·h·c^2 FLOPs (QK^T and PV for a c x c tile) and sends
 * 4·b·c·h bytes (K and V, b x c x h each, 2 bytes): 4bhc^2/F >= 4bch/B  <=>  c >= F/B.
 * Batch and hidden size cancel, so this is a property of the device alone.
 */
export function minBlockTokens(d: DeviceSpec): number {
  return flopsPerSecond(d) / bytesPerSecond(d);
}

export function minSeqPerHostTokens(d: DeviceSpec): number {
  return MIN_SEQ_BLOCKS * minBlockTokens(d);
}

/** Forward FLOPs of the whole model for one batch: (24·b·s·h^2 + 4·b·s^2·h)·layers. */
export function modelFlops(batch: number, seqLen: number, hidden: number, layers: number): number {
  const b = batch;
  const s = seqLen;
  const h = hidden;
  return (24 * b * s * h * h + 4 * b * s * s * h) * layers;
}

export interface RingStep {
  /** Query/KV block of each host, c = s/N (rounded up). */
  blockTokens: number;
  flops: number;
  bytes: number;
  computeS: number;
  transferS: number;
  /** max(compute, transfer): the step's length when the two overlap. */
  stepS: number;
  /** Transfer time left over after compute, per step. */
  exposedS: number;
  hidden: boolean;
  /** compute / transfer; >= 1 when the transfer is hidden. */
  computeToTransfer: number;
}

/**
 * One ring step of one layer's forward attention, with each host's whole shard as
 * its block (c = s/N). A ring of one host sends nothing.
 */
export function ringStep(w: Workload, d: DeviceSpec): RingStep {
  const c = tokensPerHost(w.seqLen, w.hosts);
  const flops = 4 * w.batch * w.hidden * c * c;
  const bytes = w.hosts > 1 ? 4 * w.batch * c * w.hidden : 0;
  const computeS = flops / flopsPerSecond(d);
  const transferS = bytes / bytesPerSecond(d);
  return {
    blockTokens: c,
    flops,
    bytes,
    computeS,
    transferS,
    stepS: Math.max(computeS, transferS),
    exposedS: Math.max(0, transferS - computeS),
    hidden: computeS >= transferS,
    computeToTransfer: transferS === 0 ? Infinity : computeS / transferS,
  };
}

export interface StepTime {
  /** Forward pass of the whole model over one batch, seconds. */
  forwardS: number;
  /** Forward + backward; backward moves K, V, dK, dV (twice the bytes) for twice the FLOPs. */
  trainingS: number;
  /** Part of trainingS spent waiting on transfers that compute did not hide. */
  exposedS: number;
}

/**
 * Time at peak FLOP/s: each layer runs its projections and FFN on the host's c
 * tokens (24·b·c·h^2 FLOPs) and N ring steps of max(compute, transfer). Summed over
 * hosts this is exactly modelFlops / N of compute, plus whatever transfer shows.
 * It is a lower bound: real kernels reach a fraction of peak.
 */
export function stepTime(w: Workload, layers: number, d: DeviceSpec): StepTime {
  const step = ringStep(w, d);
  const dense = (24 * w.batch * step.blockTokens * w.hidden * w.hidden) / flopsPerSecond(d);
  const forwardS = layers * (dense + w.hosts * step.stepS);
  return {
    forwardS,
    trainingS: TRAINING_FLOPS_FACTOR * forwardS,
    exposedS: TRAINING_FLOPS_FACTOR * layers * w.hosts * step.exposedS,
  };
}

/** Non-embedding parameters of a LLaMA-like layer stack: 4h^2 attention + 8h^2 FFN per layer. */
export function parameterCount(hidden: number, layers: number): number {
  return 12 * hidden * hidden * layers;
}
