import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { shardPositions } from '../src/attention/layout.js';
import { newRingStepStats, ringAttentionBackward, ringAttentionForward } from '../src/attention/ring-attention.js';
import { loadKernel } from '../src/kernels/index.js';
import type { AttentionKernel } from '../src/kernels/types.js';
import { dtypeOf, FrameError } from '../src/ring/frame.js';
import { loadWireNative } from '../src/engine/addon.js';
import { fromWire, roundTrip, toWire, type WireFormat } from '../src/ring/wire.js';
import { selectBackend } from '../src/tensor/backend.js';
import { randn } from '../src/tensor/random.js';
import { fullAttentionReference, gatherRows, makeProblem, relErr } from './helpers/attention.js';
import { closeAll, openLocalRing } from './helpers/ring.js';

/**
 * The ring's data plane (issue 13): 16-bit KV blocks (ring.wire), whose conversions are checked against
 * a rounding written the other way (float64 arithmetic on the format's grid), and sends handed to ZeroMQ at once.
 */

/** The nearest value of a binary format with `mant` stored mantissa bits, exponents down to `minExp`, ties to even. */
function nearestOnGrid(x: number, mant: number, minExp: number, max: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x === 0 || !Number.isFinite(x)) return x;
  const a = Math.abs(x);
  const e = Math.max(Math.floor(Math.log2(a)), minExp);
  const ulp = 2 ** (e - mant);
  const q = a / ulp;
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r++;
  const v = r * ulp;
  // Past the largest finite value by half an ulp or more: infinity (IEEE overflow under round to nearest).
  const out = v > max ? Infinity : v;
  return x < 0 ? -out : out;
}
const BF16_MAX = (2 - 2 ** -7) * 2 ** 127;
const F16_MAX = 65504;
const reference: Record<Exclude<WireFormat, 'float32'>, (x: number) => number> = {
  bfloat16: (x) => nearestOnGrid(x, 7, -126, BF16_MAX),
  float16: (x) => nearestOnGrid(x, 10, -14, F16_MAX),
};

function samples(): number[] {
  const xs = [0, -0, 1, -1, 0.1, 1 / 3, 65504, 65519, 65520, 1e5, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-9, 3.4e38, 1e-38, 1e-45, Infinity, -Infinity, NaN];
  // Exact ties of each format: 1 + half an ulp, and an odd mantissa + half an ulp.
  xs.push(1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -24 * 1.5, 2 ** -24 * 2.5);
  const r = randn(4000, 7);
  for (let i = 0; i < r.length; i++) xs.push(r[i] * 10 ** ((i % 21) - 10));
  return xs.map((x) => Math.fround(x));
}

describe('wire formats', () => {
  for (const format of ['bfloat16', 'float16'] as const) {
    it(`${format}: every value rounds to the nearest on its grid, ties to even, overflow to infinity`, () => {
      for (const x of samples()) {
        const got = roundTrip(x, format);
        const want = reference[format](x);
        if (Number.isNaN(want)) assert.ok(Number.isNaN(got), `${x} -> ${got}`);
        else assert.ok(Object.is(got, want), `${format}(${x}) = ${got}, expected ${want}`);
      }
    });
  }

  it('halves the bytes; float32 goes as is; a 16-bit payload must say its format', () => {
    const x = randn(1000, 3);
    assert.equal(toWire(x, 'float32').data, x);
    for (const f of ['bfloat16', 'float16'] as const) {
      const t = toWire(x, f);
      assert.equal(t.data.byteLength, x.byteLength / 2);
      assert.equal(t.dtype, f);
    }
    assert.throws(() => dtypeOf(new Uint16Array(4)), FrameError);
    assert.throws(() => fromWire({ data: new Uint16Array(4), shape: [4] }), /expected a float32, bfloat16 or float16 tensor/);
  });

  it('16-bit tensors cross a real ring with their format, whole and chunked', async () => {
    const rings = await openLocalRing(2);
    try {
      for (const n of [1000, 3 << 20]) {
        const x = randn(n, 5);
        const t = toWire(x, 'bfloat16');
        const [, got] = await Promise.all([rings[0].send('w', [t]), rings[1].recv('w')]);
        assert.equal(got[0].dtype, 'bfloat16');
        assert.deepEqual(fromWire(got[0]), fromWire(t));
      }
    } finally {
      await closeAll(rings);
    }
  });
});

