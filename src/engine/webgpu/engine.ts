import { EngineMemory, type AdamWArgs, type Engine, type IntTensor, type MatmulShape, type NormShape, type RopeShape, type Tensor } from '../types.js';
import type { OpenedGpu } from './device.js';
import { createGpuContext, grid, MAX_WORKGROUPS, type GpuBinding, type GpuContext, type UniformWord } from './gpu.js';
import {
  addKernel,
  adamwKernel,
  crossEntropyKernel,
  embedBackwardKernel,
  embedKernel,
  matmulKernel,
  MM,
  NORM_CHUNK,
  normColumnsKernel,
  normDxKernel,
  normKernel,
  normPartialsKernel,
  normStatsKernel,
  ropeKernel,
  rowThreads,
  siluBackwardKernel,
  siluKernel,
  sumKernel,
  SUMSQ_ITEMS,
  sumSquaresKernel,
  WG,
  zeroKernel,
  type Kernel,
  type Slots,
} from './ops.js';
import { createWebGPUAttention } from './attention.js';

/**
 * The webgpu engine: every buffer a GPUBuffer on one device, every op a WGSL
 * compute kernel (ops.ts) recorded through GpuContext (gpu.ts) and run on
 * flush. Host writes are copied when called and ordered with the ops; `read`
 * returns a fresh array once everything recorded before it has run.
 *
 * Same semantics as the native engine (native/engine_impl.h), in float32: the
 * reductions (norm statistics, softmax, sumSquares, the loss sum) are fixed
 * trees rather than native's running float64 or float32 sums, so results
 * agree within float32 rounding, and are the same bits from run to run on one
 * adapter (no atomics anywhere). What a GPU cannot do is throw from inside a
 * kernel: token ids outside the embedding table give zero rows (embed) or are
 * skipped (embedBackward), and a crossEntropy target past the vocabulary counts
 * as no target; the native engine throws for both. Sizes are checked here.
 */

export interface WebGPUEngineOptions {
  /** Cap on the bytes of all buffers; default RINGATTN_ENGINE_MAX_BYTES, else none (EngineMemory). */
  maxBytes?: number;
}

