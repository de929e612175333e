import { join } from 'node:path';
import { checkLayout, defaultLayout, shardPositions, type Layout } from '../attention/layout.js';
import type { ClusterSpec } from '../config/index.js';
import { UserError } from '../errors.js';
import { slice, type Engine } from '../engine/index.js';
import { createModel, initParams, paramCount, paramSpecs, type Model } from '../model/index.js';
import type { AttentionOp } from '../attention/op.js';
import type { ParamSpec } from '../model/types.js';
import { CHART_FILE, writeLossChart, type LossPoint } from './chart.js';
import { ensurePrivateDir, latestCheckpoint, listCheckpoints, saveCheckpoint, writeFileAtomic, type LoadedCheckpoint } from './checkpoint.js';
import type { Corpus } from './corpus.js';
import { corpusFor, countTargets, createDataSource, shardOf, type DataSource, type DataState, type Window } from './data.js';
import { metricsLog, type StepMetrics } from './metrics.js';
import { adamwUpdate, clipScale, type AdamWState, type OptimizerBuffers } from './optimizer.js';
import { Progress, type ProgressStream } from './progress.js';
import { learningRate } from './schedule.js';

/** What the training loop needs from the ring; the worker provides it. */
export interface TrainRing {
  rank: number;
  worldSize: number;
  /** The elementwise sum over ranks, same result on every rank; it may be `x` itself, summed in place. */
  allReduceSum(x: Float32Array): Promise<Float32Array>;
  /** The update (1-based) whose messages follow: a message of an earlier one is refused as stale. */
  startStep?(step: number): void;
  /** Ring attention bound to this rank's shard positions of a sequence of `seqLen` tokens. */
  attention(positions: Int32Array, seqLen: number): AttentionOp;
  /** Cumulative, from the ring; the loop reports per-step deltas. */
  timings(): { computeMs: number; commMs: number; waitMs: number };
}

export interface TrainOptions {
  /** The compute engine the model runs on (src/engine/). */
  engine: Engine;
  runDir: string;
  resume: boolean;
  log: (msg: string, fields?: object) => void;
  /** Called on every rank after each update (after rank 0 has written that step's files). */
  onStep?: (m: StepMetrics) => void;
  /**
   * Asks for a clean stop: the flag travels in the gradient all-reduce, so every
   * rank stops after the same update, and rank 0 writes a checkpoint there.
   */
  signal?: AbortSignal;
  /** Rank 0's progress display: true = stderr (default), false = none, or a stream. */
  progress?: boolean | ProgressStream;
  /** Directory relative `data.paths` resolve against (the spec loader already makes them absolute). */
  dataCwd?: string;
  /** A corpus already in memory, instead of reading `data.paths`. */
  corpus?: Corpus;
  /** Checkpoints kept in the run directory (default 3). */
  keepCheckpoints?: number;
  /** Steps between rewrites of the loss chart (default 10; also at every eval and at the end). */
  chartEvery?: number;
  /**
   * Testing hook (RINGATTN_FAULT, src/launch/fault.ts): called with the phase and
   * the 1-based update it belongs to, at the points where a fault is injected.
   */
  fault?: (phase: 'forward' | 'backward' | 'allreduce' | 'checkpoint', step: number) => void;
}

export interface TrainResult {
  /** Mean train loss of the last update (of the checkpoint, when a resumed run had nothing left to do). */
  finalLoss: number;
  /** Completed updates, counting those before a resume. */
  steps: number;
  /**
   * The last held-out loss measured in this run, if any: one training window can
   * be far from the rest (the built-in corpus holds emoji tables), the held-out
   * windows are always the same ones.
   */
  evalLoss?: number;
  /** Share of the held-out targets predicted exactly (argmax), at that evaluation. */
  evalAccuracy?: number;
}

const MiB = 2 ** 20;

export const SPEC_FILE = 'spec.json';

/** One stage of train.lengthSchedule, or the final one at train.seqLen: steps [.., untilStep). */
export interface LengthStage {
  seqLen: number;
  batch: number;
  untilStep: number;
}

/** train.lengthSchedule's stages, then train.seqLen for the remaining steps. */
export function lengthStages(t: Pick<ClusterSpec['train'], 'seqLen' | 'batch' | 'steps' | 'lengthSchedule'>): LengthStage[] {
  const out: LengthStage[] = [];
  let until = 0;
  for (const st of t.lengthSchedule) {
    until += st.steps;
    out.push({ seqLen: st.seqLen, batch: st.batch ?? t.batch, untilStep: until });
  }
  out.push({ seqLen: t.seqLen, batch: t.batch, untilStep: Math.max(until, t.steps) });
  return out;
}

