import type { AttentionOp, HostAttentionOp } from './types.js';

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
