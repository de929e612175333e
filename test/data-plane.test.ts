import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { shardPositions } from '../src/attention/layout.js';
import { newRingStepStats, ringAttentionBackward, ringAttentionForward } from '../src/attention/ring-attention.js';
import { loadKernel } from '../src/kernels/index.js';
import type { AttentionKernel } from '../src/kernels/types.js';
import * as zmq from 'zeromq';
import { dtypeOf, encodeHeader, FrameError, type FrameHeader } from '../src/ring/frame.js';
import { shmAvailable, shmPath } from '../src/ring/shm.js';
import { CHUNK_BYTES, HIGH_WATER_MARK, Ring } from '../src/ring/transport.js';
import { freePortRange } from './helpers/ports.js';
import { loadWireNative } from '../src/ring/wire.js';
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
        const [a, b] = rings.map((r) => r.begin('w', ['w']));
        const [, got] = await Promise.all([a.send('w', [t]), b.recv('w')]);
        a.end();
        b.end();
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
      const [a, b] = rings.map((r) => r.begin('order', ['order']));
      const before = rings[0].stats.messagesHanded;
      const first = a.send('order', [Float32Array.of(1)]);
      assert.equal(rings[0].stats.messagesHanded, before + 1, 'handed synchronously');
      const rest = [2, 3, 4].map((x) => a.send('order', [Float32Array.of(x)]));
      assert.equal(rings[0].stats.messagesHanded, before + 1, 'queued behind the first');
      await Promise.all([first, ...rest]);
      const got: number[] = [];
      for (let i = 0; i < 4; i++) got.push((await b.recv('order'))[0].data[0]);
      assert.deepEqual(got, [1, 2, 3, 4]);
      a.end();
      b.end();
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
      const [a, b] = rings.map((r) => r.begin('ok', ['ok', 'expected']));
      for (let i = 0; i < 10; i++) {
        const sent = a.send('ok', [new Float32Array(1 << 20)]);
        await b.recv('ok');
        await sent;
      }
      // Rank 0 goes on to an op rank 1 has not begun (as a predecessor ahead would): its messages wait, bounded.
      const waiting = b.recv('expected', 5000).catch((e: Error) => e.message);
      const ahead = rings[0].begin('flood', ['flood']);
      const t0 = performance.now();
      for (let i = 0; i < 20; i++) void ahead.send('flood', [new Float32Array(1 << 18)]).catch(() => undefined);
      const msg = await waiting;
      const ms = performance.now() - t0;
      failures.push(msg as string);
      assert.ok(ms < 1000, `reported after ${ms.toFixed(0)} ms`);
      assert.match(msg as string, /^rank 1: \d+ bytes from rank 0 \(127\.0\.0\.1\) wait for receives that were never made \("flood" of op 2 \(flood, step 0\) x9\), past ring\.maxQueuedBytes \(8388608\)/);
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

/**
 * A real rank 0 whose neighbour, rank 1, is played by raw ZeroMQ sockets that
 * send exactly the frames a test writes: each protocol violation must fail the
 * ring within 1 s, naming both ranks and the expected and received message.
 */
async function withFakePredecessor(run: (ring: Ring, send: (h: Partial<FrameHeader>, payloads?: Uint8Array[]) => Promise<void>) => Promise<void>): Promise<void> {
  const base = await freePortRange(2);
  const ep = (p: number) => `tcp://127.0.0.1:${p}`;
  const jobId = '00000000000000aa';
  const pull = new zmq.Pull({ linger: 0 });
  await pull.bind(ep(base + 1));
  const push = new zmq.Push({ linger: 0 });
  push.connect(ep(base));
  let seq = 0;
  const send = async (h: Partial<FrameHeader>, payloads: Uint8Array[] = [Buffer.from(new Float32Array(4).buffer)]) => {
    const tensors = h.tensors ?? payloads.map((p) => ({ dtype: 'float32' as const, shape: [p.byteLength / 4] }));
    const header = encodeHeader({ jobId, part: 'whole', seq: seq++, srcRank: 1, step: 0, op: 1, phase: 'attn.fwd', tag: 'kv', ...h, tensors });
    await push.send([header, ...payloads]);
  };
  const draining = (async () => {
    for await (const _ of pull) void _;
  })().catch(() => undefined);
  const ringP = Ring.open({
    rank: 0, worldSize: 2, jobId, bind: ep(base),
    next: { rank: 1, host: 'fake', endpoint: ep(base + 1) },
    prev: { rank: 1, host: 'fake', endpoint: ep(base + 1) },
    opTimeoutMs: 10000, connectTimeoutMs: 5000, heartbeatIntervalMs: 200, heartbeatTimeoutMs: 2000, maxMessageBytes: 1 << 30,
  });
  await send({ op: 0, phase: 'ring', tag: 'hello', tensors: [{ dtype: 'int32', shape: [1] }] }, [Buffer.from(new Int32Array([1]).buffer)]);
  const ring = await ringP;
  try {
    await run(ring, send);
  } finally {
    await ring.close();
    push.close();
    pull.close();
    await draining;
  }
}

