import { after, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { formatSoak, runSoak } from './helpers/soak.js';

/*
 * The short version of `npm run soak` (scripts/soak.ts) (the lead runs the long one for
 * docs/reliability.md): a few hundred training steps on a ring of 2 with
 * frequent checkpoints; no worker's or launcher's count of open file
 * descriptors grows. Memory is only reported here: a short run is all warm-up.
 */

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-soak-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

it('a short soak keeps every process at a flat count of open file descriptors', { timeout: 120000 }, async () => {
  const r = await runSoak({ steps: 400, workers: 2, intervalMs: 60, checkpointEvery: 10, runDir: path.join(tmp, 'soak'), log: () => undefined });
  console.log(formatSoak(r));
  assert.deepEqual(r.fits.map((f) => f.proc).sort(), ['launcher', 'rank 0', 'rank 1']);
  const late = r.samples.filter((s) => s.step >= r.steps * 0.1);
  assert.ok(late.length >= 6, `only ${late.length} samples after warm-up`);
  for (const f of r.fits) {
    // A checkpoint being written holds a file open for a moment: allow that, not a trend.
    assert.ok(f.fdsLast <= f.fdsFirst + 1 && f.fdsMax <= f.fdsFirst + 3, `${f.proc}: fds ${f.fdsFirst} → ${f.fdsLast} (max ${f.fdsMax})`);
    const third = Math.max(1, Math.floor(late.length / 3));
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const fds = late.filter((s) => s.procs[f.proc]).map((s) => s.procs[f.proc].fds);
    assert.ok(median(fds.slice(-third)) <= median(fds.slice(0, third)), `${f.proc}: open fds grow (${fds.join(' ')})`);
  }
});
