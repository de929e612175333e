import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as zmq from 'zeromq';
import { specFromObject } from '../src/config/index.js';
import { LaunchError, runJob } from '../src/launch/launcher.js';
import { workerPids } from './helpers/cli.js';
import { freePortRange } from './helpers/ports.js';

/*
 * Hostile input at every port a job listens on (the coordinator and each
 * rank's ring port), on loopback, bounded in count and time, with
 * `security: none` (the weakest setting; test/security.test.ts covers curve):
 * raw TCP garbage, foreign protocols (HTTP, TLS), truncated and oversized
 * ZeroMQ frames, idle connections, and well-formed ZeroMQ messages that are
 * not ringattn's. The job must go on, with bounded memory, or stop with a
 * clear message.
 */

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-hostile-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The ZMTP 3.0 greeting (ZeroMQ RFC 23): signature, version, mechanism, as-server, filler. */
function greeting(mechanism = 'NULL'): Buffer {
  const g = Buffer.alloc(64);
  g[0] = 0xff;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = 0;
  g.write(mechanism, 12, 'ascii');
  return g;
}

/** A READY command announcing `socketType`. */
function ready(socketType: string): Buffer {
  const name = Buffer.from('Socket-Type');
  const value = Buffer.from(socketType);
  const prop = Buffer.alloc(1 + name.length + 4 + value.length);
  prop[0] = name.length;
  name.copy(prop, 1);
  prop.writeUInt32BE(value.length, 1 + name.length);
  value.copy(prop, 5 + name.length);
  const body = Buffer.concat([Buffer.from([5]), Buffer.from('READY'), prop]);
  return Buffer.concat([Buffer.from([0x04, body.length]), body]);
}

/** A long final frame header announcing `size` bytes. */
function longFrame(size: bigint): Buffer {
  const h = Buffer.alloc(9);
  h[0] = 0x02;
  h.writeBigUInt64BE(size, 1);
  return h;
}

function seededBytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

/** Connects, writes `data`, holds the connection `holdMs`, closes. Resolves whatever the peer does. */
function raw(port: number, data: Buffer[], holdMs = 200): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      for (const d of data) s.write(d);
      setTimeout(() => s.destroy(), holdMs);
    });
    s.on('data', () => undefined);
    s.on('error', () => undefined);
    s.on('close', () => resolve());
  });
}

