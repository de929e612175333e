import { closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { loadKernel, type KernelName, type LoadedKernel } from '../kernels/index.js';
import { loadNativeKernel, nativeInfo } from '../kernels/native.js';
import type { BlockArgs } from '../kernels/types.js';
import { loadGemm } from '../addon/index.js';

/**
 * Block sizes chosen for the machine: the attention kernel's tiles and the
 * SGEMM's cache blocking are measured on this host at first use (under a
 * second each) and cached next to doctor's measurements, keyed by the CPU,
 * the instruction set, the thread count and (for attention) the head shape.
 * `ringattn doctor` measures them afresh. Several workers starting on one host
 * take turns through a lock file, so one measures and the others read.
 */

export interface Tiles {
  tileQ: number;
  tileKV: number;
}

export interface GemmBlocking {
  mc: number;
  kc: number;
  nc: number;
}

interface Entry<T> {
  value: T;
  /** What each candidate took, ms: the evidence for the choice. */
  timings: Record<string, number>;
  measuredAt: string;
}

interface TuningFile {
  version: 1;
  entries: Record<string, Entry<Tiles | GemmBlocking>>;
}

export const DEFAULT_TILES: Tiles = { tileQ: 128, tileKV: 128 };

/** RINGATTN_TUNING_FILE, else tuning.json beside doctor's machine.json (~/.cache/ringattn). */
export function tuningFilePath(env: NodeJS.ProcessEnv = process.env): string {
  const override = env.RINGATTN_TUNING_FILE?.trim();
  if (override) return override;
  const machine = env.RINGATTN_MACHINE_FILE?.trim();
  return machine ? join(dirname(machine), 'tuning.json') : join(homedir(), '.cache', 'ringattn', 'tuning.json');
}

function readFile(path: string): TuningFile {
  try {
    const parsed = JSON.parse(readFileSync(path, 'utf8')) as TuningFile;
    if (parsed && parsed.version === 1 && typeof parsed.entries === 'object') return parsed;
  } catch {
    // missing or unreadable: measure again
  }
  return { version: 1, entries: {} };
}

function writeEntry(path: string, key: string, entry: Entry<Tiles | GemmBlocking>): void {
  const file = readFile(path);
  file.entries[key] = entry;
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(file, null, 2)}\n`);
  renameSync(tmp, path);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The cached value for `key`, else the result of `measure`, cached. While
 * another process holds the lock, waits for it (up to 30 s) and reads its
 * result; a lock older than a minute is a crashed measurer's and is taken over.
 */
async function cached<T extends Tiles | GemmBlocking>(
  key: string,
  measure: () => Promise<{ value: T; timings: Record<string, number> }>,
  opts: { path?: string; fresh?: boolean },
): Promise<{ value: T; source: 'cached' | 'measured' }> {
  const path = opts.path ?? tuningFilePath();
  const hit = (): T | undefined => (opts.fresh ? undefined : (readFile(path).entries[key]?.value as T | undefined));
  const found = hit();
  if (found) return { value: found, source: 'cached' };
  const lock = `${path}.lock`;
  mkdirSync(dirname(path), { recursive: true });
  for (let waited = 0; ; waited += 100) {
    try {
      closeSync(openSync(lock, 'wx'));
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const held = statSync(lock, { throwIfNoEntry: false });
      const stale = held !== undefined && Date.now() - held.mtimeMs > 60_000;
      if (stale || waited > 30_000) {
        rmSync(lock, { force: true });
        continue;
      }
      await sleep(100);
      const now = hit();
      if (now) return { value: now, source: 'cached' };
    }
  }
  try {
    const again = hit();
    if (again) return { value: again, source: 'cached' };
    const { value, timings } = await measure();
    writeEntry(path, key, { value, timings, measuredAt: new Date().toISOString() });
    return { value, source: 'measured' };
  } finally {
    rmSync(lock, { force: true });
  }
}

function cpuKey(): string {
  return (cpus()[0]?.model ?? 'unknown cpu').trim();
}

async function bestOf<T>(candidates: T[], label: (c: T) => string, time: (c: T) => Promise<number>): Promise<{ value: T; timings: Record<string, number> }> {
  const timings: Record<string, number> = {};
  let best = candidates[0];
  let bestMs = Infinity;
  for (const c of candidates) {
    const ms = await time(c);
    timings[label(c)] = Math.round(ms * 1000) / 1000;
    if (ms < bestMs) {
      bestMs = ms;
      best = c;
    }
  }
  return { value: best, timings };
}

const TILE_CANDIDATES: Tiles[] = [
  { tileQ: 128, tileKV: 128 },
  { tileQ: 64, tileKV: 128 },
  { tileQ: 128, tileKV: 64 },
  { tileQ: 128, tileKV: 256 },
  { tileQ: 256, tileKV: 128 },
  { tileQ: 64, tileKV: 256 },
];

export interface TileQuery {
  heads: number;
  kvHeads: number;
  headDim: number;
  threads: number;
  isa?: string;
}

/**
 * Attention tiles for this head shape on this machine: forward + backward of a
 * 1024 x 1024 block timed for each candidate (best of two runs each).
 */
export async function tunedTiles(q: TileQuery, opts: { path?: string; fresh?: boolean } = {}): Promise<{ value: Tiles; source: 'cached' | 'measured' }> {
  await loadNativeKernel({ ...DEFAULT_TILES, threads: q.threads, isa: q.isa }); // throws when it cannot load
  const isa = q.isa ?? nativeInfo().isa ?? '?';
  const key = `${cpuKey()} | ${isa} | ${q.threads} thread(s) | attention heads ${q.heads}/${q.kvHeads} x ${q.headDim}`;
  return cached(
    key,
    () => {
      const n = 1024;
      const rnd = (len: number) => Float32Array.from({ length: len }, (_, i) => Math.sin(i * 12.9898) * 0.5);
      const pos = Int32Array.from({ length: n }, (_, i) => i);
      const args: BlockArgs = {
        heads: q.heads,
        kvHeads: q.kvHeads,
        headDim: q.headDim,
        qLen: n,
        kvLen: n,
        q: rnd(n * q.heads * q.headDim),
        k: rnd(n * q.kvHeads * q.headDim),
        v: rnd(n * q.kvHeads * q.headDim),
        qPos: pos,
        kvPos: pos,
        causal: false,
        scale: 1 / Math.sqrt(q.headDim),
      };
      const dO = rnd(n * q.heads * q.headDim);
      const acc = { dq: new Float32Array(args.q.length), dk: new Float32Array(args.k.length), dv: new Float32Array(args.v.length) };
      return bestOf(
        TILE_CANDIDATES,
        (t) => `${t.tileQ}x${t.tileKV}`,
        async (t) => {
          const kernel = await loadNativeKernel({ ...t, threads: q.threads, isa: q.isa });
          let best = Infinity;
          for (let r = 0; r < 3; r++) {
            const t0 = performance.now();
            const part = await kernel.forward(args);
            await kernel.backward(args, { dO, lse: part.lse, delta: new Float32Array(part.lse.length) }, acc);
            if (r > 0) best = Math.min(best, performance.now() - t0);
          }
          return best;
        },
      );
    },
    opts,
  ) as Promise<{ value: Tiles; source: 'cached' | 'measured' }>;
}

/** Row-block sizes tried per instruction set: multiples of its micro-kernel's rows. */
const MC_CANDIDATES: Record<string, number[]> = { avx512: [84, 168, 336], avx2: [72, 144, 288], portable: [48, 96, 192] };
const KC_CANDIDATES = [256, 384, 512];

/** The shapes GEMM tuning times: a projection over a shard, an FFN chunk, a weight gradient (m, n, k, transA, transB). */
const GEMM_SHAPES = [
  [2048, 256, 256, false, false],
  [256, 1024, 256, false, false],
  [256, 256, 2048, true, false],
] as const;

function gemmKey(threads: number, isa: string): string {
  return `${cpuKey()} | ${isa} | ${threads} thread(s) | gemm`;
}

/**
 * The SGEMM rate (GFLOP/s) this machine reached on `threads` threads with its
 * best blocking, from the tuning file's evidence; null before any tuning. The
 * dashboard's MFU divides by it: a rate measured here, not a datasheet's.
 */
export function measuredGemmGflops(threads: number, opts: { path?: string } = {}): number | null {
  const { gemm: addon } = loadGemm();
  if (!addon) return null;
  const isa = process.env.RINGATTN_NATIVE_ISA ?? addon.gemmIsas()[0];
  const entry = readFile(opts.path ?? tuningFilePath()).entries[gemmKey(threads, isa)];
  const ms = entry ? Math.min(...Object.values(entry.timings)) : NaN;
  if (!(ms > 0)) return null;
  const flops = GEMM_SHAPES.reduce((a, [m, n, k]) => a + 2 * m * n * k, 0);
  return flops / (ms / 1000) / 1e9;
}

/**
 * SGEMM cache blocking for this machine: the shapes a training step runs most
 * (a projection over a shard, an FFN chunk, a weight gradient) timed for each
 * candidate (mc, kc).
 */
export async function tunedGemm(q: { threads: number; isa?: string }, opts: { path?: string; fresh?: boolean } = {}): Promise<{ value: GemmBlocking; source: 'cached' | 'measured' }> {
  const { gemm: addon, reason } = loadGemm();
  if (!addon) throw new Error(reason);
  const isa = q.isa ?? process.env.RINGATTN_NATIVE_ISA ?? addon.gemmIsas()[0];
  const key = gemmKey(q.threads, isa);
  return cached(
    key,
    async () => {
      const shapes = GEMM_SHAPES;
      const bufs = shapes.map(([m, n, k]) => ({ a: new Float32Array(m * k).fill(0.25), b: new Float32Array(k * n).fill(0.5), c: new Float32Array(m * n) }));
      const candidates: GemmBlocking[] = [];
      for (const mc of MC_CANDIDATES[isa] ?? MC_CANDIDATES.portable) for (const kc of KC_CANDIDATES) candidates.push({ mc, kc, nc: 4096 });
      return bestOf(
        candidates,
        (b) => `mc ${b.mc} kc ${b.kc}`,
        async (blk) => {
          let total = 0;
          shapes.forEach(([m, n, k, transA, transB], i) => {
            const { a, b, c } = bufs[i];
            const args = { m, n, k, transA, transB, a, lda: transA ? m : k, b, ldb: transB ? k : n, c, ldc: n, beta: 0, threads: q.threads, isa, ...blk };
            addon.sgemmSync(args);
            let best = Infinity;
            for (let r = 0; r < 3; r++) {
              const t0 = performance.now();
              addon.sgemmSync(args);
              best = Math.min(best, performance.now() - t0);
            }
            total += best;
          });
          return total;
        },
      );
    },
    opts,
  ) as Promise<{ value: GemmBlocking; source: 'cached' | 'measured' }>;
}

/**
 * The spec's tiles with `auto` resolved: measured (or cached) for the native
 * kernel, the default 128 x 128 for the others. `note` says which, for the log.
 */
export async function attentionTiles(
  spec: { tileQ: number | 'auto'; tileKV: number | 'auto' },
  kernel: string,
  q: TileQuery,
): Promise<Tiles & { note: string }> {
  if (spec.tileQ !== 'auto' && spec.tileKV !== 'auto') return { tileQ: spec.tileQ, tileKV: spec.tileKV, note: 'tiles from the spec' };
  let auto = DEFAULT_TILES;
  let note = `tiles ${DEFAULT_TILES.tileQ}x${DEFAULT_TILES.tileKV} (the default for the ${kernel} kernel)`;
  if (kernel === 'native') {
    try {
      const t = await tunedTiles(q);
      auto = t.value;
      note = `tiles ${auto.tileQ}x${auto.tileKV} ${t.source === 'cached' ? `tuned for this machine (${tuningFilePath()})` : 'measured on this machine just now'}`;
    } catch (e) {
      note = `tiles ${DEFAULT_TILES.tileQ}x${DEFAULT_TILES.tileKV} (tuning failed: ${(e as Error).message.split('\n')[0]})`;
    }
  }
  return { tileQ: spec.tileQ === 'auto' ? auto.tileQ : spec.tileQ, tileKV: spec.tileKV === 'auto' ? auto.tileKV : spec.tileKV, note };
}

/** The spec's attention kernel, loaded with its tiles resolved (see attentionTiles). */
export async function loadTunedKernel(
  spec: { kernel: string; attention: { tileQ: number | 'auto'; tileKV: number | 'auto' } },
  q: TileQuery,
): Promise<LoadedKernel & { tiles: Tiles }> {
  const name = spec.kernel as KernelName;
  const native = name === 'native' || (name === 'auto' && nativeInfo().available);
  const tiles = await attentionTiles(spec.attention, native ? 'native' : name, q);
  const loaded = await loadKernel(name, { tileQ: tiles.tileQ, tileKV: tiles.tileKV, threads: q.threads });
  return { ...loaded, reason: `${loaded.reason}; ${tiles.note}`, tiles: { tileQ: tiles.tileQ, tileKV: tiles.tileKV } };
}
