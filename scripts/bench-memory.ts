// Memory per worker (issue 11), run through the CLI and printed as markdown tables:
//   bench  `ringattn bench` forward+backward at a fixed shard, N = 1, 2, 4, 8: peak RSS of every
//          worker, the analytic ring buffers and the runtime, against N = 1;
//   train  `ringattn train` (engine native, 2 steps) at fixed tokens per worker, N = 1, 2, 4, 8:
//          every rank's peak RSS from metrics.jsonl (peakRssByRank);
//   fit    training memory per worker = a + b * (tokens per worker) on a ring of --fit-workers,
//          least squares over four or more shard lengths.
//
//   node --import tsx scripts/bench-memory.ts [--only bench,train,fit] [--out DIR]
//        [--workers 1,2,4,8] [--bench-shards 16K,64K] [--train-tokens 2K]
//        [--fit-tokens 1K,2K,4K,8K,16K] [--fit-workers 2]
//
// Every run's directory goes under --out (default runs/bench-memory-<time>/), with the tables
// (results.md) and every figure (results.json). Memory is not timing-sensitive: a busy machine
// changes when the collector runs, not what is allocated, so no time is reported. About 15 minutes
// on a 2-core machine. The CLI is bin/ringattn.js (build first) unless RINGATTN_CLI says otherwise.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '../src/config/index.js';
import { fitLine, machineLine, mib, MiB, readMetrics, runCli, writeLocalSpec } from '../src/bench/harness.js';
import type { BenchReport } from '../src/bench/report.js';

const { values } = parseArgs({
  options: {
    only: { type: 'string', default: 'bench,train,fit' },
    out: { type: 'string' },
    workers: { type: 'string', default: '1,2,4,8' },
    'bench-shards': { type: 'string', default: '16K,64K' },
    'train-tokens': { type: 'string', default: '2K' },
    'fit-tokens': { type: 'string', default: '1K,2K,4K,8K,16K' },
    'fit-workers': { type: 'string', default: '2' },
  },
});
const sizes = (s: string) => s.split(',').map((x) => parseSize(x.trim(), 'size list'));
const workerCounts = values.workers!.split(',').map(Number);
const sections = new Set(values.only!.split(','));
const outDir = path.resolve(values.out ?? path.join('runs', `bench-memory-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}`));
mkdirSync(outDir, { recursive: true });

const md: string[] = [];
const say = (line = '') => {
  md.push(line);
  process.stdout.write(`${line}\n`);
};
const row = (cells: Array<string | number>) => say(`| ${cells.join(' | ')} |`);
const head = (cells: string[]) => {
  row(cells);
  row(cells.map(() => '---'));
};
const pct = (x: number, base: number) => `${x >= base ? '+' : ''}${(100 * (x / base - 1)).toFixed(1)}%`;
const results: Record<string, unknown> = { machine: machineLine() };

/** A small causal model: the memory that grows with the ring is the attention's, not the model's. */
const TRAIN_MODEL = { dModel: 256, layers: 2, heads: 4 };

async function runOrThrow(args: string[], env?: Record<string, string>): Promise<string> {
  process.stderr.write(`$ ringattn ${args.join(' ')}\n`);
  const r = await runCli(args, { env });
  if (r.code !== 0) throw new Error(`ringattn ${args.join(' ')} exited with ${r.code}:\n${r.stderr.split('\n').slice(-6).join('\n')}`);
  return r.stdout;
}

/** The parts of a bench report (BenchReport) this script reads; a worker's peak RSS is always measured. */
interface BenchMemoryView {
  params: BenchReport['params'];
  mode: BenchReport['mode'];
  ring: BenchReport['ring'];
  ranks: Array<{ figures: { peakRssBytes: { value: number } }; raw: { memory: Array<{ rssBytes: number }> } }>;
}

