import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { specFromObject, type ClusterSpec } from '../src/config/index.js';
import { LaunchError, runJob, tcp } from '../src/launch/launcher.js';
import { workersOf } from './helpers/netns.js';
import { freePortRange } from './helpers/ports.js';
import { ancestors, descendants, sshClientUnavailable, sshdUnavailable, startSshd, type Sshd } from './helpers/sshd.js';

/*
 * The launcher's ssh path against a real sshd: a throwaway sshd on a loopback
 * port, a ring that mixes one local rank with two ranks started over ssh.
 */

const sshdSkip = sshdUnavailable();
const clientSkip = sshClientUnavailable();
if (sshdSkip) console.log(`ssh.test.ts: the tests against a real sshd are skipped: ${sshdSkip}`);
if (clientSkip) console.log(`ssh.test.ts: the unreachable-host test is skipped: ${clientSkip}`);

// The host key changes on every run and must not land in anyone's known_hosts.
const SSH_OPTIONS = ['UserKnownHostsFile=/dev/null', 'StrictHostKeyChecking=no', 'LogLevel=ERROR', 'IdentitiesOnly=yes', 'ConnectTimeout=5'];
const RING = { heartbeatIntervalMs: 200, heartbeatTimeoutMs: 1500, connectTimeoutMs: 5000, rendezvousTimeoutMs: 20000, opTimeoutMs: 20000 };
// For jobs that fail before the rendezvous: the coordinator's rendezvous timer outlives a failed
// launch and holds the test process open until it fires, so keep it short there.
const SHORT_RENDEZVOUS = { rendezvousTimeoutMs: 8000 };

