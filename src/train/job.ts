import { loadSumInto } from '../engine/addon.js';
import { loadTunedKernel, measuredGemmGflops } from '../engine/tuning.js';
import { shardPositions } from '../attention/layout.js';
import { newRingStepStats, ringAttentionOp } from '../attention/ring-attention.js';
import { slotGpu, workerThreads, type ClusterSpec } from '../config/index.js';
import { loadEngine, type Engine, type EngineName } from '../engine/index.js';
import type { AttentionKernel } from '../kernels/types.js';
import type { Ring } from '../ring/transport.js';
import type { JobDefinition } from '../launch/job.js';
import { allReduceSum } from '../ring/collectives.js';
import { selectBackend, tfjsWant } from '../tensor/backend.js';
import { resolveLayout, train, type TrainResult, type TrainRing } from './loop.js';
import { RANKS_FILE, rankStepRecord, StepLog, type RankStepRecord, type StepMetrics } from './metrics.js';
import { Progress } from './progress.js';

/** What the training loop needs from the ring: the gradient all-reduce and ring attention for this rank's shard. */
export function trainRingOn(ring: Ring, spec: ClusterSpec, kernel: AttentionKernel | null, reverse: Ring | null = null): TrainRing {
  const layout = resolveLayout(spec.attention);
  const stats = newRingStepStats();
  const sumInto = loadSumInto() ?? undefined;
  let commMs = 0;
  return {
    rank: ring.rank,
    worldSize: ring.worldSize,
    async allReduceSum(x) {
      const t0 = performance.now();
      const out = await allReduceSum(ring, x, { tag: 'grads', inPlace: true, add: sumInto });
      commMs += performance.now() - t0;
      return out;
    },
    startStep: (step) => ring.setStep(step),
    // scope local: the same loop on a ring of one, over this rank's own block only.
    attention: (positions, seqLen) =>
      ringAttentionOp({
        ring: spec.attention.scope === 'local' ? null : ring,
        reverse: spec.attention.scope === 'local' ? null : reverse,
        kernel: kernel ?? undefined,
        causal: spec.attention.causal,
        window: spec.attention.window,
        heads: spec.model.heads,
        kvHeads: spec.model.kvHeads,
        headDim: spec.model.dModel / spec.model.heads,
        overlap: spec.attention.overlap,
        wire: spec.ring.wire,
        positionsOf: spec.attention.scope === 'local' ? () => positions : (r) => shardPositions(layout, seqLen, ring.worldSize, r),
        stats,
      }),
    timings: () => ({ computeMs: stats.computeMs, commMs, waitMs: stats.waitMs }),
  };
}

export interface WorkerCompute {
  engine: Engine;
  engineReason: string;
  /** The host kernel ring attention calls; null when the engine has its own attention. */
  kernel: AttentionKernel | null;
  kernelReason: string;
  threads: number;
}

/** What a worker computes with: the spec's engine and tuned attention kernel, on its share of the host's threads. */
export async function workerCompute(spec: ClusterSpec, rank: number): Promise<WorkerCompute> {
  const threads = workerThreads(spec, rank);
  const { engine, reason: engineReason } = await loadEngine(spec.engine as EngineName, { threads, backend: spec.backend, gpu: slotGpu(spec, rank) });
  if (engine.attention) return { engine, engineReason, kernel: null, kernelReason: `on the ${engine.name} engine`, threads };
  if (spec.kernel === 'tfjs' || engine.name === 'tfjs') await selectBackend(tfjsWant(spec.backend));
  const { kernel, reason } = await loadTunedKernel(spec, { heads: spec.model.heads, kvHeads: spec.model.kvHeads, headDim: spec.model.dModel / spec.model.heads, threads });
  return { engine, engineReason, kernel, kernelReason: reason, threads };
}

/** What every rank sends the driver after each update: its step metrics and its resident memory. */
type RankStepReport = StepMetrics & { rssBytes: number };

/**
 * `ringattn train` on the ring: every rank trains on its layout shard of each
 * sequence and reports each update's timings to the launcher, which draws
 * progress from rank 0's and files every rank's in ranks.jsonl.
 */
export const trainJob: JobDefinition = {
  kind: 'train',
  async worker(ctx) {
    const { spec, ring } = ctx;
    const { engine, engineReason, kernel, kernelReason, threads } = await workerCompute(spec, ctx.rank);
    const attention = kernel ? `attention kernel ${kernel.name} (${kernelReason})` : `attention ${kernelReason}`;
    ctx.log.info({ engine: engine.name, kernel: kernel?.name ?? engine.name, threads }, `compute: engine ${engineReason}; ${attention}`);
    // The dashboard's MFU divides by this host's measured SGEMM rate: only for an engine that computes on these cores.
    const onCpu = engine.name === 'native' || /^tfjs (wasm|cpu|tensorflow)$/.test(engine.description);
    const gemmGflops = onCpu ? measuredGemmGflops(threads) : null;
    let reports = 0;
    await ctx.status({ engine: engine.description, kernel: kernel?.name ?? engine.name, threads, ...(gemmGflops !== null ? { gemmGflops } : {}) });
    const result = await train(trainRingOn(ring, spec, kernel, ctx.reverse), spec, {
      engine,
      runDir: ctx.runDir,
      resume: Boolean(ctx.args.resume),
      // Per-step lines are in metrics.jsonl and the launcher's progress line; keep the console for events.
      log: (msg, fields = {}) => {
        if ('tokensPerSec' in fields) ctx.log.debug(fields, msg);
        else if ('warning' in fields) ctx.log.warn(fields, msg);
        else ctx.log.info(fields, msg);
      },
      progress: false,
      fault: ctx.fault,
      // Every rank reports its own timings: the driver files them per rank (ranks.jsonl).
      onStep: (m) => {
        reports++;
        void ctx.result('step', { ...m, rssBytes: process.memoryUsage.rss() } satisfies RankStepReport).catch(() => undefined);
      },
    });
    // After its reports on the same link: once the driver has the count, it has every report it waits for.
    await ctx.result('trained', { reports });
    if (ctx.rank === 0) await ctx.result('final', result);
  },
  async driver(ctx) {
    const progress = new Progress({ total: ctx.spec.train.steps, logEvery: ctx.spec.train.logEvery, stream: process.stderr });
    const ranks = new StepLog<RankStepRecord>(ctx.runDir, RANKS_FILE);
    let truncated = false;
    // One reader per rank: each rank's reports arrive in its order, the ranks' interleaved.
    const readRank = async (rank: number): Promise<void> => {
      let expected = Infinity;
      const trained = ctx.result(rank, 'trained').then((r) => void (expected = (r.value as { reports: number }).reports));
      for (let got = 0; got < expected; got++) {
        const pending = ctx.result(rank, 'step');
        const first = await Promise.race([pending, trained.then(() => null)]);
        if (first === null && got >= expected) break;
        const m = (first ?? (await pending)).value as RankStepReport;
        // The first report of this attempt starts its steps: a restart's records replace the failed attempt's.
        if (!truncated) {
          ranks.truncateAfter(m.step - 1);
          truncated = true;
        }
        ranks.append(rankStepRecord(m, rank, m.rssBytes));
        if (rank === 0) progress.update({ step: m.step, loss: m.loss, evalLoss: m.evalLoss, tokensPerSec: m.tokensPerSec, lr: m.lr });
      }
    };
    const [final] = await Promise.all([ctx.result(0, 'final'), ...Array.from({ length: ctx.worldSize }, (_, r) => readRank(r))]);
    progress.done();
    return final.value as TrainResult;
  },
};
