import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { specFromObject, type ClusterSpec } from '../src/config/index.js';
import { loadKernel } from '../src/kernels/index.js';
import type { AttentionKernel } from '../src/kernels/types.js';
import { selectBackend } from '../src/tensor/backend.js';
import { loadCheckpoint } from '../src/train/checkpoint.js';
import { trainRingOn } from '../src/train/ring.js';
import { train } from '../src/train/loop.js';
import type { StepMetrics } from '../src/train/metrics.js';
import { relErr } from './helpers/attention.js';
import { testEngine } from './helpers/engine.js';
import { closeAll, openLocalRing } from './helpers/ring.js';

/**
 * The training loop on real ZeroMQ rings (in one process): ring attention,
 * the gradient all-reduce and the layouts are the production code paths.
 */

let kernel: AttentionKernel;
const dirs: string[] = [];
before(async () => {
  await selectBackend('wasm');
  kernel = (await loadKernel('auto', { tileQ: 8, tileKV: 8, threads: 1 })).kernel;
});
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tinySpec(overrides: { layout: string; steps: number; kind?: string; seqLen?: number; model?: object; lr?: number; batch?: number }): ClusterSpec {
  return specFromObject({
    hosts: [{ name: 'local', address: '127.0.0.1', slots: 1 }],
    attention: { causal: true, layout: overrides.layout },
    model: overrides.model ?? { dModel: 16, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 32, ffnChunk: 7 },
    train: { steps: overrides.steps, seqLen: overrides.seqLen ?? 48, batch: overrides.batch ?? 1, warmupSteps: 1, checkpointEvery: 1, evalEvery: 0, seed: 7, lr: overrides.lr ?? 3e-3 },
    data: { kind: overrides.kind ?? 'copy' },
  });
}

/** Trains on a ring of n; returns rank 0's per-step losses and its run directory. */
async function trainOnRing(n: number, spec: ClusterSpec): Promise<{ losses: StepMetrics[]; runDir: string }> {
  const runDir = mkdtempSync(path.join(tmpdir(), 'ra-train-'));
  dirs.push(runDir);
  const rings = await openLocalRing(n);
  const losses: StepMetrics[] = [];
  try {
    await Promise.all(
      rings.map((ring) =>
        train(trainRingOn(ring, spec, kernel), spec, {
          engine: testEngine(),
          runDir: ring.rank === 0 ? runDir : path.join(runDir, `rank-${ring.rank}`),
          resume: false,
          log: () => undefined,
          progress: false,
          onStep: ring.rank === 0 ? (m) => losses.push(m) : undefined,
        }),
      ),
    );
  } finally {
    await closeAll(rings);
  }
  return { losses, runDir };
}

for (const layout of ['zigzag', 'contiguous']) {
  test(`${layout}: 1 and 3 optimizer steps on rings of 2, 3 and 4 equal the unsharded run`, async () => {
    const spec = tinySpec({ layout, steps: 3 });
    const base = await trainOnRing(1, spec);
    for (const n of [2, 3, 4]) {
      const run = await trainOnRing(n, spec);
      assert.equal(run.losses.length, 3);
      run.losses.forEach((m, i) => {
        const rel = Math.abs(m.loss - base.losses[i].loss) / Math.abs(base.losses[i].loss);
        assert.ok(rel <= 1e-5, `N=${n} step ${i + 1}: loss ${m.loss} vs unsharded ${base.losses[i].loss} (rel ${rel})`);
      });
      for (const step of [1, 3]) {
        const a = loadCheckpoint(path.join(run.runDir, `ckpt-${step}`)).params.flat;
        const b = loadCheckpoint(path.join(base.runDir, `ckpt-${step}`)).params.flat;
        const rel = relErr(a, b);
        assert.ok(rel <= 1e-5, `N=${n} after ${step} step(s): parameters differ by ${rel} relative`);
      }
    }
  });
}

test('copy task on a ring of 3: the loss on the copied half falls far below chance', async () => {
  // The copied half can only be predicted by attending to the first half, which
  // lives on other ranks: without cross-shard attention the loss stays at chance.
  const vocabSize = 16;
  const spec = tinySpec({ layout: 'zigzag', steps: 300, batch: 4, seqLen: 48, lr: 1e-2, model: { vocabSize, dModel: 32, layers: 2, heads: 4, ffnHidden: 64, ffnChunk: 16 } });
  const { losses } = await trainOnRing(3, spec);
  const chance = Math.log(vocabSize);
  const first = losses[0].loss;
  const last = Math.min(...losses.slice(-10).map((m) => m.loss));
  console.log(`# copy task: loss ${first.toFixed(3)} -> ${last.toFixed(3)} (chance ${chance.toFixed(3)})`);
  assert.ok(first > 0.8 * chance, `starts near chance: ${first}`);
  assert.ok(last < 0.25 * chance, `copied half learned: loss ${last} vs chance ${chance.toFixed(2)}`);
});
