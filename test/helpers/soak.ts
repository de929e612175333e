// Soak: a long small training run on a localhost ring, sampling the resident
// memory (VmRSS) and open file descriptors (/proc/PID/fd) of every worker and of
// the launcher over time, then fitting a line to each series: a leak shows as
// a slope that stays positive however long the run.
//
//   npm run soak -- (scripts/soak.ts) [--steps 1000] [--workers 2] [--interval-ms 1000]
//        [--layers 1] [--seq-len 128] [--checkpoint-every 50] [--json]
//
// Every training step runs ring attention forward and backward in each layer
// (a forward ring attention is `workers` ring steps, a backward as many), one
// gradient all-reduce, and, every --checkpoint-every steps, a checkpoint.
// Linux only (reads /proc). Results go to stdout and to <run dir>/soak.json.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { specFromObject } from '../../src/config/index.js';
import { fitLine } from '../../src/bench/harness.js';
import { runJob } from '../../src/launch/launcher.js';

export interface SoakOptions {
  steps: number;
  workers: number;
  intervalMs: number;
  layers?: number;
  seqLen?: number;
  checkpointEvery?: number;
  runDir?: string;
  /** Progress lines (default stderr). */
  log?: (line: string) => void;
}

export interface Sample {
  /** Seconds since the ring started. */
  t: number;
  /** Training steps completed (from metrics.jsonl). */
  step: number;
  /** Per process: rss in MiB and open fds. Key: `rank N` or `launcher`. */
  procs: Record<string, { rssMiB: number; fds: number }>;
}

export interface Fit {
  proc: string;
  /** Least-squares slope over the samples after warm-up, per 1000 steps. */
  rssMiBPer1000Steps: number;
  fdsPer1000Steps: number;
  rssFirst: number;
  rssLast: number;
  rssMax: number;
  fdsFirst: number;
  fdsLast: number;
  fdsMax: number;
}

export interface SoakResult {
  runDir: string;
  steps: number;
  workers: number;
  ringStepsPerRank: number;
  seconds: number;
  samples: Sample[];
  fits: Fit[];
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

async function freeBasePort(count: number): Promise<number> {
  for (let i = 0; i < 100; i++) {
    const base = await freePort();
    if (base + count > 65535) continue;
    let ok = true;
    for (let p = base + 1; p < base + count && ok; p++) {
      ok = await new Promise<boolean>((resolve) => {
        const s = net.createServer();
        s.once('error', () => resolve(false));
        s.listen(p, '127.0.0.1', () => s.close(() => resolve(true)));
      });
    }
    if (ok) return base;
  }
  throw new Error('no free port range');
}

/** Worker processes of the job whose coordinator is on `port`. */
function workersOf(port: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (!readFileSync(`/proc/${d}/cmdline`, 'utf8').includes('bin/ringattn.js\0worker')) continue;
      const env = readFileSync(`/proc/${d}/environ`, 'utf8').split('\0');
      if (!env.includes(`MASTER_PORT=${port}`)) continue;
      const rank = Number(env.find((e) => e.startsWith('RINGATTN_RANK='))?.split('=')[1]);
      out.set(rank, Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function probe(pid: number | 'self'): { rssMiB: number; fds: number } | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { rssMiB: m ? Number(m[1]) / 1024 : NaN, fds: readdirSync(`/proc/${pid}/fd`).length };
  } catch {
    return null;
  }
}

/** Least-squares slope; 0 for fewer than two samples. */
const slope = (xs: number[], ys: number[]): number => (xs.length < 2 ? 0 : fitLine(xs, ys).b);

/** Fits per process, over the samples past the first 10% of the steps (warm-up: JIT, allocator, first checkpoint). */
export function fitSamples(samples: Sample[], steps: number): Fit[] {
  const late = samples.filter((s) => s.step >= Math.max(1, steps * 0.1));
  const names = [...new Set(samples.flatMap((s) => Object.keys(s.procs)))].sort();
  return names.map((proc) => {
    const pts = late.filter((s) => s.procs[proc]);
    const xs = pts.map((s) => s.step / 1000);
    const rss = pts.map((s) => s.procs[proc].rssMiB);
    const fds = pts.map((s) => s.procs[proc].fds);
    return {
      proc,
      rssMiBPer1000Steps: slope(xs, rss),
      fdsPer1000Steps: slope(xs, fds),
      rssFirst: rss[0] ?? NaN,
      rssLast: rss[rss.length - 1] ?? NaN,
      rssMax: Math.max(...rss),
      fdsFirst: fds[0] ?? NaN,
      fdsLast: fds[fds.length - 1] ?? NaN,
      fdsMax: Math.max(...fds),
    };
  });
}

export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const layers = o.layers ?? 1;
  const runDir = o.runDir ?? mkdtempSync(path.join(tmpdir(), 'ringattn-soak-'));
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  // A fixed word corpus: the run does not depend on files that change.
  const words = ['ring', 'attention', 'query', 'key', 'value', 'block', 'softmax', 'merge', 'the', 'of', 'a', 'token'];
  let x = 7;
  const text: string[] = [];
  for (let i = 0; i < 40000; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    text.push(words[x % words.length]);
  }
  const corpus = path.join(runDir, 'corpus.txt');
  writeFileSync(corpus, text.join(' '));
  const basePort = await freeBasePort(o.workers + 1);
  const spec = specFromObject({
    name: 'soak',
    hosts: [{ name: 'local', address: '127.0.0.1', slots: o.workers }],
    ring: { basePort },
    model: { dModel: 32, layers, heads: 2 },
    train: { steps: o.steps, seqLen: o.seqLen ?? 64 * o.workers, warmupSteps: 5, checkpointEvery: o.checkpointEvery ?? 50, evalEvery: 0, logEvery: Math.max(1, Math.floor(o.steps / 10)) },
    data: { paths: [corpus] },
  });

