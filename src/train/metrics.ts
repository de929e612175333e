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

/** Appends to `<runDir>/metrics.jsonl`: one JSON object per line, written as soon as the step ends. */
export class MetricsLog {
  readonly path: string;
  constructor(runDir: string) {
    this.path = join(runDir, METRICS_FILE);
  }

  append(m: StepMetrics | Record<string, unknown>): void {
    appendFileSync(this.path, JSON.stringify(m) + '\n', { mode: 0o600 });
  }

  /**
   * Drops records after `step`: a resumed run repeats the steps after its
   * checkpoint, and the file must not hold those steps twice.
   */
  truncateAfter(step: number): void {
    if (!existsSync(this.path)) return;
    const kept = readMetrics(this.path).filter((r) => r.step <= step);
    writeFileAtomic(this.path, kept.map((r) => JSON.stringify(r) + '\n').join(''));
  }

  read(): StepMetrics[] {
    return existsSync(this.path) ? readMetrics(this.path) : [];
  }
}

/** Parses a metrics.jsonl; a torn last line (a crash mid-append) is ignored. */
export function readMetrics(path: string): StepMetrics[] {
  const out: StepMetrics[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (line.trim() === '') continue;
    try {
      const r = JSON.parse(line) as StepMetrics;
      if (typeof r.step === 'number') out.push(r);
    } catch {
      // A partial line from an interrupted write carries no usable record.
    }
  }
  return out;
}