describe('ring attention over a 16-bit wire', () => {
  let kernel: AttentionKernel;
  before(async () => {
    await selectBackend('wasm');
    kernel = (await loadKernel('auto', { tileQ: 16, tileKV: 16, threads: 1 })).kernel;
  });
  const rings: Awaited<ReturnType<typeof openLocalRing>> = [];
  after(() => closeAll(rings));

  it('forward and backward stay within the format\'s rounding of K and V, with half the bytes sent (ring of 3, zigzag)', async () => {
    rings.push(...(await openLocalRing(3)));
    const [N, S, H, G, D] = [3, 96, 2, 1, 16];
    const p = makeProblem({ seqLen: S, heads: H, kvHeads: G, headDim: D, seed: 4 });
    const ref = fullAttentionReference({ ...p, seqLen: S, causal: true, dO: p.dO });
    const errors: Record<string, { o: number; dq: number; dk: number; fwdBytes: number; bwdBytes: number }> = {};
    for (const wire of ['float32', 'bfloat16', 'float16'] as const) {
      const fwd = rings.map(() => newRingStepStats());
      const bwd = rings.map(() => newRingStepStats());
      const parts = await Promise.all(
        rings.map(async (ring) => {
          const pos = shardPositions('zigzag', S, N, ring.rank);
          const cfg = { ring, kernel, causal: true, heads: H, kvHeads: G, headDim: D, overlap: true, wire, positionsOf: (r: number) => shardPositions('zigzag', S, N, r) };
          const q = gatherRows(p.q, pos, H * D);
          const k = gatherRows(p.k, pos, G * D);
          const v = gatherRows(p.v, pos, G * D);
          const dO = gatherRows(p.dO, pos, H * D);
          const f = await ringAttentionForward({ ...cfg, stats: fwd[ring.rank] }, q, k, v);
          const g = await ringAttentionBackward({ ...cfg, stats: bwd[ring.rank] }, { q, k, v, o: f.o, lse: f.lse }, dO);
          return { pos, o: f.o, ...g };
        }),
      );
      const gather = (key: 'o' | 'dq' | 'dk', width: number) => {
        const out = new Float64Array(S * width);
        for (const part of parts) for (let i = 0; i < part.pos.length; i++) for (let c = 0; c < width; c++) out[part.pos[i] * width + c] = part[key][i * width + c];
        return out;
      };
      errors[wire] = {
        o: relErr(gather('o', H * D), ref.o),
        dq: relErr(gather('dq', H * D), ref.dq!),
        dk: relErr(gather('dk', G * D), ref.dk!),
        fwdBytes: fwd.reduce((n, s) => n + s.bytesSent, 0),
        bwdBytes: bwd.reduce((n, s) => n + s.bytesSent, 0),
      };
    }
    // Bounds: a few units of the format's rounding (bf16 2^-9, fp16 2^-12 relative); float32 as exact as before.
    for (const [wire, bound] of [['float32', 1e-5], ['bfloat16', 8 * 2 ** -9], ['float16', 8 * 2 ** -12]] as const) {
      const e = errors[wire];
      for (const key of ['o', 'dq', 'dk'] as const) assert.ok(e[key] < bound, `${wire} ${key}: rel err ${e[key]} >= ${bound}`);
    }
    assert.ok(errors.bfloat16.o > 1e-5, 'a 16-bit wire does round');
    for (const wire of ['bfloat16', 'float16']) {
      assert.equal(errors[wire].fwdBytes, errors.float32.fwdBytes / 2, 'forward: K and V in half the bytes');
      // Backward sends the same K and V blocks again, in half the bytes, and the dK/dV accumulators in float32.
      assert.equal(errors[wire].bwdBytes, errors.float32.bwdBytes - errors.float32.fwdBytes / 2);
    }
    console.log(`# wire errors vs float64 (S=${S}, ring of 3): ${JSON.stringify(errors)}`);
  });
});

