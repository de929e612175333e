import { Command, type CommanderError } from 'commander';
import { loadSpec, parseSize, worldSize } from '../config/index.js';
import { UserError } from '../errors.js';
import type { DeviceSpec, ModelShape } from '../plan/model.js';
import { DEVICE_NAMES, MODEL_NAMES, resolveDevice, resolveModel } from '../plan/presets.js';
import { formatPlan, planJson, planReport } from '../plan/report.js';

interface PlanOptions {
  seqLen: string;
  config?: string;
  model?: string;
  hidden?: string;
  layers?: string;
  heads?: string;
  batch: string;
  device?: string;
  tflops?: string;
  linkGbps?: string;
  memoryGb?: string;
  hosts?: string;
  json?: boolean;
}

function positiveNumber(text: string, what: string): number {
  const v = Number(text.trim());
  if (text.trim() === '' || !Number.isFinite(v) || v <= 0) throw new UserError(`${what}: expected a positive number, got ${JSON.stringify(text)}`);
  return v;
}

/** --model with optional overrides, or a custom shape from --hidden and --layers. */
function resolveShape(o: PlanOptions): ModelShape & { name: string } {
  const base = o.model !== undefined ? resolveModel(o.model) : undefined;
  if (!base && (o.hidden === undefined || o.layers === undefined)) {
    throw new UserError(`give --model (${MODEL_NAMES.join(', ')}) or both --hidden and --layers`);
  }
  const hidden = o.hidden !== undefined ? parseSize(o.hidden, '--hidden') : base!.hidden;
  const layers = o.layers !== undefined ? parseSize(o.layers, '--layers') : base!.layers;
  // Heads only enter vanilla attention's s x s scores; 128-dim heads are the common default.
  const heads = o.heads !== undefined ? parseSize(o.heads, '--heads') : base && o.hidden === undefined ? base.heads : Math.max(1, Math.round(hidden / 128));
  if (heads > hidden) throw new UserError(`--heads ${heads} exceeds the hidden size ${hidden}`);
  const custom = o.hidden !== undefined || o.layers !== undefined || o.heads !== undefined;
  const name = base ? (custom ? `${base.name} (modified)` : base.name) : 'custom';
  return { name, hidden, layers, heads };
}

/** --device with optional overrides, or a custom device from all three figures. */
function resolveDeviceSpec(o: PlanOptions): DeviceSpec & { name: string; source?: string } {
  const base = o.device !== undefined ? resolveDevice(o.device) : undefined;
  if (!base && (o.tflops === undefined || o.linkGbps === undefined || o.memoryGb === undefined)) {
    throw new UserError(`give --device (${DEVICE_NAMES.join(', ')}) or all of --tflops, --link-gbps and --memory-gb`);
  }
  const tflops = o.tflops !== undefined ? positiveNumber(o.tflops, '--tflops') : base!.tflops;
  const linkGBps = o.linkGbps !== undefined ? positiveNumber(o.linkGbps, '--link-gbps') : base!.linkGBps;
  const memoryGB = o.memoryGb !== undefined ? positiveNumber(o.memoryGb, '--memory-gb') : base!.memoryGB;
  const custom = o.tflops !== undefined || o.linkGbps !== undefined || o.memoryGb !== undefined;
  if (!base) return { name: 'custom', tflops, linkGBps, memoryGB };
  return custom ? { name: `${base.name} (modified)`, tflops, linkGBps, memoryGB } : base;
}

function resolveHosts(o: PlanOptions): number {
  const flag = o.hosts !== undefined ? parseSize(o.hosts, '--hosts') : undefined;
  if (o.config === undefined) return flag ?? 1;
  const workers = worldSize(loadSpec(o.config));
  if (flag !== undefined && flag !== workers) {
    throw new UserError(`--hosts ${flag} disagrees with the ${workers} ring workers of ${o.config}; drop one of them`);
  }
  return workers;
}

export function planCommand(): Command {
  const cmd = new Command('plan');
  cmd
    .description(
      "predict memory per device, minimal block size, maximum context and overlap from the Ring Attention paper's analytic model",
    )
    .requiredOption('--seq-len <size>', 'total sequence length in tokens (K/M/G are powers of two: 8M = 8388608)')
    .option('--config <file>', 'take the number of hosts from a cluster spec (its ring workers)')
    .option('--model <preset>', `model shape: ${MODEL_NAMES.join(', ')}`)
    .option('--hidden <n>', 'hidden size (overrides the preset)')
    .option('--layers <n>', 'number of layers (overrides the preset)')
    .option('--heads <n>', 'attention heads (default: the preset, else hidden/128)')
    .option('--batch <n>', 'sequences per step', '1')
    .option('--device <preset>', `host: ${DEVICE_NAMES.join(', ')}`)
    .option('--tflops <x>', 'dense bf16 TFLOP/s of one host (overrides the preset)')
    .option('--link-gbps <x>', 'one-way GB/s to a ring neighbour (overrides the preset)')
    .option('--memory-gb <x>', 'memory per host in GB (overrides the preset)')
    .option('--hosts <n>', 'hosts in the ring (default: from --config, else 1)')
    .option('--json', 'print the plan as JSON (bytes, tokens, FLOPs, seconds)')
    // Commander's own parse errors become UserErrors, reported once by the top-level handler.
    .configureOutput({ outputError: () => {} })
    .exitOverride((err: CommanderError) => {
      if (err.exitCode === 0) return; // --help: commander goes on to exit 0 as usual
      throw new UserError(err.message.replace(/^error: /, ''));
    })
    .action(function (this: Command, o: PlanOptions) {
      const seqLen = parseSize(o.seqLen, '--seq-len');
      const batch = parseSize(o.batch, '--batch');
      const model = resolveShape(o);
      const device = resolveDeviceSpec(o);
      const hosts = resolveHosts(o);
      if (hosts > seqLen) throw new UserError(`--seq-len ${seqLen} gives some of the ${hosts} hosts no tokens`);
      const report = planReport({ model, device, batch, seqLen, hosts });
      const write = this.configureOutput().writeOut ?? ((s: string) => process.stdout.write(s));
      write(o.json ? planJson(report) + '\n' : formatPlan(report));
    });
  return cmd;
}
