import { closeSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { worldSize, type ClusterSpec } from '../config/index.js';
import { RING_FILE, type RingHealth } from '../launch/ring-health.js';
import { listCheckpoints } from '../train/checkpoint.js';
import { flopsPerToken } from '../train/flops.js';
import { METRICS_FILE, parseStepLines, RANKS_FILE, type RankStepRecord, type StepMetrics } from '../train/metrics.js';
import { SPEC_FILE } from '../train/loop.js';

/**
 * What the dashboard shows of a run directory, read from its files only: rank
 * 0's metrics.jsonl, the launcher's ranks.jsonl and ring.json, spec.json and
 * the checkpoints. A finished run and a running one (in this process or
 * another) are read the same way; `RunWatcher` turns the files' growth into
 * the dashboard's incremental events.
 */

/** One metrics row as the page plots it. */
export interface MetricRow {
  step: number;
  loss: number;
  evalLoss: number | null;
  lr: number;
  gradNorm: number;
  tokensPerSec: number;
  /** Model FLOPs per second (src/train/flops.ts): MFU's numerator. */
  modelFlopsPerSec: number | null;
  seqLen: number;
  stepMs: number;
}

export interface CheckpointEntry {
  name: string;
  step: number;
  time: string;
  bytes: number;
  /** The train loss of the step it was written at. */
  loss?: number;
}

/** MFU's denominator: the summed measured SGEMM rate of the ranks, or why there is none. */
export interface Peak {
  flopsPerSec: number | null;
  source: string;
}

/** The rank that the others wait for, over the recent steps. */
export interface Slowest {
  rank: number;
  /** Its mean compute (attention + other) per step. */
  busyMs: number;
  /** The other ranks' mean all-reduce time: mostly waiting for it. */
  othersAllReduceMs: number;
  steps: number;
  /** Every rank's mean compute and all-reduce per step over the same steps, by rank. */
  busyMsByRank: number[];
  allReduceMsByRank: number[];
}

export interface RunSnapshot {
  runDir: string;
  name: string | null;
  spec: ClusterSpec | null;
  specYaml: string | null;
  totalSteps: number | null;
  metrics: MetricRow[];
  /** Every rank's records of the most recent RANK_HISTORY steps. */
  ranks: RankStepRecord[];
  ring: RingHealth | null;
  peak: Peak;
  slowest: Slowest | null;
  checkpoints: CheckpointEntry[];
}

/** Steps of per-rank records the page holds (bars show the last few, memory the whole window). */
export const RANK_HISTORY = 2000;
/** Steps the slowest-rank figure averages over. */
export const SLOWEST_WINDOW = 20;

function readJson<T>(file: string): T | null {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch {
    // Absent, or caught between two writes of a file replaced by rename: the next poll reads it.
    return null;
  }
}

export function metricRow(m: StepMetrics, spec: ClusterSpec | null): MetricRow {
  return {
    step: m.step,
    loss: m.loss,
    evalLoss: m.evalLoss ?? null,
    lr: m.lr,
    gradNorm: m.gradNorm,
    tokensPerSec: m.tokensPerSec,
    modelFlopsPerSec: spec ? flopsPerToken(spec.model, m.seqLen, spec.attention) * m.tokensPerSec : null,
    seqLen: m.seqLen,
    stepMs: m.stepMs,
  };
}

/** The summed measured SGEMM rate of all ranks, from ring.json; MFU is not shown unless every rank has one. */
export function peakOf(ring: RingHealth | null): Peak {
  if (!ring) return { flopsPerSec: null, source: 'no ring.json in the run directory (a run of an older ringattn)' };
  const rates = ring.ranks.map((r) => r.info.gemmGflops);
  if (rates.length === 0 || rates.some((g) => typeof g !== 'number' || !(g > 0))) {
    return { flopsPerSec: null, source: 'not every rank has a measured SGEMM rate (an engine off the CPU, or no tuning yet)' };
  }
  const total = (rates as number[]).reduce((a, b) => a + b, 0);
  return { flopsPerSec: total * 1e9, source: `the ranks' measured SGEMM rates, ${total.toFixed(0)} GFLOP/s in all (engine tuning, per rank on its threads)` };
}

/** Over the last `window` steps every rank reported: the rank with the most compute per step. */
export function slowestRank(rows: readonly RankStepRecord[], worldSize: number, window = SLOWEST_WINDOW): Slowest | null {
  if (worldSize < 2) return null;
  const byStep = new Map<number, RankStepRecord[]>();
  for (const r of rows) {
    const list = byStep.get(r.step);
    if (list) list.push(r);
    else byStep.set(r.step, [r]);
  }
  const complete = [...byStep.entries()].filter(([, rs]) => new Set(rs.map((r) => r.rank)).size === worldSize).sort((a, b) => a[0] - b[0]).slice(-window);
  if (complete.length === 0) return null;
  const busy = new Array<number>(worldSize).fill(0);
  const reduce = new Array<number>(worldSize).fill(0);
  for (const [, rs] of complete) {
    for (const r of rs) {
      busy[r.rank] += r.attentionMs + r.otherComputeMs;
      reduce[r.rank] += r.allReduceMs;
    }
  }
  let rank = 0;
  for (let r = 1; r < worldSize; r++) if (busy[r] > busy[rank]) rank = r;
  const others = reduce.filter((_, r) => r !== rank);
  return {
    rank,
    busyMs: busy[rank] / complete.length,
    othersAllReduceMs: others.reduce((a, b) => a + b, 0) / others.length / complete.length,
    steps: complete.length,
    busyMsByRank: busy.map((b) => b / complete.length),
    allReduceMsByRank: reduce.map((b) => b / complete.length),
  };
}

export function readCheckpoints(runDir: string): CheckpointEntry[] {
  return listCheckpoints(runDir).map(({ step, path: dir }) => {
    let bytes = 0;
    let time = '';
    let loss: number | undefined;
    try {
      for (const f of readdirSync(dir)) bytes += statSync(path.join(dir, f)).size;
      time = statSync(path.join(dir, 'manifest.json')).mtime.toISOString();
      const l = readJson<{ extra?: { loss?: unknown } }>(path.join(dir, 'manifest.json'))?.extra?.loss;
      if (typeof l === 'number') loss = l;
    } catch {
      // Deleted while being read (a newer checkpoint replaced it): listed as found.
    }
    return { name: path.basename(dir), step, time, bytes, ...(loss !== undefined ? { loss } : {}) };
  });
}

/** A step-keyed JSON-lines file read as it grows: only whole new lines, from where the last read stopped. */
class StepTail<T extends { step: number }> {
  private offset = 0;
  private rest = '';
  constructor(readonly file: string) {}

  /** The records of the new complete lines; `reset` when the file shrank or was replaced (a resumed run rewrote it), and then every record of it. */
  read(): { reset: boolean; rows: T[] } {
    let size: number;
    try {
      size = statSync(this.file).size;
    } catch {
      const reset = this.offset > 0;
      this.restart();
      return { reset, rows: [] };
    }
    const reset = size < this.offset;
    if (reset) this.restart();
    if (size === this.offset) return { reset, rows: [] };
    const fd = openSync(this.file, 'r');
    try {
      const buf = Buffer.alloc(size - this.offset);
      const n = readSync(fd, buf, 0, buf.length, this.offset);
      this.offset += n;
      const text = this.rest + buf.subarray(0, n).toString('utf8');
      const cut = text.lastIndexOf('\n') + 1;
      this.rest = text.slice(cut);
      return { reset, rows: parseStepLines<T>(text.slice(0, cut)) };
    } finally {
      closeSync(fd);
    }
  }

  /** The next read starts from the top of the file. */
  restart(): void {
    this.offset = 0;
    this.rest = '';
  }
}

/** What changed since the previous poll. */
export type RunEvent =
  | { type: 'snapshot'; snapshot: RunSnapshot }
  | { type: 'append'; metrics: MetricRow[]; ranks: RankStepRecord[]; slowest: Slowest | null }
  | { type: 'ring'; ring: RingHealth; peak: Peak }
  | { type: 'checkpoints'; checkpoints: CheckpointEntry[] };

/**
 * The run directory's state, kept current by `poll()`: each poll reads only
 * what the files gained and returns the events that bring a page from the
 * previous state to this one.
 */
export class RunWatcher {
  private spec: ClusterSpec | null = null;
  private metrics: MetricRow[] = [];
  private ranks: RankStepRecord[] = [];
  private ring: RingHealth | null = null;
  private ringText = '';
  private checkpoints: CheckpointEntry[] = [];
  private checkpointKey = '';
  private readonly metricsTail: StepTail<StepMetrics>;
  private readonly ranksTail: StepTail<RankStepRecord>;

  constructor(readonly runDir: string) {
    this.metricsTail = new StepTail(path.join(runDir, METRICS_FILE));
    this.ranksTail = new StepTail(path.join(runDir, RANKS_FILE));
    this.poll();
  }

  snapshot(): RunSnapshot {
    const spec = this.spec;
    return {
      runDir: this.runDir,
      name: spec?.name ?? null,
      spec,
      specYaml: spec ? stringify(spec) : null,
      totalSteps: spec?.train.steps ?? null,
      metrics: this.metrics,
      ranks: this.ranks,
      ring: this.ring,
      peak: peakOf(this.ring),
      slowest: this.slowest(),
      checkpoints: this.checkpoints,
    };
  }

  poll(): RunEvent[] {
    const events: RunEvent[] = [];
    let reset = false;
    if (!this.spec) {
      const spec = readJson<ClusterSpec>(path.join(this.runDir, SPEC_FILE));
      if (spec) {
        this.spec = spec;
        // MFU's numerator needs the model: the rows read before spec.json appeared are read again with it.
        this.metricsTail.restart();
        this.metrics = [];
        reset = true;
      }
    }
    const m = this.metricsTail.read();
    const newMetrics = m.rows.map((r) => metricRow(r, this.spec));
    const r = this.ranksTail.read();
    const newRanks = r.rows;
    if (m.reset) this.metrics = [];
    if (r.reset) this.ranks = [];
    reset ||= m.reset || r.reset;
    this.metrics.push(...newMetrics);
    this.ranks.push(...newRanks);
    if (this.ranks.length > 0) {
      const last = this.ranks[this.ranks.length - 1].step;
      if (this.ranks[0].step <= last - RANK_HISTORY) this.ranks = this.ranks.filter((x) => x.step > last - RANK_HISTORY);
    }

    let ringChanged = false;
    try {
      const text = readFileSync(path.join(this.runDir, RING_FILE), 'utf8');
      if (text !== this.ringText) {
        const ring = JSON.parse(text) as RingHealth;
        this.ring = ring;
        this.ringText = text;
        ringChanged = true;
      }
    } catch {
      // Absent or mid-replace: kept as last read.
    }
    const checkpoints = readCheckpoints(this.runDir);
    const key = checkpoints.map((c) => `${c.name}:${c.bytes}:${c.time}`).join(',');
    const checkpointsChanged = key !== this.checkpointKey;
    if (checkpointsChanged) {
      this.checkpoints = checkpoints;
      this.checkpointKey = key;
    }

    if (reset) return [{ type: 'snapshot', snapshot: this.snapshot() }];
    if (newMetrics.length > 0 || newRanks.length > 0) events.push({ type: 'append', metrics: newMetrics, ranks: newRanks, slowest: this.slowest() });
    if (checkpointsChanged) events.push({ type: 'checkpoints', checkpoints: this.checkpoints });
    // Last: a page closes its stream on the ring's end, and must have everything written before it.
    if (ringChanged && this.ring) events.push({ type: 'ring', ring: this.ring, peak: peakOf(this.ring) });
    return events;
  }

  /** True once the launcher has written the job's end (finished or failed). */
  ended(): boolean {
    return this.ring !== null && this.ring.state !== 'running';
  }

  private slowest(): Slowest | null {
    const world = this.ring?.ranks.length ?? (this.spec ? worldSize(this.spec) : 0);
    return slowestRank(this.ranks, world);
  }
}