async function benchSection(shard: number): Promise<void> {
  say();
  say(`### Bench, forward + backward, ${formatSize(shard)} tokens per worker`);
  say();
  say('Peak RSS = `process.resourceUsage().maxRSS` of each worker after the run. Runtime = its RSS once the shards are allocated, minus the shards ' +
    '(q, k, v, dO). Ring buffers: the analytic buffers of one rank (docs/bench.md). Rest = peak - runtime - shards - ring buffers: what was ' +
    'allocated but not yet collected, or in flight.');
  say();
  head(['workers', 'sequence', 'peak RSS per worker (max / mean / min)', 'max vs N=1', 'runtime', 'ring buffers (analytic)', 'rest (max rank)']);
  const rows: unknown[] = [];
  let base = 0;
  for (const n of workerCounts) {
    const dir = path.join(outDir, `bench-${formatSize(shard)}-${n}`);
    const spec = writeLocalSpec(path.join(outDir, `bench-${formatSize(shard)}-${n}.json`), `memory-bench-${n}`, n, { runDir: outDir });
    // Time-limited above a few seconds of compute: buffers and transfers stay real (docs/bench.md).
    const report = JSON.parse(
      await runOrThrow(['bench', '--config', spec, '--seq-len', String(shard * n), '--backward', '--iterations', '1', '--time-limit', '30', '--json', '--out', dir]),
    ) as BenchMemoryView;
    const p = report.params;
    const shardBytes = shard * (2 * p.heads + 2 * p.kvHeads) * p.headDim * 4;
    const peaks = report.ranks.map((r) => r.figures.peakRssBytes.value);
    const runtime = report.ranks.map((r) => r.raw.memory[0].rssBytes - shardBytes);
    const ringBytes = report.ring.ringBufferBytes.value ?? 0;
    const max = Math.max(...peaks);
    const worst = peaks.indexOf(max);
    base ||= max;
    const mean = peaks.reduce((a, b) => a + b, 0) / peaks.length;
    row([n, formatSize(shard * n), `${mib(max)} / ${mib(mean)} / ${mib(Math.min(...peaks))}`, n === workerCounts[0] ? '-' : pct(max, base),
      mib(runtime[worst]), mib(ringBytes), mib(max - runtime[worst] - shardBytes - ringBytes)]);
    rows.push({ workers: n, shard, peakRssByRank: peaks, runtimeByRank: runtime, shardBytes, ringBufferBytes: ringBytes, mode: report.mode });
  }
  results[`bench-${formatSize(shard)}`] = rows;
}

interface PlanTerm {
  name: string;
  bytes: number;
  phase: string;
}
/** The planner's whole-job model of this spec's run (`ringattn plan --device this-machine`, which needs `ringattn doctor` first), or null. */
async function planOf(spec: string): Promise<{ peakBytesPerWorker: number; terms: PlanTerm[] } | null> {
  const r = await runCli(['plan', '--config', spec, '--device', 'this-machine', '--json']);
  if (r.code !== 0) return null;
  const job = (JSON.parse(r.stdout) as { job?: { peakBytesPerWorker?: number; terms?: PlanTerm[] } }).job;
  return job?.peakBytesPerWorker && job.terms ? { peakBytesPerWorker: job.peakBytesPerWorker, terms: job.terms } : null;
}
const plans = new Map<string, Awaited<ReturnType<typeof planOf>>>();

/** The planner's terms in the groups of the breakdown; a phase-bound term counts in full (the peak is one phase, so this is an upper bound). */
const GROUPS: Record<string, string[]> = {
  runtime: ['runtime'],
  'model + optimizer state': ['parameters', 'gradients', 'adamState', 'allReduce'],
  'engine activations': ['savedActivations', 'layerWorkingSet', 'ffnChunk', 'logitsChunk', 'tokensAndRope'],
  'addon packs': ['kernelPacks', 'gemmPacks'],
  'ring buffers': ['ringForward', 'ringBackward'],
};
function grouped(terms: PlanTerm[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [g, names] of Object.entries(GROUPS)) out[g] = terms.filter((t) => names.includes(t.name)).reduce((a, t) => a + t.bytes, 0);
  return out;
}

/** One training run of `tokens` per worker on `n` local workers: every rank's peak RSS; the planner's count of it goes to `plans`. */
async function trainRun(tag: string, n: number, tokens: number): Promise<number[]> {
  const dir = path.join(outDir, tag);
  const spec = writeLocalSpec(path.join(outDir, `${tag}.json`), `memory-${tag}`, n, {
    runDir: outDir,
    engine: 'native',
    model: TRAIN_MODEL,
    attention: { causal: true },
    data: { kind: 'copy' },
    train: { steps: 2, seqLen: tokens * n, batch: 1, warmupSteps: 1, checkpointEvery: 0, evalEvery: 0, logEvery: 1 },
  });
  await runOrThrow(['train', '--config', spec, '--run-dir', dir, '--quiet']);
  plans.set(tag, await planOf(spec));
  const last = readMetrics(dir).at(-1)!;
  const peaks = last.peakRssByRank as number[] | undefined;
  if (!peaks) throw new Error(`${dir}/metrics.jsonl has no peakRssByRank: this ringattn predates per-rank peak RSS in the metrics`);
  return peaks;
}

