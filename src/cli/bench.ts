import { loadTunedKernel } from '../engine/tuning.js';
import { Command, type CommanderError } from 'commander';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultLayout, LAYOUTS, type Layout } from '../attention/layout.js';
import { calibrateKernel, type Calibration } from '../bench/calibrate.js';
import { benchArgs, BENCH_SHAPE_DEFAULTS, checkParams, DEFAULT_SEED, type BenchParams } from '../bench/params.js';
import { benchBudget, checkHostFit, checkMessageSize, formatBytes, hostFit, memoryBudget, type BenchBudget, type HostFit } from '../bench/budget.js';
import { formatBudget, type BenchReport } from '../bench/report.js';
import { formatSweep, parseSweep, sweepRow, writeSweep, type SweepRow } from '../bench/sweep.js';
import { formatSize, parseSize, resolvedLaunch, specFromObject, workerThreads, worldSize, type ClusterSpec } from '../config/index.js';
import { UserError } from '../errors.js';
import { runJob } from '../launch/launcher.js';
import { selectBackend, tfjsWant } from '../tensor/backend.js';
import { intFlag, resolveSpec, SET_OPTION, WINDOW_OPTION, WIRE_OPTION } from './common.js';

interface BenchOptions {
  seqLen?: string;
  set?: string[];
  wire?: string;
  window?: string;
  config?: string;
  workers?: string;
  backend?: string;
  kernel?: string;
  heads?: string;
  kvHeads?: string;
  headDim?: string;
  causal?: boolean;
  layout?: string;
  backward?: boolean;
  overlap?: boolean;
  iterations?: string;
  timeLimit?: string;
  seed?: string;
  json?: boolean;
  trace?: string;
  sweep?: string;
  seqPerWorker?: string;
  out?: string;
  verbose?: boolean;
}

export const REPORT_FILE = 'bench-report.json';

/** Heads, KV heads and head dim: flags, else the spec's bench section. */
function benchShape(spec: ClusterSpec, o: BenchOptions): { heads: number; kvHeads: number; headDim: number } {
  const base = spec.bench;
  const heads = o.heads !== undefined ? intFlag(o.heads, '--heads') : base.heads;
  let kvHeads = o.kvHeads !== undefined ? intFlag(o.kvHeads, '--kv-heads') : base.kvHeads;
  // --heads alone with a KV head count that does not divide it: plain multi-head attention.
  if (o.kvHeads === undefined && heads % kvHeads !== 0) kvHeads = heads;
  return { heads, kvHeads, headDim: o.headDim !== undefined ? intFlag(o.headDim, '--head-dim') : base.headDim };
}

function resolveParams(spec: ClusterSpec, o: BenchOptions, seqLenOverride?: number): BenchParams {
  const workers = worldSize(spec);
  const causal = o.causal ?? spec.attention.causal;
  const layoutName = o.layout ?? spec.attention.layout;
  if (layoutName !== 'auto' && !(LAYOUTS as readonly string[]).includes(layoutName)) {
    throw new UserError(`--layout: expected one of ${LAYOUTS.join(', ')}, got "${layoutName}"`);
  }
  const window = spec.attention.window;
  const layout: Layout = layoutName === 'auto' ? (window ? 'contiguous' : defaultLayout(causal)) : (layoutName as Layout);
  let seqLen: number;
  if (seqLenOverride !== undefined) seqLen = seqLenOverride;
  else if (o.seqPerWorker !== undefined) {
    if (o.seqLen !== undefined) throw new UserError('--seq-len and --seq-per-worker are exclusive');
    seqLen = parseSize(o.seqPerWorker, '--seq-per-worker') * workers;
  } else seqLen = o.seqLen !== undefined ? parseSize(o.seqLen, '--seq-len') : spec.bench.seqLen;
  const p: BenchParams = {
    seqLen,
    workers,
    ...benchShape(spec, o),
    causal,
    ...(window ? { window } : {}),
    layout,
    backward: o.backward ?? spec.bench.backward,
    overlap: o.overlap ?? spec.attention.overlap,
    iterations: o.iterations !== undefined ? intFlag(o.iterations, '--iterations') : spec.bench.iterations,
    timeLimitS: o.timeLimit !== undefined ? intFlag(o.timeLimit, '--time-limit') : spec.bench.timeLimitS,
    seed: o.seed !== undefined ? intFlag(o.seed, '--seed', 0) : DEFAULT_SEED,
    trace: o.trace !== undefined,
    traceFile: o.trace !== undefined && o.sweep === undefined ? path.resolve(o.trace) : undefined,
    json: !!o.json,
  };
  checkParams(p);
  return p;
}

/**
 * Everything that can be refused before a worker starts (frame size, memory of
 * the hosts that are this machine), checked before the plan counts the work.
 */
