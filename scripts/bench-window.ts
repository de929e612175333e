/**
 * npm run bench:window — sliding-window ring attention (forward + backward,
 * causal, contiguous layout) on a ring of local workers, through `ringattn
 * bench --json`: wall time and bytes sent per iteration (per rank) against the
 * sequence length at a fixed window, and against the window at a fixed
 * sequence length, with the full (no window) run beside each. With a window
 * both should stay flat per token as the sequence grows.
 *
 *   node --import tsx scripts/bench-window.ts [--workers 4] [--window 1K] [--seq-lens 8K,16K,32K,64K] [--seq-len 32K] [--windows 512,2K,8K] [--json]
 */
import { spawnSync } from 'node:child_process';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseSize } from '../src/config/index.js';

const CLI = fileURLToPath(new URL('../bin/ringattn.js', import.meta.url));
const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
};

interface Row {
  seqLen: number;
  window: number | null;
  wallMs: number;
  bytesSent: number;
  tokensPerS: number;
  msPerKToken: number;
}

function bench(workers: number, seqLen: number, window: number | null): Row {
  const args = [CLI, 'bench', '--seq-len', String(seqLen), '--workers', String(workers), '--causal', '--layout', 'contiguous', '--backward', '--iterations', '3', '--json'];
  if (window) args.push('--window', String(window));
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`ringattn bench ${args.slice(1).join(' ')} failed:\n${r.stderr}`);
  const ring = JSON.parse(r.stdout).ring;
  const wallMs = ring.wallMs.value as number;
  return { seqLen, window, wallMs, bytesSent: ring.bytesSent.value, tokensPerS: ring.tokensPerS.value, msPerKToken: (wallMs * 1024) / seqLen };
}

const workers = Number(arg('--workers', '4'));
const W = parseSize(arg('--window', '1K'), '--window');
const seqLens = arg('--seq-lens', '8K,16K,32K,64K').split(',').map((s) => parseSize(s, '--seq-lens'));
const fixedSeq = parseSize(arg('--seq-len', '32K'), '--seq-len');
const windows = arg('--windows', '512,2K,8K').split(',').map((s) => parseSize(s, '--windows'));

const bySeq = seqLens.flatMap((s) => [bench(workers, s, W), bench(workers, s, null)]);
const byWindow = [...windows.map((w) => bench(workers, fixedSeq, w)), bench(workers, fixedSeq, null)];
if (process.argv.includes('--json')) {
  process.stdout.write(`${JSON.stringify({ cpus: cpus().length, cpu: cpus()[0]?.model, workers, window: W, bySeq, byWindow })}\n`);
} else {
  const MiB = 2 ** 20;
  const row = (x: Row) => `| ${x.seqLen / 1024}K | ${x.window ? `${x.window}` : 'none'} | ${x.wallMs.toFixed(0)} ms | ${x.msPerKToken.toFixed(2)} ms | ${(x.bytesSent / MiB).toFixed(2)} MiB | ${((x.bytesSent / x.seqLen) * 1024 / MiB).toFixed(3)} MiB |`;
  const head = '| sequence | window | wall per iteration (fwd + bwd) | per 1K tokens | bytes sent per rank | per 1K tokens |\n| --- | --- | --- | --- | --- | --- |';
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model}; ${workers} workers, causal, contiguous, forward + backward, bench default shape`);
  console.log(`\nAgainst the sequence length, window ${W}:\n${head}\n${bySeq.map(row).join('\n')}`);
  console.log(`\nAgainst the window, sequence ${fixedSeq / 1024}K:\n${head}\n${byWindow.map(row).join('\n')}`);
}
