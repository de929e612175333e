import type { Command } from 'commander';
import { defaultSpecPath, loadSpec, specFromObject, type ClusterSpec } from '../config/index.js';
import { parse as parseYaml } from 'yaml';
import { UserError } from '../errors.js';

/**
 * The spec a command runs on: `--config FILE`, or the packaged localhost ring,
 * resized to `--workers N` on 127.0.0.1 when that flag is given.
 */
export function resolveSpec(opts: { config?: string; workers?: number | string; backend?: string; kernel?: string; set?: string[]; wire?: string; window?: string }): ClusterSpec {
  let spec = loadSpec(opts.config ?? defaultSpecPath());
  for (const assignment of opts.set ?? []) spec = specFromObject(withSetting(spec, assignment), `--set ${assignment}`);
  if (opts.wire !== undefined) spec = specFromObject(withSetting(spec, `ring.wire=${opts.wire}`), `--wire ${opts.wire}`);
  if (opts.window !== undefined) spec = specFromObject(withSetting(spec, `attention.window=${opts.window}`), `--window ${opts.window}`);
  if (opts.backend !== undefined || opts.kernel !== undefined) {
    spec = specFromObject({ ...spec, backend: opts.backend ?? spec.backend, kernel: opts.kernel ?? spec.kernel }, opts.backend !== undefined ? `--backend ${opts.backend}` : `--kernel ${opts.kernel}`);
  }
  if (opts.workers === undefined) return spec;
  const n = Number(opts.workers);
  if (!Number.isInteger(n) || n < 1) throw new UserError(`--workers: expected a positive integer, got "${opts.workers}"`);
  if (opts.config) throw new UserError('--workers and --config are exclusive: the ring comes from one or the other');
  const { hosts: _hosts, ...rest } = spec;
  return specFromObject({ ...rest, hosts: [{ name: 'localhost', address: '127.0.0.1', slots: n }] }, `--workers ${n}`);
}

/**
 * `--set train.steps=100`: the spec with one field replaced, the value read as
 * YAML (so `1e-3`, `true`, `16K` and `[1, 2]` mean what they would in the file).
 * The result is validated again by the caller, which names the assignment.
 */
export function withSetting(spec: ClusterSpec, assignment: string): unknown {
  const eq = assignment.indexOf('=');
  const path = eq > 0 ? assignment.slice(0, eq).split('.') : [];
  if (path.length === 0 || path.some((k) => k === '')) throw new UserError(`--set ${assignment}: expected FIELD=VALUE, e.g. attention.scope=local`);
  let value: unknown;
  try {
    value = parseYaml(assignment.slice(eq + 1));
  } catch (e) {
    throw new UserError(`--set ${assignment}: the value is not YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  const root = structuredClone(spec) as unknown as Record<string, unknown>;
  let node: Record<string, unknown> = root;
  for (const [i, key] of path.slice(0, -1).entries()) {
    const next = node[key];
    if (next === null || typeof next !== 'object') throw new UserError(`--set ${assignment}: ${path.slice(0, i + 1).join('.')} is not a section of the spec`);
    node = next as Record<string, unknown>;
  }
  node[path[path.length - 1]] = value;
  return root;
}

/** `--set FIELD=VALUE`, repeatable: every command that runs a spec takes it. */
export const SET_OPTION = [
  '--set <field=value>',
  'override one spec field, the value read as YAML, e.g. --set attention.scope=local (repeatable)',
  (v: string, acc: string[] = []) => [...acc, v],
] as const;

/** `--wire FORMAT`: ring.wire from the command line. */
export const WIRE_OPTION = ['--wire <format>', 'number format of KV blocks on the ring: float32, bfloat16, float16 (overrides ring.wire)'] as const;

/** `--window W`: attention.window from the command line. */
export const WINDOW_OPTION = ['--window <size>', 'sliding-window attention over W keys, e.g. 2K (overrides attention.window)'] as const;

/** The flags every ring command shares: where the ring is, and what computes. */
export function ringOptions(cmd: Command, opts: { workers?: boolean; wire?: boolean } = {}): Command {
  cmd.option('--config <file>', 'cluster spec (YAML); default: the localhost ring of configs/localhost.yaml');
  if (opts.workers) cmd.option('--workers <n>', 'a ring of N local workers instead of the spec\'s hosts');
  // The commands that move KV blocks: train, attn, bench.
  if (opts.wire) cmd.option(...WIRE_OPTION).option(...WINDOW_OPTION);
  return cmd
    .option(...SET_OPTION)
    .option('--backend <name>', 'where compute runs: auto, webgpu, tensorflow-gpu, tensorflow, wasm, cpu (overrides the spec)')
    .option('--kernel <name>', 'attention kernel: auto, native, tfjs, reference (overrides the spec)');
}

/** Parses an integer flag, naming it in the error. */
export function intFlag(value: unknown, flag: string, min = 1): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UserError(`${flag}: expected an integer >= ${min}, got "${value}"`);
  return n;
}
