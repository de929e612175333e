import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from './checkpoint.js';

/** One line of metrics.jsonl: one optimizer update, seen from rank 0. */
export interface StepMetrics {
  /** Completed updates, 1-based: the record of the first update has step 1. */
  step: number;
  /** Mean next-token loss over every scored token of the batch, all ranks. */
  loss: number;
  /** Mean loss on the held-out windows, on steps where it was measured. */
  evalLoss?: number;
  /** Share of the held-out targets that are the model's argmax, with evalLoss. */
  evalAccuracy?: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Tokens per sequence of this update (below train.seqLen in a train.lengthSchedule stage). */
  seqLen: number;
  /** Tokens of the whole batch (all ranks) per second of step time. */
  tokensPerSec: number;
  /** Wall time of the update on this rank. */
  stepMs: number;
  /** stepMs minus communication and waiting: this rank's own work (model, optimizer). */
  computeMs: number;
  /** Time the ring spent moving data (from the ring's counters). */
  commMs: number;
  /** Time the ring spent waiting for peers (from the ring's counters). */
  waitMs: number;
  /** Kernel time reported by the ring (part of computeMs). */
  attnComputeMs: number;
  /** Wall time of the gradient all-reduce (part of comm + wait). */
  allReduceMs: number;
  /** Wall time of the gradient norm and the AdamW update (part of computeMs). */
  optimizerMs: number;
  /** Scored target tokens of the batch over all ranks. */
  tokens: number;
  /** Largest peak resident memory of any rank's process so far (its maxRSS), in bytes. */
  peakRssBytes: number;
  /** Every rank's peak resident memory so far, in bytes, by rank. */
  peakRssByRank: number[];
  /** Wall-clock time the record was written, ISO 8601. */
  time: string;
}

export const METRICS_FILE = 'metrics.jsonl';

/**
 * One line of ranks.jsonl: one rank's own update, as that rank timed it. The
 * launcher writes it from every rank's step report, so the dashboard can stack
 * each rank's time (attention + other compute + ring wait + all-reduce = stepMs)
 * and see which rank the others wait for.
 */
export interface RankStepRecord {
  step: number;
  rank: number;
  stepMs: number;
  /** The attention kernel's time on this rank. */
  attentionMs: number;
  /** Everything else this rank computed: the model outside attention, the optimizer, evaluation. */
  otherComputeMs: number;
  /** Ring attention waiting for KV blocks (and dK/dV) from its neighbours. */
  ringWaitMs: number;
  /** The all-reduces of the update: mostly waiting for the slowest rank to arrive. */
  allReduceMs: number;
  /** This rank's resident memory after the update. */
  rssBytes: number;
  time: string;
}

export const RANKS_FILE = 'ranks.jsonl';

/** The record for ranks.jsonl of one rank's step metrics: the parts add up to stepMs. */
export function rankStepRecord(m: StepMetrics, rank: number, rssBytes: number): RankStepRecord {
  return {
    step: m.step,
    rank,
    stepMs: m.stepMs,
    attentionMs: m.attnComputeMs,
    otherComputeMs: Math.max(0, m.computeMs - m.attnComputeMs),
    ringWaitMs: m.waitMs,
    allReduceMs: m.commMs,
    rssBytes,
    time: m.time,
  };
}

/** Appends to a step-keyed JSON-lines file of the run directory: one object per line, written as soon as the step ends. */
export class StepLog<T extends { step: number }> {
  readonly path: string;
  constructor(runDir: string, file: string) {
    this.path = join(runDir, file);
  }

  append(m: T): void {
    appendFileSync(this.path, JSON.stringify(m) + '\n', { mode: 0o600 });
  }

  /**
   * Drops records after `step`: a resumed run repeats the steps after its
   * checkpoint, and the file must not hold those steps twice.
   */
  truncateAfter(step: number): void {
    if (!existsSync(this.path)) return;
    const kept = readStepLog<T>(this.path).filter((r) => r.step <= step);
    writeFileAtomic(this.path, kept.map((r) => JSON.stringify(r) + '\n').join(''));
  }

  read(): T[] {
    return existsSync(this.path) ? readStepLog<T>(this.path) : [];
  }
}

/** rank 0's metrics.jsonl of a run directory. */
export const metricsLog = (runDir: string) => new StepLog<StepMetrics>(runDir, METRICS_FILE);

/** Parses a step-keyed JSON-lines file; a torn last line (a crash mid-append) is ignored. */
export function readStepLog<T extends { step: number } = StepMetrics>(path: string): T[] {
  return parseStepLines<T>(readFileSync(path, 'utf8'));
}

/** The records of JSON lines with a numeric step; lines that are not (torn, foreign) are skipped. */
export function parseStepLines<T extends { step: number }>(text: string): T[] {
  const out: T[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const r = JSON.parse(line) as T;
      if (r !== null && typeof r.step === 'number') out.push(r);
    } catch {
      // A partial line from an interrupted write carries no usable record.
    }
  }
  return out;
}

/** metrics.jsonl's records. */
export const readMetrics = (path: string): StepMetrics[] => readStepLog<StepMetrics>(path);
