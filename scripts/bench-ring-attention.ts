// The ring attention measurements of docs/benchmarks.md (issue 5), run through the CLI
// (`ringattn bench ... --json`) and printed as markdown tables:
//   1. overlap efficiency and ring overhead for shard lengths 4K-64K, overlapped and naive schedules;
//   2. causal zigzag vs contiguous vs striped wall time, against non-causal;
//   3. weak scaling: memory per worker for N = 1..8 workers at a fixed shard;
//   4. the 8M-token run with the default settings.
//
//   node --import tsx scripts/bench-ring-attention.ts [--quick] [--only overlap,layouts,weak,8m]
//        [--out DIR] [--workers 2] [--shards 4K,8K,16K,32K,64K] [--layout-seq 64K]
//        [--weak-shard 256K] [--weak-workers 1,2,3,4,5,6,7,8] [--iterations 3]
//
// The CLI is this package's bin/ringattn.js (it loads dist/: build first); RINGATTN_CLI
// overrides it, e.g. RINGATTN_CLI="node /path/to/bin/ringattn.js". Every run's directory and
// JSON report go to --out (default runs/bench-ring-attention-<time>/), with the tables (results.md).
// About 30 minutes at the record sizes on a 2-core machine, 2 minutes with --quick.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '../src/config/index.js';
import { formatBytes } from '../src/bench/budget.js';
import { formatCount, formatMs, type BenchReport, type Figure } from '../src/bench/report.js';
import type { SweepRow } from '../src/bench/sweep.js';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    out: { type: 'string' },
    workers: { type: 'string', default: '2' },
    shards: { type: 'string' },
    'layout-seq': { type: 'string' },
    'weak-shard': { type: 'string' },
    'weak-workers': { type: 'string' },
    iterations: { type: 'string' },
  },
});

const quick = values.quick!;
const sizes = (s: string) => s.split(',').map((x) => parseSize(x.trim(), 'size list'));
const cfg = {
  workers: Number(values.workers),
  shards: sizes(values.shards ?? (quick ? '1K,2K,4K' : '4K,8K,16K,32K,64K')),
  layoutSeq: parseSize(values['layout-seq'] ?? (quick ? '4K' : '64K'), '--layout-seq'),
  weakShard: parseSize(values['weak-shard'] ?? (quick ? '16K' : '256K'), '--weak-shard'),
  weakWorkers: (values['weak-workers'] ?? (quick ? '1,2,4' : '1,2,3,4,5,6,7,8')).split(',').map(Number),
  iterations: values.iterations ?? (quick ? '1' : '3'),
  // Measured runs must not be cut short: a limit far above their length.
  measuredLimit: quick ? '600' : '3600',
  weakLimit: quick ? '20' : '60',
  big: quick ? { seq: '1M', limit: '60' } : { seq: '8M', limit: '300' },
};
const sections = new Set((values.only ?? 'overlap,layouts,weak,8m').split(','));
const outDir = path.resolve(values.out ?? path.join('runs', `bench-ring-attention-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}`));
mkdirSync(outDir, { recursive: true });
const ROOT = fileURLToPath(new URL('../', import.meta.url));
const cli = process.env.RINGATTN_CLI ? process.env.RINGATTN_CLI.split(' ').filter(Boolean) : [process.execPath, path.join(ROOT, 'bin', 'ringattn.js')];

const started = Date.now();
const md: string[] = [];
const say = (line = '') => {
  md.push(line);
  process.stdout.write(`${line}\n`);
};

