import type { Command } from 'commander';
import { defaultSpecPath, loadSpec, specFromObject, type ClusterSpec } from '../config/index.js';
import { UserError } from '../errors.js';

/**
 * The spec a command runs on: `--config FILE`, or the packaged localhost ring,
 * resized to `--workers N` on 127.0.0.1 when that flag is given.
 */
export function resolveSpec(opts: { config?: string; workers?: number | string; backend?: string; kernel?: string }): ClusterSpec {
  let spec = loadSpec(opts.config ?? defaultSpecPath());
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

/** The flags every ring command shares: where the ring is, and what computes. */
export function ringOptions(cmd: Command, opts: { workers?: boolean } = {}): Command {
  cmd.option('--config <file>', 'cluster spec (YAML); default: the localhost ring of configs/localhost.yaml');
  if (opts.workers) cmd.option('--workers <n>', 'a ring of N local workers instead of the spec\'s hosts');
  return cmd
    .option('--backend <name>', 'tfjs backend: auto, tensorflow-gpu, tensorflow, wasm, cpu (overrides the spec)')
    .option('--kernel <name>', 'attention kernel: auto, native, tfjs, reference (overrides the spec)');
}

/** Parses an integer flag, naming it in the error. */
export function intFlag(value: unknown, flag: string, min = 1): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UserError(`${flag}: expected an integer >= ${min}, got "${value}"`);
  return n;
}