/** The error `pending` rejects with, and how long after `t0` it came. */
async function failureOf(pending: Promise<unknown>, t0: number): Promise<{ message: string; ms: number }> {
  const message = await pending.then(
    () => 'resolved',
    (e: Error) => e.message,
  );
  return { message, ms: performance.now() - t0 };
}

describe('protocol violations fail the ring at once, naming both ranks', () => {
  const cases: Array<{ name: string; run: (ring: Ring, send: Parameters<Parameters<typeof withFakePredecessor>[0]>[1]) => Promise<{ pending: Promise<unknown> }>; expect: RegExp }> = [
    {
      name: 'a tag out of order (one the op does not take)',
      run: async (ring, send) => {
        const op = ring.begin('attn.fwd', ['kv']);
        const p = op.recv('kv');
        await send({ tag: 'dkv' });
        return { pending: p };
      },
      expect: /"dkv" in op 1 \(attn\.fwd, step 0\), which takes only "kv"/,
    },
    {
      name: 'a stale step',
      run: async (ring, send) => {
        ring.setStep(5);
        const op = ring.begin('attn.fwd', ['kv']);
        const p = op.recv('kv');
        await send({ step: 4 });
        return { pending: p };
      },
      expect: /"kv" of op 1 \(attn\.fwd, step 4\), a stale step: this rank is at step 5/,
    },
    {
      name: 'a foreign job',
      run: async (ring, send) => {
        const p = ring.begin('attn.fwd', ['kv']).recv('kv');
        await send({ jobId: '00000000000000bb' });
        return { pending: p };
      },
      expect: /message of job 00000000000000bb, this job is 00000000000000aa \(not from this job's ring/,
    },
    {
      name: 'a duplicate sequence number',
      run: async (ring, send) => {
        const op = ring.begin('attn.fwd', ['kv']);
        await send({ seq: 1 });
        await op.recv('kv');
        const p = op.recv('kv');
        await send({ seq: 1 });
        return { pending: p };
      },
      expect: /"kv" with sequence number 1 again \(a duplicate; expected 2\)/,
    },
    {
      name: 'a truncated chunk stream',
      run: async (ring, send) => {
        const p = ring.begin('attn.fwd', ['kv']).recv('kv');
        // 12 MiB announced: three 4 MiB chunks; one is sent, then a new message.
        await send({ part: 'head', tensors: [{ dtype: 'float32', shape: [3 << 20] }] }, []);
        await send({ part: 'chunk', tensors: [] }, [new Uint8Array(4 << 20)]);
        await send({});
        return { pending: p };
      },
      expect: /"kv" of op 1 \(attn\.fwd, step 0\) arrived after chunk 1 of 3 of "kv": its chunk stream was cut short/,
    },
    {
      name: 'another phase at the same op',
      run: async (ring, send) => {
        const p = ring.begin('attn.fwd', ['kv']).recv('kv');
        await send({ phase: 'grads', tag: 'grads' });
        return { pending: p };
      },
      expect: /"grads" of op 1 \(grads, step 0\), but op 1 here is attn\.fwd at step 0: the ranks run different sequences of ring ops/,
    },
    {
      name: 'a message of an op this rank has finished',
      run: async (ring, send) => {
        const op = ring.begin('attn.fwd', ['kv']);
        await send({});
        await op.recv('kv');
        op.end();
        const p = ring.begin('attn.bwd', ['bkv']).recv('bkv');
        await send({});
        return { pending: p };
      },
      expect: /"kv" of op 1 \(attn\.fwd, step 0\), which this rank has finished/,
    },
    {
      name: 'more messages than the op received',
      run: async (ring, send) => {
        const op = ring.begin('attn.fwd', ['kv']);
        await send({});
        await send({});
        await op.recv('kv');
        await new Promise((r) => setTimeout(r, 50));
        const next = ring.begin('attn.bwd', ['bkv']).recv('bkv');
        op.end();
        return { pending: next };
      },
      expect: /1 "kv" message of op 1 \(attn\.fwd, step 0\) more than this rank received in it/,
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      await withFakePredecessor(async (ring, send) => {
        const t0 = performance.now();
        const { pending } = await c.run(ring, send);
        pending.catch(() => undefined);
        const { message, ms } = await failureOf(pending, t0);
        assert.match(message, /^rank 0: bad message from rank 1 \(fake\): /);
        assert.match(message, c.expect);
        assert.ok(ms < 1000, `reported after ${ms.toFixed(0)} ms`);
        assert.equal(ring.failed?.message, message, 'the ring itself is failed, not just one wait');
      });
    });
  }

  it('messages for an op not begun yet wait, and are checked when it begins', async () => {
    await withFakePredecessor(async (ring, send) => {
      await send({ op: 1, phase: 'grads', tag: 'grads' });
      await send({ op: 2, phase: 'attn.fwd', tag: 'kv' });
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(ring.failed, null, 'a predecessor ahead is no error');
      const g = ring.begin('grads', ['grads']);
      assert.equal((await g.recv('grads'))[0].data.length, 4);
      g.end();
      assert.throws(() => ring.begin('attn.bwd', ['bkv']), /"kv" of op 2 \(attn\.fwd, step 0\), but op 2 here is attn\.bwd at step 0/);
    });
  });
});

