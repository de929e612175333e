/** ringattn as a library: the same pieces the CLI is built from. */
export { UserError } from './errors.js';
export { loadSpec, parseSpec, specFromObject, rankTable, worldSize, parseSize, type ClusterSpec } from './config/index.js';
export type { AttentionKernel, BlockArgs, BlockPartial, BlockGrads, BlockGradArgs, AttentionDims } from './kernels/types.js';
export { loadKernel, referenceKernel, mergePartial, emptyPartial, rowDelta } from './kernels/index.js';
export { Ring, RingError, type RingOptions, type RingPeer } from './ring/transport.js';
export { allReduceSum, barrier, broadcast, ringPass } from './ring/collectives.js';
export { onHostArrays, type AttentionOp, type AttentionTensors, type HostAttentionOp } from './attention/op.js';
export { ringAttentionForward, ringAttentionBackward, ringAttentionOp, newRingStepStats, type RingAttentionConfig, type RingStepStats } from './attention/ring-attention.js';
export { shardPositions, checkLayout, defaultLayout, gatherShard, scatterShard, LAYOUTS, type Layout } from './attention/layout.js';
export { Trace, traceDocument } from './attention/trace.js';
export { runJob, LaunchError, type LaunchOptions, type JobOutcome } from './launch/launcher.js';
export { readNpy, readNpyAs, writeNpy } from './tensor/npy.js';
export { selectBackend } from './tensor/backend.js';
export { loadEngine, slice, type Engine, type EngineName, type Tensor, type IntTensor } from './engine/index.js';
export { createNativeEngine } from './engine/native.js';
export { createTfjsEngine } from './engine/tfjs.js';
export { createModel, initParams, paramSpecs, localAttention, generate, type Model, type ModelConfig, type Params } from './model/index.js';
