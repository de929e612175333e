import type { Engine, Tensor } from '../engine/types.js';

/**
 * The contract between the model's attention layer and ring attention: below
 * the model, so that attention/ never imports from model/. Arrays are
 * token-major: [tokens, heads, headDim].
 */

/** The attention tensors of one layer, on the model's engine: q [n, heads, headDim]; k, v [n, kvHeads, headDim]; o like q; lse [heads, n]. */
export interface AttentionTensors {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  o: Tensor;
  lse: Tensor;
}

/**
 * What the attention layer of the model needs from ring attention, for the
 * local shard, on engine tensors: an engine with its own attention (webgpu)
 * keeps them on the device; others run on host arrays (`onHostArrays`).
 */
export interface AttentionOp {
  /** Writes o and lse from q, k, v. */
  forward(engine: Engine, t: AttentionTensors): Promise<void>;
  /** Writes dq, dk, dv from the forward's tensors and dL/do. */
  backward(engine: Engine, saved: AttentionTensors, dO: Tensor, grads: { dq: Tensor; dk: Tensor; dv: Tensor }): Promise<void>;
}

/** Attention on host arrays: q [n, heads, headDim]; k, v [n, kvHeads, headDim]; returns o [n, heads, headDim], lse [heads, n]. */
export interface HostAttentionOp {
  forward(q: Float32Array, k: Float32Array, v: Float32Array): Promise<{ o: Float32Array; lse: Float32Array }>;
  backward(
    saved: { q: Float32Array; k: Float32Array; v: Float32Array; o: Float32Array; lse: Float32Array },
    dO: Float32Array,
  ): Promise<{ dq: Float32Array; dk: Float32Array; dv: Float32Array }>;
}

/**
 * An attention op on host arrays as the model's attention layer: reads q, k, v
 * (and for backward o, lse, dO) from the engine, writes the results back. On the
 * native engine a read is the engine's own memory, so nothing is copied on the
 * way out.
 */
export function onHostArrays(op: HostAttentionOp): AttentionOp {
  return {
    async forward(engine, t) {
      const out = await op.forward(await engine.read(t.q), await engine.read(t.k), await engine.read(t.v));
      if (out.o.length !== t.o.length) throw new Error(`model: attention returned ${out.o.length} outputs, expected ${t.o.length}`);
      engine.write(t.o, out.o);
      engine.write(t.lse, out.lse);
    },
    async backward(engine, s, dO, g) {
      const saved = { q: await engine.read(s.q), k: await engine.read(s.k), v: await engine.read(s.v), o: await engine.read(s.o), lse: await engine.read(s.lse) };
      const grad = await op.backward(saved, await engine.read(dO));
      engine.write(g.dq, grad.dq);
      engine.write(g.dk, grad.dk);
      engine.write(g.dv, grad.dv);
    },
  };
}
