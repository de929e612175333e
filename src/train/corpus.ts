import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../errors.js';

/** Byte-level tokens: every UTF-8 byte is one token. */
export const BYTE_VOCAB = 256;

/** The default corpus never exceeds this many bytes (memory per worker, and load time). */
export const DEFAULT_CORPUS_MAX_BYTES = 8 * 1024 * 1024;

/**
 * Packages read for the default corpus, in this order. All are runtime
 * dependencies of ringattn with exactly pinned versions (no dev dependency such
 * as typescript: an `npm install ringattn` lacks those), so the corpus is the
 * same on a development checkout and on every install.
 */
export const DEFAULT_CORPUS_PACKAGES: readonly string[] = ['commander', 'yaml', 'zod', 'pino', '@tensorflow/tfjs-core'];
const PROJECT_SHARE = 2 * 1024 * 1024;
const PACKAGE_SHARE = 3 * 1024 * 1024;
const SOURCE_EXT = /\.(?:[cm]?js|[cm]?ts|md)$/;

/** The package root: src/train/ and dist/train/ are both two levels below it. */
export function packageRoot(): string {
  return fileURLToPath(new URL('../../', import.meta.url));
}

export interface CorpusPart {
  path: string;
  bytes: number;
}

export interface Corpus {
  /** All bytes, concatenated in `parts` order. */
  bytes: Uint8Array;
  /** First `trainEnd` bytes train; the rest is the held-out split. */
  train: Uint8Array;
  eval: Uint8Array;
  parts: CorpusPart[];
  /** True when built from the default sources (no `data.paths`). */
  isDefault: boolean;
}

/** Regular files under `dir`, recursively, sorted by path; dot-entries and node_modules are skipped. */
function walk(dir: string, accept: (path: string) => boolean, out: string[] = []): string[] {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  const names = entries
    .filter((e) => !e.name.startsWith('.') && e.name !== 'node_modules')
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of names) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, accept, out);
    else if (e.isFile() && accept(p)) out.push(p);
  }
  return out;
}