/** The layout the spec asks for, `auto` resolved. */
export function resolveLayout(attention: { causal: boolean; layout: string; window?: number }): Layout {
  // With a window each contiguous shard does the same work, and blocks travel fewest hops.
  if (attention.layout === 'auto') return attention.window ? 'contiguous' : defaultLayout(attention.causal);
  return attention.layout as Layout;
}

// The all-reduce carries float32: integers up to 2^53 travel as four 16-bit
// chunks, each exact in float32 and exact when summed with zeros.
function encodeInt(x: number, out: Float32Array, at: number): void {
  let v = x;
  for (let i = 0; i < 4; i++) {
    out[at + i] = v % 65536;
    v = Math.floor(v / 65536);
  }
}
function decodeInt(a: Float32Array, at: number): number {
  let v = 0;
  for (let i = 3; i >= 0; i--) v = v * 65536 + a[at + i];
  return v;
}

function sameSpecs(a: readonly ParamSpec[], b: readonly ParamSpec[]): string | null {
  if (a.length !== b.length) return `${a.length} parameter tensors, the model has ${b.length}`;
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    if (x.name !== y.name || x.offset !== y.offset || x.shape.join('x') !== y.shape.join('x')) {
      return `parameter ${i} is ${x.name} [${x.shape.join(', ')}], the model has ${y.name} [${y.shape.join(', ')}]`;
    }
  }
  return null;
}

interface ResumeState {
  step: number;
  dataSeed: number;
  lastLoss: number;
}

const RESUME_NONE = 0;
const RESUME_FOUND = 1;
const RESUME_FAILED = 2;

/**
 * Rank 0 alone reads the run directory (it need not be shared between hosts);
 * the outcome, then the parameters and optimizer state, reach the other ranks
 * through the all-reduce, with every other rank contributing zeros (x + 0 is
 * exact, so every rank ends up bit-identical to the checkpoint).
 */
async function resumeFromCheckpoint(
  ring: TrainRing,
  spec: ClusterSpec,
  opts: TrainOptions,
  specs: readonly ParamSpec[],
  opt: OptimizerBuffers,
): Promise<ResumeState | null> {
  const header = new Float32Array(10);
  let ckpt: LoadedCheckpoint | null = null;
  let failure: UserError | null = null;
  if (ring.rank === 0) {
    try {
      ckpt = latestCheckpoint(opts.runDir, (m) => opts.log(m, { warning: true }));
      if (ckpt) {
        const why = sameSpecs(ckpt.params.specs, specs);
        if (why) throw new UserError(`checkpoint ${ckpt.path} was written for a different model: ${why}`);
        const old = (ckpt.spec as Partial<ClusterSpec> | undefined)?.train;
        if (old) {
          const changed = (Object.keys(spec.train) as (keyof typeof spec.train)[]).filter((k) => old[k] !== spec.train[k]);
          if (changed.length > 0) {
            opts.log(`resuming with changed train settings (${changed.join(', ')}): the run will not match an uninterrupted one`, { warning: true, changed });
          }
        }
      }
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      failure = e;
    }
    header[0] = failure ? RESUME_FAILED : ckpt ? RESUME_FOUND : RESUME_NONE;
    if (ckpt) {
      encodeInt(ckpt.step, header, 1);
      encodeInt(ckpt.dataState.seed, header, 5);
      header[9] = typeof ckpt.extra?.loss === 'number' ? ckpt.extra.loss : NaN;
    }
  }
  const h = await ring.allReduceSum(header);
  if (h[0] === RESUME_FAILED) {
    throw failure ?? new UserError('rank 0 could not load a checkpoint to resume from; see its log');
  }
  if (h[0] === RESUME_NONE) {
    opts.log(`no checkpoint in ${opts.runDir}: starting from step 0`);
    return null;
  }
  const n = opt.params.length;
  const state = new Float32Array(3 * n);
  if (ckpt) {
    state.set(ckpt.params.flat, 0);
    state.set(ckpt.opt.m, n);
    state.set(ckpt.opt.v, 2 * n);
  }
  const all = await ring.allReduceSum(state);
  opts.engine.write(opt.params, all.subarray(0, n));
  opts.engine.write(opt.m, all.subarray(n, 2 * n));
  opts.engine.write(opt.v, all.subarray(2 * n, 3 * n));
  await opts.engine.flush();
  const step = decodeInt(h, 1);
  if (ckpt) opts.log(`resumed from ${ckpt.path} at step ${step}`, { step, checkpoint: ckpt.path });
  return { step, dataSeed: decodeInt(h, 5), lastLoss: h[9] };
}

