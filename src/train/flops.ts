import { headDimOf, paramCount } from '../model/index.js';
import type { ModelConfig } from '../model/types.js';

/**
 * Model FLOPs of training, per token: 6·P for the parameter GEMMs (forward 2·P,
 * backward 4·P; a tied head counted once, as paramCount does) and 12·L·H·d_head
 * per key a query attends for attention (QKᵀ and PV, forward and backward).
 * This is the MFU convention of the PaLM paper, with the mask's true key count
 * instead of the full square: the causal mask halves it, a window caps it.
 */
export function flopsPerToken(model: ModelConfig, seqLen: number, attention: { causal: boolean; window?: number }): number {
  return 6 * paramCount(model) + 12 * model.layers * model.heads * headDimOf(model) * meanKeys(seqLen, attention);
}

/** Keys each query of a `seqLen`-token sequence attends on average, under the mask. */
export function meanKeys(seqLen: number, attention: { causal: boolean; window?: number }): number {
  const s = seqLen;
  const w = attention.window && attention.window < s ? attention.window : s;
  if (attention.causal) {
    // Query i sees min(i + 1, w) keys: 1..w, then w for the remaining s - w queries.
    return ((w * (w + 1)) / 2 + (s - w) * w) / s;
  }
  if (w === s) return s;
  // |i - j| < w: 2w - 1 keys, fewer within w of either end.
  return (s * (2 * w - 1) - w * (w - 1)) / s;
}
