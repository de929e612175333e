import { Command, type CommanderError } from 'commander';
import { checkLayout } from '../attention/layout.js';
import { statSync } from 'node:fs';
import { DEFAULT_CORPUS_MAX_BYTES, resolveDataPaths } from '../train/corpus.js';
import { loadSpec, parseSize, rankTable, workerThreads, worldSize, type ClusterSpec } from '../config/index.js';
import { UserError } from '../errors.js';
import type { DeviceSpec, ModelShape } from '../plan/model.js';
import { LLAMA_VOCAB } from '../plan/paper-memory.js';
import { DEVICE_NAMES, MODEL_NAMES, THIS_MACHINE, machineFilePath, machineRuntimeBytes, resolveDevice, resolveModel } from '../plan/presets.js';
import { formatPlan, planJson, planReport } from '../plan/report.js';
import type { JobSetting } from '../plan/setting.js';
import { resolveLayout } from '../train/loop.js';

interface PlanOptions {
  seqLen?: string;
  config?: string;
  model?: string;
  hidden?: string;
  layers?: string;
  heads?: string;
  batch?: string;
  device?: string;
  tflops?: string;
  linkGbps?: string;
  memoryGb?: string;
  hosts?: string;
  fsdp?: boolean;
  engineMaxBytes?: string;
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

function resolveHosts(o: PlanOptions, spec: ClusterSpec | undefined): number {
  const flag = o.hosts !== undefined ? parseSize(o.hosts, '--hosts') : undefined;
  if (spec === undefined) return flag ?? 1;
  const workers = worldSize(spec);
  if (flag !== undefined && flag !== workers) {
    throw new UserError(`--hosts ${flag} disagrees with the ${workers} ring workers of ${o.config}; drop one of them`);
  }
  return workers;
}

/** --config without a model flag plans that spec's own training run on our engine. */
function isEngineRun(o: PlanOptions): boolean {
  return o.config !== undefined && o.model === undefined && o.hidden === undefined && o.layers === undefined && o.heads === undefined;
}

interface ResolvedPlan {
  model: ModelShape & { name: string };
  seqLen: number;
  batch: number;
  job: JobSetting;
}

/** Our engine's run of the spec's model: sequence and batch from its train section unless given. */
function engineRun(o: PlanOptions, spec: ClusterSpec): ResolvedPlan {
  if (o.device?.trim().toLowerCase() !== THIS_MACHINE) {
    throw new UserError(`--config without --model plans our engine's run, which needs this machine's runtime measurements: use --device ${THIS_MACHINE}`);
  }
  if (o.fsdp) throw new UserError('--fsdp: our engine replicates parameters, gradients and optimizer state on every worker; --fsdp applies to a --model preset only');
  if (spec.engine === 'tfjs') throw new UserError(`--config: plan counts the native engine's buffers, and ${o.config} asks for engine: tfjs`);
  const seqLen = o.seqLen !== undefined ? parseSize(o.seqLen, '--seq-len') : spec.train.seqLen;
  const layout = resolveLayout(spec.attention);
  const workers = worldSize(spec);
  checkLayout(layout, seqLen, workers);
  const threads = Math.max(...rankTable(spec).map((_, r) => workerThreads(spec, r)));
  const m = spec.model;
  return {
    model: { name: spec.name, hidden: m.dModel, layers: m.layers, heads: m.heads },
    seqLen,
    // The engine runs a batch's windows one after another through the same buffers.
    batch: o.batch !== undefined ? parseSize(o.batch, '--batch') : spec.train.batch,
    job: {
      kind: 'engine',
      engine: { model: m, worldSize: workers, layout, threads, runtimeBytes: machineRuntimeBytes(machineFilePath()), corpusBytes: corpusBytesOf(spec), shmChannels: shmChannelsOf(spec) },
      ...(o.engineMaxBytes !== undefined ? { engineMaxBytes: parseSize(o.engineMaxBytes, '--engine-max-bytes') } : {}),
    },
  };
}

/** The most shared-memory channels one worker maps (worker.ts opens one per same-host neighbour under auto and shm). */
function shmChannelsOf(spec: ClusterSpec): { count: number; bytes: number } {
  const table = rankTable(spec);
  const n = table.length;
  if (n < 2 || (spec.ring.transport !== 'auto' && spec.ring.transport !== 'shm')) return { count: 0, bytes: spec.ring.shmBytes };
  const same = (a: number, b: number) => table[a].host === table[b].host;
  const count = Math.max(...table.map((_, r) => Number(same(r, (r + 1) % n)) + Number(same(r, (r + n - 1) % n))));
  return { count, bytes: spec.ring.shmBytes };
}

/** What the run's text takes in every worker: the joined files, or the built-in corpus at its cap. */
function corpusBytesOf(spec: ClusterSpec): number {
  if (spec.data.kind !== 'text') return 0;
  if (spec.data.paths.length === 0) return DEFAULT_CORPUS_MAX_BYTES;
  const files = resolveDataPaths(spec.data.paths);
  return files.reduce((n, f) => n + statSync(f).size, 0) + Math.max(0, files.length - 1);
}

function paperRun(o: PlanOptions): ResolvedPlan {
  if (o.seqLen === undefined) throw new UserError("required option '--seq-len <size>' not specified (only --config without --model takes it from the spec)");
  if (o.engineMaxBytes !== undefined) throw new UserError("--engine-max-bytes: our engine's memory cap applies to a spec's own run (--config without --model)");
  const model = resolveShape(o);
  return {
    model,
    seqLen: parseSize(o.seqLen, '--seq-len'),
    batch: o.batch !== undefined ? parseSize(o.batch, '--batch') : 1,
    job: { kind: 'paper', paper: { hidden: model.hidden, layers: model.layers, vocab: LLAMA_VOCAB, fsdp: Boolean(o.fsdp) } },
  };
}

export function planCommand(): Command {
  const cmd = new Command('plan');
  cmd
    .description(
      "predict a training step's whole memory per host and the longest context that fits, plus the Ring Attention paper's one-layer memory, minimal block size and overlap",
    )
    .option('--seq-len <size>', 'total sequence length in tokens (K/M/G are powers of two: 8M = 8388608); default with --config alone: train.seqLen')
    .option('--config <file>', "a cluster spec: alone, plan that spec's training run on our engine; with --model, only its number of ring workers")
    .option('--model <preset>', `model shape: ${MODEL_NAMES.join(', ')}`)
    .option('--hidden <n>', 'hidden size (overrides the preset)')
    .option('--layers <n>', 'number of layers (overrides the preset)')
    .option('--heads <n>', 'attention heads (default: the preset, else hidden/128)')
    .option('--batch <n>', 'sequences per step (default 1; with --config alone train.batch)')
    .option('--device <preset>', `host: ${DEVICE_NAMES.join(', ')}`)
    .option('--tflops <x>', 'dense bf16 TFLOP/s of one host (overrides the preset)')
    .option('--link-gbps <x>', 'one-way GB/s to a ring neighbour (overrides the preset)')
    .option('--memory-gb <x>', 'memory per host in GB (overrides the preset)')
    .option('--hosts <n>', 'hosts in the ring (default: from --config, else 1)')
    .option('--fsdp', 'shard parameters, gradients and optimizer state over the hosts, as FSDP does (paper setting; default replicated)')
    .option('--engine-max-bytes <size>', "our engine's memory cap per worker (RINGATTN_ENGINE_MAX_BYTES): also print the longest context whose engine buffers fit it (--config alone)")
    .option('--json', 'print the plan as JSON (bytes, tokens, FLOPs, seconds)')
    // Commander's own parse errors become UserErrors, reported once by the top-level handler.
    .configureOutput({ outputError: () => {} })
    .exitOverride((err: CommanderError) => {
      if (err.exitCode === 0) return; // --help: commander goes on to exit 0 as usual
      throw new UserError(err.message.replace(/^error: /, ''));
    })
    .action(function (this: Command, o: PlanOptions) {
      const spec = o.config !== undefined ? loadSpec(o.config) : undefined;
      const device = resolveDeviceSpec(o);
      const { model, seqLen, batch, job } = isEngineRun(o) ? engineRun(o, spec!) : paperRun(o);
      const hosts = resolveHosts(o, spec);
      if (hosts > seqLen) throw new UserError(`--seq-len ${seqLen} gives some of the ${hosts} hosts no tokens`);
      const report = planReport({ model, device, batch, seqLen, hosts, job });
      const write = this.configureOutput().writeOut ?? ((s: string) => process.stdout.write(s));
      write(o.json ? planJson(report) + '\n' : formatPlan(report));
    });
  return cmd;
}