async function trainSection(tokens: number): Promise<void> {
  say();
  say(`### Training, ${formatSize(tokens)} tokens per worker (engine native, ${TRAIN_MODEL.layers} layers, d=${TRAIN_MODEL.dModel}, 2 steps)`);
  say();
  say('Peak RSS per rank from the last metrics record (`peakRssByRank`, each rank\'s maxRSS). The breakdown is the planner\'s count of the ' +
    'same run (`ringattn plan --config SPEC --device this-machine --json`, terms grouped; its peak is the largest phase).');
  say();
  head(['workers', 'sequence', 'peak RSS per worker (max / mean / min)', 'max vs N=1', 'planner peak', ...Object.keys(GROUPS)]);
  const rows: unknown[] = [];
  let base = 0;
  for (const n of workerCounts) {
    const peaks = await trainRun(`train-${formatSize(tokens)}-${n}`, n, tokens);
    const max = Math.max(...peaks);
    base ||= max;
    const mean = peaks.reduce((a, b) => a + b, 0) / peaks.length;
    const plan = plans.get(`train-${formatSize(tokens)}-${n}`);
    const g = plan ? grouped(plan.terms) : null;
    row([n, formatSize(tokens * n), `${mib(max)} / ${mib(mean)} / ${mib(Math.min(...peaks))}`, n === workerCounts[0] ? '-' : pct(max, base),
      plan ? mib(plan.peakBytesPerWorker) : 'n/a', ...Object.keys(GROUPS).map((k) => (g ? mib(g[k]) : 'n/a'))]);
    rows.push({ workers: n, tokensPerWorker: tokens, peakRssByRank: peaks, plan });
  }
  results[`train-${formatSize(tokens)}`] = rows;
}

async function fitSection(tokenList: number[], n: number): Promise<void> {
  say();
  say(`### Training memory per worker against tokens per worker (${n} workers, least squares)`);
  say();
  head(['tokens per worker', 'sequence', 'peak RSS per worker (max)', 'fit', 'residual']);
  const xs: number[] = [];
  const ys: number[] = [];
  for (const tokens of tokenList) {
    const peaks = await trainRun(`fit-${formatSize(tokens)}-${n}`, n, tokens);
    xs.push(tokens);
    ys.push(Math.max(...peaks));
  }
  const f = fitLine(xs, ys);
  xs.forEach((x, i) => row([formatSize(x), formatSize(x * n), mib(ys[i]), mib(f.a + f.b * x), `${((ys[i] - f.a - f.b * x) / MiB).toFixed(1)} MiB`]));
  say();
  say(`Fit: peak RSS per worker = **${(f.a / MiB).toFixed(1)} MiB + ${((f.b * 1024) / MiB).toFixed(2)} MiB per 1K tokens per worker** ` +
    `(${(f.b).toFixed(0)} bytes per token; largest residual ${(f.maxResidual / MiB).toFixed(1)} MiB).`);
  results.fit = { workers: n, tokensPerWorker: xs, peakRssBytes: ys, a: f.a, b: f.b, maxResidual: f.maxResidual };
}

say('## Memory per worker (`npm run bench:memory`)');
say();
say(machineLine());
if (sections.has('bench')) for (const shard of sizes(values['bench-shards']!)) await benchSection(shard);
if (sections.has('train')) await trainSection(parseSize(values['train-tokens']!, '--train-tokens'));
if (sections.has('fit')) await fitSection(sizes(values['fit-tokens']!), Number(values['fit-workers']));
say();
say(`(runs and raw figures in ${path.relative(process.cwd(), outDir) || '.'})`);
writeFileSync(path.join(outDir, 'results.md'), md.join('\n') + '\n');
writeFileSync(path.join(outDir, 'results.json'), JSON.stringify(results, null, 2) + '\n');
