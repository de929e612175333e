import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node as YamlNode } from 'yaml';
import type * as z from 'zod';
import { UserError } from '../errors.js';
import { ClusterSpecSchema, clusterJsonSchema, type ClusterSpec } from './schema.js';

type Path = ReadonlyArray<PropertyKey>;

/** The packaged default spec. Both src/config/ (tsx) and dist/config/ (tsc) sit two levels under the package root. */
export function defaultSpecPath(): string {
  return fileURLToPath(new URL('../../configs/localhost.yaml', import.meta.url));
}

/**
 * Reads and validates a spec file. Relative `data.paths` are resolved against the
 * file's directory, so a spec works from any working directory.
 */
export function loadSpec(file: string): ClusterSpec {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : code === 'EACCES' ? 'permission denied' : String((e as Error).message);
    throw new UserError(`${file}: cannot read the cluster spec: ${why}`);
  }
  const spec = parseSpec(text, file);
  const base = dirname(resolve(file));
  spec.data.paths = spec.data.paths.map((p) => (isAbsolute(p) ? p : resolve(base, p)));
  return spec;
}

/** A spec nests a few levels; thousands of `[` or `{` only exhaust the YAML parser. */
const MAX_FLOW_DEPTH = 64;

function checkFlowDepth(text: string, file: string): void {
  let depth = 0;
  let line = 1;
  let col = 0;
  for (const ch of text) {
    col++;
    if (ch === '\n') {
      line++;
      col = 0;
    } else if (ch === '[' || ch === '{') {
      if (++depth > MAX_FLOW_DEPTH) throw new UserError(`${file}:${line}:${col}: nested more than ${MAX_FLOW_DEPTH} levels deep`);
    } else if ((ch === ']' || ch === '}') && depth > 0) depth--;
  }
}

/** Parses and validates spec text; `file` only names the source in error messages. */
export function parseSpec(text: string, file: string): ClusterSpec {
  checkFlowDepth(text, file);
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const where = (offset: number) => {
    const { line, col } = lineCounter.linePos(offset);
    return `${file}:${Math.max(line, 1)}:${Math.max(col, 1)}`;
  };
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const more = doc.errors.length > 1 ? ` (and ${doc.errors.length - 1} more)` : '';
    throw new UserError(`${where(e.pos[0])}: YAML syntax error: ${oneLine(e.message)}${more}`);
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 1000 });
  } catch (e) {
    throw new UserError(`${where(0)}: YAML error: ${oneLine((e as Error).message)}`);
  }
  const result = ClusterSpecSchema.safeParse(value, { reportInput: true });
  if (result.success) return result.data;

  const located = expandIssues(result.error.issues).map((p) => ({ ...p, offset: offsetOf(doc, p) }));
  located.sort((a, b) => a.offset - b.offset);
  const first = located[0];
  const more = located.length > 1 ? ` (and ${located.length - 1} more)` : '';
  throw new UserError(`${where(first.offset)}: ${formatPath(first.path)}: ${first.message}${more}`);
}

/**
 * Validates an already-parsed spec object (built in code or from JSON); errors name the
 * field but, lacking a file, no line.
 */
export function specFromObject(input: unknown, source = '<spec>'): ClusterSpec {
  const result = ClusterSpecSchema.safeParse(input, { reportInput: true });
  if (result.success) return result.data;
  const problems = expandIssues(result.error.issues);
  const more = problems.length > 1 ? ` (and ${problems.length - 1} more)` : '';
  throw new UserError(`${source}: ${formatPath(problems[0].path)}: ${problems[0].message}${more}`);
}

/** sha256 (hex) of the spec as canonical JSON (keys sorted): equal specs hash equal on every host. */
export function specHash(spec: ClusterSpec): string {
  return createHash('sha256').update(canonicalJson(spec)).digest('hex');
}

export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  const entries = Object.keys(value as Record<string, unknown>)
    .sort()
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
  return `{${entries.join(',')}}`;
}

/** `hosts[0].ssh.port` */
export function formatPath(path: Path): string {
  if (path.length === 0) return '(root)';
  let s = '';
  for (const seg of path) {
    if (typeof seg === 'number') s += `[${seg}]`;
    else s += s === '' ? String(seg) : `.${String(seg)}`;
  }
  return s;
}

interface Problem {
  path: Path;
  message: string;
  /** Point at the key named by the last path segment rather than at its value. */
  atKey: boolean;
}