describe('a flooding predecessor', () => {
  it("leaves the worker's RSS under maxQueuedBytes + ZeroMQ's bounded queues, stalled or not, and fails the ring naming it", async () => {
    const base = await freePortRange(2);
    const jobId = '00000000000000cc';
    const maxQueued = 64 << 20;
    const ep = (p: number) => `tcp://127.0.0.1:${p}`;
    const pull = new zmq.Pull({ linger: 0 });
    await pull.bind(ep(base + 1));
    const draining = (async () => {
      for await (const _ of pull) void _;
    })().catch(() => undefined);
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/helpers/flood-target.ts', String(base), jobId, String(maxQueued), '3000'], { stdio: ['ignore', 'pipe', 'inherit'] });
    // Lines are queued as they come: one printed before anyone waits for it is kept.
    const queued: string[] = [];
    let wake: () => void = () => undefined;
    createInterface({ input: child.stdout! }).on('line', (l) => {
      queued.push(l);
      wake();
    });
    const next = async (): Promise<any> => {
      while (queued.length === 0) await new Promise<void>((r) => (wake = r));
      return JSON.parse(queued.shift()!);
    };
    const push = new zmq.Push({ linger: 0, sendHighWaterMark: 4, sendTimeout: 3000 });
    push.connect(ep(base));
    let seq = 0;
    const header = (h: Partial<FrameHeader>) =>
      encodeHeader({ jobId, part: 'whole', seq: seq++, srcRank: 1, step: 0, op: 5, phase: 'attn.fwd', tag: 'kv', tensors: [{ dtype: 'float32', shape: [1 << 20] }], ...h });
    try {
      await push.send([header({ op: 0, phase: 'ring', tag: 'hello', tensors: [{ dtype: 'int32', shape: [1] }] }), Buffer.from(new Int32Array([1]).buffer)]);
      await next();
      // 1 GiB of well-formed 4 MiB messages for an op the rank has not begun, as fast as the link takes them.
      const block = new Uint8Array(4 << 20);
      let sent = 0;
      for (; sent < 256; sent++) {
        try {
          await push.send([header({}), block]);
        } catch {
          break; // the receiver stopped taking them: backpressure
        }
      }
      const out = await next();
      const growth = out.peak - out.rssAtOpen;
      console.log(`flood: ${sent} of 256 messages of 4 MiB taken; worker RSS ${out.rssAtOpen.toFixed(0)} MiB at open, peak ${out.peak.toFixed(0)} MiB (+${growth.toFixed(0)})`);
      assert.match(out.failed, /^rank 0: \d+ bytes from rank 1 \(flooder\) wait for receives that were never made \("kv" of op 5 \(attn\.fwd, step 0\) x\d+\), past ring\.maxQueuedBytes \(67108864\)/);
      assert.ok(sent < 256, 'the flood was never held back');
      // The stated bound: the inbox (maxQueuedBytes) plus ZeroMQ's queues (HIGH_WATER_MARK chunks each way) and the kernel's socket buffers.
      const bound = (maxQueued + 2 * HIGH_WATER_MARK * CHUNK_BYTES) / 2 ** 20 + 32;
      assert.ok(growth < bound, `the worker grew by ${growth.toFixed(0)} MiB, over the bound of ${bound.toFixed(0)} MiB`);
    } finally {
      push.close();
      pull.close();
      child.kill('SIGKILL');
      await draining;
    }
  });
});

