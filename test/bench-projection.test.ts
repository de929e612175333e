import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { BenchParams } from '../src/bench/params.js';
import { meanPhase, projectRank } from '../src/bench/projection.js';
import type { PhaseRaw, RankResult } from '../src/bench/types.js';
import { backwardFlopsPerEntry, forwardFlopsPerEntry } from '../src/bench/work.js';

/**
 * src/bench/projection.ts: what a time-limited bench run projects from what it
 * measured, against numbers worked out by hand from the formulas (a full run's
 * projection is the identity).
 */

const phase = (kernelMsPerStep: number[], waitMs: number, extra: Partial<PhaseRaw> = {}): PhaseRaw => ({
  wallMs: 0,
  kernelMsPerStep,
  loopComputeMs: 0,
  waitMs,
  bytesSent: 1000,
  steps: kernelMsPerStep.length,
  skippedSteps: 0,
  ...extra,
});

function result(mode: RankResult['mode'], extra: Partial<RankResult> = {}): RankResult {
  return {
    rank: 0,
    host: 'h',
    mode,
    entries: { totalPerStep: [100, 100], measuredPerStep: [10, 10] },
    iterations: [{ wallMs: 40, fwd: phase([1.5, 1.2], 3), bwd: null }],
    pureKernelMsPerStep: { fwd: [1, 1], bwd: null },
    iterationsRequested: 1,
    transferMsPerHop: 5,
    peakRssBytes: 0,
    ringBufferBytes: 0,
    memory: [],
    ...extra,
  };
}

// The fields a projection reads; the rest of a run's parameters do not enter it.
const params = (over: Partial<BenchParams>) => ({ workers: 2, heads: 2, kvHeads: 2, headDim: 16, backward: false, overlap: true, ...over }) as BenchParams;

test('meanPhase averages iterations step by step and keeps the step counts', () => {
  const m = meanPhase([phase([1, 3], 2, { wallMs: 10, bytesSent: 100 }), phase([3, 5], 4, { wallMs: 20, bytesSent: 300 })]);
  assert.deepEqual(m.kernelMsPerStep, [2, 4]);
  assert.equal(m.waitMs, 3);
  assert.equal(m.wallMs, 15);
  assert.equal(m.bytesSent, 200);
  assert.equal(m.steps, 2);
});

test('a full run projects to what it measured', () => {
  const p = params({ backward: false });
  const m = projectRank(p, result('full', { entries: { totalPerStep: [100, 100], measuredPerStep: [100, 100] } }));
  assert.equal(m.wallMs, 40);
  assert.ok(Math.abs(m.kernelMs - 2.7) < 1e-12);
  assert.equal(m.pureMs, 2);
  assert.equal(m.waitMs, 3);
  assert.equal(m.hops, 1, 'forward only, 2 workers: one hop');
  assert.equal(m.flopsTotal, 200 * forwardFlopsPerEntry(2, 16));
});

test('a time-limited run: kernel time scales with entries at the no-ring rate, plus the ring\'s own cost; overlapped waits re-derived from the hop', () => {
  const p = params({ backward: false, overlap: true });
  const m = projectRank(p, result('time-limited'));
  // ms per entry = pure 2 ms / 20 measured entries = 0.1; step t = 100 x 0.1 + max(0, ring - pure).
  assert.deepEqual(m.perStep.fwd.map((x) => Math.round(x * 1e9) / 1e9), [10.5, 10.2]);
  assert.ok(Math.abs(m.kernelMs - 20.7) < 1e-9);
  // Overlapped: the hop (5 ms) runs under step 0's 10.5 ms of compute, so nothing waits.
  assert.equal(m.waitMs, 0);
  // Everything else (wall - kernel - wait as measured = 40 - 2.7 - 3) is kept as measured.
  assert.ok(Math.abs(m.wallMs - (20.7 + 0 + 34.3)) < 1e-9);
  assert.equal(m.pureMs, 20, 'pure kernel time scaled by total / measured entries');
  assert.equal(m.flopsMeasured, 20 * forwardFlopsPerEntry(2, 16));

  // A hop longer than the step's compute is waited for: 12 - 10.5.
  const slow = projectRank(p, result('time-limited', { transferMsPerHop: 12 }));
  assert.ok(Math.abs(slow.waitMs - 1.5) < 1e-9);
  // Without overlap the measured waits stand.
  const naive = projectRank(params({ backward: false, overlap: false }), result('time-limited', { transferMsPerHop: 12 }));
  assert.equal(naive.waitMs, 3);
});

test('with the backward: 3 hops on 2 workers, and the dK/dV trip home is never hidden', () => {
  const p = params({ backward: true, overlap: true });
  const r = result('time-limited', {
    iterations: [{ wallMs: 60, fwd: phase([1.5, 1.2], 3), bwd: phase([3, 3], 2) }],
    pureKernelMsPerStep: { fwd: [1, 1], bwd: [2, 2] },
  });
  const m = projectRank(p, r);
  assert.equal(m.hops, 1 + 3);
  // Backward steps: 100 x (4 / 20) + (3 - 2) = 21 each; step 0 sends K/V (5 ms) under 21 ms, step 1 dK/dV under 21 ms: no wait.
  assert.deepEqual(m.perStep.bwd, [21, 21]);
  assert.equal(m.waitMs, 5, 'only the trip home');
  assert.equal(m.flopsTotal, 200 * (forwardFlopsPerEntry(2, 16) + backwardFlopsPerEntry(2, 16)));
});
