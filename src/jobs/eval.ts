import { shardPositions } from '../attention/layout.js';
import type { ClusterSpec } from '../config/index.js';
import type { JobDefinition } from './types.js';
import { createModel } from '../model/index.js';
import { resolveCheckpoint } from '../train/checkpoint.js';
import { createDataSource } from '../train/data.js';
import { workerCompute } from '../engine/compute.js';
import { trainRingOn } from '../train/ring.js';
import { evaluate, resolveLayout, type EvalResult } from '../train/loop.js';

/**
 * `ringattn eval`: a checkpoint's held-out accuracy, computed on the ring the
 * way training evaluates (the same held-out windows, every rank on its shard).
 * The driver reads the checkpoint and hands each rank the parameters, so the
 * run directory need only be on the launching machine.
 */

export interface EvalArgs {
  samples: number;
  /** Read by the driver only: a checkpoint folder, or a run directory. */
  checkpoint: string;
}

export interface DepthBucket {
  /** [from, to) as fractions of the sequence. */
  from: number;
  to: number;
  samples: number;
  targets: number;
  correct: number;
  accuracy: number;
  /** Samples whose every answer token is right. */
  exact: number;
}

/** Accuracy by depth of the planted key, in `count` equal buckets of [0, 1); windows without a depth go to none. */
export function depthBuckets(perWindow: EvalResult['perWindow'], count: number): DepthBucket[] {
  const out: DepthBucket[] = Array.from({ length: count }, (_, i) => ({ from: i / count, to: (i + 1) / count, samples: 0, targets: 0, correct: 0, accuracy: 0, exact: 0 }));
  for (const w of perWindow) {
    if (w.depth === undefined) continue;
    const b = out[Math.min(count - 1, Math.floor(w.depth * count))];
    b.samples++;
    b.targets += w.targets;
    b.correct += w.correct;
    if (w.correct === w.targets) b.exact++;
  }
  for (const b of out) b.accuracy = b.targets > 0 ? b.correct / b.targets : 0;
  return out;
}

export const evalJob: JobDefinition = {
  kind: 'eval',
  async worker(ctx) {
    const { spec, ring } = ctx;
    const { samples } = ctx.args as unknown as EvalArgs;
    const { engine, kernel } = await workerCompute(spec, ctx.rank);
    const { seqLen } = spec.train;
    const layout = resolveLayout(spec.attention);
    const positions = shardPositions(layout, seqLen, ring.worldSize, ctx.rank);
    const trainRing = trainRingOn(ring, spec, kernel);
    const data = createDataSource(spec.data, seqLen, spec.model.vocabSize);
    const model = createModel(engine, spec.model, { maxTokens: positions.length });
    const { blobs } = await ctx.input('params');
    engine.write(model.params, blobs[0] as Float32Array);
    await engine.flush();
    const r = await evaluate(trainRing, model, data, positions, trainRing.attention(positions, seqLen), samples, spec.train.seed);
    if (ctx.rank === 0) await ctx.result('eval', r);
  },
  async driver(ctx) {
    const { params } = resolveCheckpoint((ctx.args as unknown as EvalArgs).checkpoint);
    for (let r = 0; r < ctx.worldSize; r++) await ctx.send(r, 'params', {}, [params.flat]);
    return (await ctx.result(0, 'eval')).value as EvalResult;
  },
};

/** The spec an evaluation runs on: the checkpoint's, with the task asked for. */
export function evalSpec(spec: ClusterSpec, task: ClusterSpec['data']['kind'] | undefined): ClusterSpec {
  return task === undefined ? spec : { ...spec, data: { ...spec.data, kind: task } };
}
