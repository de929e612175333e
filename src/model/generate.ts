import { cachedTokens, decodeAttention, decodeOwner, newKvCache, prefillAttention } from '../attention/kv-cache.js';
import { layoutQuantum, shardPositions, type Layout } from '../attention/layout.js';
import { ringAttentionOp } from '../attention/ring-attention.js';
import { referenceKernel } from '../kernels/reference.js';
import type { AttentionKernel } from '../kernels/types.js';
import type { Ring } from '../ring/transport.js';
import { Rng } from '../tensor/random.js';
import { headDimOf } from './params.js';
import type { Engine } from '../engine/types.js';
import { createModel } from './transformer.js';
import type { AttentionOp } from '../attention/op.js';
import type { ModelConfig, Params } from './types.js';

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
  /** Sample only among the most likely tokens whose probabilities add up to p (nucleus), after top-k. */
  topP?: number;
  seed: number;
  /** The attention kernel of prefill and decode (default: the reference kernel). */
  kernel?: AttentionKernel;
  /** The engine the model runs on. */
  engine: Engine;
  /** The ring the context is sharded over; null or absent: one process (a ring of one). */
  ring?: Ring | null;
  /** How the prompt is sharded for the prefill (default zigzag). */
  layout?: Layout;
  /** The sliding window the model was trained with (attention.window); absent = none. */
  window?: number;
  /** Called with each new token as it is produced, and with the logits it was drawn from. */
  onToken?: (token: number, logits: Float32Array) => void;
}

export interface GenerateResult {
  tokens: Int32Array;
  /** Prompt tokens run through ring attention at once, and the time it took. */
  prefillTokens: number;
  prefillMs: number;
  /** From the start to the first new token. */
  timeToFirstTokenMs: number;
  /** Tokens through the decode path (the prompt's tail, then each new token but the last) and their time. */
  decodeTokens: number;
  decodeMs: number;
  /** Tokens this rank's KV cache holds at the end. */
  cachedTokens: number;
}

/** Draws one token from logits under temperature, top-k and top-p; greedy when temperature is 0. */
export function sampleToken(logits: Float32Array, temperature: number, topK: number | undefined, rng: Rng, topP = 1): number {
  const V = logits.length;
  let best = 0;
  for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
  if (temperature === 0) return best;
  let ids = Array.from({ length: V }, (_, i) => i);
  // Only a cut needs the tokens by likelihood (ties broken by id, so the choice is deterministic).
  if ((topK !== undefined && topK < V) || topP < 1) ids.sort((a, b) => logits[b] - logits[a] || a - b);
  if (topK !== undefined && topK < V) ids = ids.slice(0, Math.max(1, topK));
  const m = logits[best];
  let w = ids.map((i) => Math.exp((logits[i] - m) / temperature));
  let total = w.reduce((a, b) => a + b, 0);
  if (topP < 1) {
    let kept = 0;
    let mass = 0;
    while (kept < w.length && mass < topP * total) mass += w[kept++];
    ids = ids.slice(0, Math.max(1, kept));
    w = w.slice(0, ids.length);
    total = mass;
  }
  let r = rng.uniform() * total;
  for (let j = 0; j < ids.length; j++) {
    r -= w[j];
    if (r < 0) return ids[j];
  }
  return ids[ids.length - 1];
}

function checkOptions(prompt: Int32Array, opts: GenerateOptions): void {
  if (prompt.length < 1) throw new Error('generate: the prompt needs at least one token');
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) throw new Error(`generate: maxNewTokens must be a non-negative integer, got ${opts.maxNewTokens}`);
  if (!(opts.temperature >= 0)) throw new Error(`generate: temperature must be >= 0, got ${opts.temperature}`);
  if (opts.topK !== undefined && !(Number.isInteger(opts.topK) && opts.topK >= 1)) throw new Error(`generate: topK must be a positive integer, got ${opts.topK}`);
  if (opts.topP !== undefined && !(opts.topP > 0 && opts.topP <= 1)) throw new Error(`generate: topP must be in (0, 1], got ${opts.topP}`);
}

