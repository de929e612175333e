// Maximum context, measured (issue 11): for N = 1, 2, 4, 8 local workers under a fixed memory cap
// per worker, the longest sequence for which one full training step completes, found by bisection
// over the lengths the layout allows (multiples of its quantum). Each probe is `ringattn train` for
// one step, engine native. The cap is the engine's (RINGATTN_ENGINE_MAX_BYTES: its allocator refuses a
// buffer past it, before the step) plus the JS heap limit (NODE_OPTIONS=--max-old-space-size), both
// given to the workers through the spec's hosts[].env, which the launcher passes to local and ssh
// workers alike. A refused probe fails while the model allocates, so only probes that fit cost a step.
// Peak RSS per worker (metrics.jsonl, peakRssByRank) is reported next to the cap, with the planner's
// figures where it can give them.
//
//   node --import tsx scripts/bench-max-context.ts [--workers 1,2,4,8] [--cap 32M] [--heap-mib 96] [--out DIR]
//
// About 10 minutes on a 2-core machine with the defaults (the context grows with N, and so does a step).
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { defaultLayout, layoutQuantum } from '../src/attention/layout.js';
import { formatSize, parseSize } from '../src/config/index.js';
import { fitLine, machineLine, mib, readMetrics, runCli, writeLocalSpec } from '../src/bench/harness.js';

const { values } = parseArgs({
  options: {
    workers: { type: 'string', default: '1,2,4,8' },
    cap: { type: 'string', default: '32M' },
    'heap-mib': { type: 'string', default: '96' },
    out: { type: 'string' },
  },
});
const workerCounts = values.workers!.split(',').map(Number);
const cap = parseSize(values.cap!, '--cap');
const heapMib = Number(values['heap-mib']);
const outDir = path.resolve(values.out ?? path.join('runs', `bench-max-context-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}`));
mkdirSync(outDir, { recursive: true });

/** Small enough that a step at the longest context stays short on 2 cores; causal, so the zigzag layout. */
const MODEL = { dModel: 128, layers: 2, heads: 2 };
const layout = defaultLayout(true);
const env = { RINGATTN_ENGINE_MAX_BYTES: String(cap), NODE_OPTIONS: `--max-old-space-size=${heapMib}` };

interface Probe {
  seqLen: number;
  ok: boolean;
  why?: string;
  peakRssByRank?: number[];
  seconds: number;
}

let probeNo = 0;
function specFor(n: number, seqLen: number): string {
  return writeLocalSpec(path.join(outDir, `probe-${String(++probeNo).padStart(3, '0')}-n${n}-${seqLen}.json`), `max-context-${n}`, n, {
    runDir: outDir,
    hosts: [{ name: 'localhost', address: '127.0.0.1', slots: n, env }],
    engine: 'native',
    model: MODEL,
    attention: { causal: true, layout },
    data: { kind: 'copy' },
    train: { steps: 1, seqLen, batch: 1, warmupSteps: 1, checkpointEvery: 0, evalEvery: 0, logEvery: 1 },
  });
}

/** One full training step at `seqLen` on `n` workers: did it complete, and if not, was it memory. */
async function probe(n: number, seqLen: number): Promise<Probe> {
  const spec = specFor(n, seqLen);
  const runDir = spec.replace(/\.json$/, '');
  const r = await runCli(['train', '--config', spec, '--run-dir', runDir, '--quiet']);
  if (r.code === 0) {
    const last = readMetrics(runDir).at(-1)!;
    process.stderr.write(`  N=${n} ${seqLen}: step completed (${r.seconds.toFixed(0)} s)\n`);
    return { seqLen, ok: true, peakRssByRank: last.peakRssByRank as number[], seconds: r.seconds };
  }
  const memory = /out of engine memory[^\n]*|JavaScript heap out of memory/.exec(r.stderr);
  if (!memory) throw new Error(`N=${n} ${seqLen}: failed for a reason other than memory:\n${r.stderr.split('\n').slice(-8).join('\n')}`);
  process.stderr.write(`  N=${n} ${seqLen}: refused (${memory[0]})\n`);
  return { seqLen, ok: false, why: memory[0], seconds: r.seconds };
}

