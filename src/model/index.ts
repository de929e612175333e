export type { ModelConfig, ParamSpec, Params, Shard } from './types.js';
export { paramSpecs, initParams, paramView, paramCount, findSpec, headDimOf, checkModelConfig } from './params.js';
export { ropeTable, type RopeTable } from './rope.js';
export { createModel, type Model, type ModelOptions } from './transformer.js';
export { generate, localAttention, sampleToken, type GenerateOptions } from './generate.js';
