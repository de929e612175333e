import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as zmq from 'zeromq';
import { loadSumInto } from '../src/addon/index.js';
import { allReduceSum, barrier, broadcast, ringPass } from '../src/ring/collectives.js';
import { decodeHeader, encodeHeader, FrameError } from '../src/ring/frame.js';
import { Ring } from '../src/ring/transport.js';
import { closeAll, openLocalRing } from './helpers/ring.js';
import { freePortRange } from './helpers/ports.js';

test('frame header round-trips and rejects garbage', () => {
  const h = { jobId: '0123456789abcdef', part: 'whole' as const, seq: 7, srcRank: 3, step: 41, op: 1234, phase: 'attn.bwd', tag: 'kv', tensors: [{ dtype: 'float32' as const, shape: [4, 2, 8] }] };
  assert.deepEqual(decodeHeader(encodeHeader(h)), h);
  assert.deepEqual(decodeHeader(encodeHeader({ ...h, phase: 'sixteen-chars-ok' })).phase, 'sixteen-chars-ok');
  assert.throws(() => encodeHeader({ ...h, phase: 'seventeen-chars-x' }), /bad phase/);
  assert.throws(() => decodeHeader(Buffer.from('GET / HTTP/1.1\r\n\r\n'.padEnd(60))), FrameError);
  const bad = encodeHeader(h);
  bad.writeUInt8(9, 4);
  assert.throws(() => decodeHeader(bad), /protocol version 9/);
});

for (const n of [1, 2, 3, 5]) {
  test(`all-reduce equals the plain sum on a ring of ${n}`, async () => {
    const rings = await openLocalRing(n);
    try {
      for (const length of [1, 7, 1000, 4099]) {
        // Small integers: every float32 sum is exact, so equality must be exact.
        const inputs = rings.map((_, r) => Float32Array.from({ length }, (_, i) => ((i * 31 + r * 17) % 97) - 40));
        const expected = Float32Array.from({ length }, (_, i) => inputs.reduce((a, x) => a + x[i], 0));
        const outs = await Promise.all(rings.map((ring, r) => allReduceSum(ring, inputs[r])));
        for (const out of outs) assert.deepEqual(out, expected);
        // Random values: every rank must still hold bit-identical results.
        const rnd = rings.map(() => Float32Array.from({ length }, () => Math.random() - 0.5));
        const routs = await Promise.all(rings.map((ring, r) => allReduceSum(ring, rnd[r])));
        for (const out of routs) assert.deepEqual(out, routs[0]);
        for (let i = 0; i < length; i++) {
          const s = rnd.reduce((a, x) => a + x[i], 0);
          assert.ok(Math.abs(routs[0][i] - s) <= 1e-5 * Math.max(1, Math.abs(s)));
        }
        // Pipelined in many segments (16 bytes, and 20 with a short last one), in place: the same bits as one
        // segment per chunk, written into the inputs themselves; the copying form left its inputs alone.
        for (const segmentBytes of [16, 20]) {
          const copies = rnd.map((x) => x.slice());
          const segs = await Promise.all(rings.map((ring, r) => allReduceSum(ring, copies[r], { segmentBytes, inPlace: true })));
          segs.forEach((out, r) => {
            assert.equal(out, copies[r], 'in place returns its input');
            assert.deepEqual(out, routs[0], `segments of ${segmentBytes} bytes`);
          });
        }
        if (n > 1) rnd.forEach((x, r) => assert.notDeepEqual(x, routs[0], `rank ${r}'s input was left alone`));
      }
    } finally {
      await closeAll(rings);
    }
  });
}

test('ring pass delivers every block to the right rank, in order', async () => {
  const n = 4;
  const rings = await openLocalRing(n);
  try {
    // Each rank starts with its own block and passes what it holds n-1 times.
    const seen = await Promise.all(
      rings.map(async (ring) => {
        let held = new Int32Array([ring.rank, 0]);
        const order: number[] = [held[0]];
        for (let step = 1; step < n; step++) {
          const [got] = await ringPass(ring, 'blk', [held]);
          held = got.data as Int32Array;
          order.push(held[0]);
        }
        return order;
      }),
    );
    seen.forEach((order, r) => assert.deepEqual(order, [0, 1, 2, 3].map((t) => (r - t + n) % n)));
  } finally {
    await closeAll(rings);
  }
});

test('barrier and broadcast', async () => {
  const rings = await openLocalRing(3);
  try {
    await Promise.all(rings.map((r) => barrier(r)));
    const outs = await Promise.all(rings.map((r) => broadcast(r, r.rank === 1 ? [new Float32Array([3, 1, 4])] : null, 1)));
    for (const [t] of outs) assert.deepEqual(Array.from(t.data), [3, 1, 4]);
  } finally {
    await closeAll(rings);
  }
});

