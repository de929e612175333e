export { benchArgs, parseBenchArgs, checkParams, BENCH_SHAPE_DEFAULTS, DEFAULT_SEED, type BenchParams } from './params.js';
export {
  benchBudget,
  memoryBudget,
  ringBuffers,
  hostFit,
  checkHostFit,
  checkMessageSize,
  formatBytes,
  HOST_MEMORY_FRACTION,
  RUNTIME_ALLOWANCE_BYTES,
  type BenchBudget,
  type BufferItem,
  type HostFit,
} from './budget.js';
export { buildReport, formatReport, formatBudget, formatSetup, type BenchReport, type Figure, type Figures, type Basis, type RankReport } from './report.js';
export { calibrateKernel, estimateKernelMs, fillUnitUniform, type Calibration } from './calibrate.js';
export { MeteredKernel } from './metered-kernel.js';
export { parseSweep, sweepRow, formatSweep, renderSweepChart, writeSweep, type Sweep, type SweepRow, type SweepVariable } from './sweep.js';
export { ringEntries, forwardFlopsPerEntry, backwardFlopsPerEntry, allowedEntriesSorted } from './work.js';
export type { RankResult, RankSetup, IterationRaw, PhaseRaw } from './types.js';
