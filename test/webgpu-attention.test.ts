/**
 * The WebGPU attention kernels (src/engine/webgpu/attention.ts) against the
 * float64 references, on whatever adapter Dawn finds (lavapipe here and in
 * CI: a CPU, so the sizes stay small). Errors are relative in the max norm:
 * max|gpu - ref| / max|ref| over a tensor (test/helpers/attention.ts relErr;
 * -Infinity entries must match exactly). Tensors live in two slabs (floats,
 * ints) at offsets that are not multiples of 64 elements, several tensors to
 * a buffer, through the test's own small registry; engine.ts is not used.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { AttentionMask, AttentionShape, EngineAttention, IntTensor, Tensor } from '../src/engine/types.js';
import { createWebGPUAttention, planBackward, planForward, type Geometry } from '../src/engine/webgpu/attention.js';
import { openGpu, type OpenedGpu } from '../src/engine/webgpu/device.js';
import { createGpuContext, type GpuBinding, type GpuContext } from '../src/engine/webgpu/gpu.js';
import { rowDelta } from '../src/kernels/merge.js';
import { referenceKernel } from '../src/kernels/reference.js';
import { fullAttentionReference } from './oracles/full-attention.js';
import type { BlockArgs } from '../src/kernels/types.js';
import { randn } from '../src/tensor/random.js';
import { gatherRows, packedSegments, range, relErr } from './helpers/attention.js';

const TOL = 1e-4;

let gpu: OpenedGpu | null = null;
let skip: string | false = false;
try {
  gpu = await openGpu(undefined, { allowSoftware: true, what: 'webgpu attention test' });
} catch (e) {
  skip = `no WebGPU device: ${(e as Error).message}`;
  console.log(`# skipping test/webgpu-attention.test.ts: ${skip}`);
}

/** Tensors bump-allocated in one float and one int buffer, each after a gap that keeps offsets off multiples of 64. */
class Registry {
  private readonly buffers = new Map<number, GPUBuffer>();
  private next = { f32: 0, i32: 0 };
  private gaps = 0;
  constructor(
    readonly ctx: GpuContext,
    private readonly capacity: number,
  ) {
    this.buffers.set(1, ctx.buffer(capacity));
    this.buffers.set(2, ctx.buffer(capacity));
  }
  readonly bind = (t: Tensor | IntTensor): GpuBinding => {
    const buffer = this.buffers.get(t.id);
    if (!buffer) throw new Error(`no buffer ${t.id}`);
    return { buffer, offset: t.offset, length: t.length };
  };
  /** Tight: tensors 37..59 elements apart, so that a tensor's 256-byte binding window reaches into its neighbour. */
  tight = false;
  private place(kind: 'f32' | 'i32', length: number): number {
    const gap = this.tight ? 37 + ((this.gaps++ * 11) % 23) : 101;
    let offset = this.next[kind] + gap;
    if (offset % 64 === 0) offset++;
    this.next[kind] = offset + length;
    if (this.next[kind] > this.capacity) throw new Error('test registry full');
    return offset;
  }
  floats(data: Float32Array | number): Tensor {
    const values = typeof data === 'number' ? new Float32Array(data) : data;
    const t: Tensor = { kind: 'f32', id: 1, offset: this.place('f32', values.length), length: values.length };
    this.ctx.write(this.bind(t), values);
    return t;
  }
  ints(data: Int32Array): IntTensor {
    const t: IntTensor = { kind: 'i32', id: 2, offset: this.place('i32', data.length), length: data.length };
    this.ctx.write(this.bind(t), data);
    return t;
  }
  async read(t: Tensor): Promise<Float32Array> {
    return new Float32Array(await this.ctx.read(this.bind(t)));
  }
  /** Frees every tensor (after the reads of a case have completed). */
  clear(): void {
    this.next = { f32: 0, i32: 0 };
    this.tight = false;
  }
}

const ctx = gpu ? createGpuContext(gpu.device) : null;
const reg = ctx ? new Registry(ctx, 1 << 21) : null;
const attentions = new Map<number, EngineAttention>();
/** An EngineAttention whose tile plans fit `storage` bytes of workgroup memory (0: the device's limit). */
function attention(storage = 0): EngineAttention {
  let a = attentions.get(storage);
  if (!a) {
    a = createWebGPUAttention(ctx!, reg!.bind, storage ? { workgroupStorage: storage } : {});
    attentions.set(storage, a);
  }
  return a;
}

