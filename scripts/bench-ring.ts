/**
 * npm run bench:ring — the ring's data plane against raw ZeroMQ, on loopback.
 *
 * For 1-64 MiB blocks: raw zeromq PUSH/PULL one way (the ceiling), raw zeromq
 * with both processes sending and receiving at once (the ring's traffic
 * pattern), and ringattn's framed ring pass (header + zero-copy payload,
 * sequence checks, tagged inbox) on a ring of 2 processes, over tcp, ipc and
 * the same-host shared-memory channel (ipc carrying only descriptors), and
 * with a bfloat16 wire (half the bytes; the conversions at both ends are
 * timed, the rate counts float32 bytes). Then all-reduce throughput on rings
 * of 2 and 3, over tcp and shm. Prints a markdown table and a JSON line.
 *
 *   node --import tsx scripts/bench-ring.ts [--reps 8] [--json]
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import * as zmq from 'zeromq';
import { loadSumInto } from '../src/addon/index.js';
import { loadWireNative } from '../src/ring/wire.js';
import { allReduceSum, barrier, timeHops } from '../src/ring/collectives.js';
import { Ring } from '../src/ring/transport.js';
import { shmPath } from '../src/ring/shm.js';
import { fromWire, toWire, type WireFormat } from '../src/ring/wire.js';
import { freePortRange } from '../test/helpers/ports.js';

const SELF = fileURLToPath(import.meta.url);
const MiB = 1 << 20;
const SIZES = [1, 4, 16, 64];

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

/** Runs `count` copies of this script as children with the given role; resolves with their JSON outputs. */
function children(count: number, role: object): Promise<any[]> {
  return Promise.all(
    Array.from({ length: count }, (_, i) =>
      new Promise<any>((resolve, reject) => {
        const c = spawn(process.execPath, ['--import', 'tsx', SELF, '--child', JSON.stringify({ ...role, index: i })], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        c.stdout.on('data', (d) => (out += d));
        c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`child ${i} exited ${code}`))));
      }),
    ),
  );
}

async function child(role: { kind: string; index: number; port: number; bytes: number; reps: number; n: number; jobId: string; transport?: 'tcp' | 'ipc' | 'shm'; wire?: WireFormat }): Promise<unknown> {
  const { index, port, bytes, reps } = role;
  const block = new Float32Array(bytes / 4).fill(index + 1);
  if (role.kind === 'raw-oneway' || role.kind === 'raw-both') {
    const both = role.kind === 'raw-both';
    const pull = new zmq.Pull({ linger: 0 });
    const push = new zmq.Push({ linger: 0, sendHighWaterMark: 0 });
    await pull.bind(`tcp://127.0.0.1:${port + index}`);
    push.connect(`tcp://127.0.0.1:${port + 1 - index}`);
    // Handshake so neither side starts the clock before the other is connected.
    await push.send('ready');
    await pull.receive();
    const t0 = performance.now();
    const sends = (async () => {
      if (!both && index === 1) return;
      // The same block every time, as zero-copy as the ring's own sends (it is never mutated).
      for (let i = 0; i < reps; i++) await push.send(block);
    })();
    const recvs = (async () => {
      if (!both && index === 0) return;
      for (let i = 0; i < reps; i++) await pull.receive();
    })();
    await Promise.all([sends, recvs]);
    const ms = performance.now() - t0;
    await push.send('done');
    await pull.receive();
    push.close();
    pull.close();
    return { ms };
  }
  const endpoint = (r: number) => (role.transport === 'ipc' || role.transport === 'shm' ? `ipc:///tmp/ringattn-bench-${role.jobId}-${r}` : `tcp://127.0.0.1:${port + r}`);
  const peer = (r: number) => ({ rank: r, host: '127.0.0.1', endpoint: endpoint(r) });
  const n = role.n;
  // As a worker sizes it by default (ring.shmBytes), and at least two blocks in flight.
  const shm = role.transport === 'shm';
  const ring = await Ring.open({
    rank: index, worldSize: n, jobId: role.jobId, bind: peer(index).endpoint, next: peer((index + 1) % n), prev: peer((index + n - 1) % n),
    opTimeoutMs: 60000, connectTimeoutMs: 10000, heartbeatIntervalMs: 500, heartbeatTimeoutMs: 3000, maxMessageBytes: 1 << 30,
    shmSend: shm ? { path: shmPath(role.jobId, index), maxBytes: Math.max(128 * MiB, 2 * bytes + MiB), required: true } : undefined,
    shmRecv: shm ? shmPath(role.jobId, (index + n - 1) % n) : undefined,
  });
  await barrier(ring);
  let ms: number;
  if (role.kind === 'ring-pass') {
    // A 16-bit wire converts at both ends, as ring attention does: the time counts it.
    const wire = role.wire && role.wire !== 'float32' ? role.wire : null;
    // The addon's conversions, as ring attention uses them, unless RINGATTN_BENCH_JS_WIRE asks for JavaScript's.
    const native = process.env.RINGATTN_BENCH_JS_WIRE ? null : loadWireNative();
    let held: Float32Array = block;
    // Back to back: a stream of blocks round the ring, each passed on as it came.
    const runs = await timeHops(ring, 'blk', () => [wire ? toWire(held, wire, native) : held], {
      runs: reps,
      barrier: false,
      received: ([got]) => (held = wire ? fromWire(got, native) : (got.data as Float32Array)),
    });
    ms = runs.reduce((a, r) => a + r.ms, 0);
  } else {
    // As training sums its gradients: in place, with the addon's additions unless RINGATTN_BENCH_JS_ADD is set (to compare).
    const add = process.env.RINGATTN_BENCH_JS_ADD ? undefined : (loadSumInto() ?? undefined);
    await allReduceSum(ring, block, { inPlace: true, add });
    await barrier(ring);
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await allReduceSum(ring, block, { inPlace: true, add });
    ms = performance.now() - t0;
  }
  await ring.close();
  // A bound ipc socket's file outlives the socket: remove ours.
  if (role.transport === 'ipc' || role.transport === 'shm') rmSync(endpoint(index).slice('ipc://'.length), { force: true });
  return { ms };
}