/** Everything thrown at one port, with the socket type a ZeroMQ peer of it would have. */
async function attackPort(port: number, peerType: 'DEALER' | 'PUSH', seed: number): Promise<number> {
  const attacks: Buffer[][] = [
    [seededBytes(64 * 1024, seed)],
    [Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n')],
    [Buffer.from('160301020001fc0303', 'hex'), seededBytes(500, seed + 1)], // a TLS ClientHello's start
    [greeting().subarray(0, 11)], // a greeting cut short
    [greeting('CURVE'), seededBytes(200, seed + 2)], // the wrong security mechanism
    [greeting(), Buffer.from([0x04, 0xff]), seededBytes(300, seed + 3)], // a command that is not READY
    [greeting(), ready(peerType), longFrame(1n << 40n), seededBytes(4096, seed + 4)], // a 1 TiB frame announced
    [greeting(), ready(peerType), longFrame(10n << 20n), seededBytes(1024, seed + 5)], // 10 MiB announced, 1 KiB sent
    [greeting(), ready(peerType), Buffer.from([0x01, 3]), Buffer.from('abc')], // "more" parts, never finished
  ];
  for (const a of attacks) await raw(port, a);
  // Idle connections that never say anything.
  await Promise.all(Array.from({ length: 20 }, () => raw(port, [], 300)));
  return attacks.length + 20;
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

async function spec3() {
  const basePort = await freePortRange(4);
  return specFromObject({
    security: 'none',
    runDir: tmp,
    hosts: [{ name: 'local', address: '127.0.0.1', slots: 3 }],
    ring: { basePort, heartbeatIntervalMs: 200, heartbeatTimeoutMs: 2000 },
  });
}

async function waitForRounds(printed: string[], n: number): Promise<void> {
  const end = Date.now() + 30000;
  while (printed.filter((l) => /ring check round passed/.test(l)).length < n) {
    assert.ok(Date.now() < end, 'the ring never got going');
    await sleep(50);
  }
}

describe('hostile input on a running job (security: none)', () => {
  it('raw garbage, foreign protocols, truncated and oversized frames: the job goes on, memory bounded', async () => {
    const spec = await spec3();
    const base = spec.ring.basePort;
    const printed: string[] = [];
    const rounds = 40;
    const job = runJob(spec, { kind: 'ringcheck', args: { rounds, length: 2000, holdMs: 150 } }, { runDir: path.join(tmp, 'garbage'), print: (l) => printed.push(l) });
    job.catch(() => undefined);
    let stranger: zmq.Dealer | undefined;
    try {
      await waitForRounds(printed, 3);
      const pids = workerPids(base);
      const before = new Map(pids.map((p) => [p, rssMiB(p)]));
      const launcherBefore = process.memoryUsage().rss / 2 ** 20;
      const t0 = Date.now();
      let connections = 0;
      // The coordinator, then each rank's ring port.
      connections += await attackPort(base, 'DEALER', 1);
      for (let r = 0; r < 3; r++) connections += await attackPort(base + 1 + r, 'PUSH', 10 + r);

      // Well-formed ZeroMQ messages that are not a worker's: ignored by the coordinator.
      stranger = new zmq.Dealer({ linger: 0, sendTimeout: 500 });
      stranger.connect(`tcp://127.0.0.1:${base}`);
      const junk: Array<Array<string | Buffer>> = [
        ['not json'],
        ['null'],
        ['{}'],
        ['[1,2,3]'],
        [JSON.stringify({ type: 'result', rank: 0, name: 'ok', value: 'forged', blobKinds: [] })],
        [JSON.stringify({ type: 'done', rank: 1, blobKinds: [] })],
        [JSON.stringify({ type: 'failed', rank: 2, message: 'forged failure', blobKinds: [] })],
        [JSON.stringify({ type: 'hello', rank: 99, blobKinds: [] })],
        [JSON.stringify({ type: 'result', rank: 0, name: 'ok', blobKinds: ['f32'] }), Buffer.alloc(3)],
        [seededBytes(100_000, 7)],
        Array.from({ length: 1000 }, (_, i) => String(i)),
      ];
      for (const m of junk) await stranger.send(m);
      const took = Date.now() - t0;
      console.log(`hostile: ${connections} raw connections and ${junk.length} foreign messages in ${took} ms`);
      await sleep(200);
      assert.equal(workerPids(base).length, 3, 'the job ended before the attack did: make it longer');
      const growth = [...before].map(([p, mb]) => rssMiB(p) - mb);

      const out = await job;
      const results = out.value as Array<{ rank: number; rounds: number }>;
      assert.deepEqual(results.map((r) => [r.rank, r.rounds]), [[0, rounds], [1, rounds], [2, rounds]], 'the job went on to the end');
      assert.ok(!printed.some((l) => /forged/.test(l)));
      const launcherGrowth = process.memoryUsage().rss / 2 ** 20 - launcherBefore;
      console.log(`hostile: RSS growth of the workers ${growth.map((g) => g.toFixed(1)).join(', ')} MiB, of this process (coordinator) ${launcherGrowth.toFixed(1)} MiB`);
      // A 1 TiB frame was announced to every port: none of it was allocated.
      for (const g of growth) assert.ok(g < 64, `a worker grew by ${g.toFixed(0)} MiB`);
      assert.ok(launcherGrowth < 128, `the coordinator's process grew by ${launcherGrowth.toFixed(0)} MiB`);
    } finally {
      stranger?.close();
      await job.catch(() => undefined);
    }
    assert.deepEqual(workerPids(base), []);
  });

  it("a stranger's well-formed ZeroMQ messages on a ring port, once the ring is up, are refused at the handshake: the job goes on", async () => {
    const spec = await spec3();
    const base = spec.ring.basePort;
    const printed: string[] = [];
    const rounds = 30;
    const job = runJob(spec, { kind: 'ringcheck', args: { rounds, length: 1000, holdMs: 100 } }, { runDir: path.join(tmp, 'inject'), print: (l) => printed.push(l) });
    job.catch(() => undefined);
    const push = new zmq.Push({ linger: 0, sendTimeout: 200 });
    let refused = 0;
    push.events.on('handshake:error:auth', () => refused++);
    try {
      await waitForRounds(printed, 2);
      // A ZMTP 3 peer with the right socket type, after every rank has its predecessor: nobody else is let in.
      push.connect(`tcp://127.0.0.1:${base + 2}`);
      for (let i = 0; i < 5; i++) await push.send(['GET / HTTP/1.1', 'x']).catch(() => undefined);
      const end = Date.now() + 5000;
      while (refused === 0 && Date.now() < end) await sleep(20);
      assert.ok(refused > 0, 'the stranger was never refused');
      const out = await job;
      const results = out.value as Array<{ rank: number; rounds: number }>;
      assert.deepEqual(results.map((r) => r.rounds), [rounds, rounds, rounds], 'the job went on to the end');
      assert.ok(!printed.some((l) => /bad message/.test(l)));
    } finally {
      push.close();
      await job.catch(() => undefined);
    }
    assert.deepEqual(workerPids(base), []);
  });
});