after(() => {
  if (gpu) console.log(`# max relative errors (max norm): ${Object.entries(worst).map(([k, e]) => `${k} ${e.toExponential(2)}`).join(', ')}`);
  gpu?.close();
});

const worst = { o: 0, lse: 0, delta: 0, dq: 0, dk: 0, dv: 0 };
function check(label: string, key: keyof typeof worst, actual: ArrayLike<number>, expected: ArrayLike<number>, tol = TOL): void {
  const e = relErr(actual, expected);
  worst[key] = Math.max(worst[key], e);
  assert.ok(e <= tol, `${label} ${key}: relative error ${e} exceeds ${tol}`);
}

function noErrors(): void {
  assert.deepEqual(ctx!.takeErrors(), [], 'GPU errors');
}

interface Case {
  name: string;
  heads: number;
  kvHeads: number;
  headDim: number;
  qPos: Int32Array;
  kvPos: Int32Array;
  causal: boolean;
  /** Sliding window (src/kernels/types.ts). */
  window?: number;
  qSeg?: Int32Array;
  kvSeg?: Int32Array;
  /** Workgroup memory cap for the tile plans (forces small tiles, so short blocks still span many). */
  storage?: number;
  /** Pack the tensors tight, and pass one tensor for qPos and kvPos when they are equal. */
  tight?: boolean;
  seed: number;
}

function subtract(a: Float32Array, b: Float32Array): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] - b[i];
  return out;
}