/** The attention op with the fault hook called on entry to its forward and backward passes. */
function withFaultPoints(op: AttentionOp, fault: NonNullable<TrainOptions['fault']>, step: () => number): AttentionOp {
  return {
    forward: (engine, t) => {
      fault('forward', step());
      return op.forward(engine, t);
    },
    backward: (engine, saved, dO, g) => {
      fault('backward', step());
      return op.backward(engine, saved, dO, g);
    },
  };
}

function delta(a: { computeMs: number; commMs: number; waitMs: number }, b: typeof a): typeof a {
  return { computeMs: b.computeMs - a.computeMs, commMs: b.commMs - a.commMs, waitMs: b.waitMs - a.waitMs };
}

/**
 * Mean held-out loss over evalBatches*batch fixed windows (the same windows at
 * every evaluation, so successive values are comparable).
 */
export async function evaluate(
  ring: Pick<TrainRing, 'allReduceSum'>,
  model: Model,
  data: DataSource,
  positions: Int32Array,
  attn: AttentionOp,
  count: number,
  seed: number,
): Promise<EvalResult> {
  const windows = Array.from({ length: count }, (_, j) => data.windowFor(0, j, 'eval', seed));
  const targets = windows.map(countTargets);
  const total = targets.reduce((a, b) => a + b, 0);
  // Per window: this rank's loss share, then its hits; summed over ranks below.
  const local = new Float32Array(2 * count);
  for (let j = 0; j < count; j++) {
    const r = await model.loss(shardOf(windows[j], positions), attn);
    local[j] = total > 0 ? r.lossSum / total : 0;
    local[count + j] = r.correct;
  }
  const red = await ring.allReduceSum(local);
  let loss = 0;
  let hits = 0;
  const perWindow: EvalResult['perWindow'] = [];
  for (let j = 0; j < count; j++) {
    loss += red[j];
    hits += red[count + j];
    perWindow.push({ targets: targets[j], correct: red[count + j], depth: windows[j].depth });
  }
  return { loss, accuracy: total > 0 ? hits / total : 0, perWindow };
}

/** The held-out figures of one evaluation. */
export interface EvalResult {
  /** Mean loss over every scored target of the held-out windows. */
  loss: number;
  /** Share of those targets that are the model's most likely token. */
  accuracy: number;
  perWindow: Array<{ targets: number; correct: number; depth?: number }>;
}

/** This process's peak resident memory so far, in bytes. */
function peakRss(): number {
  return process.resourceUsage().maxRSS * 1024;
}

/**
 * The training loop, run by every worker of the ring in lockstep. Every rank
 * builds the same windows and the same parameters; each computes on its layout
 * shard, and one all-reduce per update carries the summed gradients, the loss
 * and the stop flag. Rank 0 alone writes the run directory.
 */
