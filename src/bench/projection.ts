import type { BenchParams } from './params.js';
import type { IterationRaw, PhaseRaw, RankResult } from './types.js';
import { backwardFlopsPerEntry, forwardFlopsPerEntry } from './work.js';

/**
 * Projection, kept apart from measurement: one rank's raw timings (src/jobs/bench.ts measures them) turned into the
 * figures of its whole work. Pure functions of their inputs; test/bench-projection.test.ts checks the formulas.
 */

const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);
const mean = (xs: readonly number[]) => (xs.length ? sum(xs) / xs.length : 0);

export function meanPhase(phases: PhaseRaw[]): PhaseRaw {
  const steps = phases[0].kernelMsPerStep.length;
  return {
    wallMs: mean(phases.map((p) => p.wallMs)),
    kernelMsPerStep: Array.from({ length: steps }, (_, t) => mean(phases.map((p) => p.kernelMsPerStep[t]))),
    loopComputeMs: mean(phases.map((p) => p.loopComputeMs)),
    waitMs: mean(phases.map((p) => p.waitMs)),
    bytesSent: mean(phases.map((p) => p.bytesSent)),
    steps: phases[0].steps,
    skippedSteps: phases[0].skippedSteps,
  };
}

export interface RankModel {
  wallMs: number;
  kernelMs: number;
  pureMs: number;
  waitMs: number;
  transferMs: number | null;
  hops: number;
  computedSteps: number;
  flopsTotal: number;
  flopsMeasured: number;
  kernelMeasuredMs: number;
  pureMeasuredMs: number;
  perStep: { fwd: number[]; bwd: number[] | null };
  bytesSent: number;
}

/**
 * Turns one rank's measurements into the figures of its whole work. In a full
 * run that is the identity. In a time-limited run the kernel computed a known
 * share of the allowed entries at each step. The kernel time of a step is
 * projected as two parts: the work, at the rate the same calls reached with no
 * ring (scaled by the exact ratio of entries), plus what the ring cost the
 * kernel in this run (ring-run kernel time minus no-ring time of the step):
 * that cost comes from the transfers and merges running alongside, which have
 * their full size in this run already, so it is not scaled. Waits are
 * re-derived from the measured transfer time: overlapped, a hop is hidden
 * behind the compute of the step it runs under (the dK/dV trip home after the
 * last step never is); naive, the measured waits stand. Everything else the
 * loop did (merges, bookkeeping) ran at full size and is kept as measured.
 */
export function projectRank(p: BenchParams, r: RankResult): RankModel {
  const n = r.entries.totalPerStep.length;
  const fwd = meanPhase(r.iterations.map((i) => i.fwd));
  const bwd = p.backward ? meanPhase(r.iterations.map((i) => i.bwd!)) : null;
  const wall = mean(r.iterations.map((i: IterationRaw) => i.wallMs));
  const total = sum(r.entries.totalPerStep);
  const measured = sum(r.entries.measuredPerStep);
  const pureF = r.pureKernelMsPerStep.fwd;
  const pureB = r.pureKernelMsPerStep.bwd;
  const kF = sum(fwd.kernelMsPerStep);
  const kB = bwd ? sum(bwd.kernelMsPerStep) : 0;
  const pureMeasured = sum(pureF) + (pureB ? sum(pureB) : 0);
  const waitMeasured = fwd.waitMs + (bwd?.waitMs ?? 0);
  const hops = p.workers > 1 ? p.workers - 1 + (p.backward ? 2 * p.workers - 1 : 0) : 0;
  const perEntry = forwardFlopsPerEntry(p.heads, p.headDim) + (p.backward ? backwardFlopsPerEntry(p.heads, p.headDim) : 0);
  const base = {
    transferMs: r.transferMsPerHop,
    hops,
    computedSteps: fwd.steps - fwd.skippedSteps,
    flopsTotal: total * perEntry,
    flopsMeasured: measured * perEntry,
    kernelMeasuredMs: kF + kB,
    pureMeasuredMs: pureMeasured,
    bytesSent: fwd.bytesSent + (bwd?.bytesSent ?? 0),
  };
  if (r.mode === 'full') {
    return {
      ...base,
      wallMs: wall,
      kernelMs: kF + kB,
      pureMs: pureMeasured,
      waitMs: waitMeasured,
      perStep: { fwd: fwd.kernelMsPerStep, bwd: bwd?.kernelMsPerStep ?? null },
    };
  }
  const project = (ringMs: number[], pureMs: number[]): number[] => {
    const pureSum = sum(pureMs);
    const msPerEntry = measured > 0 ? (pureSum > 0 ? pureSum : sum(ringMs)) / measured : NaN;
    return r.entries.totalPerStep.map((e, t) => e * msPerEntry + Math.max(0, ringMs[t] - pureMs[t]));
  };
  const projF = project(fwd.kernelMsPerStep, pureF);
  const projB = bwd && pureB ? project(bwd.kernelMsPerStep, pureB) : null;
  const T = r.transferMsPerHop ?? 0;
  let wait = waitMeasured;
  if (p.overlap && n > 1) {
    wait = 0;
    for (let t = 0; t < n - 1; t++) wait += Math.max(0, T - projF[t]);
    if (projB) {
      for (let t = 0; t < n; t++) wait += Math.max(0, T * ((t < n - 1 ? 1 : 0) + (t >= 1 ? 1 : 0)) - projB[t]);
      wait += T; // the dK/dV trip home runs after the last compute: nothing can hide it
    }
  }
  const other = Math.max(0, wall - (kF + kB) - waitMeasured);
  const kernel = sum(projF) + (projB ? sum(projB) : 0);
  return {
    ...base,
    wallMs: kernel + wait + other,
    kernelMs: kernel,
    pureMs: measured > 0 ? (pureMeasured * total) / measured : NaN,
    waitMs: wait,
    perStep: { fwd: projF, bwd: projB },
  };
}