let runNo = 0;
/** Runs `ringattn bench ARGS --json` (its run directory inside --out), keeps the JSON, returns it. Progress goes to stderr. */
async function bench<T = BenchReport>(args: string[]): Promise<{ value: T; command: string }> {
  const no = String(++runNo).padStart(2, '0');
  const full = ['bench', ...args, '--json'];
  const command = `ringattn ${full.join(' ')}`;
  if (!args.includes('--out')) full.push('--out', path.join(outDir, `run-${no}`));
  process.stderr.write(`\n$ ${command}\n`);
  const t0 = Date.now();
  const stdout = await new Promise<string>((resolve, reject) => {
    const child = spawn(cli[0], [...cli.slice(1), ...full], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${command} exited with ${code}`))));
  });
  const value = JSON.parse(stdout) as T;
  writeFileSync(path.join(outDir, `run-${no}.json`), JSON.stringify({ command, seconds: (Date.now() - t0) / 1000, value }, null, 2));
  process.stderr.write(`  (${((Date.now() - t0) / 1000).toFixed(1)} s)\n`);
  return { value, command };
}

const show = (f: Figure | undefined, fmt: (v: number) => string) => (!f || f.value === null ? '-' : (f.basis === 'projected' ? '*' : '') + fmt(f.value));
const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
const gf = (v: number) => v.toPrecision(3);
const row = (cells: string[]) => say(`| ${cells.join(' | ')} |`);
const head = (cells: string[]) => {
  row(cells);
  row(cells.map(() => '---'));
};

function commit(): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() !== '';
    return dirty ? `${sha} (with uncommitted changes)` : sha;
  } catch {
    return 'unknown';
  }
}

say(`## Ring attention bench (${quick ? 'quick sizes' : 'record sizes'})`);
say();
say(`${new Date().toISOString().slice(0, 10)}, commit ${commit()}, ${os.cpus()[0]?.model ?? 'cpu'} x ${os.cpus().length}, ` +
  `${formatBytes(os.totalmem())} memory, Node ${process.version}. * = projected (time-limited run), every other figure measured.`);

if (sections.has('overlap')) {
  say();
  say(`### Overlap efficiency and ring overhead by shard length (${cfg.workers} workers)`);
  say();
  head(['shard', 'seq', 'command', 'compute/step', 'transfer/hop', 'wait/hop', 'overlap', 'ring overhead', 'wall', 'naive: wait/hop', 'naive: overlap', 'naive: ring overhead', 'naive: wall']);
  for (const shard of cfg.shards) {
    const seq = shard * cfg.workers;
    const common = ['--workers', String(cfg.workers), '--seq-len', formatSize(seq), '--iterations', cfg.iterations, '--time-limit', cfg.measuredLimit];
    const a = await bench(common);
    const b = await bench([...common, '--no-overlap']);
    const A = a.value.ring;
    const B = b.value.ring;
    row([formatSize(shard), formatSize(seq), `\`${a.command}\` (naive: + \`--no-overlap\`)`, show(A.computeMsPerStep, formatMs), show(A.transferMsPerHop, formatMs),
      show(A.waitMsPerHop, formatMs), show(A.overlapEfficiency, pct), show(A.ringOverhead, pct), show(A.wallMs, formatMs),
      show(B.waitMsPerHop, formatMs), show(B.overlapEfficiency, pct), show(B.ringOverhead, pct), show(B.wallMs, formatMs)]);
  }
}

if (sections.has('layouts')) {
  say();
  say(`### Causal layouts against non-causal (${formatSize(cfg.layoutSeq)} tokens, ${cfg.workers} workers)`);
  say();
  head(['mask', 'layout', 'command', 'wall', 'x non-causal', 'slowest rank kernel', 'fastest rank kernel', 'allowed entries']);
  const common = ['--workers', String(cfg.workers), '--seq-len', formatSize(cfg.layoutSeq), '--iterations', cfg.iterations, '--time-limit', cfg.measuredLimit];
  const nc = await bench([...common, '--no-causal', '--layout', 'contiguous']);
  const runs = [{ mask: 'non-causal', layout: 'contiguous', r: nc }];
  for (const layout of ['zigzag', 'contiguous', 'striped']) runs.push({ mask: 'causal', layout, r: await bench([...common, '--causal', '--layout', layout]) });
  const base = nc.value.ring.wallMs.value!;
  for (const { mask, layout, r } of runs) {
    const kernels = r.value.ranks.map((x) => x.figures.kernelMs.value!);
    row([mask, layout, `\`${r.command}\``, show(r.value.ring.wallMs, formatMs), `${(r.value.ring.wallMs.value! / base).toFixed(3)}x`,
      formatMs(Math.max(...kernels)), formatMs(Math.min(...kernels)), formatCount(r.value.plan.entries.total)]);
  }
}

if (sections.has('weak')) {
  say();
  say(`### Weak scaling: memory per worker at ${formatSize(cfg.weakShard)} tokens per worker`);
  say();
  const s = await bench<{ table: string; chart: string; rows: SweepRow[] }>([
    '--sweep', `workers=${cfg.weakWorkers.join(',')}`, '--seq-per-worker', formatSize(cfg.weakShard),
    '--iterations', '1', '--time-limit', cfg.weakLimit, '--out', path.join(outDir, 'weak-scaling'),
  ]);
  say(`\`${s.command}\` (chart: ${path.relative(process.cwd(), s.value.chart)})`);
  say();
  head(['workers', 'seq', 'mode', 'peak RSS', 'ring buffers (analytic)', 'RSS vs N=1', 'overlap', 'tokens/s']);
  const first = s.value.rows.find((r) => !r.error)?.peakRssBytes?.value ?? null;
  for (const r of s.value.rows) {
    if (r.error) {
      row([String(r.value), '', `error: ${r.error}`, '', '', '', '', '']);
      continue;
    }
    const rss = r.peakRssBytes?.value ?? null;
    row([String(r.value), formatSize(r.seqLen!), r.mode === 'full' ? 'full' : `limited (${(100 * r.measuredFraction!).toPrecision(2)}% computed)`,
      show(r.peakRssBytes, formatBytes), show(r.ringBufferBytes, formatBytes), rss !== null && first ? `${(100 * (rss / first - 1)).toFixed(1)}%` : '-',
      show(r.overlapEfficiency, pct), show(r.tokensPerS, formatCount)]);
  }
}

if (sections.has('8m')) {
  say();
  say(`### ${cfg.big.seq} tokens, default settings`);
  say();
  const r = await bench(['--seq-len', cfg.big.seq, '--time-limit', cfg.big.limit]);
  const v = r.value;
  say(`\`${r.command}\`: ${v.mode === 'full' ? 'all of the work measured' : `time-limited, ${(100 * v.measuredFraction).toPrecision(3)}% of the work computed on real tiles`}; ` +
    `${v.params.workers} workers, ${v.params.heads} heads / ${v.params.kvHeads} KV head(s) x ${v.params.headDim}, ${v.params.causal ? `causal ${v.params.layout}` : 'non-causal'}.`);
  say();
  head(['figure', 'value']);
  const F = v.ring;
  const items: Array<[string, Figure, (x: number) => string]> = [
    ['wall per iteration', F.wallMs, formatMs], ['tokens/s', F.tokensPerS, formatCount], ['achieved GFLOP/s', F.achievedGflops, gf],
    ['kernel GFLOP/s per worker, in the ring', F.kernelGflops, gf], ['kernel GFLOP/s per worker, alone', F.pureKernelGflops, gf],
    ['compute per ring step', F.computeMsPerStep, formatMs], ['transfer per hop (alone)', F.transferMsPerHop, formatMs], ['wait per hop', F.waitMsPerHop, formatMs],
    ['overlap efficiency', F.overlapEfficiency, pct], ['ring overhead', F.ringOverhead, pct], ['bytes sent per worker per iteration', F.bytesSent, formatBytes],
    ['peak RSS per worker', F.peakRssBytes, formatBytes], ['ring buffers per worker (analytic)', F.ringBufferBytes, formatBytes], ['FLOPs (exact)', F.flops, formatCount],
  ];
  for (const [name, f, fmt] of items) row([name, show(f, fmt)]);
}

say();
say(`(${((Date.now() - started) / 60000).toFixed(1)} min; raw reports in ${path.relative(process.cwd(), outDir) || '.'})`);
writeFileSync(path.join(outDir, 'results.md'), md.join('\n') + '\n');
