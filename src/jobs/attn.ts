import { loadTunedKernel } from '../engine/tuning.js';
import { slotGpu, workerThreads, type ClusterSpec } from '../config/index.js';
import { loadEngine, type Engine } from '../engine/index.js';
import { randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { UserError } from '../errors.js';
import type { JobDefinition } from './types.js';
import { readNpyAs, writeNpy } from '../tensor/npy.js';
import { selectBackend, tfjsWant } from '../tensor/backend.js';
import { checkLayout, defaultLayout, gatherShard, LAYOUTS, scatterShard, shardPositions, type Layout } from '../attention/layout.js';
import { ringAttentionBackward, ringAttentionForward, ringAttentionOp, type RingConfig } from '../attention/ring-attention.js';

/**
 * `ringattn attn`: ring attention on user arrays (.npy, [seq, heads, dim]), so
 * results can be compared with PyTorch or JAX. The launcher reads and checks
 * the files, hands each rank its layout shard, and reassembles the outputs.
 */

export interface AttnRequest {
  q: string;
  k: string;
  v: string;
  dout?: string;
  segments?: string;
  causal: boolean;
  /** Sliding window (src/kernels/types.ts); absent = none. */
  window?: number;
  layout?: Layout;
  out: string;
}

/** The problem's shape and mask: what the driver and every worker agree on. */
interface AttnShape {
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  causal: boolean;
  window?: number;
  layout: Layout;
}

export interface AttnInputs extends AttnShape {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  dout?: Float32Array;
  segments?: Int32Array;
  out: string;
}

/** Inputs read by the CLI, handed to the driver in the same process (never sent as job arguments). */
const prepared = new Map<string, AttnInputs>();

/** Reads and checks every input file; all errors are one line naming the file. */
export function prepareAttn(req: AttnRequest, worldSize: number): string {
  const q = readNpyAs(req.q, 'float32', 3);
  const k = readNpyAs(req.k, 'float32', 3);
  const v = readNpyAs(req.v, 'float32', 3);
  const [seqLen, heads, headDim] = q.shape;
  const [kLen, kvHeads, kDim] = k.shape;
  if (kLen !== seqLen || kDim !== headDim) throw new UserError(`${req.k}: shape [${k.shape}] does not fit q's [${q.shape}]: expected [${seqLen}, kv_heads, ${headDim}]`);
  if (v.shape.join() !== k.shape.join()) throw new UserError(`${req.v}: shape [${v.shape}] differs from k's [${k.shape}]`);
  if (kvHeads < 1 || heads % kvHeads !== 0) throw new UserError(`${req.k}: ${kvHeads} KV heads do not divide q's ${heads} heads`);
  let dout: Float32Array | undefined;
  if (req.dout) {
    const d = readNpyAs(req.dout, 'float32', 3);
    if (d.shape.join() !== q.shape.join()) throw new UserError(`${req.dout}: shape [${d.shape}] differs from q's [${q.shape}]`);
    dout = d.data;
  }
  let segments: Int32Array | undefined;
  if (req.segments) {
    const s = readNpyAs(req.segments, 'int32', 1);
    if (s.shape[0] !== seqLen) throw new UserError(`${req.segments}: ${s.shape[0]} segment ids for a sequence of ${seqLen}`);
    segments = s.data;
  }
  const layout = req.layout ?? (req.window ? 'contiguous' : defaultLayout(req.causal));
  if (!LAYOUTS.includes(layout)) throw new UserError(`--layout: expected one of ${LAYOUTS.join(', ')}, got "${layout}"`);
  checkLayout(layout, seqLen, worldSize);
  const token = randomBytes(8).toString('hex');
  prepared.set(token, { seqLen, heads, kvHeads, headDim, causal: req.causal, window: req.window, layout, q: q.data, k: k.data, v: v.data, dout, segments, out: req.out });
  return token;
}

interface ShardMeta extends AttnShape {
  hasDout: boolean;
  hasSegments: boolean;
}

/**
 * The engine to run on when attention belongs on a device: backend webgpu, or
 * backend auto with a hardware WebGPU adapter present. null: host arrays and a kernel.
 */
async function deviceEngine(spec: ClusterSpec, rank: number): Promise<Engine | null> {
  if (spec.backend !== 'webgpu') {
    if (spec.backend !== 'auto' || spec.engine !== 'auto') return null;
    // auto's own rule (engine/index.ts), without loading Dawn here for a CPU run.
    const { autoAdapter } = await import('../engine/webgpu/device.js');
    const gpu = slotGpu(spec, rank);
    if (typeof (await autoAdapter(gpu.want, gpu.slot)) === 'string') return null;
  }
  const { engine } = await loadEngine('auto', { threads: workerThreads(spec, rank), backend: spec.backend, gpu: slotGpu(spec, rank) });
  return engine.attention ? engine : null;
}

/** Ring attention with the shard's arrays uploaded to the engine; o, lse (and dq, dk, dv) read back. */
async function onEngine(
  engine: Engine,
  cfg: RingConfig,
  a: { q: Float32Array; k: Float32Array; v: Float32Array; dout?: Float32Array },
): Promise<Float32Array[]> {
  const put = (x: Float32Array) => {
    const t = engine.floats(x.length);
    engine.write(t, x);
    return t;
  };
  const t = { q: put(a.q), k: put(a.k), v: put(a.v), o: engine.floats(a.q.length), lse: engine.floats(a.q.length / cfg.headDim) };
  const op = ringAttentionOp(cfg);
  await op.forward(engine, t);
  const out = [Float32Array.from(await engine.read(t.o)), Float32Array.from(await engine.read(t.lse))];
  if (a.dout) {
    const g = { dq: engine.floats(a.q.length), dk: engine.floats(a.k.length), dv: engine.floats(a.v.length) };
    await op.backward(engine, t, put(a.dout), g);
    for (const x of [g.dq, g.dk, g.dv]) out.push(Float32Array.from(await engine.read(x)));
  }
  return out;
}

export const attnJob: JobDefinition = {
  kind: 'attn',
  async worker(ctx) {
    const { value, blobs } = await ctx.input('shard');
    const m = value as ShardMeta;
    const [q, k, v, ...rest] = blobs as Float32Array[];
    const dout = m.hasDout ? rest.shift() : undefined;
    const segments = m.hasSegments ? (rest.shift() as unknown as Int32Array) : undefined;
    const base = {
      ring: ctx.ring,
      reverse: ctx.reverse,
      causal: m.causal,
      window: m.window,
      heads: m.heads,
      kvHeads: m.kvHeads,
      headDim: m.headDim,
      overlap: ctx.spec.attention.overlap,
      wire: ctx.spec.ring.wire,
      positionsOf: (r: number) => shardPositions(m.layout, m.seqLen, ctx.worldSize, r),
      segments,
    };
    const engine = await deviceEngine(ctx.spec, ctx.rank);
    let out: Float32Array[];
    let kernelName: string;
    if (engine) {
      out = await onEngine(engine, base, { q, k, v, dout });
      kernelName = engine.name;
    } else {
      await selectBackend(tfjsWant(ctx.spec.backend));
      const { kernel } = await loadTunedKernel(ctx.spec, { heads: m.heads, kvHeads: m.kvHeads, headDim: m.headDim, threads: workerThreads(ctx.spec, ctx.rank) });
      const cfg = { ...base, kernel };
      const fwd = await ringAttentionForward(cfg, q, k, v);
      out = [fwd.o, fwd.lse];
      if (dout) {
        const g = await ringAttentionBackward(cfg, { q, k, v, o: fwd.o, lse: fwd.lse }, dout);
        out.push(g.dq, g.dk, g.dv);
      }
      kernelName = kernel.name;
    }
    ctx.log.info({ kernel: kernelName }, `rank ${ctx.rank}: ${q.length / (m.heads * m.headDim)} query rows done`);
    await ctx.result('out', null, out);
  },
  async driver(ctx) {
    const inputs = prepared.get(String(ctx.args.token));
    if (!inputs) throw new Error('attn: the driver has no prepared inputs');
    const { seqLen, heads, kvHeads, headDim, layout } = inputs;
    const n = ctx.worldSize;
    const qw = heads * headDim;
    const kw = kvHeads * headDim;
    for (let r = 0; r < n; r++) {
      const pos = shardPositions(layout, seqLen, n, r);
      const blobs = [gatherShard(inputs.q, pos, qw), gatherShard(inputs.k, pos, kw), gatherShard(inputs.v, pos, kw)] as Array<Float32Array | Int32Array>;
      if (inputs.dout) blobs.push(gatherShard(inputs.dout, pos, qw));
      if (inputs.segments) blobs.push(gatherShard(inputs.segments, pos, 1));
      const meta: ShardMeta = { seqLen, heads, kvHeads, headDim, causal: inputs.causal, window: inputs.window, layout, hasDout: !!inputs.dout, hasSegments: !!inputs.segments };
      await ctx.send(r, 'shard', meta, blobs);
    }
    const o = new Float32Array(seqLen * qw);
    const lse = new Float32Array(heads * seqLen);
    const grads = inputs.dout ? { dq: new Float32Array(seqLen * qw), dk: new Float32Array(seqLen * kw), dv: new Float32Array(seqLen * kw) } : null;
    for (let r = 0; r < n; r++) {
      const pos = shardPositions(layout, seqLen, n, r);
      const [ro, rlse, dq, dk, dv] = (await ctx.result(r, 'out')).blobs as Float32Array[];
      scatterShard(o, ro, pos, qw);
      // lse is [heads, seq]: scatter per head.
      for (let h = 0; h < heads; h++) for (let i = 0; i < pos.length; i++) lse[h * seqLen + pos[i]] = rlse[h * pos.length + i];
      if (grads) {
        scatterShard(grads.dq, dq, pos, qw);
        scatterShard(grads.dk, dk, pos, kw);
        scatterShard(grads.dv, dv, pos, kw);
      }
    }
    prepared.delete(String(ctx.args.token));
    return writeOutputs(inputs.out, { o, lse, grads, seqLen, heads, kvHeads, headDim });
  },
};

/** Writes every output into a hidden folder first, then moves them in: all files or none. */
function writeOutputs(dir: string, r: { o: Float32Array; lse: Float32Array; grads: { dq: Float32Array; dk: Float32Array; dv: Float32Array } | null; seqLen: number; heads: number; kvHeads: number; headDim: number }): string[] {
  mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.ringattn-tmp-${randomBytes(4).toString('hex')}`);
  mkdirSync(tmp);
  const files: Array<[string, Float32Array, number[]]> = [
    ['out.npy', r.o, [r.seqLen, r.heads, r.headDim]],
    ['lse.npy', r.lse, [r.heads, r.seqLen]],
  ];
  if (r.grads) {
    files.push(['dq.npy', r.grads.dq, [r.seqLen, r.heads, r.headDim]], ['dk.npy', r.grads.dk, [r.seqLen, r.kvHeads, r.headDim]], ['dv.npy', r.grads.dv, [r.seqLen, r.kvHeads, r.headDim]]);
  }
  try {
    for (const [name, data, shape] of files) writeNpy(path.join(tmp, name), data, shape);
    for (const [name] of files) renameSync(path.join(tmp, name), path.join(dir, name));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return files.map(([name]) => path.join(dir, name));
}