function precheck(spec: ClusterSpec, p: BenchParams): HostFit[] {
  const mem = memoryBudget(p);
  checkMessageSize(mem, p.workers, spec.ring.maxMessageBytes);
  // Remote hosts check themselves before they allocate; this machine is known here.
  const fits = spec.hosts.filter((h) => resolvedLaunch(h) === 'local').map((h) => hostFit(h.name, h.slots, os.totalmem(), mem.memory.perWorkerBytes));
  for (const f of fits) checkHostFit(f);
  return fits;
}

/** The kernel the workers will load, timed on tiles of the run's shape on this machine. */
async function calibrateHere(spec: ClusterSpec, p: BenchParams, shardLen: number): Promise<{ kernel: string; calibration: Calibration }> {
  const loaded = await loadTunedKernel(spec, { heads: p.heads, kvHeads: p.kvHeads, headDim: p.headDim, threads: workerThreads(spec, 0) });
  const { tileQ, tileKV } = loaded.tiles;
  if (loaded.kernel.name === 'tfjs') await selectBackend(tfjsWant(spec.backend));
  const calibration = await calibrateKernel(loaded.kernel, p, { shardLen, tileQ, tileKV, backward: p.backward, targetMs: 60 });
  return { kernel: loaded.kernel.name, calibration };
}

function stamp(): string {
  return new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-');
}

/** bench times the host attention kernels; on webgpu it would time the CPU instead, so it says so rather than run. */
function refuseWebgpu(spec: ClusterSpec): void {
  if (spec.backend === 'webgpu') {
    throw new UserError(
      'bench --backend webgpu: bench measures the host attention kernels and has no webgpu path yet; ' +
        'the webgpu engine is measured by `npm run gpu:check` (attention TFLOP/s, training tokens/s) and runs `ringattn attn` and `ringattn train`',
    );
  }
}

async function runOne(o: BenchOptions, out: (line: string) => void): Promise<void> {
  const spec = resolveSpec({ config: o.config, workers: o.workers, backend: o.backend, kernel: o.kernel, set: o.set, wire: o.wire, window: o.window });
  refuseWebgpu(spec);
  const p = resolveParams(spec, o);
  const fits = precheck(spec, p);
  const plan = benchBudget(p);
  const { kernel, calibration } = await calibrateHere(spec, p, plan.shardLen);
  for (const line of formatBudget(p, plan, { kernel, calibration, fits, maxMessageBytes: spec.ring.maxMessageBytes, timeLimitS: p.timeLimitS }).split('\n')) out(line);
  const { runDir, value } = await runJob(spec, { kind: 'bench', args: benchArgs(p) }, { quiet: !o.verbose, print: out, runDir: o.out ? path.resolve(o.out) : undefined });
  const report = value as BenchReport;
  const file = path.join(runDir, REPORT_FILE);
  writeFileSync(file, JSON.stringify(report, null, 2) + '\n');
  if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else out(`report: ${file}`);
}

async function runSweep(o: BenchOptions, out: (line: string) => void): Promise<void> {
  const sweep = parseSweep(o.sweep!);
  if (sweep.variable === 'workers') {
    if (o.config) throw new UserError('--sweep workers runs local rings of N workers; it cannot be combined with --config');
    if (o.workers) throw new UserError('--sweep workers sets the number of workers; drop --workers');
  } else if (o.seqLen !== undefined || o.seqPerWorker !== undefined) {
    throw new UserError('--sweep seq-len sets the sequence length; drop --seq-len and --seq-per-worker');
  }
  refuseWebgpu(resolveSpec({ config: o.config, workers: o.workers, backend: o.backend, kernel: o.kernel, set: o.set, wire: o.wire, window: o.window }));
  const specOf = (value: number) => resolveSpec({ config: sweep.variable === 'workers' ? undefined : o.config, workers: sweep.variable === 'workers' ? value : o.workers, backend: o.backend, kernel: o.kernel, set: o.set, wire: o.wire, window: o.window });
  const first = specOf(sweep.values[0]);
  const outDir = path.resolve(o.out ?? path.join(first.runDir, `bench-sweep-${stamp()}`));
  mkdirSync(outDir, { recursive: true });
  const rows: SweepRow[] = [];
  let cal: { kernel: string; calibration: Calibration } | null = null;
  for (const value of sweep.values) {
    const label = `${sweep.variable}-${formatSize(value)}`;
    try {
      const spec = specOf(value);
      const p = resolveParams(spec, o, sweep.variable === 'seq-len' ? value : undefined);
      const fits = precheck(spec, p);
      const plan = benchBudget(p);
      cal ??= await calibrateHere(spec, p, plan.shardLen);
      out(`--- ${label}`);
      for (const line of formatBudget(p, plan, { ...cal, fits, maxMessageBytes: spec.ring.maxMessageBytes, timeLimitS: p.timeLimitS }).split('\n')) out(line);
      const { runDir, value: report } = await runJob(spec, { kind: 'bench', args: benchArgs(p) }, { quiet: !o.verbose, print: out, runDir: path.join(outDir, label) });
      writeFileSync(path.join(runDir, REPORT_FILE), JSON.stringify(report, null, 2) + '\n');
      rows.push(sweepRow(sweep.variable, value, report as BenchReport, runDir));
    } catch (err) {
      // A point that cannot run (too big for the hosts, a layout that does not divide) is a row, not the end.
      if (!(err instanceof UserError) || /interrupted by/.test(err.message)) throw err;
      out(`${label}: ${err.message.split('\n')[0]}`);
      rows.push({ variable: sweep.variable, value, error: err.message.split('\n')[0] });
    }
  }
  const files = writeSweep(outDir, sweep, rows);
  if (rows.every((r) => r.error)) throw new UserError(`--sweep: no point ran (see ${files.table})`);
  if (o.json) process.stdout.write(JSON.stringify({ ...files, rows }, null, 2) + '\n');
  else {
    out('');
    for (const line of formatSweep(sweep.variable, rows).split('\n')) out(line);
    out(`table: ${files.table}`);
    out(`chart: ${files.chart}`);
  }
}

