export {
  ClusterSpecSchema,
  clusterJsonSchema,
  isHostOrIp,
  isLoopback,
  rankTable,
  slotGpu,
  resolvedLaunch,
  resolvedSecurity,
  resolvedTransport,
  worldSize,
  type AttentionSpec,
  type BenchSpec,
  type ClusterSpec,
  type ClusterSpecInput,
  type DataSpec,
  type HostSpec,
  type ModelSpec,
  type RankEntry,
  type RingSpec,
  type TrainSpec,
} from './schema.js';
export { canonicalJson, defaultSpecPath, formatPath, loadSpec, parseSpec, specFromObject, specHash } from './load.js';
export { SIZE_PATTERN, formatSize, parseSize, sizeSchema } from './size.js';
export { hostThreads, workerThreads } from './threads.js';
