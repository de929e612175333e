import type { AttentionOp } from '../../src/attention/op.js';
import type { ModelConfig } from '../../src/model/types.js';
import { localRings } from './train-local.js';

/**
 * The model's attention layers of N ranks in one process, no network: the same
 * stand-in the training tests use (train-local.ts), one op per rank's shard
 * positions. Exact, so N concurrent model.step calls must reproduce the
 * unsharded model.
 */
export function inProcessRing(cfg: ModelConfig, positions: Int32Array[]): AttentionOp[] {
  const rings = localRings(positions.length, { heads: cfg.heads, kvHeads: cfg.kvHeads, headDim: cfg.dModel / cfg.heads });
  return rings.map((r, i) => r.attention(positions[i], 0));
}
