import type { Calibration } from './calibrate.js';

/** What one rank decided before the timed runs (sent to the driver as result 'setup'). */
export interface RankSetup {
  rank: number;
  host: string;
  kernel: string;
  kernelReason: string;
  mode: 'full' | 'time-limited';
  /**
   * Query tiles the kernel computes at every ring step, of how many; `chosen`
   * lists their indices (tile i is rows [i*tileQ, (i+1)*tileQ)), empty when all are.
   */
  tiles: { measured: number; total: number; rows: number; totalRows: number; chosen: number[] };
  /** One hop of a real-size KV block with nothing else running; null on a ring of one. */
  transfer: { msPerHop: number; runsMs: number[] } | null;
  calibration: Calibration;
  /** Milliseconds spent allocating and filling the shards, and since the job started. */
  allocMs: number;
  elapsedMs: number;
  /** The host's memory and the workers sharing it (for the record). */
  hostTotalBytes: number;
  workersOnHost: number;
}

/** One phase (forward or backward) of one timed iteration on one rank. */
export interface PhaseRaw {
  wallMs: number;
  /** Kernel time as the wrapper measured it: the kernel call alone, per ring step. */
  kernelMsPerStep: number[];
  /** The ring loop's own compute figure (kernel call plus the bench's row bookkeeping around it). */
  loopComputeMs: number;
  /** Time blocked on an incoming block with nothing left to compute. */
  waitMs: number;
  bytesSent: number;
  steps: number;
  skippedSteps: number;
}

export interface IterationRaw {
  wallMs: number;
  fwd: PhaseRaw;
  bwd: PhaseRaw | null;
}

/** Everything one rank measured (result 'bench'). All times are measured; nothing here is projected. */
export interface RankResult {
  rank: number;
  host: string;
  mode: 'full' | 'time-limited';
  /** Allowed score entries of this rank per ring step: all of its work, and the part computed. */
  entries: { totalPerStep: number[]; measuredPerStep: number[] };
  iterations: IterationRaw[];
  /** The same kernel calls with no ring (local blocks, same positions and masks), per phase and ring step. */
  pureKernelMsPerStep: { fwd: number[]; bwd: number[] | null };
  /** Timed iterations asked for; fewer ran when the warm-up showed they would not fit the time limit. */
  iterationsRequested: number;
  transferMsPerHop: number | null;
  /** process.resourceUsage().maxRSS, in bytes, after the runs. */
  peakRssBytes: number;
  /** The analytic bytes of this rank's ring attention buffers. */
  ringBufferBytes: number;
  /** Resident memory and its high-water mark after each phase (which phase set the peak). */
  memory: Array<{ phase: string; rssBytes: number; maxRssBytes: number; atMs: number }>;
}