/**
 * Samples `maxNewTokens` tokens after `prompt`, on a ring (every rank calls it
 * with the same arguments) or in one process, with a KV cache:
 *
 * - prefill: the longest prefix of the prompt that the layout can shard
 *   (leaving at least the last token) goes through ring attention at once;
 *   each rank keeps its shard's K and V per layer;
 * - decode: every other token, the prompt's tail first, goes through the
 *   model alone at its true position; its K and V join the cache of the rank
 *   holding fewest; its logits (the same on every rank) give the next token.
 *
 * Deterministic for a seed, and the same tokens on every ring size.
 */
export async function generate(cfg: ModelConfig, params: Params, prompt: Int32Array, opts: GenerateOptions): Promise<GenerateResult> {
  checkOptions(prompt, opts);
  const t0 = performance.now();
  const ring = opts.ring ?? null;
  const n = ring?.worldSize ?? 1;
  const rank = ring?.rank ?? 0;
  const layout = opts.layout ?? 'zigzag';
  const kernel = opts.kernel ?? referenceKernel;
  const hd = headDimOf(cfg);
  const dims = { heads: cfg.heads, kvHeads: cfg.kvHeads, headDim: hd, window: opts.window };
  const quantum = layoutQuantum(layout, n);
  const prefillLen = Math.floor((prompt.length - 1) / quantum) * quantum;
  const shardLen = prefillLen / n;
  const model = createModel(opts.engine, cfg, { maxTokens: Math.max(1, shardLen) });
  opts.engine.write(model.params, params.flat);
  const cache = newKvCache(cfg.layers, cfg.kvHeads * hd);
  const rng = new Rng(opts.seed);

  if (prefillLen > 0) {
    const positionsOf = (r: number) => shardPositions(layout, prefillLen, n, r);
    const positions = positionsOf(rank);
    const tokens = Int32Array.from(positions, (p) => prompt[p]);
    const attn = prefillAttention({ ring, kernel, causal: true, overlap: true, positionsOf, ...dims }, cache);
    // Forward only, no targets: the cache is what the prefill is for.
    await model.loss({ tokens, targets: new Int32Array(shardLen).fill(-1), positions }, attn);
  }
  const prefillMs = performance.now() - t0;

  // Every rank knows every rank's count: the prefill is even, and each decode step's owner is computed alike.
  const counts = new Array<number>(n).fill(shardLen);
  const step = async (token: number, position: number, wantLogits: boolean): Promise<Float32Array | null> => {
    const owner = decodeOwner(counts);
    counts[owner]++;
    const attn = decodeAttention({ ring, kernel, ...dims }, cache, position, owner);
    const shard = { tokens: Int32Array.of(token), positions: Int32Array.of(position) };
    if (wantLogits) return model.logits(shard, attn, 0);
    await model.loss({ ...shard, targets: Int32Array.of(-1) }, attn);
    return null;
  };

  const out = new Int32Array(opts.maxNewTokens);
  let decodeTokens = 0;
  let logits: Float32Array | null = null;
  const tDecode = performance.now();
  for (let p = prefillLen; p < prompt.length; p++) {
    logits = await step(prompt[p], p, p === prompt.length - 1);
    decodeTokens++;
  }
  let ttft = 0;
  for (let i = 0; i < opts.maxNewTokens; i++) {
    const next = sampleToken(logits!, opts.temperature, opts.topK, rng, opts.topP);
    out[i] = next;
    if (i === 0) ttft = performance.now() - t0;
    opts.onToken?.(next, logits!);
    if (i + 1 < opts.maxNewTokens) {
      logits = await step(next, prompt.length + i, true);
      decodeTokens++;
    }
  }
  return {
    tokens: out,
    prefillTokens: prefillLen,
    prefillMs,
    timeToFirstTokenMs: opts.maxNewTokens > 0 ? ttft : 0,
    decodeTokens,
    decodeMs: performance.now() - tDecode,
    cachedTokens: cachedTokens(cache),
  };
}
