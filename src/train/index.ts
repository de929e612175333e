export { adamwUpdate, clipScale, isDecayed, type AdamWHyper, type AdamWState, type OptimizerBuffers } from './optimizer.js';
export { learningRate, type ScheduleSpec } from './schedule.js';
export {
  BYTE_VOCAB,
  DEFAULT_CORPUS_MAX_BYTES,
  DEFAULT_CORPUS_PACKAGES,
  defaultCorpusFiles,
  findPackageDir,
  globFiles,
  loadCorpus,
  packageRoot,
  resolveDataPaths,
  type Corpus,
  type CorpusOptions,
  type CorpusPart,
} from './corpus.js';
export {
  copyWindow,
  countTargets,
  createDataSource,
  recallAlphabet,
  recallWindow,
  shardOf,
  textWindow,
  windowRng,
  type DataKind,
  type DataSource,
  type DataSourceOptions,
  type DataSpecLike,
  type DataState,
  type Split,
  type Window,
} from './data.js';
export {
  CHECKPOINT_FORMAT,
  DEFAULT_KEEP,
  ensurePrivateDir,
  latestCheckpoint,
  listCheckpoints,
  loadCheckpoint,
  resolveCheckpoint,
  saveCheckpoint,
  writeFileAtomic,
  type CheckpointData,
  type LoadedCheckpoint,
  type SaveOptions,
} from './checkpoint.js';
export { METRICS_FILE, RANKS_FILE, StepLog, metricsLog, rankStepRecord, readMetrics, readStepLog, type RankStepRecord, type StepMetrics } from './metrics.js';
export { CHART_FILE, niceTicks, renderLossChart, writeLossChart, type ChartOptions, type LossPoint } from './chart.js';
export { Progress, formatDuration, type ProgressOptions, type ProgressStream, type ProgressUpdate } from './progress.js';
export { SPEC_FILE, resolveLayout, train, type TrainOptions, type TrainResult, type TrainRing } from './loop.js';
