import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ROOT, runCli, workerPids } from './helpers/cli.js';
import { slurmMissing, startSlurm, type SlurmCluster } from './helpers/slurm.js';

/**
 * A real scheduler: the sbatch script `ringattn launch --emit slurm` prints,
 * submitted to a one-node Slurm cluster (slurm-wlm and munge, installed by
 * .ci/setup-system.sh) that this test starts in its own folder.
 */

const missing = slurmMissing();
if (missing && process.env.CI) throw new Error(`slurm.test: ${missing}; CI must provide it (.ci/setup-system.sh)`);
if (missing) process.stderr.write(`slurm.test: skipped: ${missing}\n`);

const CI_SPEC = path.join(ROOT, 'configs', 'ci.yaml');
const tmp = mkdtempSync(path.join(tmpdir(), 'ra-slurm-'));

describe('Slurm', { skip: missing ?? false }, () => {
  let slurm: SlurmCluster;
  before(async () => {
    slurm = await startSlurm(path.join(tmp, 'cluster'));
  });
  after(async () => {
    await slurm?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  /** Emits the job for the CI spec (2 tasks on the one node, CURVE on) into `name`/ and returns its paths. */
  async function emit(name: string, extra: string[] = []): Promise<{ script: string; runDir: string }> {
    const runDir = path.join(tmp, name);
    mkdirSync(runDir, { recursive: true });
    const r = await runCli(['launch', '--emit', 'slurm', '--config', CI_SPEC, '--set', 'security=curve', '--run-dir', runDir, '--job-name', `ra-${name}`, ...extra]);
    assert.equal(r.code, 0, r.stderr);
    const script = path.join(runDir, 'job.sbatch');
    writeFileSync(script, r.stdout);
    return { script, runDir };
  }
  const output = (runDir: string) => {
    const f = readdirSync(runDir).find((x) => /^slurm-\d+\.out$/.test(x));
    return f ? readFileSync(path.join(runDir, f), 'utf8') : '';
  };
  /** The job's files: its ipc sockets and shared-memory channels are named after the spec hash (scheduler mode). */
  const jobFiles = () => [...readdirSync('/tmp'), ...readdirSync('/dev/shm')].filter((f) => /^ringattn-[0-9a-f]{16}-/.test(f));

  it('sbatch --wait: a 2-task ring trains the CI spec to completion; the key pair is gone after the job', { timeout: 180000 }, async () => {
    const { script, runDir } = await emit('ok');
    const before = jobFiles();
    const r = slurm.run('sbatch', ['--wait', script]);
    const out = output(runDir);
    assert.equal(r.status, 0, `${r.stderr}\n${out}`);
    assert.match(out, /step 4\/4 \| loss/);
    const steps = readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
    assert.deepEqual(steps, [1, 2, 3, 4]);
    const ranks = readFileSync(path.join(runDir, 'ranks.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).rank);
    assert.deepEqual([...new Set(ranks)].sort(), [0, 1]);
    const ring = JSON.parse(readFileSync(path.join(runDir, 'ring.json'), 'utf8'));
    assert.equal(ring.state, 'finished');
    assert.deepEqual(ring.ranks.map((x: { host: string }) => x.host), ['localhost', 'localhost']);
    // The job's spec named the allocation's node; the key file was made for the job and removed at its end.
    const jobDir = readdirSync(runDir).find((x) => /^slurm-\d+$/.test(x))!;
    const spec = readFileSync(path.join(runDir, jobDir, 'spec.yaml'), 'utf8');
    assert.match(spec, /name: localhost\n\s+address: localhost\n\s+slots: 2/);
    assert.match(spec, /security: curve/);
    assert.ok(!existsSync(path.join(runDir, jobDir, 'curve.json')), 'the key file outlived the job');
    assert.ok(existsSync(path.join(runDir, 'ckpt-4')));
    assert.deepEqual(jobFiles().filter((f) => !before.includes(f)), [], 'ipc or shared-memory files left behind');
    assert.deepEqual(workerPids(), []);
  });

  it('a killed task fails the job, and the output names the rank', { timeout: 180000 }, async (t) => {
    const { script, runDir } = await emit('killed');
    // RINGATTN_FAULT travels with sbatch's environment: rank 1 kills itself (SIGKILL) in the forward pass of step 3.
    const r = slurm.run('sbatch', ['--wait', script], { env: { RINGATTN_FAULT: '1:forward:3' } });
    const out = output(runDir);
    assert.notEqual(r.status, 0, out);
    assert.match(out, /RINGATTN_FAULT: SIGKILL to myself in forward of step 3/);
    // srun names the task, which is the rank (SLURM_PROCID); rank 0 names it too when it sees the lost link before
    // srun stops it (--kill-on-bad-exit races it), and never blames another rank.
    assert.match(out, /srun: error: localhost: task 1: Killed/);
    const blamed = [...out.matchAll(/"msg":"rank (\d) \(localhost\) failed: ([^"]*)"/g)].map((m) => [m[1], m[2]]);
    for (const [rank, why] of blamed) assert.deepEqual([rank, why], ['1', 'stopped answering (its predecessor, rank 0, lost the link to it): aborting every rank']);
    assert.doesNotMatch(out, /Node\.js v\d+|RingError: /, 'a ring failure is a log line, not a crash with a stack trace');
    const ring = JSON.parse(readFileSync(path.join(runDir, 'ring.json'), 'utf8'));
    assert.equal(ring.state, 'failed');
    assert.match(ring.failure, /^(rank 1 \(localhost\) stopped answering|stopped by the scheduler \(SIGTERM\))/);
    t.diagnostic(`rank 0 named rank 1 itself: ${blamed.length > 0 ? 'yes' : 'no, srun stopped it first'}`);
    await slurm.drained();
    assert.deepEqual(workerPids(), []);
  });

  it('scancel stops a running job: no worker, no ipc socket, no shared-memory file, no key left', { timeout: 180000 }, async (t) => {
    const { script, runDir } = await emit('cancelled', ['--set', 'train.steps=100000']);
    const before = jobFiles();
    const submitted = Date.now();
    const sub = slurm.run('sbatch', ['--parsable', script]);
    assert.equal(sub.status, 0, sub.stderr);
    const id = sub.stdout.trim().split(';')[0];
    const metrics = path.join(runDir, 'metrics.jsonl');
    const deadline = Date.now() + 90000;
    while (!(existsSync(metrics) && readFileSync(metrics, 'utf8').split('\n').length > 3)) {
      assert.ok(Date.now() < deadline, `the job never trained:\n${output(runDir)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const training = Date.now();
    assert.ok(workerPids().length >= 2, 'the two tasks are running');
    assert.equal(slurm.run('scancel', [id]).status, 0);
    // Slurm's SIGTERM ends each task through its exit handlers; give the last a moment to be reaped.
    const end = Date.now() + 30000;
    while (workerPids().length > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    const gone = Date.now();
    await slurm.drained();
    assert.deepEqual(workerPids(), []);
    t.diagnostic(`sbatch to the third step in metrics.jsonl: ${training - submitted} ms; scancel to no worker process: ${gone - training} ms`);
    assert.match(output(runDir), /CANCELLED/);
    assert.deepEqual(jobFiles().filter((f) => !before.includes(f)), []);
    const jobDir = readdirSync(runDir).find((x) => /^slurm-\d+$/.test(x))!;
    assert.ok(!existsSync(path.join(runDir, jobDir, 'curve.json')), 'the key file outlived the cancelled job');
  });
});

describe('launch --emit slurm: bad input', () => {
  it('refuses what cannot run, in one line', async () => {
    const two = await runCli(['launch', '--emit', 'slurm', '--config', CI_SPEC, '--tasks-per-node', '3']);
    assert.equal(two.code, 2);
    assert.match(two.stderr.trim(), /^ringattn: --emit slurm: [^\n]*$/);
    const kind = await runCli(['launch', '--emit', 'pbs', '--config', CI_SPEC]);
    assert.equal(kind.code, 2);
    assert.equal(kind.stderr.trim(), 'ringattn: --emit: expected one of slurm, kubernetes, spec, got "pbs"');
    const nodes = await runCli(['launch', '--emit', 'slurm', '--config', CI_SPEC, '--nodes', '0']);
    assert.equal(nodes.code, 2);
    assert.equal(nodes.stderr.trim(), 'ringattn: --nodes: expected an integer >= 1, got "0"');
  });
});
