/**
 * `npm run bench:long-context`: the task only the ring can solve, end to end.
 * Trains configs/long-context.yaml twice, with ring attention and with
 * attention.scope local (each rank sees only its own shard), evaluates both
 * checkpoints on held-out sequences with `ringattn eval`, and draws both
 * accuracy curves in one picture (into both run directories and, with
 * --docs, docs/long-context.svg). Prints a markdown summary for docs/benchmarks.md.
 *
 *   node --import tsx scripts/long-context.ts [--out DIR] [--samples N] [--docs] [--redraw]
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cpuFlags } from '../src/bench/harness.js';
import { renderChart, type Series } from '../src/train/chart.js';
import { writeFileAtomic } from '../src/train/checkpoint.js';
import { passkeyAlphabet } from '../src/train/data.js';
import { readMetrics } from '../src/train/metrics.js';
import { loadSpec } from '../src/config/index.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const CLI = path.join(ROOT, 'bin', 'ringattn.js');
const CONFIG = path.join(ROOT, 'configs', 'long-context.yaml');
const { values: o } = parseArgs({
  options: { out: { type: 'string' }, samples: { type: 'string', default: '128' }, docs: { type: 'boolean', default: false }, redraw: { type: 'boolean', default: false } },
});
const stamp = new Date().toISOString().slice(0, 19).replace(/[-:T]/g, '');
const out = path.resolve(o.out ?? path.join(ROOT, 'runs', `long-context-${stamp}`));
mkdirSync(out, { recursive: true });

function cli(args: string[]): { stdout: string; seconds: number } {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`ringattn ${args.join(' ')} exited with ${r.status}`);
  return { stdout: r.stdout, seconds: (performance.now() - t0) / 1000 };
}

interface Arm {
  name: 'ring' | 'local';
  runDir: string;
  trainSeconds: number;
  curve: Array<readonly [number, number]>;
  eval: { accuracy: number; exactSamples: number; samples: number; loss: number; byDepth: Array<{ from: number; to: number; samples: number; accuracy: number }> };
}

// --redraw: the picture and summary again from the runs already in --out, without training.
const saved = o.redraw ? (JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8')) as { commit: string; arms: Arm[] }) : null;
const arms: Arm[] = saved ? saved.arms : [];
for (const name of saved ? [] : (['ring', 'local'] as const)) {
  const runDir = path.join(out, name);
  process.stderr.write(`\n== ${name}: training ${CONFIG} with attention.scope=${name}\n`);
  const t = cli(['train', '--config', CONFIG, '--set', `attention.scope=${name}`, '--run-dir', runDir, '--quiet']);
  const curve = readMetrics(path.join(runDir, 'metrics.jsonl'))
    .filter((m) => m.evalAccuracy !== undefined)
    .map((m) => [m.step, m.evalAccuracy!] as const);
  process.stderr.write(`== ${name}: ringattn eval on ${o.samples} held-out sequences\n`);
  const e = JSON.parse(cli(['eval', '--checkpoint', runDir, '--samples', o.samples, '--json']).stdout);
  arms.push({ name, runDir, trainSeconds: t.seconds, curve, eval: e });
}

const spec = loadSpec(CONFIG);
const chance = 1 / passkeyAlphabet(spec.model.vocabSize, spec.data.passkey.valueTokens).perValue;
const staged = spec.train.lengthSchedule.reduce((n, s) => n + s.steps, 0);
const series: Series[] = [
  { name: 'ring', label: 'ring attention', color: '#1f77b4', dots: true, points: arms[0].curve },
  { name: 'local', label: 'scope local (own shard only)', color: '#d62728', dots: true, points: arms[1].curve },
  { name: 'chance', label: `chance (1/${Math.round(1 / chance)})`, color: '#888', dashed: true, points: [[0, chance], [spec.train.steps, chance]] },
];
const svg = renderChart(series, {
  title: `passkey at ${spec.train.seqLen} tokens on ${spec.hosts[0].slots} workers: held-out answer accuracy (steps ${staged + 1}+ at full length)`,
  yLabel: 'held-out answer accuracy',
  yRange: [0, 1],
  legendAt: 0.4, // the ring's curve ends top right, the control's along the bottom
});
for (const a of arms) writeFileAtomic(path.join(a.runDir, 'accuracy.svg'), svg);
writeFileAtomic(path.join(out, 'accuracy.svg'), svg);
if (o.docs) copyFileSync(path.join(out, 'accuracy.svg'), path.join(ROOT, 'docs', 'long-context.svg'));

const commit = saved
  ? saved.commit
  : spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim();
const lines = [
  `${new Date().toISOString().slice(0, 10)}, commit \`${commit}\`, ${cpus()[0]?.model} x${cpus().length}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, flags ${cpuFlags(['avx512f', 'avx2', 'fma'], '')}.`,
  '',
  '| attention | train wall time | held-out accuracy (ringattn eval) | sequences exact | eval loss | accuracy by depth |',
  '| --- | --- | --- | --- | --- | --- |',
  ...arms.map((a) => {
    const depth = a.eval.byDepth.filter((b) => b.samples > 0).map((b) => `${b.from.toFixed(3)}-${b.to.toFixed(3)}: ${b.accuracy.toFixed(2)}`).join(', ');
    return `| ${a.name} | ${(a.trainSeconds / 60).toFixed(1)} min | ${a.eval.accuracy.toFixed(4)} | ${a.eval.exactSamples}/${a.eval.samples} | ${a.eval.loss.toFixed(3)} | ${depth} |`;
  }),
  '',
  `Chance: ${chance.toFixed(4)}. Curves: ${path.join(out, 'accuracy.svg')}.`,
];
process.stdout.write(lines.join('\n') + '\n');
writeFileAtomic(path.join(out, 'summary.json'), JSON.stringify({ commit, chance, arms }, null, 2) + '\n');
