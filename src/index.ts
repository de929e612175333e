export * from './kernels/types.js';
