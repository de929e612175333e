/**
 * A ring rank 0 whose predecessor (rank 1) is the test process: it opens the
 * ring, reports its RSS, stalls its event loop (a long synchronous compute),
 * then waits for the ring to fail and reports its peak RSS. Used by
 * test/data-plane.test.ts's flooding-peer test.
 *
 *   node --import tsx test/helpers/flood-target.ts <basePort> <jobId> <maxQueuedBytes> <stallMs>
 */
import { readFileSync } from 'node:fs';
import { Ring } from '../../src/ring/transport.js';

const [basePort, jobId, maxQueued, stall] = process.argv.slice(2);
const ep = (p: number) => `tcp://127.0.0.1:${p}`;
const base = Number(basePort);
const statusMiB = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;

const ring = await Ring.open({
  rank: 0,
  worldSize: 2,
  jobId,
  bind: ep(base),
  next: { rank: 1, host: 'flooder', endpoint: ep(base + 1) },
  prev: { rank: 1, host: 'flooder', endpoint: ep(base + 1) },
  opTimeoutMs: 30000,
  connectTimeoutMs: 10000,
  heartbeatIntervalMs: 500,
  heartbeatTimeoutMs: 10000,
  maxMessageBytes: 1 << 30,
  maxQueuedBytes: Number(maxQueued),
});
const rssAtOpen = statusMiB('VmRSS');
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
const until = Date.now() + Number(stall);
while (Date.now() < until) {
  // The event loop is blocked: only ZeroMQ's I/O thread reads the socket now.
}
const deadline = Date.now() + 15000;
while (!ring.failed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
// Past the failure nothing drains the socket: whatever ZeroMQ's queue takes in, it takes now.
await new Promise((r) => setTimeout(r, 1500));
process.stdout.write(`${JSON.stringify({ failed: ring.failed?.message ?? null, rssAtOpen, peak: statusMiB('VmHWM'), rss: statusMiB('VmRSS') })}\n`);
process.exit(0);
