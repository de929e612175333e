import { ringAttentionOp } from '../attention/ring-attention.js';
import { referenceKernel } from '../kernels/reference.js';
import type { AttentionKernel } from '../kernels/types.js';
import { Rng } from '../tensor/random.js';
import { headDimOf } from './params.js';
import type { Engine } from '../engine/types.js';
import { createModel } from './transformer.js';
import type { AttentionOp, ModelConfig, Params } from './types.js';

/**
 * Exact causal attention of a shard against itself, in one process: the whole
 * sequence as a single query block and a single KV block, so the kernel's
 * block-normalised result is already final. Used for generation and as the
 * one-rank stand-in for ring attention in tests. `positions` are the tokens'
 * global positions (the causal mask reads them; any order works).
 */
export function localAttention(cfg: ModelConfig, positions: Int32Array, kernel: AttentionKernel = referenceKernel): AttentionOp {
  const headDim = headDimOf(cfg);
  return ringAttentionOp({ ring: null, kernel, causal: true, heads: cfg.heads, kvHeads: cfg.kvHeads, headDim, overlap: false, positionsOf: () => positions });
}

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy (argmax); otherwise logits are divided by it before sampling. */
  temperature: number;
  /** Sample only among the k most likely tokens. */
  topK?: number;
  seed: number;
  /** Only the last `maxContext` tokens are fed to the model (positions restart at 0 for the window). Default: all. */
  maxContext?: number;
  /** Attention kernel for the local attention (default: the reference kernel). */
  kernel?: AttentionKernel;
  /** The engine the model runs on. */
  engine: Engine;
}

/** Draws one token from logits under temperature / top-k; greedy when temperature is 0. */
export function sampleToken(logits: Float32Array, temperature: number, topK: number | undefined, rng: Rng): number {
  const V = logits.length;
  let best = 0;
  for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
  if (temperature === 0) return best;
  let ids = Array.from({ length: V }, (_, i) => i);
  if (topK !== undefined && topK < V) {
    // Ties broken by id so the choice is deterministic.
    ids.sort((a, b) => logits[b] - logits[a] || a - b);
    ids = ids.slice(0, Math.max(1, topK));
  }
  const m = logits[best];
  const w = ids.map((i) => Math.exp((logits[i] - m) / temperature));
  let total = 0;
  for (const x of w) total += x;
  let r = rng.uniform() * total;
  for (let j = 0; j < ids.length; j++) {
    r -= w[j];
    if (r < 0) return ids[j];
  }
  return ids[ids.length - 1];
}

/**
 * Samples `maxNewTokens` tokens after `prompt` in a single process and returns
 * the new tokens only. Recomputes the full forward for each token (no KV cache):
 * simple and exact, fine for the small models this project trains on CPUs.
 * Deterministic for a given seed.
 */
export async function generate(cfg: ModelConfig, params: Params, prompt: Int32Array, opts: GenerateOptions): Promise<Int32Array> {
  if (prompt.length < 1) throw new Error('generate: the prompt needs at least one token');
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) {
    throw new Error(`generate: maxNewTokens must be a non-negative integer, got ${opts.maxNewTokens}`);
  }
  if (!(opts.temperature >= 0)) throw new Error(`generate: temperature must be >= 0, got ${opts.temperature}`);
  if (opts.topK !== undefined && !(Number.isInteger(opts.topK) && opts.topK >= 1)) {
    throw new Error(`generate: topK must be a positive integer, got ${opts.topK}`);
  }
  const maxContext = opts.maxContext ?? Infinity;
  if (!(maxContext >= 1)) throw new Error(`generate: maxContext must be >= 1, got ${opts.maxContext}`);
  const rng = new Rng(opts.seed);
  const seq = Array.from(prompt);
  const out = new Int32Array(opts.maxNewTokens);
  const model = createModel(opts.engine, cfg, { maxTokens: Math.max(1, Math.min(maxContext, prompt.length + opts.maxNewTokens)) });
  opts.engine.write(model.params, params.flat);
  for (let t = 0; t < opts.maxNewTokens; t++) {
    const window = Int32Array.from(seq.slice(Math.max(0, seq.length - maxContext)));
    const positions = Int32Array.from({ length: window.length }, (_, i) => i);
    const attn = localAttention(cfg, positions, opts.kernel);
    const logits = await model.logits({ tokens: window, positions }, attn, window.length - 1);
    const next = sampleToken(logits, opts.temperature, opts.topK, rng);
    out[t] = next;
    seq.push(next);
  }
  return out;
}
