import { checkLayout, LAYOUTS, type Layout } from '../attention/layout.js';
import { UserError } from '../errors.js';

/**
 * Everything one bench job needs besides the cluster spec, resolved by the CLI
 * (flags over the spec's `bench` and `attention` sections) and sent to every
 * worker and the driver as the job's args. Kernel, tile sizes and threads come
 * from the spec itself, so a bench measures what training would run.
 */
export interface BenchParams {
  seqLen: number;
  /** Ranks of the ring this was resolved for; a worker checks it against its own. */
  workers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  causal: boolean;
  /** Sliding window (attention.window); absent = none. */
  window?: number;
  layout: Layout;
  backward: boolean;
  overlap: boolean;
  /** Timed iterations, after one warm-up. */
  iterations: number;
  /** Wall-clock budget of a worker's run; past it, compute is measured on a fraction of the work. */
  timeLimitS: number;
  seed: number;
  /** Gather every rank's trace events in the driver. */
  trace: boolean;
  /** Where the driver writes the trace document (absolute path). */
  traceFile?: string;
  /** The driver prints nothing (the CLI prints the report as JSON). */
  json: boolean;
  /**
   * Measure this fraction of the query rows instead of letting the time budget
   * decide (the measured share of the work is still counted exactly). For
   * tests and for repeatable sampling.
   */
  rowFraction?: number;
}

/**
 * Proposed defaults of the spec's `bench` shape: GQA with one KV head of 32
 * dims keeps a KV block of an 8M-token sequence on 2 workers at 512 MiB per
 * frame (under ring.maxMessageBytes = 1 GiB) and the forward pass within
 * ~5 GiB per worker, which a 24 GiB 2-worker host holds.
 */
export const BENCH_SHAPE_DEFAULTS = { heads: 2, kvHeads: 1, headDim: 32 } as const;

/** Default seed of the random q, k, v (any fixed value: only repeatability matters). */
export const DEFAULT_SEED = 1;

function int(args: Record<string, unknown>, key: string, min: number): number {
  const v = args[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new UserError(`bench: ${key} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function bool(args: Record<string, unknown>, key: string): boolean {
  const v = args[key];
  if (typeof v !== 'boolean') throw new UserError(`bench: ${key} must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/** Checks the combination (also used by the CLI before anything starts). */
export function checkParams(p: BenchParams): void {
  if (p.heads % p.kvHeads !== 0) throw new UserError(`--kv-heads ${p.kvHeads} does not divide --heads ${p.heads}`);
  // Positions are Int32Array: the largest token position must fit.
  if (p.seqLen > 2 ** 31 - 1) throw new UserError(`--seq-len ${p.seqLen} exceeds 2^31-1 tokens`);
  checkLayout(p.layout, p.seqLen, p.workers);
  if (p.rowFraction !== undefined && !(p.rowFraction > 0 && p.rowFraction <= 1)) {
    throw new UserError(`bench: rowFraction must be in (0, 1], got ${p.rowFraction}`);
  }
}

/** Validates a job's args (they crossed a process boundary as JSON). */
export function parseBenchArgs(args: Record<string, unknown>): BenchParams {
  const layout = args.layout;
  if (typeof layout !== 'string' || !(LAYOUTS as readonly string[]).includes(layout)) {
    throw new UserError(`bench: layout must be one of ${LAYOUTS.join(', ')}, got ${JSON.stringify(layout)}`);
  }
  const p: BenchParams = {
    seqLen: int(args, 'seqLen', 1),
    workers: int(args, 'workers', 1),
    heads: int(args, 'heads', 1),
    kvHeads: int(args, 'kvHeads', 1),
    headDim: int(args, 'headDim', 1),
    causal: bool(args, 'causal'),
    ...(args.window !== undefined ? { window: int(args, 'window', 1) } : {}),
    layout: layout as Layout,
    backward: bool(args, 'backward'),
    overlap: bool(args, 'overlap'),
    iterations: int(args, 'iterations', 1),
    timeLimitS: int(args, 'timeLimitS', 1),
    seed: int(args, 'seed', 0),
    trace: args.trace === true,
    traceFile: typeof args.traceFile === 'string' ? args.traceFile : undefined,
    json: args.json === true,
    rowFraction: typeof args.rowFraction === 'number' ? args.rowFraction : undefined,
  };
  checkParams(p);
  return p;
}

/** The params as job args (a plain JSON object). */
export function benchArgs(p: BenchParams): Record<string, unknown> {
  return JSON.parse(JSON.stringify(p)) as Record<string, unknown>;
}
