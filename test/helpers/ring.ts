import { randomBytes } from 'node:crypto';
import { Ring, type RingOptions } from '../../src/ring/transport.js';
import { freePortRange } from './ports.js';

/** N ring members inside one process on loopback: enough to test collectives and ring attention. `reversed`: each rank sends to its predecessor. */
export async function openLocalRing(n: number, extra: Partial<RingOptions> = {}, reversed = false): Promise<Ring[]> {
  const base = await freePortRange(n);
  const jobId = randomBytes(8).toString('hex');
  const peer = (r: number) => ({ rank: r, host: '127.0.0.1', endpoint: `tcp://127.0.0.1:${base + r}` });
  const step = reversed ? n - 1 : 1;
  return Promise.all(
    Array.from({ length: n }, (_, r) =>
      Ring.open({
        rank: r,
        worldSize: n,
        jobId,
        bind: peer(r).endpoint,
        next: peer((r + step) % n),
        prev: peer((r + n - step) % n),
        opTimeoutMs: 10000,
        connectTimeoutMs: 10000,
        heartbeatIntervalMs: 200,
        heartbeatTimeoutMs: 1000,
        maxMessageBytes: 1 << 30,
        ...extra,
      }),
    ),
  );
}

export async function closeAll(rings: Ring[]): Promise<void> {
  await Promise.all(rings.map((r) => r.close()));
}

/** N ring members and, over the same ranks, the ring the other way (each rank to its predecessor). */
export async function openLocalRingPair(n: number, extra: Partial<RingOptions> = {}): Promise<{ forward: Ring[]; reverse: Ring[] }> {
  return { forward: await openLocalRing(n, extra), reverse: await openLocalRing(n, extra, true) };
}