async function freeBase(): Promise<number> {
  return freePortRange(4);
}

async function main(): Promise<void> {
  const reps = Number(arg('--reps', '8'));
  const rows: Array<Record<string, number>> = [];
  for (const mib of SIZES) {
    const bytes = mib * MiB;
    const r = Math.max(4, Math.round((reps * 32) / mib));
    const gbps = (ms: number) => (r * bytes) / (ms / 1000) / 1e9;
    const oneway = await children(2, { kind: 'raw-oneway', port: await freeBase(), bytes, reps: r });
    const both = await children(2, { kind: 'raw-both', port: await freeBase(), bytes, reps: r });
    const pass = async (extra: object) => children(2, { kind: 'ring-pass', port: await freeBase(), bytes, reps: r, n: 2, jobId: randomBytes(8).toString('hex'), ...extra });
    const ring = await pass({});
    const ipc = await pass({ transport: 'ipc' });
    const shm = await pass({ transport: 'shm' });
    const bf16 = await pass({ wire: 'bfloat16' });
    const maxMs = (xs: any[]) => Math.max(...xs.map((x) => x.ms));
    rows.push({ mib, rawOneway: gbps(maxMs(oneway)), rawBoth: gbps(maxMs(both)), ringPass: gbps(maxMs(ring)), ringIpc: gbps(maxMs(ipc)), ringShm: gbps(maxMs(shm)), ringBf16: gbps(maxMs(bf16)) });
  }
  const allReduce: Array<Record<string, number | string>> = [];
  for (const transport of ['tcp', 'shm'] as const) {
    for (const n of [2, 3]) {
      const bytes = 64 * MiB;
      const r = 3;
      const res = await children(n, { kind: 'allreduce', port: await freeBase(), bytes, reps: r, n, jobId: randomBytes(8).toString('hex'), transport });
      const ms = Math.max(...res.map((x) => x.ms)) / r;
      allReduce.push({ transport, n, mib: 64, ms, algGBps: bytes / (ms / 1000) / 1e9, busGBps: ((2 * (n - 1)) / n) * bytes / (ms / 1000) / 1e9 });
    }
  }
  if (process.argv.includes('--json')) {
    process.stdout.write(`${JSON.stringify({ cpus: cpus().length, cpu: cpus()[0]?.model, rows, allReduce })}\n`);
    return;
  }
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model}; loopback tcp; GB/s = 1e9 bytes/s per direction`);
  console.log('| block (float32) | raw zmq one-way | raw zmq both ways | ring pass, tcp | ring / raw both ways | ring pass, ipc | ring pass, shm | ring pass, tcp, bfloat16 wire (float32 GB/s, conversions included) |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const x of rows) {
    console.log(
      `| ${x.mib} MiB | ${x.rawOneway.toFixed(2)} | ${x.rawBoth.toFixed(2)} | ${x.ringPass.toFixed(2)} | ${((100 * x.ringPass) / x.rawBoth).toFixed(0)}% | ${x.ringIpc.toFixed(2)} | ${x.ringShm.toFixed(2)} | ${x.ringBf16.toFixed(2)} |`,
    );
  }
  // The target compares the all-reduce's bus bandwidth with one ring hop of the same 64 MiB on the same machine.
  const hop64 = rows.find((x) => x.mib === 64)?.ringPass ?? NaN;
  const hopShm64 = rows.find((x) => x.mib === 64)?.ringShm ?? NaN;
  console.log('\n| all-reduce (in place, pipelined in 1 MiB segments) | link | time | algorithm bandwidth | bus bandwidth | bus / 64 MiB ring pass on the same link |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const a of allReduce) {
    const hop = a.transport === 'shm' ? hopShm64 : hop64;
    const [ms, alg, bus] = [a.ms, a.algGBps, a.busGBps] as number[];
    console.log(`| ${a.mib} MiB on ${a.n} ranks | ${a.transport} | ${ms.toFixed(0)} ms | ${alg.toFixed(2)} GB/s | ${bus.toFixed(2)} GB/s | ${((100 * bus) / hop).toFixed(0)}% |`);
  }
}

const ci = process.argv.indexOf('--child');
if (ci >= 0) {
  child(JSON.parse(process.argv[ci + 1])).then((r) => process.stdout.write(JSON.stringify(r)));
} else {
  void main();
}