test('a message from a foreign job fails the ring with a clear error', async () => {
  const base = await freePortRange(1);
  const ep = `tcp://127.0.0.1:${base}`;
  const ringP = Ring.open({
    rank: 0, worldSize: 2, jobId: 'aaaaaaaaaaaaaaaa', bind: ep,
    next: { rank: 1, host: 'h1', endpoint: `tcp://127.0.0.1:${base + 1}` },
    prev: { rank: 1, host: 'h1', endpoint: `tcp://127.0.0.1:${base + 1}` },
    opTimeoutMs: 3000, connectTimeoutMs: 3000, heartbeatIntervalMs: 200, heartbeatTimeoutMs: 1000, maxMessageBytes: 1 << 20,
  });
  const intruder = new zmq.Push({ linger: 0 });
  intruder.connect(ep);
  const header = encodeHeader({ jobId: randomBytes(8).toString('hex'), seq: 0, srcRank: 1, step: 0, op: 0, phase: 'ring', tag: 'hello', tensors: [{ dtype: 'int32', shape: [1] }] });
  await intruder.send([header, Buffer.from(new Int32Array([1]).buffer)]);
  await assert.rejects(ringP, /bad message from rank 1 \(h1\): message of job [0-9a-f]{16}, this job is aaaaaaaaaaaaaaaa/);
  intruder.close();
});

test('a wait that never ends times out naming the peer', async () => {
  const rings = await openLocalRing(2, { opTimeoutMs: 300 });
  try {
    rings[1].begin('quiet', ['never']);
    await assert.rejects(rings[0].begin('quiet', ['never']).recv('never'), /rank 0: timed out after 0\.3 s waiting for "never" of op 1 \(quiet, step 0\) from rank 1 \(127\.0\.0\.1\), whose link is alive/);
  } finally {
    await closeAll(rings);
  }
});

test('large messages travel in 4 MiB chunks and arrive intact, in order', async () => {
  // 64 MiB per hop in several tensors (one of them empty), with tight heartbeats.
  const rings = await openLocalRing(2, { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 1000 });
  try {
    const big = (r: number) => Float32Array.from({ length: 16 << 20 }, (_, i) => (i % 1000) + r);
    const ints = (r: number) => Int32Array.from({ length: 1_000_003 }, (_, i) => i - r);
    for (let round = 0; round < 2; round++) {
      const got = await Promise.all(rings.map((ring) => ringPass(ring, 'big', [big(ring.rank), ints(ring.rank), new Float32Array(0)])));
      got.forEach(([a, b, c], r) => {
        const from = (r + 1) % 2;
        assert.deepEqual(a.shape, [16 << 20]);
        assert.equal((a.data as Float32Array)[12345], (12345 % 1000) + from);
        assert.equal((a.data as Float32Array)[(16 << 20) - 1], (((16 << 20) - 1) % 1000) + from);
        assert.equal((b.data as Int32Array)[999_999], 999_999 - from);
        assert.equal(c.data.length, 0);
      });
    }
    // Small messages after a chunked one keep their order and sequence numbers.
    const small = await Promise.all(rings.map((ring) => ringPass(ring, 'small', [new Int32Array([ring.rank])])));
    assert.deepEqual(small.map(([t]) => t.data[0]), [1, 0]);
  } finally {
    await closeAll(rings);
  }
});

test("the addon's sumInto adds exactly as JavaScript does, and the all-reduce gives the same bits with it", async (t) => {
  const sumInto = loadSumInto();
  if (!sumInto) return t.skip('the native addon is not built here');
  const a = Float32Array.from({ length: 10007 }, (_, i) => Math.sin(i) * 10 ** ((i % 13) - 6));
  const b = Float32Array.from({ length: 10007 }, (_, i) => Math.cos(i * 3) * 10 ** ((i % 7) - 3));
  const js = a.slice();
  for (let i = 0; i < js.length; i++) js[i] += b[i];
  const native = a.slice();
  sumInto(native, b);
  assert.deepEqual(native, js);
  assert.throws(() => sumInto(native, b.subarray(1)), /different lengths/);
  const rings = await openLocalRing(3);
  try {
    const inputs = rings.map((_, r) => Float32Array.from({ length: 5003 }, (_, i) => Math.sin(i + 7 * r)));
    const plain = await Promise.all(rings.map((ring, r) => allReduceSum(ring, inputs[r], { segmentBytes: 64 })));
    const withAddon = await Promise.all(rings.map((ring, r) => allReduceSum(ring, inputs[r], { segmentBytes: 64, add: sumInto })));
    for (const out of withAddon) assert.deepEqual(out, plain[0]);
  } finally {
    await closeAll(rings);
  }
});