describe('the same-host shared-memory channel', () => {
  it('carries large blocks, with small ones and those that do not fit now on ZeroMQ, all intact and in order; the files go with the ring', async (t) => {
    if (!shmAvailable()) return t.skip('the native addon is not built with native/shm.cc: no shared-memory channel here');
    const n = 3;
    const base = await freePortRange(n);
    const jobId = randomBytes(8).toString('hex');
    const ep = (r: number) => `tcp://127.0.0.1:${base + r}`;
    const peer = (r: number) => ({ rank: r, host: '127.0.0.1', endpoint: ep(r) });
    // 6 MiB of channel: one 4 MiB block fits, two do not (the second of a burst goes on ZeroMQ).
    const rings = await Promise.all(
      Array.from({ length: n }, (_, r) =>
        Ring.open({
          rank: r, worldSize: n, jobId, bind: ep(r), next: peer((r + 1) % n), prev: peer((r + n - 1) % n),
          opTimeoutMs: 10000, connectTimeoutMs: 10000, heartbeatIntervalMs: 200, heartbeatTimeoutMs: 2000, maxMessageBytes: 1 << 30,
          shmSend: { path: shmPath(jobId, r), maxBytes: 6 << 20, required: true },
          shmRecv: shmPath(jobId, (r + n - 1) % n),
        }),
      ),
    );
    try {
      // Sent in one burst: the first 4 MiB block fills most of the channel, the rest wait for no room and go on ZeroMQ.
      const sizes = [16, 1 << 20, 1 << 20, 5 << 18, 100, 3 << 20];
      for (const round of [1, 2]) {
        await Promise.all(
          rings.map(async (ring) => {
            const op = ring.begin('blocks', ['b']);
            const sent = sizes.map((len, i) => op.send('b', [randn(len, 100 * ring.rank + i), Int32Array.of(ring.rank, i)]));
            for (const [i, len] of sizes.entries()) {
              const [x, id] = await op.recv('b');
              const from = (ring.rank + n - 1) % n;
              assert.deepEqual(Array.from(id.data), [from, i], 'in order');
              assert.deepEqual(x.data, randn(len, 100 * from + i), `block ${i} from rank ${from} intact`);
            }
            await Promise.all(sent);
            op.end();
          }),
        );
        // Taking a block hands its space back: the next round's first block fits again.
        for (const ring of rings) assert.equal(ring.stats.messagesViaShm, round, `rank ${ring.rank} after round ${round}`);
      }
    } finally {
      await closeAll(rings);
    }
    for (let r = 0; r < n; r++) assert.ok(!existsSync(shmPath(jobId, r)), 'the channel file is removed at close');
  });
});