/** Forward, delta and backward of one block against referenceKernel (float64 inside). */
async function runCase(c: Case): Promise<void> {
  const { heads, kvHeads, headDim: D, causal } = c;
  const qLen = c.qPos.length;
  const kvLen = c.kvPos.length;
  const scale = 1 / Math.sqrt(D);
  const s: AttentionShape = { heads, kvHeads, headDim: D, qLen, kvLen, causal, window: c.window, scale };
  const q = randn(qLen * heads * D, c.seed * 10 + 1);
  const k = randn(kvLen * kvHeads * D, c.seed * 10 + 2);
  const v = randn(kvLen * kvHeads * D, c.seed * 10 + 3);
  const dO = randn(qLen * heads * D, c.seed * 10 + 4);
  const args: BlockArgs = { heads, kvHeads, headDim: D, qLen, kvLen, q, k, v, qPos: c.qPos, kvPos: c.kvPos, causal, window: c.window, scale };
  if (c.qSeg && c.kvSeg) {
    args.qSeg = c.qSeg;
    args.kvSeg = c.kvSeg;
  }
  const ref = await referenceKernel.forward(args);
  const refDelta = rowDelta(dO, ref.o, qLen, heads, D);
  const zero = { dq: new Float32Array(q.length), dk: new Float32Array(k.length), dv: new Float32Array(v.length) };
  await referenceKernel.backward(args, { dO, lse: ref.lse, delta: refDelta }, zero);

  const r = reg!;
  r.tight = c.tight ?? false;
  const a = attention(c.storage);
  const qPos = r.ints(c.qPos);
  const samePos = c.tight && c.qPos.length === c.kvPos.length && c.qPos.every((p, i) => p === c.kvPos[i]);
  const m: AttentionMask = {
    qPos,
    kvPos: samePos ? qPos : r.ints(c.kvPos),
    qSeg: c.qSeg ? r.ints(c.qSeg) : null,
    kvSeg: c.kvSeg ? r.ints(c.kvSeg) : null,
  };
  const tq = r.floats(q);
  const tk = r.floats(k);
  const tv = r.floats(v);
  const tdO = r.floats(dO);
  // o and lse start as garbage: reset must clear them.
  const to = r.floats(randn(q.length, c.seed * 10 + 5));
  const tl = r.floats(randn(heads * qLen, c.seed * 10 + 6));
  a.reset(s, to, tl);
  a.forward(s, m, tq, tk, tv, to, tl);
  const o = await r.read(to);
  const lse = await r.read(tl);
  noErrors();
  check(c.name, 'o', o, ref.o);
  check(c.name, 'lse', lse, ref.lse);
  // Fully masked rows: lse -Infinity, o exactly 0.
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < qLen; i++) {
      if (ref.lse[h * qLen + i] !== -Infinity) continue;
      assert.equal(lse[h * qLen + i], -Infinity, `${c.name}: lse[${h}, ${i}]`);
      for (let d = 0; d < D; d++) assert.equal(o[(i * heads + h) * D + d], 0, `${c.name}: o[${i}, ${h}, ${d}]`);
    }
  }

  // delta from the GPU's o, against the host's formula on the same o.
  const tdelta = r.floats(heads * qLen);
  a.delta(s, tdO, to, tdelta);
  check(c.name, 'delta', await r.read(tdelta), rowDelta(dO, o, qLen, heads, D), 1e-5);

  // Backward from the reference's lse and delta, into non-zero accumulators.
  const dq0 = randn(q.length, c.seed * 10 + 7);
  const dk0 = randn(k.length, c.seed * 10 + 8);
  const dv0 = randn(v.length, c.seed * 10 + 9);
  const g = { dq: r.floats(dq0), dk: r.floats(dk0), dv: r.floats(dv0) };
  a.backward(s, m, { q: tq, k: tk, v: tv, dO: tdO, lse: r.floats(ref.lse), delta: r.floats(refDelta) }, g);
  const dq = await r.read(g.dq);
  const dk = await r.read(g.dk);
  const dv = await r.read(g.dv);
  noErrors();
  check(c.name, 'dq', subtract(dq, dq0), zero.dq);
  check(c.name, 'dk', subtract(dk, dk0), zero.dk);
  check(c.name, 'dv', subtract(dv, dv0), zero.dv);
  // Rows that saw no key, and keys no row saw, add exactly nothing.
  const untouched = (label: string, got: Float32Array, init: Float32Array, contribution: Float32Array, width: number) => {
    for (let row = 0; row < got.length / width; row++) {
      let zero = true;
      for (let x = 0; x < width && zero; x++) zero = contribution[row * width + x] === 0;
      if (!zero) continue;
      for (let x = 0; x < width; x++) assert.equal(got[row * width + x], init[row * width + x], `${c.name}: ${label} row ${row}`);
    }
  };
  untouched('dq', dq, dq0, zero.dq, D);
  untouched('dk', dk, dk0, zero.dk, D);
  untouched('dv', dv, dv0, zero.dv, D);
  r.clear();
}

/** Interleaves two position lists: a[0], b[0], a[1], b[1], ... (non-monotone, like two zigzag blocks side by side). */
function interleave(a: Int32Array, b: Int32Array): Int32Array {
  const out: number[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (i < a.length) out.push(a[i]);
    if (i < b.length) out.push(b[i]);
  }
  return Int32Array.from(out);
}

function concat(...xs: Int32Array[]): Int32Array {
  return Int32Array.from(xs.flatMap((x) => [...x]));
}

function segOf(pos: Int32Array, seg: Int32Array): Int32Array {
  return pos.map((p) => seg[p]);
}

const docs = packedSegments(128, 7, 91);
/** The small-tile plan (headDim 32: forward 16x16, backward 8x16): short blocks still span many tiles. */
const SMALL = 8192;

