/**
 * npm run bench:generate — inference on the ring: a long prompt prefilled with
 * ring attention, then greedy decoding against the sharded KV cache, on rings
 * of 1, 2 and 4 local workers (separate processes, as `ringattn generate
 * --workers N` runs them). The model is random (timing does not depend on what
 * it learned): d=64, 2 layers, 4 heads, 2 KV heads. Records prefill tokens/s,
 * time to first token and decode tokens/s. Prints a markdown table and a JSON line.
 *
 *   node --import tsx scripts/bench-generate.ts [--seq-len 32K] [--tokens 16] [--workers 1,2,4] [--json]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { parseSize, specFromObject } from '../src/config/index.js';
import { runJob } from '../src/launch/launcher.js';
import type { GenerateResult } from '../src/model/generate.js';
import { initCheckpoint } from '../test/helpers/checkpoint.js';
import { freePortRange } from '../test/helpers/ports.js';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
};

async function main(): Promise<void> {
  const seqLen = parseSize(arg('--seq-len', '32K'), '--seq-len');
  const tokens = Number(arg('--tokens', '16'));
  const workers = arg('--workers', '1,2,4').split(',').map(Number);
  const model = { dModel: 64, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 256, ffnChunk: 256 };
  const tmp = mkdtempSync(path.join(tmpdir(), 'ra-bench-generate-'));
  const rows: Array<{ workers: number } & Omit<GenerateResult, 'tokens'>> = [];
  try {
    const base = specFromObject({ model, train: { seqLen }, runDir: tmp, hosts: [{ name: 'local', address: '127.0.0.1', slots: 1 }] }, 'bench:generate');
    const ckpt = initCheckpoint(tmp, base, 1);
    // A prompt of the full length; the bytes do not matter to the timing.
    const prompt = Array.from({ length: seqLen }, (_, i) => (i * 131 + 7) % 256);
    let first: number[] | null = null;
    for (const n of workers) {
      const spec = specFromObject({ ...base, ring: { ...base.ring, basePort: await freePortRange(n + 1) }, hosts: [{ name: 'local', address: '127.0.0.1', slots: n }] }, `--workers ${n}`);
      const { value } = await runJob(spec, { kind: 'generate', args: { checkpoint: ckpt, prompt, maxNewTokens: tokens, temperature: 0, seed: 0 } }, { quiet: true, runDir: path.join(tmp, `w${n}`) });
      const r = value as Omit<GenerateResult, 'tokens'> & { tokens: number[] };
      // The same tokens on every ring size: what the tests assert, checked here at full length too.
      first ??= r.tokens;
      if (r.tokens.join() !== first.join()) throw new Error(`${n} workers generated other tokens than ${workers[0]}`);
      rows.push({ workers: n, prefillTokens: r.prefillTokens, prefillMs: r.prefillMs, timeToFirstTokenMs: r.timeToFirstTokenMs, decodeTokens: r.decodeTokens, decodeMs: r.decodeMs, cachedTokens: r.cachedTokens });
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  if (process.argv.includes('--json')) {
    process.stdout.write(`${JSON.stringify({ cpus: cpus().length, cpu: cpus()[0]?.model, seqLen, tokens, model, rows })}\n`);
    return;
  }
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model}; prompt ${seqLen} tokens, ${tokens} new tokens (greedy); model ${JSON.stringify(model)}`);
  console.log('| workers | prefill | prefill tokens/s | time to first token | decode tokens/s | KV cache per worker (tokens, max) |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    console.log(
      `| ${r.workers} | ${(r.prefillMs / 1000).toFixed(2)} s | ${((r.prefillTokens * 1000) / r.prefillMs).toFixed(0)} | ${(r.timeToFirstTokenMs / 1000).toFixed(2)} s | ${((r.decodeTokens * 1000) / r.decodeMs).toFixed(1)} | ${r.cachedTokens} |`,
    );
  }
}

void main();