export async function train(ring: TrainRing, spec: ClusterSpec, opts: TrainOptions): Promise<TrainResult> {
  const t = spec.train;
  const cfg = spec.model;
  const { engine } = opts;
  const { rank, worldSize } = ring;
  const lead = rank === 0;
  const layout = resolveLayout(spec.attention);
  checkLayout(layout, t.seqLen, worldSize);
  if (!spec.attention.causal) {
    opts.log('attention.causal is false: every token sees its own target, so the next-token loss is meaningless', { warning: true });
  }
  let faultStep = 0;
  // Stages of a length schedule read the same text: load it once for all of them.
  const shared = spec.data.kind === 'text' && t.lengthSchedule.length > 0;
  const dataOpts = { cwd: opts.dataCwd, corpus: shared ? corpusFor(spec.data, { cwd: opts.dataCwd, corpus: opts.corpus }) : opts.corpus };
  const stages = lengthStages(t).map((st) => {
    const positions = shardPositions(layout, st.seqLen, worldSize, rank);
    const op = ring.attention(positions, st.seqLen);
    const attn = opts.fault ? withFaultPoints(op, opts.fault, () => faultStep) : op;
    const data = createDataSource(spec.data, st.seqLen, cfg.vocabSize, dataOpts);
    return { ...st, positions, attn, data };
  });
  // The last stage is train.seqLen: evaluation always runs there, and it sizes every buffer.
  const { positions, attn, data } = stages[stages.length - 1];
  const stageAt = (s: number) => stages.find((st) => s < st.untilStep) ?? stages[stages.length - 1];

  const specs = paramSpecs(cfg);
  const P = paramCount(cfg);
  // One buffer carries the gradients, this rank's share of the mean loss, the
  // stop flag and every rank's peak RSS (in MiB, one slot per rank) through the all-reduce.
  const reduced = engine.floats(P + 2 + worldSize);
  const model = createModel(engine, cfg, { maxTokens: positions.length, grads: slice(reduced, 0, P) });
  const opt: OptimizerBuffers = { params: model.params, grads: model.grads, m: engine.floats(P), v: engine.floats(P) };
  const normSq = engine.floats(1);
  // Not bound to a name: the initial values need not stay alive for the whole run.
  engine.write(model.params, initParams(cfg, t.seed).flat);
  await engine.flush();
  const metrics = metricsLog(opts.runDir);
  const chartPath = join(opts.runDir, CHART_FILE);
  const chartEvery = Math.max(1, opts.chartEvery ?? 10);
  const evalCount = t.evalBatches * t.batch;
  const doEval = t.evalEvery > 0 && evalCount > 0 && data.hasEval;

  if (lead) {
    ensurePrivateDir(opts.runDir);
    writeFileAtomic(join(opts.runDir, SPEC_FILE), JSON.stringify(spec, null, 2) + '\n');
  }

  let startStep = 0;
  let dataSeed = t.seed;
  let finalLoss = NaN;
  let lastEval: EvalResult | undefined;
  const resumed = opts.resume ? await resumeFromCheckpoint(ring, spec, opts, specs, opt) : null;
  if (resumed) {
    startStep = resumed.step;
    dataSeed = resumed.dataSeed;
    finalLoss = resumed.lastLoss;
  }
  const points: LossPoint[] = [];
  if (lead && !resumed && listCheckpoints(opts.runDir).length > 0) {
    opts.log(`${opts.runDir} already holds checkpoints of an earlier run; this run replaces them as it writes its own (use --resume to continue it)`, { warning: true });
  }
  if (lead) {
    // Records past the checkpoint are about to be recomputed; a fresh run starts a fresh file.
    metrics.truncateAfter(resumed ? startStep : 0);
    for (const r of metrics.read()) points.push({ step: r.step, loss: r.loss, evalLoss: r.evalLoss });
  }
  opts.log(
    `training ${P} parameters on ${data.describe()}; rank ${rank}/${worldSize}, ${layout} layout, ` +
      `${t.batch} x ${t.seqLen} tokens per step, steps ${startStep + 1}..${t.steps}` +
      (stages.length > 1 ? ` (first ${stages.slice(0, -1).map((st) => `to step ${st.untilStep} at ${st.batch} x ${st.seqLen}`).join(', then ')})` : ''),
    { params: P, layout, rank, worldSize, startStep, steps: t.steps },
  );

  const progressStream = opts.progress === false ? null : opts.progress === true || opts.progress === undefined ? process.stderr : opts.progress;
  const progress = lead && progressStream ? new Progress({ total: t.steps, startStep, logEvery: t.logEvery, stream: progressStream }) : null;

  const checkpoint = async (step: number, loss: number): Promise<void> => {
    const dataState: DataState = { step, seed: dataSeed };
    const state: AdamWState = { m: await engine.read(opt.m), v: await engine.read(opt.v), step };
    const path = saveCheckpoint(
      opts.runDir,
      { step, params: { flat: await engine.read(model.params), specs }, opt: state, dataState, spec, extra: { loss, worldSize, layout } },
      { keep: opts.keepCheckpoints, ...(opts.fault ? { afterFirstFile: () => opts.fault!('checkpoint', step) } : {}) },
    );
    opts.log(`checkpoint ${path}`, { step, checkpoint: path });
  };

  let step = startStep;
  try {
    while (step < t.steps) {
      const s = step; // 0-based index of this update
      faultStep = s + 1;
      ring.startStep?.(s + 1);
      const t0 = performance.now();
      const ring0 = ring.timings();
      const lr = learningRate(s, t);
      const stage = stageAt(s);

      const windows: Window[] = [];
      let tokens = 0;
      for (let b = 0; b < stage.batch; b++) {
        const w = stage.data.windowFor(s, b, 'train', dataSeed);
        windows.push(w);
        tokens += countTargets(w);
      }
      // Every rank sees every window, so the global token count (the loss
      // denominator) is known locally and the gradients come out already averaged.
      const scale = tokens > 0 ? 1 / tokens : 0;
      engine.zero(reduced);
      let lossSum = 0;
      for (const w of windows) {
        const r = await model.step(shardOf(w, stage.positions), stage.attn, scale);
        lossSum += r.lossSum;
      }
      const buf = await engine.read(reduced);
      buf[P] = lossSum * scale;
      buf[P + 1] = opts.signal?.aborted ? 1 : 0;
      buf[P + 2 + rank] = peakRss() / MiB;
      const ta = performance.now();
      const reducing = ring.allReduceSum(buf);
      opts.fault?.('allreduce', s + 1);
      const red = await reducing;
      const allReduceMs = performance.now() - ta;
      const loss = red[P];
      const stop = red[P + 1] > 0;
      const peakRssByRank = Array.from(red.subarray(P + 2, P + 2 + worldSize), (x) => Math.round(x * MiB));
      engine.write(model.grads, red.subarray(0, P));
      engine.sumSquares(normSq, model.grads);
      const gradNorm = Math.sqrt((await engine.read(normSq))[0]);
      if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
        throw new UserError(
          `training diverged at step ${s + 1}: loss ${loss}, gradient norm ${gradNorm}; lower train.lr or set train.gradClip`,
        );
      }
      const to = performance.now();
      const hp = { lr, beta1: t.beta1, beta2: t.beta2, eps: t.eps, weightDecay: t.weightDecay };
      adamwUpdate(engine, specs, opt, s + 1, hp, clipScale(gradNorm, t.gradClip));
      await engine.flush();
      const optimizerMs = performance.now() - to;
      step = s + 1;
      finalLoss = loss;

      let evalLoss: number | undefined;
      let evalAccuracy: number | undefined;
      if (doEval && (step % t.evalEvery === 0 || step === t.steps)) {
        const e = await evaluate(ring, model, data, positions, attn, evalCount, dataSeed);
        evalLoss = e.loss;
        evalAccuracy = e.accuracy;
        lastEval = e;
      }

      const stepMs = performance.now() - t0;
      const d = delta(ring0, ring.timings());
      const m: StepMetrics = {
        step,
        loss,
        ...(evalLoss !== undefined ? { evalLoss, evalAccuracy } : {}),
        lr,
        gradNorm,
        seqLen: stage.seqLen,
        tokensPerSec: (stage.batch * stage.seqLen) / (stepMs / 1000),
        stepMs,
        computeMs: Math.max(0, stepMs - d.commMs - d.waitMs),
        commMs: d.commMs,
        waitMs: d.waitMs,
        attnComputeMs: d.computeMs,
        allReduceMs,
        optimizerMs,
        tokens,
        peakRssBytes: Math.max(...peakRssByRank),
        peakRssByRank,
        time: new Date().toISOString(),
      };

      if (lead) {
        metrics.append(m);
        points.push({ step, loss, evalLoss });
        if (step % chartEvery === 0 || evalLoss !== undefined || step === t.steps || stop) {
          writeLossChart(chartPath, points, { title: `${spec.name}: loss` });
        }
        if ((t.checkpointEvery > 0 && step % t.checkpointEvery === 0) || step === t.steps || stop) {
          await checkpoint(step, loss);
        }
        progress?.update({ step, loss, evalLoss, tokensPerSec: m.tokensPerSec, lr });
      }
      if (step % t.logEvery === 0 || step === t.steps || evalLoss !== undefined) {
        opts.log(
          `step ${step}/${t.steps} loss ${loss.toFixed(4)}${evalLoss !== undefined ? ` eval ${evalLoss.toFixed(4)} accuracy ${evalAccuracy!.toFixed(3)}` : ''}`,
          m,
        );
      }
      opts.onStep?.(m);
      if (stop) {
        opts.log(`stopped on request after step ${step}`, { step });
        break;
      }
    }
  } finally {
    progress?.done();
  }
  return { finalLoss, steps: step, ...(lastEval !== undefined ? { evalLoss: lastEval.loss, evalAccuracy: lastEval.accuracy } : {}) };
}