// Each distinct (headDim, plan) compiles three pipelines, a second or more each on llvmpipe: the cases share few.
const CASES: Case[] = [
  { name: 'no mask, qLen != kvLen, headDim 16', heads: 2, kvHeads: 2, headDim: 16, qPos: range(0, 45), kvPos: range(0, 37), causal: false, seed: 1 },
  { name: 'causal contiguous, headDim 64', heads: 2, kvHeads: 2, headDim: 64, qPos: range(0, 70), kvPos: range(0, 70), causal: true, seed: 3 },
  {
    name: 'causal contiguous, small tiles, headDim 32',
    heads: 2,
    kvHeads: 2,
    headDim: 32,
    qPos: range(0, 53),
    kvPos: range(0, 53),
    causal: true,
    storage: SMALL,
    seed: 4,
  },
  {
    // q: a low and a high chunk (rows 0..35 see no key; query tile 0 is skipped whole); kv: two chunks interleaved.
    name: 'causal zigzag, masked tiles and rows, headDim 64',
    heads: 2,
    kvHeads: 2,
    headDim: 64,
    qPos: concat(range(0, 36), range(100, 130)),
    kvPos: interleave(range(36, 60), range(76, 100)),
    causal: true,
    seed: 5,
  },
  {
    name: 'causal zigzag, small tiles, headDim 32',
    heads: 2,
    kvHeads: 1,
    headDim: 32,
    qPos: interleave(range(0, 20), range(100, 120)),
    kvPos: concat(range(60, 80), range(20, 40)),
    causal: true,
    storage: SMALL,
    seed: 6,
  },
  {
    name: 'segments (packed documents), small tiles, headDim 32',
    heads: 2,
    kvHeads: 2,
    headDim: 32,
    qPos: range(0, 50),
    kvPos: range(30, 77),
    qSeg: segOf(range(0, 50), docs),
    kvSeg: segOf(range(30, 77), docs),
    causal: false,
    storage: SMALL,
    seed: 7,
  },
  {
    name: 'causal + segments, headDim 64',
    heads: 2,
    kvHeads: 2,
    headDim: 64,
    qPos: range(10, 75),
    kvPos: range(0, 61),
    qSeg: segOf(range(10, 75), docs),
    kvSeg: segOf(range(0, 61), docs),
    causal: true,
    seed: 8,
  },
  { name: 'GQA heads 4 / kvHeads 2, causal, small tiles, headDim 32', heads: 4, kvHeads: 2, headDim: 32, qPos: range(40, 73), kvPos: range(0, 50), causal: true, storage: SMALL, seed: 9 },
  { name: 'MQA heads 4 / kvHeads 1, causal, headDim 128', heads: 4, kvHeads: 1, headDim: 128, qPos: range(0, 40), kvPos: range(0, 40), causal: true, seed: 10 },
  {
    name: 'causal zigzag, headDim 128',
    heads: 2,
    kvHeads: 1,
    headDim: 128,
    qPos: concat(range(0, 36), range(90, 126)),
    kvPos: concat(range(36, 54), range(72, 90)),
    causal: true,
    seed: 11,
  },
  { name: 'headDim 256, causal', heads: 2, kvHeads: 1, headDim: 256, qPos: range(4, 25), kvPos: range(0, 19), causal: true, seed: 12 },
  { name: 'headDim 20 (not a multiple of 4), causal', heads: 2, kvHeads: 1, headDim: 20, qPos: range(0, 31), kvPos: range(0, 26), causal: true, seed: 13 },
  { name: 'causal sliding window 9, small tiles (tiles skipped by the window), headDim 32', heads: 2, kvHeads: 1, headDim: 32, qPos: range(0, 70), kvPos: range(0, 70), causal: true, window: 9, storage: SMALL, seed: 16 },
  { name: 'sliding window 7 without causal, a later KV block, headDim 16', heads: 2, kvHeads: 2, headDim: 16, qPos: range(0, 40), kvPos: range(30, 60), causal: false, window: 7, seed: 17 },
  {
    name: 'fully masked block (every key after every query)',
    heads: 2,
    kvHeads: 1,
    headDim: 16,
    qPos: range(0, 20),
    kvPos: range(20, 45),
    causal: true,
    seed: 14,
  },
  {
    // Neighbours closer than the binding alignment, and qPos / kvPos one tensor: the kernels share bindings.
    name: 'tensors packed closer than the binding alignment, qPos and kvPos one tensor',
    heads: 2,
    kvHeads: 2,
    headDim: 32,
    qPos: range(0, 37),
    kvPos: range(0, 37),
    causal: true,
    storage: SMALL,
    tight: true,
    seed: 15,
  },
];

