/**
 * schema/cluster.schema.json (for editors, via yaml-language-server) and
 * docs/config.md, rendered from the zod schema (./schema.ts), the single source
 * of truth. scripts/gen-schema.ts writes them; test/config.test.ts checks that
 * the committed files equal a fresh rendering.
 */
import { fileURLToPath } from 'node:url';
import { ClusterSpecSchema, clusterJsonSchema } from './schema.js';
import { SIZE_PATTERN, formatSize } from './size.js';

type Json = Record<string, unknown>;

export const SCHEMA_FILE = fileURLToPath(new URL('../../schema/cluster.schema.json', import.meta.url));
export const DOCS_FILE = fileURLToPath(new URL('../../docs/config.md', import.meta.url));

export function renderJsonSchema(): string {
  const schema = clusterJsonSchema();
  const { $schema, ...rest } = schema;
  const out = {
    $schema,
    $comment: 'Generated from src/config/schema.ts by scripts/gen-schema.ts; do not edit.',
    ...rest,
  };
  return JSON.stringify(out, null, 2) + '\n';
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

function isSize(s: Json): boolean {
  const any = s.anyOf as Json[] | undefined;
  return !!any && any.some((b) => b.pattern === SIZE_PATTERN);
}

function range(s: Json): string {
  const parts: string[] = [];
  const int = s.type === 'integer';
  if (typeof s.exclusiveMinimum === 'number') parts.push(int ? `≥ ${s.exclusiveMinimum + 1}` : `> ${s.exclusiveMinimum}`);
  if (typeof s.minimum === 'number') parts.push(`≥ ${s.minimum}`);
  if (typeof s.maximum === 'number' && s.maximum !== MAX_SAFE) parts.push(`≤ ${s.maximum}`);
  if (typeof s.exclusiveMaximum === 'number') parts.push(`< ${s.exclusiveMaximum}`);
  return parts.length ? ` ${parts.join(', ')}` : '';
}

function typeOf(s: Json): string {
  if (isSize(s)) return 'size';
  if (Array.isArray(s.enum)) return (s.enum as unknown[]).map((v) => `\`${String(v)}\``).join(', ');
  if ('const' in s) return `\`${String(s.const)}\``;
  if (Array.isArray(s.anyOf)) return (s.anyOf as Json[]).map(typeOf).join(' or ');
  if (Array.isArray(s.type)) return (s.type as string[]).includes('string') ? 'string' : (s.type as string[]).join(' or ');
  switch (s.type) {
    case 'integer':
      return `integer${range(s)}`;
    case 'number':
      return `number${range(s)}`;
    case 'array': {
      const items = (s.items ?? {}) as Json;
      const min = typeof s.minItems === 'number' && s.minItems > 0 ? `, at least ${s.minItems}` : '';
      return items.properties ? `list of mappings${min}` : `list of ${typeOf(items)}${min}`;
    }
    case 'object':
      if (s.properties) return 'mapping';
      return `map of string to ${typeOf((s.additionalProperties ?? {}) as Json)}`;
    default:
      return String(s.type ?? 'any');
  }
}

/** Defaults the JSON Schema cannot show (fields whose value is transformed), read from a parsed minimal spec. */
function parsedDefaults(): Json {
  return ClusterSpecSchema.parse({ hosts: [{ name: 'h', address: '127.0.0.1', ssh: {} }] }) as unknown as Json;
}

function valueAt(root: Json, path: string[]): unknown {
  let v: unknown = root;
  for (const seg of path) {
    if (Array.isArray(v)) v = v[0];
    if (seg === '[]') continue;
    v = (v as Json | undefined)?.[seg];
  }
  return Array.isArray(v) && path[path.length - 1] === '[]' ? v[0] : v;
}

function code(v: unknown): string {
  return `\`${typeof v === 'string' ? v : JSON.stringify(v)}\``;
}

function defaultOf(s: Json, path: string[], required: boolean, parsed: Json): string {
  if ('default' in s) return code(s.default);
  if (required) return '**required**';
  if (/Default:/.test(String(s.description ?? ''))) return 'see meaning';
  const v = valueAt(parsed, path);
  if (v === undefined) return '—';
  return code(isSize(s) && typeof v === 'number' ? formatSize(v) : v);
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function fieldName(path: string[]): string {
  return path.join('.').replace(/\.\[\]/g, '[]');
}

function anchor(path: string[]): string {
  return fieldName(path).toLowerCase().replace(/[^a-z0-9]+/g, '');
}

function renderObject(s: Json, path: string[], parsed: Json, out: string[]): void {
  const props = (s.properties ?? {}) as Record<string, Json>;
  const required = new Set((s.required as string[] | undefined) ?? []);
  const nested: Array<[Json, string[]]> = [];
  out.push('| Field | Type | Default | Meaning |', '| --- | --- | --- | --- |');
  for (const [key, p] of Object.entries(props)) {
    const fp = [...path, key];
    let type = typeOf(p);
    if (p.type === 'object' && p.properties) {
      nested.push([p, fp]);
      type = `mapping, see [${fieldName(fp)}](#${anchor(fp)})`;
    } else if (p.type === 'array' && (p.items as Json | undefined)?.properties) {
      const ip = [...fp, '[]'];
      nested.push([p.items as Json, ip]);
      type = `${type}, see [${fieldName(ip)}](#${anchor(ip)})`;
    }
    const def = p.type === 'object' && p.properties ? '' : defaultOf(p, fp, required.has(key), parsed);
    out.push(`| \`${key}\` | ${cell(type)} | ${cell(def)} | ${cell(String(p.description ?? ''))} |`);
  }
  for (const [n, np] of nested) {
    out.push('', `## ${fieldName(np)}`, '');
    if (n.description) out.push(String(n.description), '');
    renderObject(n, np, parsed, out);
  }
}

export function renderConfigDocs(): string {
  const schema = clusterJsonSchema();
  const out: string[] = [
    '# Cluster spec reference',
    '',
    '<!-- Generated from src/config/schema.ts by `node --import tsx scripts/gen-schema.ts`; do not edit. -->',
    '',
    'A cluster spec is a YAML file that says which machines form the ring and how to train or',
    'benchmark on it. `ringattn` reads the file given by `--config`, or the packaged',
    '[configs/localhost.yaml](../configs/localhost.yaml) (two workers on this machine) without one.',
    'Other examples: [configs/ci.yaml](../configs/ci.yaml) (a smoke run) and',
    '[configs/multi-host.example.yaml](../configs/multi-host.example.yaml) (two hosts over ssh).',
    '',
    'Keys are camelCase. Every field except `hosts` (and the `name` and `address` of each host) has a',
    'default, so a minimal spec is:',
    '',
    '```yaml',
    'hosts:',
    '  - name: local',
    '    address: 127.0.0.1',
    '    slots: 2',
    '```',
    '',
    'Rules:',
    '',
    '- Unknown keys are errors, so a typo (`slot:` for `slots:`) is caught, not ignored.',
    '- A **size** is a positive integer or a string with a `K`, `M` or `G` suffix meaning a power of two:',
    '  `64K` = 65536, `8M` = 8388608, `1G` = 1073741824; a fraction is allowed when the result is whole (`1.5K` = 1536).',
    '- Ranks are assigned host by host in file order: the first host gets ranks 0..slots-1, and so on.',
    '  The coordinator binds `ring.basePort`; the worker of rank r binds `ring.basePort + 1 + r`.',
    '- Relative `data.paths` are relative to the directory of the spec file.',
    '- Errors name the file, line, column and field, e.g.',
    '  `configs/my.yaml:7:5: hosts[0].slot: unknown key "slot" (did you mean "slots"?)`, and exit with code 2.',
    '- Editors with the YAML language server check and complete a spec whose first line is',
    '  `# yaml-language-server: $schema=../schema/cluster.schema.json` (path relative to the spec), using',
    '  [schema/cluster.schema.json](../schema/cluster.schema.json).',
    '- `specHash(spec)` is the sha256 of the canonical JSON of the resolved spec; the rendezvous uses it to',
    '  detect a worker started with a different spec.',
    '',
    'Cross-field checks: host names are unique; no two hosts share an address (give one host more slots instead);',
    '`launch: local` and an `ssh` section exclude each other; `gpus` has one entry per slot;',
    '`ring.basePort` + number of workers ≤ 65535; `ring.heartbeatTimeoutMs` > `ring.heartbeatIntervalMs`;',
    '`ring.transport: ipc` and `shm` need a single host; a non-wildcard `ring.bindAddress` needs a single host;',
    '`model.dModel` is divisible by `model.heads` with an even head dimension; `kvHeads` divides `heads`',
    '(in `model` and `bench`); `train.minLr` ≤ `train.lr`.',
    '',
    '## Top level',
    '',
  ];
  renderObject(schema, [], parsedDefaults(), out);
  return out.join('\n') + '\n';
}