export function createWebGPUEngine(gpu: OpenedGpu, opts: WebGPUEngineOptions = {}): Engine {
  const ctx: GpuContext = createGpuContext(gpu.device);
  const buffers = new Map<number, GPUBuffer>();
  const memory = new EngineMemory('webgpu', opts.maxBytes);
  let nextId = 0;

  // Scratch for ops' intermediates (row statistics, partial sums): one buffer, grown
  // on demand, outside the cap and bufferCount, like the native engine's temporaries.
  // Ops run in order, so each op may reuse it. A replaced one may still be bound by
  // recorded work: it is destroyed after the next flush.
  let scratchBuf: GPUBuffer | null = null;
  let scratchLen = 0;
  let retired: GPUBuffer[] = [];
  const scratch = (elements: number): GpuBinding => {
    if (elements > scratchLen) {
      if (scratchBuf) retired.push(scratchBuf);
      scratchLen = Math.max(elements, 2 * scratchLen, 1024);
      scratchBuf = ctx.buffer(scratchLen);
    }
    return { buffer: scratchBuf!, offset: 0, length: elements };
  };
  const part = (s: GpuBinding, start: number, length: number): GpuBinding => ({ buffer: s.buffer, offset: s.offset + start, length });

  const binding = (t: Tensor | IntTensor): GpuBinding => {
    const buffer = buffers.get(t.id);
    if (!buffer) throw new Error(`webgpu engine: buffer ${t.id} is not live`);
    if (t.offset + t.length > buffer.size / 4) throw new RangeError(`webgpu engine: tensor outside buffer ${t.id}`);
    return { buffer, offset: t.offset, length: t.length };
  };
  const need = (what: string, t: Tensor | IntTensor, n: number): GpuBinding => {
    if (t.length < n) throw new RangeError(`webgpu engine: ${what} holds ${t.length} elements, needs ${n}`);
    return binding(t);
  };
  const u32 = (what: string, n: number): number => {
    if (!(Number.isInteger(n) && n >= 0 && n < 2 ** 32)) throw new RangeError(`webgpu engine: ${what} must be a non-negative 32-bit integer, got ${n}`);
    return n;
  };
  const f32 = (x: number): UniformWord => ({ f32: x });

  // Dawn refuses two writable bindings of overlapping ranges of one buffer in one dispatch,
  // and every binding here is writable; a binding's window starts up to `align` bytes
  // before its tensor. So tensors of one buffer whose ranges come that close share one
  // binding spanning them (ops.ts Slots), each reached at its own offset in it.
  const alignElems = Math.max(1, gpu.device.limits.minStorageBufferOffsetAlignment / 4);
  function run(make: (slots: Slots) => Kernel, tensors: GpuBinding[], fields: UniformWord[], workgroups: [number, number?]): void {
    const groups: { buffer: GPUBuffer; lo: number; hi: number }[] = [];
    const of: number[] = [];
    for (const t of tensors) {
      const lo = t.offset;
      const hi = t.offset + Math.max(1, t.length);
      let g = groups.findIndex((q) => q.buffer === t.buffer && lo - alignElems < q.hi && q.lo - alignElems < hi);
      if (g < 0) {
        g = groups.length;
        groups.push({ buffer: t.buffer, lo, hi });
      } else {
        groups[g].lo = Math.min(groups[g].lo, lo);
        groups[g].hi = Math.max(groups[g].hi, hi);
      }
      of.push(g);
    }
    // A widened group may now reach another of the same buffer: merge until none do.
    for (let merged = true; merged; ) {
      merged = false;
      for (let i = 0; i < groups.length && !merged; i++)
        for (let j = i + 1; j < groups.length && !merged; j++) {
          const a = groups[i];
          const b = groups[j];
          if (a.buffer === b.buffer && a.lo - alignElems < b.hi && b.lo - alignElems < a.hi) {
            a.lo = Math.min(a.lo, b.lo);
            a.hi = Math.max(a.hi, b.hi);
            groups.splice(j, 1);
            for (let k = 0; k < of.length; k++) of[k] = of[k] === j ? i : of[k] > j ? of[k] - 1 : of[k];
            merged = true;
          }
        }
    }
    // Slots numbered in order of first use, as ops.ts's prelude declares them.
    const order: number[] = [];
    const slots = of.map((g) => {
      let k = order.indexOf(g);
      if (k < 0) k = order.push(g) - 1;
      return k;
    });
    const bindings = order.map((g) => ({ buffer: groups[g].buffer, offset: groups[g].lo, length: groups[g].hi - groups[g].lo }));
    const deltas = tensors.map((t, i) => t.offset - groups[of[i]].lo);
    const k = make(slots);
    ctx.dispatch({ key: k.key, wgsl: k.wgsl, bindings, uniforms: [...deltas, ...fields], workgroups });
  }

  function check(): void {
    const errors = ctx.takeErrors();
    if (errors.length) throw new Error(`webgpu engine: ${errors[0]}${errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''}`);
  }

  async function flush(): Promise<void> {
    await ctx.flush();
    const old = retired;
    retired = [];
    old.forEach((b) => b.destroy());
    check();
  }

  function alloc(length: number, kind: 'float32' | 'int32'): number {
    if (!(Number.isSafeInteger(length) && length >= 0)) throw new RangeError(`webgpu engine: buffer of ${length} elements`);
    memory.take(length, kind);
    const id = nextId++;
    buffers.set(id, ctx.buffer(length));
    return id;
  }

  /** Matmul: one workgroup per BM x BN tile of C (ops.ts matmulKernel). */
  function matmul(s: MatmulShape, c: Tensor, a: Tensor, b: Tensor): void {
    const m = u32('matmul m', s.m);
    const n = u32('matmul n', s.n);
    const k = u32('matmul k', s.k);
    const C = need('matmul c', c, m * n);
    const A = need('matmul a', a, m * k);
    const B = need('matmul b', b, k * n);
    if (m === 0 || n === 0) return;
    const gx = Math.ceil(n / MM.BN);
    const gy = Math.ceil(m / MM.BM);
    if (gx > MAX_WORKGROUPS || gy > MAX_WORKGROUPS) throw new RangeError(`webgpu engine: matmul ${m} x ${n} has more tiles than a dispatch holds`);
    run((sl) => matmulKernel(Boolean(s.transA), Boolean(s.transB), Boolean(s.accumulate), sl), [C, A, B], [m, n, k], [gx, gy]);
  }

  return {
    name: 'webgpu',
    description: `webgpu ${gpu.adapter.name} (${gpu.adapter.backend})`,
    floats(length) {
      return { kind: 'f32', id: alloc(length, 'float32'), offset: 0, length };
    },
    ints(length) {
      return { kind: 'i32', id: alloc(length, 'int32'), offset: 0, length };
    },
    bufferCount: () => buffers.size,
    write(dst, src) {
      ctx.write(need('write', dst, src.length), src);
    },
    writeInts(dst, src) {
      ctx.write(need('writeInts', dst, src.length), src);
    },
    async read(t) {
      const bytes = await ctx.read(binding(t));
      check();
      return new Float32Array(bytes);
    },
    flush,
    zero(t) {
      const T = binding(t);
      if (t.length > 0) run((sl) => zeroKernel(sl), [T], [t.length], grid(t.length, WG));
    },
    embed(out, table, tokens, rows, dim) {
      u32('embed rows', rows);
      u32('embed dim', dim);
      const O = need('embed out', out, rows * dim);
      const E = binding(table);
      const K = need('embed tokens', tokens, rows);
      const vocab = dim > 0 ? Math.floor(table.length / dim) : 0;
      if (rows * dim > 0) run((sl) => embedKernel(sl), [O, E, K], [rows * dim, dim, vocab], grid(rows * dim, WG));
    },
    embedBackward(dTable, dOut, tokens, rows, dim) {
      u32('embedBackward rows', rows);
      u32('embedBackward dim', dim);
      const G = binding(dTable);
      const D = need('embedBackward dOut', dOut, rows * dim);
      const K = need('embedBackward tokens', tokens, rows);
      const vocab = dim > 0 ? Math.floor(dTable.length / dim) : 0;
      if (rows > 0 && dim > 0) run((sl) => embedBackwardKernel(sl), [G, D, K], [rows, dim, vocab], grid(dim, WG));
    },
    norm(s: NormShape, out, x, w, b) {
      const rows = u32('norm rows', s.rows);
      const d = u32('norm dim', s.dim);
      const layer = s.kind === 'layer';
      if (layer && !b) throw new Error('webgpu engine: LayerNorm needs a bias');
      const bindings = [need('norm out', out, rows * d), need('norm x', x, rows * d), need('norm w', w, d)];
      if (layer) bindings.push(need('norm b', b!, d));
      if (rows === 0 || d === 0) return;
      const wg = rowThreads(d);
      run((sl) => normKernel(layer, wg, sl), bindings, [rows, d, f32(s.eps)], grid(rows, 1));
    },
    normBackward(s: NormShape, dx, dw, db, dOut, x, w) {
      const rows = u32('normBackward rows', s.rows);
      const d = u32('normBackward dim', s.dim);
      const layer = s.kind === 'layer';
      if (layer && !db) throw new Error('webgpu engine: LayerNorm needs a bias gradient');
      const DX = need('normBackward dx', dx, rows * d);
      const DW = need('normBackward dw', dw, d);
      const DB = layer ? need('normBackward db', db!, d) : null;
      const DY = need('normBackward dOut', dOut, rows * d);
      const X = need('normBackward x', x, rows * d);
      const W = need('normBackward w', w, d);
      if (rows === 0 || d === 0) return;
      const chunks = Math.ceil(rows / NORM_CHUNK);
      const S = scratch(4 * rows + (layer ? 2 : 1) * chunks * d);
      const stats = part(S, 0, 4 * rows);
      const partials = part(S, 4 * rows, (layer ? 2 : 1) * chunks * d);
      const wg = rowThreads(d);
      // Statistics, then dw/db (which read dOut), then dx (which may be dOut): aliasing-safe order.
      run((sl) => normStatsKernel(layer, wg, sl), [DY, X, W, stats], [rows, d, f32(s.eps)], grid(rows, 1));
      run((sl) => normPartialsKernel(layer, sl), [DY, X, stats, partials], [rows, d, chunks], grid(d * chunks, WG));
      run((sl) => normColumnsKernel(layer, sl), layer ? [partials, DW, DB!] : [partials, DW], [d, chunks], grid(d, WG));
      run((sl) => normDxKernel(sl), [DX, DY, X, W, stats], [rows * d, d], grid(rows * d, WG));
    },
    matmul,
    rope(s: RopeShape, x, cos, sin) {
      const rows = u32('rope rows', s.rows);
      const heads = u32('rope heads', s.heads);
      const hd = u32('rope headDim', s.headDim);
      if (hd % 2) throw new RangeError('webgpu engine: rope: head dimension must be even');
      const half = hd / 2;
      const X = need('rope x', x, rows * heads * hd);
      const C = need('rope cos', cos, rows * half);
      const S = need('rope sin', sin, rows * half);
      const n = rows * heads * half;
      if (n > 0) run((sl) => ropeKernel(sl), [X, C, S], [n, heads, half, f32(s.inverse ? -1 : 1)], grid(n, WG));
    },
    silu(out, u, length) {
      u32('silu length', length);
      const O = need('silu out', out, length);
      const U = need('silu u', u, length);
      if (length > 0) run((sl) => siluKernel(sl), [O, U], [length], grid(length, WG));
    },
    siluBackward(du, dOut, u, length) {
      u32('siluBackward length', length);
      const D = need('siluBackward du', du, length);
      const G = need('siluBackward dOut', dOut, length);
      const U = need('siluBackward u', u, length);
      if (length > 0) run((sl) => siluBackwardKernel(sl), [D, G, U], [length], grid(length, WG));
    },
    add(out, a, b, length) {
      u32('add length', length);
      const O = need('add out', out, length);
      const A = need('add a', a, length);
      const B = need('add b', b, length);
      if (length > 0) run((sl) => addKernel(sl), [O, A, B], [length], grid(length, WG));
    },
    crossEntropy(rows, vocab, logits, targets, loss, gradScale) {
      u32('crossEntropy rows', rows);
      u32('crossEntropy vocab', vocab);
      const L = need('crossEntropy logits', logits, rows * vocab);
      const T = need('crossEntropy targets', targets, rows);
      const O = need('crossEntropy loss', loss, 1);
      if (rows === 0) return;
      if (vocab === 0) throw new RangeError('webgpu engine: crossEntropy over an empty vocabulary');
      // Per-row losses, then one workgroup adds them in a fixed order to loss[0].
      const rowLoss = scratch(rows);
      const wg = rowThreads(vocab);
      run((sl) => crossEntropyKernel(gradScale !== null, wg, sl), [L, T, rowLoss], [rows, vocab, f32(gradScale ?? 0)], grid(rows, 1));
      run((sl) => sumKernel(true, sl), [O, rowLoss], [rows], [1]);
    },
    sumSquares(out, x) {
      const O = need('sumSquares out', out, 1);
      const X = binding(x);
      const n = u32('sumSquares length', x.length);
      if (n === 0) {
        run((sl) => zeroKernel(sl), [O], [1], [1]);
        return;
      }
      // Float32 (WGSL has no float64): per-workgroup tree sums, then one workgroup sums those in order.
      const groups = Math.ceil(n / (WG * SUMSQ_ITEMS));
      const partials = scratch(groups);
      run((sl) => sumSquaresKernel(sl), [partials, X], [n], grid(groups, 1));
      run((sl) => sumKernel(false, sl), [O, partials], [groups], [1]);
    },
    adamw(a: AdamWArgs, params, grads, m, v) {
      const n = u32('adamw length', params.length);
      const P = binding(params);
      const G = need('adamw grads', grads, n);
      const M = need('adamw m', m, n);
      const V = need('adamw v', v, n);
      if (n === 0) return;
      // Float32 here (native: float64): identical on every rank on the same adapter.
      const hp = [a.lr, a.beta1, a.beta2, a.eps, a.decay, a.bc1, a.bc2, a.gradScale, 1 - a.beta1, 1 - a.beta2].map(f32);
      run((sl) => adamwKernel(sl), [P, G, M, V], [n, a.gradScale === 1 ? 0 : 1, ...hp], grid(n, WG));
    },
    // Attention on the engine's buffers (attention.ts), recorded in order with the ops here.
    attention: createWebGPUAttention(ctx, binding),
    dispose() {
      // Recorded work goes out first; a destroyed buffer's memory is released once submitted work using it is done.
      ctx.submit();
      for (const b of buffers.values()) b.destroy();
      buffers.clear();
      scratchBuf?.destroy();
      scratchBuf = null;
      scratchLen = 0;
      retired.forEach((b) => b.destroy());
      retired = [];
    },
  };
}
