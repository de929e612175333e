import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { specFromObject, type ClusterSpec } from '../src/config/index.js';
import { LaunchError, runJob, tcp } from '../src/launch/launcher.js';
import { createNetnsLab, leftovers, namedNetnsInode, netnsOf, netnsUnavailable, workersOf, type NetnsLab } from './helpers/netns.js';
import { freePortRange } from './helpers/ports.js';

/*
 * A ring across distinct IP addresses on one machine: three network namespaces
 * on a bridge, one host of the spec per namespace (`netns` on the host makes the
 * launcher start its workers through `ip netns exec`), the coordinator on the
 * bridge's address in the root namespace.
 */

const skipReason = netnsUnavailable();
if (skipReason) console.log(`netns.test.ts skipped: ${skipReason}`);

const HOSTS = 3;
const SLOTS = [1, 1, 2];
const WORLD = SLOTS.reduce((a, b) => a + b, 0);
const LENGTH = 100_000;

describe('a ring across distinct IP addresses on one machine', { skip: skipReason ?? false }, () => {
  let lab: NetnsLab;
  let tmp: string;
  let basePort: number;
  let coordinator: string;
  const savedCoordinatorAddress = process.env.RINGATTN_COORDINATOR_ADDRESS;

  const hostOfRank = (r: number) => {
    let seen = 0;
    for (let h = 0; h < HOSTS; h++) if (r < (seen += SLOTS[h])) return h;
    throw new Error(`rank ${r} out of range`);
  };

  const makeSpec = (): ClusterSpec =>
    specFromObject({
      name: 'netns',
      runDir: tmp,
      hosts: lab.names.map((ns, i) => ({ name: `ns${i}`, address: lab.addresses[i], slots: SLOTS[i], launch: 'local', netns: ns })),
      ring: { basePort, heartbeatIntervalMs: 200, heartbeatTimeoutMs: 1500, connectTimeoutMs: 5000, rendezvousTimeoutMs: 20000, opTimeoutMs: 20000 },
    });

  const killOurWorkers = () => {
    for (const w of workersOf(coordinator)) {
      try {
        process.kill(w.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };

  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'ringattn-netns-'));
    lab = createNetnsLab(HOSTS);
    // Also when the test process dies of an uncaught error: destroy() is synchronous and runs at most once.
    process.once('exit', () => lab.destroy());
    basePort = await freePortRange(WORLD + 1);
    coordinator = tcp(lab.rootAddress, basePort);
    // The coordinator binds in the root namespace; the namespaces reach it over the bridge.
    process.env.RINGATTN_COORDINATOR_ADDRESS = lab.rootAddress;
  });

  after(() => {
    if (savedCoordinatorAddress === undefined) delete process.env.RINGATTN_COORDINATOR_ADDRESS;
    else process.env.RINGATTN_COORDINATOR_ADDRESS = savedCoordinatorAddress;
    if (coordinator) killOurWorkers();
    lab?.destroy();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    assert.deepEqual(leftovers(), [], 'namespaces or links left behind');
  });

  it('runs ringcheck with every worker inside its namespace, talking over the namespace addresses', async () => {
    const spec = makeSpec();
    const rounds = 3;
    const before = lab.names.map((_, i) => lab.counters(i));
    const nsInode = lab.names.map((n) => namedNetnsInode(n));
    const rootInode = netnsOf('self');
    // While the job runs: which namespace each worker process lives in, and the TCP connections of each namespace.
    const seenNs = new Map<number, { pid: number; inode: string | null }>();
    const seenConns = lab.names.map(() => new Set<string>());
    const sample = () => {
      for (const w of workersOf(coordinator)) if (!seenNs.has(w.rank)) seenNs.set(w.rank, { pid: w.pid, inode: netnsOf(w.pid) });
      lab.names.forEach((_, i) => {
        for (const c of lab.connections(i)) seenConns[i].add(`${c.local} ${c.peer}`);
      });
    };
    const timer = setInterval(sample, 150);
    const t0 = Date.now();
    let outcome;
    try {
      outcome = await runJob(spec, { kind: 'ringcheck', args: { rounds, length: LENGTH, holdMs: 400 } }, { quiet: true, runDir: join(tmp, 'ok') });
    } finally {
      clearInterval(timer);
    }
    console.log(`netns ringcheck of ${WORLD} ranks on ${HOSTS} namespaces took ${Date.now() - t0} ms`);

    const results = outcome.value as Array<{ rank: number; rounds: number; pid: number }>;
    assert.equal(results.length, WORLD);
    results.forEach((r, i) => {
      assert.equal(r.rank, i);
      assert.equal(r.rounds, rounds);
      assert.ok(Number.isInteger(r.pid) && r.pid > 0, `rank ${i} reports pid ${r.pid}`);
    });
    assert.equal(new Set(results.map((r) => r.pid)).size, WORLD, 'every rank is its own process');

    // Each worker ran in its host's namespace, not in the root one.
    assert.equal(seenNs.size, WORLD, `saw the worker processes of ranks ${[...seenNs.keys()].sort()} only`);
    for (const r of results) {
      const seen = seenNs.get(r.rank)!;
      assert.equal(seen.pid, r.pid, `rank ${r.rank}: the process seen running is the one that reported`);
      assert.notEqual(seen.inode, rootInode, `rank ${r.rank} runs in the root namespace`);
      assert.equal(seen.inode, nsInode[hostOfRank(r.rank)], `rank ${r.rank} runs in ${lab.names[hostOfRank(r.rank)]}`);
    }

    // Every hop between two hosts is a TCP connection from the sender's namespace address to the receiver's.
    for (let r = 0; r < WORLD; r++) {
      const next = (r + 1) % WORLD;
      const [from, to] = [hostOfRank(r), hostOfRank(next)];
      if (from === to) continue;
      const want = `${lab.addresses[to]}:${basePort + 1 + next}`;
      const conns = [...seenConns[from]];
      assert.ok(
        conns.some((c) => c.startsWith(`${lab.addresses[from]}:`) && c.endsWith(` ${want}`)),
        `rank ${r} -> rank ${next}: no connection ${lab.addresses[from]} -> ${want} in ${lab.names[from]}; saw ${conns.join(', ')}`,
      );
    }
    // Every namespace reached the coordinator on the root side of the bridge.
    lab.names.forEach((n, i) => {
      assert.ok([...seenConns[i]].some((c) => c.endsWith(` ${lab.rootAddress}:${basePort}`)), `${n} has no connection to the coordinator`);
    });

    // The all-reduce payload crossed every namespace's link: each host sends (and receives) at least
    // one rank's reduce-scatter plus all-gather share per round.
    const share = rounds * 2 * ((WORLD - 1) / WORLD) * LENGTH * 4;
    lab.names.forEach((n, i) => {
      const now = lab.counters(i);
      const tx = now.tx - before[i].tx;
      const rx = now.rx - before[i].rx;
      assert.ok(tx >= share && rx >= share, `${n}: ${tx} bytes sent, ${rx} received, expected at least ${share} each`);
    });

    assert.deepEqual(workersOf(coordinator), [], 'a worker outlived the job');
  });

  it('fails naming the rank whose host lost its link mid-job, and leaves no worker behind', async () => {
    const spec = makeSpec();
    const victim = 1;
    const victimRanks = [...Array(WORLD).keys()].filter((r) => hostOfRank(r) === victim);
    let roundsPassed = 0;
    let cut: number | null = null;
    const print = (line: string) => {
      if (/ring check round passed/.test(line)) roundsPassed++;
      // Once every rank finished a round the ring is up and busy: cut the host off.
      if (cut === null && roundsPassed >= WORLD) {
        cut = Date.now();
        lab.linkDown(victim);
      }
    };
    const t0 = Date.now();
    let err: unknown;
    try {
      await runJob(spec, { kind: 'ringcheck', args: { rounds: 200, length: 1000, holdMs: 100 } }, { print, runDir: join(tmp, 'cut') });
    } catch (e) {
      err = e;
    }
    const failedAfter = cut === null ? null : Date.now() - cut;
    console.log(`netns link-down run: link cut after ${cut === null ? '-' : cut - t0} ms, launcher failed ${failedAfter} ms later`);
    assert.ok(cut !== null, 'the ring never got going, so the link was never cut');
    assert.ok(err instanceof LaunchError, `expected a LaunchError, got ${String(err)}`);
    const message = (err as Error).message;
    console.log(`${message.split('\n')[0]}`);
    const named = victimRanks.some((r) => message.includes(`rank ${r} (ns${victim})`));
    assert.ok(named, `the error should name rank ${victimRanks.join(' or ')} on ns${victim}:\n${message}`);
    // The heartbeat timeout (1.5 s) plus the launcher's settle and stop grace periods, with room for a loaded machine.
    assert.ok(failedAfter! < 15000, `the launcher took ${failedAfter} ms to fail after the link went down`);
    assert.deepEqual(workersOf(coordinator), [], 'a worker outlived the failed job');
  });
});
