/**
 * npm run bench:train — training tokens/s of the default training config
 * (configs/localhost.yaml, 2 workers) with each attention kernel.
 *
 *   node --import tsx scripts/bench-train.ts [--steps 60] [--kernels native,tfjs]
 *
 * Runs `ringattn train` for a few steps per kernel and reports the median
 * tokens/s and step-time split of the steps after the first (warm-up).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { loadSpec } from '../src/config/index.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const steps = Number(arg('--steps', '60'));
const kernels = arg('--kernels', 'native,tfjs').split(',');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const base = loadSpec(path.join(ROOT, 'configs', 'localhost.yaml'));
const dir = mkdtempSync(path.join(tmpdir(), 'ra-bench-train-'));
const rows: Array<Record<string, string | number>> = [];
try {
  for (const kernel of kernels) {
    const specFile = path.join(dir, `${kernel}.yaml`);
    const { hosts, runDir: _r, ...rest } = base;
    writeFileSync(specFile, stringify({ ...rest, hosts, kernel, train: { ...base.train, steps, checkpointEvery: 0, evalEvery: 0 } }));
    const runDir = path.join(dir, kernel);
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'ringattn.js'), 'train', '--config', specFile, '--run-dir', runDir, '--quiet'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`train with kernel ${kernel} failed:\n${r.stderr}`);
    const m = readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).slice(1);
    rows.push({
      kernel,
      tokensPerSec: median(m.map((x) => x.tokensPerSec)),
      stepMs: median(m.map((x) => x.stepMs)),
      attnComputeMs: median(m.map((x) => x.attnComputeMs)),
      waitMs: median(m.map((x) => x.waitMs)),
      allReduceMs: median(m.map((x) => x.allReduceMs)),
    });
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
if (process.argv.includes('--json')) {
  process.stdout.write(`${JSON.stringify(rows)}\n`);
} else {
  const s = base.train.seqLen;
  console.log(`configs/localhost.yaml: ${base.hosts[0].slots} workers, d=${base.model.dModel}, ${base.model.layers} layers, ${s} tokens/step; ${steps} steps, medians after step 1; ${cpus().length} x ${cpus()[0]?.model}`);
  console.log('| kernel | tokens/s | step ms | attention compute ms | ring wait ms | all-reduce ms |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(`| ${r.kernel} | ${Number(r.tokensPerSec).toFixed(0)} | ${Number(r.stepMs).toFixed(0)} | ${Number(r.attnComputeMs).toFixed(0)} | ${Number(r.waitMs).toFixed(0)} | ${Number(r.allReduceMs).toFixed(0)} |`);
}