describe('a send with nothing ahead of it goes to ZeroMQ at once', () => {
  it('is handed over before send() returns, so a synchronous compute right after it hides the transfer; later ones keep their order', async () => {
    const rings = await openLocalRing(2);
    try {
      const before = rings[0].stats.messagesHanded;
      const first = rings[0].send('order', [Float32Array.of(1)]);
      assert.equal(rings[0].stats.messagesHanded, before + 1, 'handed synchronously');
      const rest = [2, 3, 4].map((x) => rings[0].send('order', [Float32Array.of(x)]));
      assert.equal(rings[0].stats.messagesHanded, before + 1, 'queued behind the first');
      await Promise.all([first, ...rest]);
      const got: number[] = [];
      for (let i = 0; i < 4; i++) got.push((await rings[1].recv('order'))[0].data[0]);
      assert.deepEqual(got, [1, 2, 3, 4]);
    } finally {
      await closeAll(rings);
    }
  });

  it("ring attention's next KV block is with ZeroMQ before the reference kernel (synchronous) computes on the current one", async () => {
    await selectBackend('wasm');
    const rings = await openLocalRing(3);
    try {
      const [N, S, H, D] = [3, 48, 2, 8];
      const p = makeProblem({ seqLen: S, heads: H, kvHeads: H, headDim: D, seed: 9 });
      const { referenceKernel } = await import('../src/kernels/reference.js');
      await Promise.all(
        rings.map(async (ring) => {
          const handedAtCompute: number[] = [];
          const start = ring.stats.messagesHanded;
          const kernel: AttentionKernel = { ...referenceKernel, forward: (a) => (handedAtCompute.push(ring.stats.messagesHanded - start), referenceKernel.forward(a)) };
          const pos = shardPositions('contiguous', S, N, ring.rank);
          const cfg = { ring, kernel, causal: false, heads: H, kvHeads: H, headDim: D, overlap: true, positionsOf: (r: number) => shardPositions('contiguous', S, N, r) };
          await ringAttentionForward(cfg, gatherRows(p.q, pos, H * D), gatherRows(p.k, pos, H * D), gatherRows(p.v, pos, H * D));
          // Steps 0 and 1 each send a block on before computing; the last step sends nothing.
          assert.deepEqual(handedAtCompute, [1, 2, 2], `rank ${ring.rank}`);
        }),
      );
    } finally {
      await closeAll(rings);
    }
  });
});

describe('a peer sending what this rank never receives', () => {
  it('fails the ring within 1 s once ring.maxQueuedBytes wait unclaimed, naming both ranks and the tag; what is received in time is not counted', async () => {
    const rings = await openLocalRing(2, { maxQueuedBytes: 8 << 20 });
    const failures: string[] = [];
    try {
      // Claimed messages never pile up: 40 MiB through the same link, each received.
      for (let i = 0; i < 10; i++) {
        const sent = rings[0].send('ok', [new Float32Array(1 << 20)]);
        await rings[1].recv('ok');
        await sent;
      }
      const waiting = rings[1].recv('expected', 5000).catch((e: Error) => e.message);
      const t0 = performance.now();
      for (let i = 0; i < 20; i++) void rings[0].send('flood', [new Float32Array(1 << 18)]).catch(() => undefined);
      const msg = await waiting;
      const ms = performance.now() - t0;
      failures.push(msg as string);
      assert.ok(ms < 1000, `reported after ${ms.toFixed(0)} ms`);
      assert.match(msg as string, /^rank 1: \d+ bytes from rank 0 \(127\.0\.0\.1\) wait for receives that were never made \("flood" x9\), past ring\.maxQueuedBytes \(8388608\)/);
    } finally {
      await closeAll(rings);
    }
    assert.equal(failures.length, 1);
  });
});

describe("the addon's wire conversions", () => {
  it('give the bits of the JavaScript ones: every 16-bit pattern back to float32, and 1M float32 patterns (edges and random) to each format', (t) => {
    const native = loadWireNative();
    if (!native) return t.skip('the native addon is not built here');
    const every = new Uint16Array(65536).map((_, i) => i);
    for (const format of ['bfloat16', 'float16'] as const) {
      const wide = { data: every, shape: [every.length], dtype: format };
      assert.deepEqual(new Uint32Array(fromWire(wide, native).buffer), new Uint32Array(fromWire(wide).buffer), `${format} widening`);
    }
    const bits = new Uint32Array(1 << 20);
    let x = 12345;
    for (let i = 0; i < bits.length; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      bits[i] = x;
    }
    // Edges: zeros, subnormals, the largest finite values, infinities, NaNs, and ties at both formats' rounding points.
    const edges = [0, 0x80000000, 1, 0x807fffff, 0x7f7fffff, 0xff7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001, 0x7f800001, 0x3f808000, 0x3f818000, 0x3f801000, 0x3f803000, 0x477fe000, 0x477ff000, 0x38800000, 0x33800000, 0x33000000, 0x337fffff];
    bits.set(edges);
    const values = new Float32Array(bits.buffer);
    for (const format of ['bfloat16', 'float16'] as const) {
      assert.deepEqual(toWire(values, format, native).data, toWire(values, format).data, `${format} rounding`);
    }
  });
});
