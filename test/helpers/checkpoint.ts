import path from 'node:path';
import type { ClusterSpec } from '../../src/config/index.js';
import { initParams } from '../../src/model/index.js';
import { saveCheckpoint } from '../../src/train/checkpoint.js';

/** A checkpoint of the spec's model at its initialisation (seed), as if after one step: what generate and eval can load. */
export function initCheckpoint(dir: string, spec: ClusterSpec, seed: number): string {
  const params = initParams(spec.model, seed);
  const zeros = new Float32Array(params.flat.length);
  return saveCheckpoint(path.join(dir, 'run'), { step: 1, params, opt: { m: zeros, v: zeros, step: 1 }, dataState: { step: 1, seed: 1 }, spec });
}
