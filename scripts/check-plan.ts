/**
 * Checks `ringattn plan --config SPEC --device this-machine` against real runs:
 * for a few small localhost rings it predicts the peak memory per worker, runs
 * `ringattn train` on the same spec, measures each worker's peak RSS and prints
 * both. It measures memory only, so a busy machine does not spoil it.
 *
 *   npm run bench:plan             (needs `ringattn doctor` run once on this machine,
 *                                   and the package built: it runs bin/ringattn.js)
 *
 * Peak RSS per worker comes from the run's metrics.jsonl (`peakRssBytes`, the
 * largest over ranks) when the training loop records it; otherwise from each
 * worker's VmHWM in /proc, sampled while it runs.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'bin', 'ringattn.js');
/** Off by more than this, a term is wrong: find it (docs/plan.md). */
const TOLERANCE = 0.15;

interface Variant {
  name: string;
  workers: number;
  dModel: number;
  layers: number;
  heads: number;
  seqLen: number;
}

// Different widths, depths, lengths and ring sizes, each small enough for a laptop.
const VARIANTS: Variant[] = [
  { name: 'd256-L4-4K-w2', workers: 2, dModel: 256, layers: 4, heads: 4, seqLen: 4096 },
  { name: 'd512-L2-8K-w2', workers: 2, dModel: 512, layers: 2, heads: 8, seqLen: 8192 },
  { name: 'd128-L8-16K-w2', workers: 2, dModel: 128, layers: 8, heads: 2, seqLen: 16384 },
  { name: 'd256-L3-6K-w3', workers: 3, dModel: 256, layers: 3, heads: 4, seqLen: 6144 },
];

function specYaml(v: Variant, basePort: number): string {
  return [
    `name: ${v.name}`,
    'engine: native',
    'hosts:',
    '  - name: local',
    '    address: 127.0.0.1',
    `    slots: ${v.workers}`,
    'ring:',
    `  basePort: ${basePort}`,
    'model:',
    `  dModel: ${v.dModel}`,
    `  layers: ${v.layers}`,
    `  heads: ${v.heads}`,
    'train:',
    '  steps: 3',
    `  seqLen: ${v.seqLen}`,
    '  warmupSteps: 1',
    '  checkpointEvery: 0',
    '  evalEvery: 0',
    '  logEvery: 1',
    '',
  ].join('\n');
}

function predictedPeak(spec: string): number {
  const out = execFileSync(process.execPath, [CLI, 'plan', '--config', spec, '--device', 'this-machine', '--json'], { encoding: 'utf8' });
  return (JSON.parse(out) as { job: { peakBytesPerWorker: number } }).job.peakBytesPerWorker;
}

/** Pids of this ring's workers: their environment names the spec's base port. */
function workersOf(basePort: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const env = readFileSync(`/proc/${entry}/environ`, 'utf8');
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (env.includes(`MASTER_PORT=${basePort}\0`) && cmd.includes('worker')) out.push(Number(entry));
    } catch {
      // The process ended or is not ours to read.
    }
  }
  return out;
}

function vmHwm(pid: number): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Runs the spec's training, sampling every worker's peak RSS until the run ends. */
async function measuredPeak(spec: string, runDir: string, basePort: number): Promise<{ bytes: number; source: string }> {
  const hwm = new Map<number, number>();
  const timer = setInterval(() => {
    for (const pid of workersOf(basePort)) {
      const v = vmHwm(pid);
      if (v !== null) hwm.set(pid, Math.max(hwm.get(pid) ?? 0, v));
    }
  }, 100);
  const code = await new Promise<number | null>((resolve) => {
    const child = spawn(process.execPath, [CLI, 'train', '--config', spec, '--run-dir', runDir, '--quiet'], { stdio: ['ignore', 'ignore', 'inherit'] });
    child.on('exit', resolve);
  });
  clearInterval(timer);
  if (code !== 0) throw new Error(`ringattn train --config ${spec} exited with ${code}`);
  const records = readFileSync(join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { peakRssBytes?: number });
  const recorded = Math.max(...records.map((r) => r.peakRssBytes ?? 0));
  if (recorded > 0) return { bytes: recorded, source: 'metrics.jsonl peakRssBytes' };
  if (hwm.size === 0) throw new Error(`no worker of port ${basePort} was seen running`);
  return { bytes: Math.max(...hwm.values()), source: '/proc VmHWM' };
}

const mb = (b: number): string => (b / 1e6).toFixed(1);

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-check-plan-'));
  const rows: string[][] = [['config', 'workers', 'predicted MB', 'measured MB', 'error', 'source']];
  let worst = 0;
  try {
    for (const [i, v] of VARIANTS.entries()) {
      const basePort = 31500 + 10 * i;
      const spec = join(dir, `${v.name}.yaml`);
      writeFileSync(spec, specYaml(v, basePort));
      const predicted = predictedPeak(spec);
      const measured = await measuredPeak(spec, join(dir, `run-${v.name}`), basePort);
      const error = (predicted - measured.bytes) / measured.bytes;
      worst = Math.max(worst, Math.abs(error));
      rows.push([v.name, String(v.workers), mb(predicted), mb(measured.bytes), `${(100 * error).toFixed(1)}%`, measured.source]);
      process.stderr.write(`${v.name}: predicted ${mb(predicted)} MB, measured ${mb(measured.bytes)} MB\n`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) process.stdout.write(r.map((cell, c) => cell.padEnd(widths[c])).join('  ').trimEnd() + '\n');
  const ok = worst <= TOLERANCE;
  process.stdout.write(`${ok ? 'PASS' : 'FAIL'}: worst error ${(100 * worst).toFixed(1)}% (tolerance ${100 * TOLERANCE}%)\n`);
  if (!ok) process.exitCode = 1;
}

await main();
