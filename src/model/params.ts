import { deriveSeed, randn } from '../tensor/random.js';
import type { ModelConfig, ParamSpec, Params } from './types.js';

/**
 * The flat parameter layout. Every matrix is stored row-major with the shape that
 * the forward pass multiplies by on the right (x[n, in] @ W[in, out]), so every
 * projection is a plain, non-transposed 2-D matMul: the only fast one on wasm.
 *
 *   embed                    [vocab, dModel]
 *   layers.L.attn_norm       [dModel]            (+ layers.L.attn_norm_bias for LayerNorm)
 *   layers.L.wq              [dModel, heads * headDim]
 *   layers.L.wk, .wv         [dModel, kvHeads * headDim]
 *   layers.L.wo              [heads * headDim, dModel]
 *   layers.L.ffn_norm        [dModel]            (+ layers.L.ffn_norm_bias)
 *   layers.L.w1              [dModel, ffnHidden]
 *   layers.L.w2              [ffnHidden, dModel]
 *   final_norm               [dModel]            (+ final_norm_bias)
 *   head                     [dModel, vocab]     (absent when tiedEmbeddings: logits = h @ embed^T)
 *
 * No projection has a bias. The order above is the order in `flat`.
 */

/** Width of one attention head. */
export function headDimOf(cfg: ModelConfig): number {
  return cfg.dModel / cfg.heads;
}

/** Throws on a configuration the model cannot run (the spec schema normally rejects these first). */
export function checkModelConfig(cfg: ModelConfig): void {
  const ints: Array<[string, number]> = [
    ['vocabSize', cfg.vocabSize],
    ['dModel', cfg.dModel],
    ['layers', cfg.layers],
    ['heads', cfg.heads],
    ['kvHeads', cfg.kvHeads],
    ['ffnHidden', cfg.ffnHidden],
    ['ffnChunk', cfg.ffnChunk],
  ];
  for (const [name, v] of ints) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`model: ${name} must be a positive integer, got ${v}`);
  }
  if (cfg.dModel % cfg.heads !== 0) throw new Error(`model: dModel ${cfg.dModel} is not divisible by heads ${cfg.heads}`);
  if (headDimOf(cfg) % 2 !== 0) throw new Error(`model: head dimension ${headDimOf(cfg)} must be even for rotary embeddings`);
  if (cfg.heads % cfg.kvHeads !== 0) throw new Error(`model: kvHeads ${cfg.kvHeads} does not divide heads ${cfg.heads}`);
  if (cfg.norm !== 'rms' && cfg.norm !== 'layer') throw new Error(`model: unknown norm ${String(cfg.norm)}`);
  if (!(cfg.ropeBase > 0)) throw new Error(`model: ropeBase must be positive, got ${cfg.ropeBase}`);
  if (!(cfg.initStd > 0)) throw new Error(`model: initStd must be positive, got ${cfg.initStd}`);
}

export function paramSpecs(cfg: ModelConfig): ParamSpec[] {
  checkModelConfig(cfg);
  const d = cfg.dModel;
  const hd = headDimOf(cfg);
  const specs: ParamSpec[] = [];
  let offset = 0;
  const add = (name: string, shape: number[]): void => {
    const size = shape.reduce((a, b) => a * b, 1);
    specs.push({ name, shape, offset, size });
    offset += size;
  };
  const addNorm = (name: string): void => {
    add(name, [d]);
    if (cfg.norm === 'layer') add(`${name}_bias`, [d]);
  };
  add('embed', [cfg.vocabSize, d]);
  for (let l = 0; l < cfg.layers; l++) {
    const p = `layers.${l}.`;
    addNorm(`${p}attn_norm`);
    add(`${p}wq`, [d, cfg.heads * hd]);
    add(`${p}wk`, [d, cfg.kvHeads * hd]);
    add(`${p}wv`, [d, cfg.kvHeads * hd]);
    add(`${p}wo`, [cfg.heads * hd, d]);
    addNorm(`${p}ffn_norm`);
    add(`${p}w1`, [d, cfg.ffnHidden]);
    add(`${p}w2`, [cfg.ffnHidden, d]);
  }
  addNorm('final_norm');
  if (!cfg.tiedEmbeddings) add('head', [d, cfg.vocabSize]);
  return specs;
}

export function paramCount(cfg: ModelConfig): number {
  const specs = paramSpecs(cfg);
  const last = specs[specs.length - 1];
  return last.offset + last.size;
}

function isNormWeight(name: string): boolean {
  return /(^|\.)(attn_norm|ffn_norm|final_norm)$/.test(name);
}

function isNormBias(name: string): boolean {
  return name.endsWith('_norm_bias');
}

/** Projections that write into the residual stream: scaled down so the stream's variance does not grow with depth. */
function isResidualOutput(name: string): boolean {
  return name.endsWith('.wo') || name.endsWith('.w2');
}

/**
 * Deterministic from `seed` alone, so every worker builds the same parameters
 * without any communication. Each tensor draws from its own stream (seed, index),
 * which keeps a tensor's values independent of how large the tensors before it are.
 */
export function initParams(cfg: ModelConfig, seed: number): Params {
  const specs = paramSpecs(cfg);
  const flat = new Float32Array(specs[specs.length - 1].offset + specs[specs.length - 1].size);
  const residualScale = 1 / Math.sqrt(2 * cfg.layers);
  specs.forEach((s, i) => {
    const view = flat.subarray(s.offset, s.offset + s.size);
    if (isNormWeight(s.name)) view.fill(1);
    else if (isNormBias(s.name)) view.fill(0);
    else {
      const std = cfg.initStd * (isResidualOutput(s.name) ? residualScale : 1);
      view.set(randn(s.size, deriveSeed(seed, 0x6d6f64, i), std));
    }
  });
  return { flat, specs };
}

/** The slice of `params.flat` holding parameter `name`; pass `flat` to view a gradient (or any array) in the same layout. */
export function paramView(params: Params, name: string, flat: Float32Array = params.flat): Float32Array {
  const spec = findSpec(params.specs, name);
  return flat.subarray(spec.offset, spec.offset + spec.size);
}

export function findSpec(specs: ParamSpec[], name: string): ParamSpec {
  const spec = specs.find((s) => s.name === name);
  if (!spec) throw new Error(`no parameter named ${name}`);
  return spec;
}
