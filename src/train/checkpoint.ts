import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { endianness } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { UserError } from '../errors.js';
import type { ParamSpec, Params } from '../model/types.js';
import type { DataState } from './data.js';
import type { AdamWState } from './optimizer.js';

export const CHECKPOINT_FORMAT = 'ringattn-checkpoint-1';
export const DEFAULT_KEEP = 3;
const DIR_MODE = 0o700;
const FILE_MODE = 0o600;
const CKPT_RE = /^ckpt-(\d+)$/;

export interface CheckpointData {
  /** Completed optimizer updates: training resumes at update `step`. */
  step: number;
  params: Params;
  opt: AdamWState;
  dataState: DataState;
  /** State of any random generator the run draws from besides the data (none today: the model has no dropout). */
  rngState?: unknown;
  /** The resolved spec of the run that wrote it. */
  spec: unknown;
  /** Anything else worth keeping (last loss, world size, ...); JSON. */
  extra?: Record<string, unknown>;
}

export interface LoadedCheckpoint extends CheckpointData {
  /** The checkpoint directory. */
  path: string;
}

interface FileEntry {
  sha256: string;
  bytes: number;
  dtype: 'float32';
  length: number;
}

interface ManifestBody {
  format: string;
  step: number;
  byteOrder: 'LE' | 'BE';
  paramSpecs: ParamSpec[];
  optStep: number;
  dataState: DataState;
  rngState?: unknown;
  spec: unknown;
  extra?: Record<string, unknown>;
  files: Record<string, FileEntry>;
}

interface Manifest extends ManifestBody {
  /** sha256 of JSON.stringify of the manifest without this field. */
  manifestSha256: string;
}

const FILES = { params: 'params.bin', m: 'adam-m.bin', v: 'adam-v.bin' } as const;

function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