  const samples: Sample[] = [];
  const t0 = Date.now();
  const metrics = path.join(runDir, 'metrics.jsonl');
  const stepsDone = () => {
    try {
      return readFileSync(metrics, 'utf8').split('\n').filter(Boolean).length;
    } catch {
      return 0;
    }
  };
  const sample = () => {
    const procs: Sample['procs'] = {};
    for (const [rank, pid] of workersOf(basePort)) {
      const p = probe(pid);
      if (p) procs[`rank ${rank}`] = p;
    }
    const me = probe('self');
    if (me) procs.launcher = me;
    if (Object.keys(procs).length > 1) samples.push({ t: (Date.now() - t0) / 1000, step: stepsDone(), procs });
  };
  const timer = setInterval(sample, o.intervalMs);
  try {
    await runJob(spec, { kind: 'train', args: {} }, { runDir, quiet: true, print: log });
  } finally {
    clearInterval(timer);
  }
  const fits = fitSamples(samples, o.steps);
  const result: SoakResult = {
    runDir,
    steps: o.steps,
    workers: o.workers,
    ringStepsPerRank: o.steps * layers * 2 * o.workers,
    seconds: (Date.now() - t0) / 1000,
    samples,
    fits,
  };
  writeFileSync(path.join(runDir, 'soak.json'), `${JSON.stringify(result, null, 1)}\n`);
  return result;
}

export function formatSoak(r: SoakResult): string {
  const lines = [
    `soak: ${r.steps} training steps on a ring of ${r.workers} (${r.ringStepsPerRank} ring steps of attention per rank, forward and backward) in ${r.seconds.toFixed(0)} s, ${r.samples.length} samples`,
    '',
    '| process | RSS first → last (max), MiB | RSS slope, MiB / 1000 steps | fds first → last (max) | fd slope / 1000 steps |',
    '| --- | --- | --- | --- | --- |',
    ...r.fits.map(
      (f) =>
        `| ${f.proc} | ${f.rssFirst.toFixed(1)} → ${f.rssLast.toFixed(1)} (${f.rssMax.toFixed(1)}) | ${f.rssMiBPer1000Steps.toFixed(2)} | ${f.fdsFirst} → ${f.fdsLast} (${f.fdsMax}) | ${f.fdsPer1000Steps.toFixed(2)} |`,
    ),
    '',
    `samples: ${path.join(r.runDir, 'soak.json')}`,
  ];
  return lines.join('\n');
}
