import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * What the memory benchmarks (scripts/bench-memory.ts, scripts/bench-max-context.ts)
 * share: local ring specs written to a file, the CLI run as a child process, the
 * machine line every published table carries, and a least-squares line.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The CLI: this package's bin (it loads dist/: build first); RINGATTN_CLI overrides it. */
export function cliCommand(): string[] {
  const env = process.env.RINGATTN_CLI;
  return env ? env.split(' ').filter(Boolean) : [process.execPath, path.join(ROOT, 'bin', 'ringattn.js')];
}

let portTurn = 0;
/**
 * A spec of `workers` local workers on 127.0.0.1 with `fields` merged in, written as
 * JSON (valid YAML). Every spec gets its own ports, away from the default 29500 that
 * other runs on a shared machine use, and successive runs never reuse a port in TIME_WAIT.
 */
export function writeLocalSpec(file: string, name: string, workers: number, fields: Record<string, unknown> = {}): string {
  const basePort = 34000 + 20 * (portTurn++ % 40);
  const { ring, ...rest } = fields as { ring?: Record<string, unknown> };
  const spec = { name, hosts: [{ name: 'localhost', address: '127.0.0.1', slots: workers }], ring: { basePort, ...ring }, ...rest };
  writeFileSync(file, JSON.stringify(spec, null, 2) + '\n');
  return file;
}

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** Runs `ringattn ARGS` with extra environment; stderr is kept (and echoed when `echo`). */
export function runCli(args: string[], opts: { env?: Record<string, string>; echo?: boolean } = {}): Promise<CliRun> {
  const [cmd, ...pre] = cliCommand();
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...pre, ...args], { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      if (opts.echo) process.stderr.write(d);
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code: code ?? 1, stdout, stderr, seconds: (Date.now() - t0) / 1000 }));
  });
}

/** Metrics records of a training run directory (metrics.jsonl), oldest first. */
export function readMetrics(runDir: string): Array<Record<string, unknown>> {
  return readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

function commitLabel(): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${sha} (with uncommitted changes)` : sha;
  } catch {
    return 'unknown';
  }
}

/** Which of `names` (default: the vector extensions that matter for the kernels) /proc/cpuinfo lists. */
export function cpuFlags(names: readonly string[] = ['avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl'], none = 'none of avx2/avx512'): string {
  try {
    const flags = new Set(/^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1].trim().split(/\s+/) ?? []);
    return names.filter((f) => flags.has(f)).join(' ') || none;
  } catch {
    return 'unknown (no /proc/cpuinfo)';
  }
}

/** Date, commit, CPU, flags, memory, Node: the line under every published table. */
export function machineLine(): string {
  const gib = (os.totalmem() / 2 ** 30).toFixed(1);
  return `${new Date().toISOString().slice(0, 10)}, commit ${commitLabel()}, ${os.cpus()[0]?.model ?? 'cpu'} x ${os.cpus().length} (flags: ${cpuFlags()}), ${gib} GiB, Node ${process.version}`;
}

/** y = a + b x by least squares, with the largest residual. */
export function fitLine(xs: number[], ys: number[]): { a: number; b: number; maxResidual: number } {
  const n = xs.length;
  const mx = xs.reduce((s, x) => s + x, 0) / n;
  const my = ys.reduce((s, y) => s + y, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  const b = sxx > 0 ? sxy / sxx : 0;
  const a = my - b * mx;
  const maxResidual = Math.max(...xs.map((x, i) => Math.abs(ys[i] - (a + b * x))));
  return { a, b, maxResidual };
}

export const MiB = 2 ** 20;
export const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;
