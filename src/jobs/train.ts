import { measuredGemmGflops } from '../engine/tuning.js';
import { workerCompute } from '../engine/compute.js';
import { train, type TrainResult } from '../train/loop.js';
import { RANKS_FILE, rankStepRecord, StepLog, type RankStepRecord, type StepMetrics } from '../train/metrics.js';
import { Progress } from '../train/progress.js';
import { trainRingOn } from '../train/ring.js';
import type { JobDefinition } from './types.js';

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