/** One problem per zod issue, except an unknown-keys issue, which becomes one per key. */
function expandIssues(issues: readonly z.core.$ZodIssue[]): Problem[] {
  const out: Problem[] = [];
  for (const iss of issues) {
    if (iss.code === 'unrecognized_keys') {
      for (const key of iss.keys) {
        const path = [...iss.path, key];
        out.push({ path, message: unknownKeyMessage(iss.path, key), atKey: true });
      }
    } else if (iss.code === 'invalid_key') {
      out.push({ path: iss.path, message: iss.issues[0]?.message ?? iss.message, atKey: true });
    } else {
      out.push({ path: iss.path, message: issueMessage(iss), atKey: false });
    }
  }
  return out;
}

function issueMessage(iss: z.core.$ZodIssue): string {
  const input = (iss as { input?: unknown }).input;
  const got = `got ${describe(input)}`;
  switch (iss.code) {
    case 'invalid_type':
      if (iss.path.length === 0 && input == null) return 'the spec is empty; it needs at least `hosts`';
      if (input === undefined) return 'required field is missing';
      return `expected ${typeName(iss.expected)}, ${got}`;
    case 'too_small':
    case 'too_big': {
      const bound = iss.code === 'too_small' ? iss.minimum : iss.maximum;
      const incl = iss.inclusive !== false;
      if (iss.origin === 'array') return iss.code === 'too_small' ? `needs at least ${bound} item(s)` : `takes at most ${bound} item(s)`;
      if (iss.origin === 'string') return iss.code === 'too_small' ? 'must not be empty' : `must be at most ${bound} characters`;
      const op = iss.code === 'too_small' ? (incl ? '>=' : '>') : incl ? '<=' : '<';
      return `must be ${op} ${String(bound)}, ${got}`;
    }
    case 'invalid_value': {
      const options = iss.values.map((v) => String(v));
      const hint = typeof input === 'string' ? suggest(input, options) : undefined;
      return `expected one of ${options.join(', ')}, ${got}${hint ? ` (did you mean "${hint}"?)` : ''}`;
    }
    default:
      return oneLine(iss.message);
  }
}

function typeName(expected: string): string {
  switch (expected) {
    case 'object':
      return 'a mapping';
    case 'array':
      return 'a list';
    case 'int':
      return 'an integer';
    case 'number':
      return 'a number';
    case 'string':
      return 'a string';
    case 'boolean':
      return 'true or false';
    default:
      return expected;
  }
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return JSON.stringify(v);
  return String(v);
}

function unknownKeyMessage(objectPath: Path, key: string): string {
  const known = knownKeys(objectPath);
  const hint = suggest(key, known);
  if (hint) return `unknown key "${key}" (did you mean "${hint}"?)`;
  return known.length > 0 ? `unknown key "${key}"; expected one of ${known.join(', ')}` : `unknown key "${key}"`;
}

let jsonSchemaCache: Record<string, unknown> | undefined;

/** Keys allowed in the mapping at `path`, read from the JSON Schema of the spec. */
function knownKeys(path: Path): string[] {
  jsonSchemaCache ??= clusterJsonSchema();
  let s: Record<string, unknown> | undefined = jsonSchemaCache;
  for (const seg of path) {
    if (!s) return [];
    if (typeof seg === 'number') s = s.items as Record<string, unknown> | undefined;
    else s = (s.properties as Record<string, Record<string, unknown>> | undefined)?.[String(seg)];
  }
  return s?.properties ? Object.keys(s.properties as object) : [];
}

/** The closest candidate by edit distance (case-insensitive), if close enough to be a typo. */
function suggest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(best.length / 3)) ? best : undefined;
}

/** Edit distance where swapping two neighbouring letters counts as one edit ("modle" -> "model"). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/**
 * Source offset a problem points at: the offending value; the key itself for unknown keys
 * and for keys written without a value; the nearest enclosing mapping for a missing key.
 */
function offsetOf(doc: Document, p: Problem): number {
  let node: unknown = doc.contents;
  let keyNode: YamlNode | undefined;
  let lastFound: unknown = node;
  for (const seg of p.path) {
    if (isAlias(node)) node = node.resolve(doc);
    if (isMap(node)) {
      const pair = node.items.find((it) => (isScalar(it.key) ? String(it.key.value) : String(it.key)) === String(seg));
      if (!pair) return start(lastFound);
      keyNode = pair.key as YamlNode;
      node = pair.value;
    } else if (isSeq(node) && typeof seg === 'number' && seg < node.items.length) {
      keyNode = undefined;
      node = node.items[seg];
    } else {
      return start(lastFound);
    }
    lastFound = node ?? keyNode;
  }
  const emptyValue = node == null || (isScalar(node) && node.value === null && node.range?.[0] === node.range?.[1]);
  if (keyNode && (p.atKey || emptyValue)) return start(keyNode);
  return start(node);
}

function start(node: unknown): number {
  const range = (node as { range?: [number, number, number] } | null)?.range;
  return range ? range[0] : 0;
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}