/** Longest multiple of the layout quantum whose step completes: doubling until one fails, then bisection. */
async function maxContext(n: number): Promise<{ best: Probe; refused: Probe; probes: Probe[] }> {
  const q = layoutQuantum(layout, n);
  const probes: Probe[] = [];
  const at = async (units: number) => {
    const p = await probe(n, units * q);
    probes.push(p);
    return p;
  };
  let lo = 0;
  let loProbe: Probe | null = null;
  let hi = Math.max(1, Math.floor(1024 / q));
  let hiProbe: Probe;
  for (;;) {
    const p = await at(hi);
    if (!p.ok) {
      hiProbe = p;
      break;
    }
    [lo, loProbe] = [hi, p];
    hi *= 2;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    const p = await at(mid);
    if (p.ok) [lo, loProbe] = [mid, p];
    else [hi, hiProbe] = [mid, p];
  }
  if (!loProbe) throw new Error(`N=${n}: not even ${q} tokens fit a cap of ${mib(cap)}`);
  return { best: loProbe, refused: hiProbe, probes };
}

interface PlanJob {
  peakBytesPerWorker?: number;
  engineCap?: { maxContextTokens: number } | null;
}
/** The planner on the probe's spec, under the same engine cap. */
async function planned(n: number, seqLen: number): Promise<PlanJob | null> {
  const r = await runCli(['plan', '--config', specFor(n, seqLen), '--device', 'this-machine', '--engine-max-bytes', String(cap), '--json']);
  return r.code === 0 ? ((JSON.parse(r.stdout) as { job?: PlanJob }).job ?? null) : null;
}

const md: string[] = [];
const say = (line = '') => {
  md.push(line);
  process.stdout.write(`${line}\n`);
};
const results: Array<Record<string, unknown>> = [];
const started = Date.now();
for (const n of workerCounts) {
  process.stderr.write(`N=${n}: bisecting (layout quantum ${layoutQuantum(layout, n)} tokens)\n`);
  const { best, refused, probes } = await maxContext(n);
  const plan = await planned(n, best.seqLen);
  results.push({ workers: n, maxContext: best.seqLen, refusedAt: refused.seqLen, refusal: refused.why, peakRssByRank: best.peakRssByRank, plan, probes });
}

say(`## Maximum context under a per-worker cap (\`npm run bench:max-context\`)`);
say();
say(machineLine());
say();
say(`Model: ${MODEL.layers} layers, d=${MODEL.dModel}, ${MODEL.heads} heads, byte vocabulary, causal ${layout}; one full training step (forward, backward, ` +
  `all-reduce, AdamW), engine native. Cap per worker: engine buffers ${mib(cap)} (RINGATTN_ENGINE_MAX_BYTES=${cap}) and JS heap ${heapMib} MiB ` +
  `(NODE_OPTIONS=--max-old-space-size=${heapMib}), through hosts[].env. Ring attention's own blocks (received KV, outputs) are JavaScript ` +
  `arrays outside both caps; peak RSS shows the whole process.`);
say();
say('| workers | max context (tokens) | per worker | x N=1 | refused at | peak RSS per worker at max (max rank) | planner: max context under the cap | planner: peak per worker at max |');
say('| --- | --- | --- | --- | --- | --- | --- | --- |');
const base = results[0].maxContext as number;
for (const r of results) {
  const n = r.workers as number;
  const maxCtx = r.maxContext as number;
  const peaks = r.peakRssByRank as number[];
  const plan = r.plan as PlanJob | null;
  say(`| ${n} | ${maxCtx} (${formatSize(maxCtx)}) | ${maxCtx / n} | ${(maxCtx / base).toFixed(2)} | ${r.refusedAt} | ${mib(Math.max(...peaks))} | ${plan?.engineCap ? plan.engineCap.maxContextTokens : 'n/a'} | ` +
    `${plan?.peakBytesPerWorker ? mib(plan.peakBytesPerWorker) : 'n/a'} |`);
}
const f = fitLine(results.map((r) => r.workers as number), results.map((r) => r.maxContext as number));
say();
say(`Linear fit: max context = ${f.a.toFixed(0)} + ${f.b.toFixed(0)} x N tokens (largest residual ${f.maxResidual.toFixed(0)} tokens). ` +
  `Planner: \`ringattn plan --config SPEC --device this-machine --engine-max-bytes ${cap} --json\` (job.engineCap.maxContextTokens, job.peakBytesPerWorker).`);
say();
say(`(${((Date.now() - started) / 60000).toFixed(1)} min; probes in ${path.relative(process.cwd(), outDir) || '.'})`);
writeFileSync(path.join(outDir, 'results.md'), md.join('\n') + '\n');
writeFileSync(path.join(outDir, 'results.json'), JSON.stringify({ machine: machineLine(), cap, heapMib, model: MODEL, layout, results }, null, 2) + '\n');