describe('webgpu attention', { skip }, () => {
  it('plans tiles that fit the workgroup memory', () => {
    const limit = gpu!.device.limits.maxComputeWorkgroupStorageSize;
    const show = (g: Geometry) => `${g.rows} rows x ${g.threadsPerRow} threads, ${g.dc4} vec4/thread, ${g.bytes} B`;
    for (const D of [16, 32, 64, 128, 256]) {
      const f = planForward(D, limit);
      const b = planBackward(D, limit);
      for (const g of [f.forward, b.dkdv, b.dq]) {
        assert.ok(g.bytes <= limit, `headDim ${D}: ${g.bytes} bytes`);
        assert.ok(g.threads <= 256 && g.dp4 * 4 >= D);
      }
      console.log(
        `# headDim ${D}: forward ${f.tileQ}x${f.tileKV} (${show(f.forward)}); backward ${b.tileQ}x${b.tileKV} ` +
          `(dkdv ${show(b.dkdv)}; dq ${show(b.dq)})`,
      );
    }
  });

  for (const c of CASES) {
    it(c.name, async () => {
      await runCase(c);
    });
  }

  it('forward over two KV blocks merges to attention over their concatenation; backward accumulates', async () => {
    // One query block (the whole sequence) against two zigzag KV blocks, as ring attention feeds them.
    const S = 48;
    const heads = 4;
    const kvHeads = 2;
    const D = 32;
    const seg = packedSegments(S, 3, 17);
    const full = { q: randn(S * heads * D, 171), k: randn(S * kvHeads * D, 172), v: randn(S * kvHeads * D, 173), dO: randn(S * heads * D, 174) };
    const ref = fullAttentionReference({ ...full, seqLen: S, heads, kvHeads, headDim: D, causal: true, seg });
    const blocks = [concat(range(0, 12), range(36, 48)), range(12, 36)];
    const r = reg!;
    const a = attention(SMALL);
    const s = (kvLen: number): AttentionShape => ({ heads, kvHeads, headDim: D, qLen: S, kvLen, causal: true, scale: 1 / Math.sqrt(D) });
    const qPos = range(0, S);
    const tq = r.floats(full.q);
    const tdO = r.floats(full.dO);
    const to = r.floats(S * heads * D);
    const tl = r.floats(S * heads);
    const w = kvHeads * D;
    const kv = blocks.map((rows) => ({
      rows,
      k: r.floats(gatherRows(full.k, rows, w)),
      v: r.floats(gatherRows(full.v, rows, w)),
      m: { qPos: r.ints(qPos), kvPos: r.ints(rows), qSeg: r.ints(seg), kvSeg: r.ints(segOf(rows, seg)) } as AttentionMask,
    }));
    a.reset(s(0), to, tl);
    for (const b of kv) a.forward(s(b.rows.length), b.m, tq, b.k, b.v, to, tl);
    check('two blocks', 'o', await r.read(to), ref.o);
    check('two blocks', 'lse', await r.read(tl), ref.lse);
    const tdelta = r.floats(S * heads);
    a.delta(s(0), tdO, to, tdelta);
    const dq = r.floats(S * heads * D);
    const dk = new Float64Array(S * w);
    const dv = new Float64Array(S * w);
    for (const b of kv) {
      const g = { dq, dk: r.floats(b.rows.length * w), dv: r.floats(b.rows.length * w) };
      a.backward(s(b.rows.length), b.m, { q: tq, k: b.k, v: b.v, dO: tdO, lse: tl, delta: tdelta }, g);
      const gk = await r.read(g.dk);
      const gv = await r.read(g.dv);
      b.rows.forEach((row, i) => {
        for (let c = 0; c < w; c++) {
          dk[row * w + c] = gk[i * w + c];
          dv[row * w + c] = gv[i * w + c];
        }
      });
    }
    check('two blocks', 'dq', await r.read(dq), ref.dq!);
    check('two blocks', 'dk', dk, ref.dk!);
    check('two blocks', 'dv', dv, ref.dv!);
    noErrors();
    r.clear();
  });

  it('checks shapes and lengths', () => {
    const r = reg!;
    const a = attention();
    const s: AttentionShape = { heads: 3, kvHeads: 2, headDim: 16, qLen: 4, kvLen: 4, causal: false, scale: 0.25 };
    assert.throws(() => a.reset(s, r.floats(64), r.floats(12)), /multiple of kvHeads/);
    const ok = { ...s, heads: 2 };
    assert.throws(() => a.reset(ok, r.floats(100), r.floats(8)), /o holds 100 elements, needs 128/);
    r.clear();
  });
});
