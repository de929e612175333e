export type { AttentionOp, ModelConfig, ParamSpec, Params, Shard, ShardStep } from './types.js';
export { paramSpecs, initParams, paramView, paramCount, findSpec, headDimOf, checkModelConfig } from './params.js';
export { ropeTable, applyRope, ropeForward, ropeBackward, type RopeTable } from './rope.js';
export { shardForwardBackward, shardLoss, shardLogits } from './transformer.js';
export { referenceLossAndGrads, referenceLoss } from './reference.js';
export { generate, localAttention, sampleToken, type GenerateOptions } from './generate.js';
