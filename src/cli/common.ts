import { defaultSpecPath, loadSpec, specFromObject, type ClusterSpec } from '../config/index.js';
import { UserError } from '../errors.js';

/**
 * The spec a command runs on: `--config FILE`, or the packaged localhost ring,
 * resized to `--workers N` on 127.0.0.1 when that flag is given.
 */
export function resolveSpec(opts: { config?: string; workers?: number | string }): ClusterSpec {
  const spec = loadSpec(opts.config ?? defaultSpecPath());
  if (opts.workers === undefined) return spec;
  const n = Number(opts.workers);
  if (!Number.isInteger(n) || n < 1) throw new UserError(`--workers: expected a positive integer, got "${opts.workers}"`);
  if (opts.config) throw new UserError('--workers and --config are exclusive: the ring comes from one or the other');
  const { hosts: _hosts, ...rest } = spec;
  return specFromObject({ ...rest, hosts: [{ name: 'localhost', address: '127.0.0.1', slots: n }] }, `--workers ${n}`);
}

/** Parses an integer flag, naming it in the error. */
export function intFlag(value: unknown, flag: string, min = 1): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UserError(`${flag}: expected an integer >= ${min}, got "${value}"`);
  return n;
}