function bytesOf(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** Writes and fsyncs a file, so a rename after it publishes complete data even across a power loss. */
function writeFileDurable(path: string, data: Uint8Array | string): void {
  const fd = openSync(path, 'w', FILE_MODE);
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** fsync a directory so that renames inside it are durable; not every platform allows it. */
function fsyncDir(path: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    fsyncSync(fd);
  } catch {
    // Windows cannot open directories; the rename is still atomic there.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Write to a temporary sibling, fsync, rename over `path`: readers see the old or the new file, never a part. */
export function writeFileAtomic(path: string, data: Uint8Array | string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileDurable(tmp, data);
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

/** Creates `dir` (and parents) owner-only. */
export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: DIR_MODE });
}

/** Checkpoint directories in `dir`, newest first. */
export function listCheckpoints(dir: string): { step: number; path: string }[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: { step: number; path: string }[] = [];
  for (const n of names) {
    const m = CKPT_RE.exec(n);
    if (m) out.push({ step: Number(m[1]), path: join(dir, n) });
  }
  return out.sort((a, b) => b.step - a.step);
}

export interface SaveOptions {
  /** Checkpoints kept after this one is written (older ones are deleted); 0 = keep all. */
  keep?: number;
  /** Testing hook: called once the first file is on disk and before the checkpoint is published. */
  afterFirstFile?: () => void;
}

/**
 * Writes `<dir>/ckpt-<step>` atomically: everything goes into `ckpt-<step>.tmp/`
 * (float32 files and manifest.json with the sha256 of every file and of the
 * manifest itself), is fsynced, and the folder is renamed into place. Then the
 * `latest` pointer is replaced atomically and old checkpoints are pruned. A
 * crash at any point leaves either no new checkpoint or a complete one.
 */
export function saveCheckpoint(dir: string, data: CheckpointData, opts: SaveOptions = {}): string {
  const n = data.params.flat.length;
  if (data.opt.m.length !== n || data.opt.v.length !== n) {
    throw new Error(`saveCheckpoint: optimizer state has ${data.opt.m.length}/${data.opt.v.length} values for ${n} parameters`);
  }
  ensurePrivateDir(dir);
  const name = `ckpt-${data.step}`;
  const final = join(dir, name);
  const tmp = join(dir, `${name}.tmp`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { mode: DIR_MODE });

  const files: Record<string, FileEntry> = {};
  const arrays: [string, Float32Array][] = [
    [FILES.params, data.params.flat],
    [FILES.m, data.opt.m],
    [FILES.v, data.opt.v],
  ];
  for (const [file, arr] of arrays) {
    const buf = bytesOf(arr);
    writeFileDurable(join(tmp, file), buf);
    files[file] = { sha256: sha256(buf), bytes: buf.length, dtype: 'float32', length: arr.length };
    if (file === FILES.params) opts.afterFirstFile?.();
  }
  const body: ManifestBody = {
    format: CHECKPOINT_FORMAT,
    step: data.step,
    byteOrder: endianness(),
    paramSpecs: data.params.specs,
    optStep: data.opt.step,
    dataState: data.dataState,
    ...(data.rngState !== undefined ? { rngState: data.rngState } : {}),
    spec: data.spec,
    ...(data.extra !== undefined ? { extra: data.extra } : {}),
    files,
  };
  const manifest: Manifest = { ...body, manifestSha256: sha256(JSON.stringify(body)) };
  writeFileDurable(join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  fsyncDir(tmp);

  // A checkpoint of the same step from an earlier, interrupted attempt is replaced.
  if (existsSync(final)) rmSync(final, { recursive: true, force: true });
  renameSync(tmp, final);
  fsyncDir(dir);
  writeFileAtomic(join(dir, 'latest'), name + '\n');

  const keep = opts.keep ?? DEFAULT_KEEP;
  if (keep > 0) {
    for (const old of listCheckpoints(dir).slice(keep)) rmSync(old.path, { recursive: true, force: true });
  }
  return final;
}

function readManifest(path: string): Manifest {
  const file = join(path, 'manifest.json');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new UserError(`checkpoint ${path} has no readable manifest.json: it is not a checkpoint or it is incomplete`);
  }
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch {
    throw new UserError(`checksum mismatch in ${file}: it is not valid JSON (truncated or corrupted)`);
  }
  if (typeof m !== 'object' || m === null || typeof m.manifestSha256 !== 'string') {
    throw new UserError(`checksum mismatch in ${file}: the manifest has no checksum`);
  }
  const { manifestSha256, ...body } = m;
  if (sha256(JSON.stringify(body)) !== manifestSha256) throw new UserError(`checksum mismatch in ${file}`);
  if (m.format !== CHECKPOINT_FORMAT) {
    throw new UserError(`checkpoint ${path} has format ${JSON.stringify(m.format)}; this ringattn reads ${CHECKPOINT_FORMAT}`);
  }
  if (m.byteOrder !== endianness()) {
    throw new UserError(`checkpoint ${path} was written on a ${m.byteOrder} machine and cannot be read on this ${endianness()} one`);
  }
  return m;
}

function readArray(path: string, file: string, entry: FileEntry | undefined, expectLength: number): Float32Array {
  const full = join(path, file);
  if (!entry) throw new UserError(`checkpoint ${path}: the manifest does not list ${file}`);
  let buf: Buffer;
  try {
    buf = readFileSync(full);
  } catch {
    throw new UserError(`checkpoint ${path} is missing ${file}`);
  }
  if (buf.length !== entry.bytes) {
    throw new UserError(`checksum mismatch in ${full} (truncated: ${buf.length} of ${entry.bytes} bytes)`);
  }
  if (sha256(buf) !== entry.sha256) throw new UserError(`checksum mismatch in ${full}`);
  if (entry.length !== expectLength || entry.bytes !== expectLength * 4) {
    throw new UserError(`checkpoint ${path}: ${file} holds ${entry.length} values, the parameter specs need ${expectLength}`);
  }
  // Copy into a fresh, aligned buffer: a Buffer may share an unaligned pool slab.
  const out = new Float32Array(expectLength);
  new Uint8Array(out.buffer).set(buf);
  return out;
}

/** Checks that the parameter specs tile [0, total) in order and that shapes match sizes. */
function checkSpecs(path: string, specs: ParamSpec[]): number {
  if (!Array.isArray(specs)) throw new UserError(`checkpoint ${path}: the manifest has no parameter specs`);
  let off = 0;
  for (const s of specs) {
    const size = s.shape.reduce((a, b) => a * b, 1);
    if (size !== s.size || s.offset !== off) {
      throw new UserError(`checkpoint ${path}: parameter ${s.name} has shape [${s.shape.join(', ')}], size ${s.size} at offset ${s.offset}; they do not fit together`);
    }
    off += s.size;
  }
  return off;
}

/** Loads a checkpoint directory, verifying every checksum and shape. Errors name the bad file. */
export function loadCheckpoint(path: string): LoadedCheckpoint {
  const dir = resolve(path);
  const m = readManifest(dir);
  const total = checkSpecs(dir, m.paramSpecs);
  const flat = readArray(dir, FILES.params, m.files[FILES.params], total);
  const mArr = readArray(dir, FILES.m, m.files[FILES.m], total);
  const vArr = readArray(dir, FILES.v, m.files[FILES.v], total);
  return {
    path: dir,
    step: m.step,
    params: { flat, specs: m.paramSpecs },
    opt: { m: mArr, v: vArr, step: m.optStep },
    dataState: m.dataState,
    ...(m.rngState !== undefined ? { rngState: m.rngState } : {}),
    spec: m.spec,
    ...(m.extra !== undefined ? { extra: m.extra } : {}),
  };
}

/**
 * The newest checkpoint in `dir` that verifies. A newest one that fails (a disk
 * fault, a hand edit) is reported through `warn` and the previous one is tried,
 * so one bad checkpoint costs `checkpointEvery` steps, not the run.
 * Returns null when there is no checkpoint at all; throws when there are some
 * and none verifies.
 */
export function latestCheckpoint(dir: string, warn: (msg: string) => void = (m) => process.emitWarning(m)): LoadedCheckpoint | null {
  const all = listCheckpoints(dir);
  if (all.length === 0) return null;
  const errors: string[] = [];
  for (const c of all) {
    try {
      return loadCheckpoint(c.path);
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      errors.push(e.message);
      warn(`skipping checkpoint ${basename(c.path)}: ${e.message}`);
    }
  }
  throw new UserError(`no valid checkpoint in ${dir}: ${errors.join('; ')}`);
}

/**
 * A checkpoint directory or a run directory (its latest valid checkpoint),
 * for commands that take either (`--checkpoint DIR`).
 */
export function resolveCheckpoint(path: string, warn?: (msg: string) => void): LoadedCheckpoint {
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new UserError(`checkpoint path ${path} does not exist`);
  }
  if (!st.isDirectory()) throw new UserError(`checkpoint path ${path} is not a directory`);
  if (existsSync(join(path, 'manifest.json'))) return loadCheckpoint(path);
  const c = latestCheckpoint(path, warn);
  if (!c) throw new UserError(`${path} holds no checkpoint (no ckpt-<step> folder)`);
  return c;
}