/** Where node's resolution would find `name`: `node_modules/name` in the root or an ancestor (hoisted installs). */
export function findPackageDir(name: string, root = packageRoot()): string | undefined {
  let dir = resolve(root);
  for (;;) {
    const cand = join(dir, 'node_modules', name);
    if (existsSync(join(cand, 'package.json'))) return cand;
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

interface Source {
  files: string[];
  share: number;
}

/** Inline source maps are base64 noise, not source: drop their comment lines. */
function stripSourceMaps(buf: Buffer): Buffer {
  const text = buf.toString('latin1');
  if (!text.includes('sourceMappingURL=')) return buf;
  return Buffer.from(text.replace(/^\/\/[#@] sourceMappingURL=.*$\n?/gm, ''), 'latin1');
}

interface Chunk {
  path: string;
  data: Buffer;
}

function defaultCorpusChunks(root: string, maxBytes: number): Chunk[] {
  const sources: Source[] = [];
  // README.md and src/ are what every install ships (package.json "files"); docs/ and test/ are not.
  const projectFiles = [join(root, 'README.md')].filter((p) => existsSync(p));
  projectFiles.push(...walk(join(root, 'src'), (p) => /\.ts$/.test(p)));
  sources.push({ files: projectFiles, share: PROJECT_SHARE });
  for (const name of DEFAULT_CORPUS_PACKAGES) {
    const dir = findPackageDir(name, root);
    if (!dir) continue;
    sources.push({ files: walk(dir, (p) => SOURCE_EXT.test(p) && !p.endsWith('.min.js')), share: PACKAGE_SHARE });
  }
  const out: Chunk[] = [];
  let total = 0;
  for (const s of sources) {
    let taken = 0;
    for (const f of s.files) {
      // loadCorpus joins files with a newline: the cap counts it.
      const sep = out.length > 0 ? 1 : 0;
      const room = Math.min(s.share - taken, maxBytes - total - sep);
      if (room <= 0) break;
      let data = stripSourceMaps(readFileSync(f));
      if (data.length === 0) continue;
      if (data.length > room) data = data.subarray(0, room);
      out.push({ path: f, data });
      taken += data.length;
      total += data.length + sep;
    }
  }
  return out;
}

/**
 * The default corpus, as (file, bytes taken) in its fixed order: the project's
 * README and sources, then JavaScript/TypeScript sources of pinned dependencies.
 * Each source gets a byte share so that no single large package (tfjs-core
 * alone is ~25 MB) crowds out the others; the total is capped at `maxBytes`.
 */
export function defaultCorpusFiles(root = packageRoot(), maxBytes = DEFAULT_CORPUS_MAX_BYTES): CorpusPart[] {
  return defaultCorpusChunks(root, maxBytes).map((c) => ({ path: c.path, bytes: c.data.length }));
}

function hasGlob(s: string): boolean {
  return /[*?[]/.test(s);
}

function segmentRegex(seg: string): RegExp {
  let re = '';
  for (let i = 0; i < seg.length; i++) {
    const c = seg[i];
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = seg.indexOf(']', i + 1);
      if (end < 0) re += '\\[';
      else {
        const body = seg.slice(i + 1, end).replace(/\\/g, '\\\\');
        re += '[' + (body.startsWith('!') ? '^' + body.slice(1) : body) + ']';
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
  }
  return new RegExp('^' + re + '$');
}

/**
 * A small glob (Node 20's node:fs has no globSync): `*` and `?` within one path
 * segment, `[abc]` classes, `**` for any number of directories. Wildcards do not
 * match names starting with a dot unless the pattern segment does. Sorted result.
 */
export function globFiles(pattern: string, cwd = process.cwd()): string[] {
  const abs = isAbsolute(pattern);
  const segs = pattern.split(/[\\/]+/).filter((s, i) => s !== '' || (i === 0 && abs));
  let base = abs ? sep : resolve(cwd);
  let i = abs ? 1 : 0;
  while (i < segs.length && !hasGlob(segs[i])) {
    base = join(base, segs[i]);
    i++;
  }
  const rest = segs.slice(i);
  const out = new Set<string>();
  const match = (dir: string, k: number): void => {
    if (k === rest.length) {
      if (isFile(dir)) out.add(dir);
      return;
    }
    const seg = rest[k];
    if (seg === '**') {
      match(dir, k + 1);
      for (const e of listDir(dir)) {
        if (e.dir && !e.name.startsWith('.')) match(join(dir, e.name), k);
      }
      return;
    }
    const re = segmentRegex(seg);
    const dots = seg.startsWith('.');
    for (const e of listDir(dir)) {
      if (e.name.startsWith('.') && !dots) continue;
      if (!re.test(e.name)) continue;
      const p = join(dir, e.name);
      if (k === rest.length - 1) {
        if (!e.dir) out.add(p);
      } else if (e.dir) match(p, k + 1);
    }
  };
  if (rest.length === 0) {
    if (isFile(base)) out.add(base);
  } else match(base, 0);
  return [...out].sort();
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

function listDir(dir: string): { name: string; dir: boolean }[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .map((e) => {
        let isDir = e.isDirectory();
        if (e.isSymbolicLink()) {
          try {
            isDir = statSync(join(dir, e.name)).isDirectory();
          } catch {
            isDir = false;
          }
        }
        return { name: e.name, dir: isDir };
      })
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  } catch {
    return [];
  }
}

/**
 * Files named by the user's `data.paths`, in the order given, each pattern's
 * matches sorted, duplicates dropped. A directory means every file under it.
 * A path that matches nothing is the user's mistake and says which path.
 */
export function resolveDataPaths(patterns: readonly string[], cwd = process.cwd()): string[] {
  const seen = new Set<string>();
  const files: string[] = [];
  for (const pat of patterns) {
    let found: string[];
    if (hasGlob(pat)) found = globFiles(pat, cwd);
    else {
      const p = resolve(cwd, pat);
      let st;
      try {
        st = statSync(p);
      } catch {
        throw new UserError(`data path "${pat}" does not exist (resolved to ${p})`);
      }
      found = st.isDirectory() ? walk(p, () => true) : [p];
    }
    if (found.length === 0) throw new UserError(`data path "${pat}" matches no file`);
    for (const f of found) {
      if (!seen.has(f)) {
        seen.add(f);
        files.push(f);
      }
    }
  }
  return files;
}

export interface CorpusOptions {
  /** Fraction of the bytes, taken from the end, held out for the eval loss. */
  evalFraction: number;
  cwd?: string;
  root?: string;
  maxBytes?: number;
}

/**
 * Loads the corpus as bytes: `paths` (files, directories or globs) or, when
 * empty, the default corpus. Files are joined with a newline so the last line of
 * one file never runs into the first of the next. User files are read whole.
 */
export function loadCorpus(paths: readonly string[], opts: CorpusOptions): Corpus {
  const isDefault = paths.length === 0;
  const root = opts.root ?? packageRoot();
  const chunks: Chunk[] = isDefault
    ? defaultCorpusChunks(root, opts.maxBytes ?? DEFAULT_CORPUS_MAX_BYTES)
    : resolveDataPaths(paths, opts.cwd).map((path) => {
        try {
          return { path, data: readFileSync(path) };
        } catch (e) {
          throw new UserError(`cannot read data file ${path}: ${(e as Error).message}`);
        }
      });
  const used = chunks.filter((c) => c.data.length > 0);
  const total = used.reduce((a, c) => a + c.data.length, 0) + Math.max(0, used.length - 1);
  if (total === 0) {
    throw new UserError(isDefault ? 'the default corpus is empty: is the package installed completely?' : `data files ${paths.join(', ')} are empty`);
  }
  const bytes = new Uint8Array(total);
  let o = 0;
  for (const c of used) {
    if (o > 0) bytes[o++] = 0x0a;
    bytes.set(c.data, o);
    o += c.data.length;
  }
  const parts = used.map((c) => ({ path: isDefault ? relative(root, c.path) : c.path, bytes: c.data.length }));
  const frac = Math.min(Math.max(opts.evalFraction, 0), 1);
  const trainEnd = total - Math.floor(total * frac);
  return { bytes, train: bytes.subarray(0, trainEnd), eval: bytes.subarray(trainEnd), parts, isDefault };
}