/** Stops any worker of this coordinator that a failed assertion left running. */
function killWorkers(coordinator: string): void {
  for (const w of workersOf(coordinator)) {
    try {
      process.kill(w.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

async function failure(p: Promise<unknown>): Promise<{ err: LaunchError; ms: number }> {
  const t0 = Date.now();
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof LaunchError, `expected a LaunchError, got ${String(err)}`);
    return { err, ms: Date.now() - t0 };
  }
  assert.fail('the job succeeded');
}

describe('the ssh launch path against a real sshd', { skip: sshdSkip ?? false }, () => {
  let sshd: Sshd;
  let tmp: string;
  const coordinators: string[] = [];

  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'ringattn-ssh-'));
    sshd = await startSshd();
  });

  after(async () => {
    for (const c of coordinators) killWorkers(c);
    // Every ssh session the launcher opened (workers, remote kills) has ended.
    const sessions = sshd ? descendants(sshd.pid) : [];
    await sshd?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    for (const c of coordinators) assert.deepEqual(workersOf(c), [], 'a worker outlived the tests');
    assert.deepEqual(sessions, [], 'ssh sessions of the test sshd were still open after the tests');
  });

  /** One local rank on 127.0.0.2, two ranks on 127.0.0.1 started through the test sshd. */
  const mixedSpec = async (identityFile = sshd.identityFile, ring: Record<string, number> = {}): Promise<{ spec: ClusterSpec; coordinator: string }> => {
    const basePort = await freePortRange(4);
    const coordinator = tcp('127.0.0.1', basePort);
    coordinators.push(coordinator);
    const spec = specFromObject({
      name: 'ssh',
      runDir: tmp,
      hosts: [
        { name: 'local', address: '127.0.0.2', slots: 1, launch: 'local' },
        { name: 'viassh', address: '127.0.0.1', slots: 2, launch: 'ssh', ssh: { user: 'root', port: sshd.port, identityFile, options: SSH_OPTIONS } },
      ],
      ring: { basePort, ...RING, ...ring },
    });
    return { spec, coordinator };
  };

  it('runs ringcheck on a ring of one local and two ssh-launched ranks', async () => {
    const { spec, coordinator } = await mixedSpec();
    const seen = new Map<number, { pid: number; sshConnection?: string; ancestors: number[] }>();
    const timer = setInterval(() => {
      for (const w of workersOf(coordinator)) {
        if (!seen.has(w.rank)) seen.set(w.rank, { pid: w.pid, sshConnection: w.env.get('SSH_CONNECTION'), ancestors: ancestors(w.pid) });
      }
    }, 100);
    const t0 = Date.now();
    let outcome;
    try {
      outcome = await runJob(spec, { kind: 'ringcheck', args: { rounds: 3, length: 10_000, holdMs: 300 } }, { quiet: true, runDir: join(tmp, 'ok') });
    } finally {
      clearInterval(timer);
    }
    console.log(`ssh ringcheck (1 local + 2 ssh ranks) took ${Date.now() - t0} ms`);

    const results = outcome.value as Array<{ rank: number; rounds: number; pid: number }>;
    assert.deepEqual(results.map((r) => [r.rank, r.rounds]), [[0, 3], [1, 3], [2, 3]]);
    assert.equal(new Set(results.map((r) => r.pid)).size, 3);
    assert.equal(seen.size, 3, `saw the worker processes of ranks ${[...seen.keys()].sort()} only`);
    for (const r of results) assert.equal(seen.get(r.rank)!.pid, r.pid, `rank ${r.rank}: the process seen running is the one that reported`);

    // Rank 0 is the launcher's own child; ranks 1 and 2 are sessions of the test sshd.
    const local = seen.get(0)!;
    assert.equal(local.sshConnection, undefined);
    assert.equal(local.ancestors[0], process.pid, 'the local rank is a child of the launcher');
    for (const rank of [1, 2]) {
      const s = seen.get(rank)!;
      assert.match(s.sshConnection ?? '', new RegExp(`^127\\.0\\.0\\.1 \\d+ 127\\.0\\.0\\.1 ${sshd.port}$`), `rank ${rank} has no SSH_CONNECTION of the test sshd`);
      const viaSshd = s.ancestors.indexOf(sshd.pid);
      assert.ok(viaSshd >= 0, `rank ${rank} does not descend from the test sshd (pid ${sshd.pid}): ancestors ${s.ancestors.join(' ')}`);
      // The test started sshd, so the launcher is further up; below sshd there must be only sshd's session processes.
      assert.ok(!s.ancestors.slice(0, viaSshd).includes(process.pid), `rank ${rank} was started by the launcher, not by sshd`);
    }
    assert.match(sshd.log(), /Accepted publickey for root from 127\.0\.0\.1/);
    assert.deepEqual(workersOf(coordinator), [], 'a worker outlived the job');
  });

  it('fails naming an ssh-launched rank killed mid-job, and leaves no worker on either side', async () => {
    const { spec, coordinator } = await mixedSpec();
    const victim = 2;
    let roundsPassed = 0;
    let killedAt: number | null = null;
    let killedPid: number | null = null;
    const print = (line: string) => {
      if (/ring check round passed/.test(line)) roundsPassed++;
      if (killedAt !== null || roundsPassed < 3) return;
      const w = workersOf(coordinator).find((x) => x.rank === victim);
      if (!w) return;
      killedAt = Date.now();
      killedPid = w.pid;
      process.kill(w.pid, 'SIGKILL');
    };
    const { err } = await failure(runJob(spec, { kind: 'ringcheck', args: { rounds: 200, length: 1000, holdMs: 100 } }, { print, runDir: join(tmp, 'kill') }));
    const ms = killedAt === null ? null : Date.now() - killedAt;
    console.log(`ssh kill -9 of rank ${victim} (pid ${killedPid}): launcher failed ${ms} ms later: ${err.message.split('\n')[0]}`);
    assert.ok(killedAt !== null, 'the ring never got going, so nothing was killed');
    assert.match(err.message, new RegExp(`rank ${victim} \\(viassh\\)`));
    assert.ok(ms! < 15000, `the launcher took ${ms} ms to fail`);
    assert.deepEqual(workersOf(coordinator), [], 'a worker outlived the failed job');
  });

  it('never asks for a password when the key is refused: BatchMode', async () => {
    // An askpass program that records being called: without BatchMode, ssh would run it to ask for root's password.
    const marker = join(tmp, 'askpass-called');
    const askpass = join(tmp, 'askpass.sh');
    writeFileSync(askpass, `#!/bin/sh\necho called >> '${marker}'\necho not-the-password\n`);
    chmodSync(askpass, 0o700);
    const saved = { SSH_ASKPASS: process.env.SSH_ASKPASS, SSH_ASKPASS_REQUIRE: process.env.SSH_ASKPASS_REQUIRE, DISPLAY: process.env.DISPLAY };
    Object.assign(process.env, { SSH_ASKPASS: askpass, SSH_ASKPASS_REQUIRE: 'force', DISPLAY: ':0' });
    try {
      // The trap works: plain ssh with the refused key does ask.
      const control = spawnSync(
        'ssh',
        ['-p', String(sshd.port), '-i', sshd.strangerIdentityFile, ...SSH_OPTIONS.flatMap((o) => ['-o', o]), '-o', 'NumberOfPasswordPrompts=1', 'root@127.0.0.1', 'true'],
        { stdio: 'ignore', timeout: 15000 },
      );
      assert.notEqual(control.status, 0);
      assert.ok(existsSync(marker), 'control: ssh without BatchMode did not run the askpass program, so this test proves nothing');
      rmSync(marker);

      const { spec, coordinator } = await mixedSpec(sshd.strangerIdentityFile, SHORT_RENDEZVOUS);
      const { err, ms } = await failure(runJob(spec, { kind: 'ringcheck', args: {} }, { quiet: true, runDir: join(tmp, 'refused') }));
      console.log(`ssh with a refused key failed in ${ms} ms: ${err.message.split('\n')[0]}`);
      assert.ok(!existsSync(marker), 'the launcher let ssh ask for a password');
      assert.match(err.message, /rank [12] \(viassh\)/);
      assert.match(err.message, /Permission denied/);
      assert.ok(ms < 15000, `took ${ms} ms`);
      assert.deepEqual(workersOf(coordinator), []);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});

describe('an unreachable ssh host', { skip: clientSkip ?? false }, () => {
  it('fails quickly naming the rank and host, without prompting', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'ringattn-ssh-down-'));
    // A loopback port nobody listens on: the connection is refused at once.
    const [basePort, closedPort] = [await freePortRange(3), await freePortRange(1)];
    const coordinator = tcp('127.0.0.1', basePort);
    try {
      const spec = specFromObject({
        name: 'sshdown',
        runDir: tmp,
        hosts: [
          { name: 'local', address: '127.0.0.2', slots: 1, launch: 'local' },
          { name: 'downhost', address: '127.0.0.1', slots: 1, launch: 'ssh', ssh: { user: 'root', port: closedPort, options: SSH_OPTIONS } },
        ],
        ring: { basePort, ...RING, ...SHORT_RENDEZVOUS },
      });
      const { err, ms } = await failure(runJob(spec, { kind: 'ringcheck', args: {} }, { quiet: true, runDir: join(tmp, 'run') }));
      console.log(`unreachable ssh host failed in ${ms} ms: ${err.message.split('\n').slice(0, 3).join(' | ')}`);
      assert.match(err.message, /rank 1 \(downhost\)/);
      assert.match(err.message, new RegExp(`127\\.0\\.0\\.1 port ${closedPort}: Connection refused`));
      assert.ok(ms < 10000, `took ${ms} ms`);
      assert.deepEqual(workersOf(coordinator), [], 'the local worker outlived the failed job');
    } finally {
      killWorkers(coordinator);
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