export function benchCommand(): Command {
  const cmd = new Command('bench');
  cmd
    .description('measure ring attention on the ring: tokens/s, GFLOP/s, memory per worker, per-step compute/wait/transfer, overlap and ring overhead')
    .option('--seq-len <size>', 'total sequence length (K/M are powers of two: 8M = 8388608; default: the spec\'s bench.seqLen)')
    .option('--config <file>', 'cluster spec (YAML; default: the localhost ring)')
    .option('--workers <n>', 'ring of N local workers (instead of --config)')
    .option(...SET_OPTION)
    .option(...WIRE_OPTION)
    .option(...WINDOW_OPTION)
    .option('--backend <name>', 'where compute runs: auto, webgpu, tensorflow-gpu, tensorflow, wasm, cpu (overrides the spec)')
    .option('--kernel <name>', 'attention kernel: auto, native, tfjs, reference (overrides the spec)')
    .option('--heads <n>', `query heads (default: bench.heads, ${BENCH_SHAPE_DEFAULTS.heads} for the default spec)`)
    .option('--kv-heads <n>', `key/value heads, dividing --heads (default: bench.kvHeads, ${BENCH_SHAPE_DEFAULTS.kvHeads} for the default spec)`)
    .option('--head-dim <n>', `head dimension (default: bench.headDim, ${BENCH_SHAPE_DEFAULTS.headDim} for the default spec)`)
    .option('--causal', 'causal mask (default: attention.causal)')
    .option('--no-causal', 'no mask')
    .option('--layout <layout>', `token layout: ${LAYOUTS.join(', ')} (default: attention.layout; auto = zigzag when causal, else contiguous)`)
    .option('--backward', 'time the backward pass too (default: bench.backward)')
    .option('--no-backward', 'forward only')
    .option('--overlap', 'overlapped schedule: send the next KV block while computing (default: attention.overlap)')
    .option('--no-overlap', 'naive schedule: send a block only after computing on it')
    .option('--iterations <n>', 'timed iterations after one warm-up (default: bench.iterations)')
    .option('--time-limit <seconds>', 'past this, compute is measured on a fraction of the work and the rest projected (default: bench.timeLimitS)')
    .option('--seed <n>', 'seed of the random q, k, v', String(DEFAULT_SEED))
    .option('--json', 'print the report as JSON on stdout (everything else goes to stderr)')
    .option('--trace <file>', 'write every rank\'s compute/transfer/wait timeline (Perfetto / chrome://tracing JSON)')
    .option('--sweep <var=values>', 'one run per value: workers=1,2,4,8 or seq-len=16K,32K,64K; writes a JSON table and an SVG chart')
    .option('--seq-per-worker <size>', 'sequence length per worker (seq len = this x workers): weak scaling with --sweep workers')
    .option('--out <dir>', 'run directory of a single run (report, logs; default <runDir>/bench-<time>), or folder of a sweep\'s table, chart and runs')
    .option('--verbose', 'show the workers\' log lines')
    // Commander's own parse errors become UserErrors, reported once by the top-level handler.
    .configureOutput({ outputError: () => {} })
    .exitOverride((err: CommanderError) => {
      if (err.exitCode === 0) return;
      throw new UserError(err.message.replace(/^error: /, ''));
    })
    .action(async (o: BenchOptions) => {
      // With --json, stdout carries only the JSON.
      const out = (line: string) => (o.json ? process.stderr : process.stdout).write(`${line}\n`);
      if (o.sweep !== undefined) await runSweep(o, out);
      else await runOne(o, out);
    });
  return cmd;
}
