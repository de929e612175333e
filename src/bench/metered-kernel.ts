import { isFullyMasked } from '../kernels/mask.js';
import type { AttentionKernel, BlockArgs, BlockGradArgs, BlockGrads, BlockPartial } from '../kernels/types.js';
import { gatherShard } from '../attention/layout.js';

/**
 * Wraps the real kernel for the bench: times every call by ring step (the
 * ring loop's own figure also counts the merge around the call), and in the
 * time-limited mode computes only a chosen subset of query rows.
 *
 * Subset mode keeps everything else the size of the full run, so memory and
 * the non-kernel work stay real: the block output it returns has every row
 * (written, as a kernel writes them, so its pages are resident), and each row
 * that has an allowed key in the block gets lse 0 and o 0, which makes the
 * ring loop merge it exactly as often as in the full run. Only the chosen
 * rows hold real attention; the bench never reads the others.
 */
export class MeteredKernel implements AttentionKernel {
  readonly name: string;
  /** Kernel milliseconds per ring step since the last reset. */
  fwdMs: number[];
  bwdMs: number[];
  private readonly subQ = new WeakMap<Float32Array, Float32Array>();
  private readonly subRows = new WeakMap<Float32Array, { dO: Float32Array; lse: Float32Array; delta: Float32Array }>();
  private readonly touched = new WeakSet<Float32Array>();
  private readonly subPos: Int32Array | null;

  constructor(
    readonly inner: AttentionKernel,
    private readonly opts: {
      ringSize: number;
      /** Ring step of the KV block with these positions (identity of the array). */
      stepOf: (kvPos: Int32Array) => number;
      /** Query rows to compute, ascending; null computes all. */
      rows: Int32Array | null;
      qPos: Int32Array;
    },
  ) {
    this.name = inner.name;
    this.fwdMs = new Array<number>(opts.ringSize).fill(0);
    this.bwdMs = new Array<number>(opts.ringSize).fill(0);
    this.subPos = opts.rows ? Int32Array.from(opts.rows, (r) => opts.qPos[r]) : null;
  }

  reset(): void {
    this.fwdMs.fill(0);
    this.bwdMs.fill(0);
  }

  private async time<T>(into: number[], step: number, run: () => Promise<T>): Promise<T> {
    const start = performance.now();
    const value = await run();
    into[step] += performance.now() - start;
    return value;
  }

  private subArgs(a: BlockArgs): BlockArgs {
    const rows = this.opts.rows!;
    let q = this.subQ.get(a.q);
    if (!q) {
      q = gatherShard(a.q, rows, a.heads * a.headDim);
      this.subQ.set(a.q, q);
    }
    return { ...a, qLen: rows.length, q, qPos: this.subPos!, qSeg: a.qSeg ? Int32Array.from(rows, (r) => a.qSeg![r]) : undefined };
  }

  async forward(a: BlockArgs): Promise<BlockPartial> {
    const step = this.opts.stepOf(a.kvPos);
    const rows = this.opts.rows;
    if (!rows) return this.time(this.fwdMs, step, () => this.inner.forward(a));
    const sub = this.subArgs(a);
    const part = isFullyMasked(sub) ? null : await this.time(this.fwdMs, step, () => this.inner.forward(sub));
    const { heads: H, headDim: D, qLen } = a;
    const o = new Float32Array(qLen * H * D).fill(0);
    const lse = new Float32Array(H * qLen).fill(-Infinity);
    let minKv = Infinity;
    if (a.causal) for (let j = 0; j < a.kvPos.length; j++) if (a.kvPos[j] < minKv) minKv = a.kvPos[j];
    for (let i = 0; i < qLen; i++) {
      if (a.causal && a.qPos[i] < minKv) continue;
      for (let h = 0; h < H; h++) lse[h * qLen + i] = 0;
    }
    if (part) {
      const w = H * D;
      for (let s = 0; s < rows.length; s++) {
        const r = rows[s];
        o.set(part.o.subarray(s * w, (s + 1) * w), r * w);
        for (let h = 0; h < H; h++) lse[h * qLen + r] = part.lse[h * rows.length + s];
      }
    }
    return { o, lse };
  }

  async backward(a: BlockArgs, g: BlockGradArgs, acc: BlockGrads): Promise<void> {
    const step = this.opts.stepOf(a.kvPos);
    const rows = this.opts.rows;
    if (!rows) return this.time(this.bwdMs, step, () => this.inner.backward(a, g, acc));
    const { heads: H, headDim: D, qLen } = a;
    const w = H * D;
    if (!this.touched.has(acc.dq)) {
      // A real kernel adds into every row of dq: make its pages resident as they would be.
      for (let i = 0; i < acc.dq.length; i++) acc.dq[i] += 0;
      this.touched.add(acc.dq);
    }
    const sub = this.subArgs(a);
    if (isFullyMasked(sub)) return;
    let sg = this.subRows.get(g.dO);
    if (!sg) {
      sg = { dO: gatherShard(g.dO, rows, w), lse: gatherHeadRows(g.lse, rows, H, qLen), delta: gatherHeadRows(g.delta, rows, H, qLen) };
      this.subRows.set(g.dO, sg);
    }
    const dq = new Float32Array(rows.length * w);
    await this.time(this.bwdMs, step, () => this.inner.backward(sub, sg, { dq, dk: acc.dk, dv: acc.dv }));
    for (let s = 0; s < rows.length; s++) {
      const base = rows[s] * w;
      for (let x = 0; x < w; x++) acc.dq[base + x] += dq[s * w + x];
    }
  }
}

/** Rows `rows` of a head-major [heads, n] array (lse, delta). */
export function gatherHeadRows(x: Float32Array, rows: Int32Array, heads: number, n: number): Float32Array {
  const out = new Float32Array(heads * rows.length);
  for (let h = 0; h < heads; h++) for (let s = 0; s < rows.length; s++) out[h * rows.length + s] = x[h * n + rows[s]];
  return out;
}
