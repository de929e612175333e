import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { UserError } from '../errors.js';
import type { DeviceSpec, ModelShape } from './model.js';

export interface DevicePreset extends DeviceSpec {
  name: string;
  source: string;
}

export interface ModelPreset extends ModelShape {
  name: string;
  source: string;
}

/**
 * Per-host figures. FLOP/s are dense bf16 peaks; link figures are one-way bandwidth
 * to one ring neighbour, which is what the paper's Table 2 uses. docs/plan.md
 * lists the same table with sources.
 */
export const DEVICE_PRESETS: Readonly<Record<string, DevicePreset>> = {
  'a100-nvlink': { name: 'a100-nvlink', tflops: 312, memoryGB: 80, linkGBps: 300, source: 'Ring Attention paper, Table 2' },
  'a100-ib': { name: 'a100-ib', tflops: 312, memoryGB: 80, linkGBps: 12.5, source: 'Ring Attention paper, Table 2' },
  // Datasheet: 1979 TFLOP/s bf16 "with sparsity", i.e. 989 dense; NVLink 4 is 900 GB/s
  // counting both directions, so 450 GB/s each way.
  'h100-nvlink': { name: 'h100-nvlink', tflops: 989, memoryGB: 80, linkGBps: 450, source: 'NVIDIA H100 SXM datasheet' },
  // One NDR InfiniBand port per GPU: 400 Gb/s = 50 GB/s each way.
  'h100-ib': { name: 'h100-ib', tflops: 989, memoryGB: 80, linkGBps: 50, source: 'NVIDIA H100 SXM datasheet; NDR 400 Gb/s' },
  'tpu-v3': { name: 'tpu-v3', tflops: 123, memoryGB: 16, linkGBps: 112, source: 'Ring Attention paper, Table 2' },
  'tpu-v4': { name: 'tpu-v4', tflops: 275, memoryGB: 32, linkGBps: 268, source: 'Ring Attention paper, Table 2' },
  'tpu-v5e': { name: 'tpu-v5e', tflops: 196, memoryGB: 16, linkGBps: 186, source: 'Ring Attention paper, Table 2' },
};

/** The five devices of the paper's Table 2, with the block sizes it prints (thousands of tokens). */
export const PAPER_TABLE_2: ReadonlyArray<{ device: string; minBlockK: number; minSeqK: number }> = [
  { device: 'a100-nvlink', minBlockK: 1.0, minSeqK: 6.2 },
  { device: 'a100-ib', minBlockK: 24.5, minSeqK: 149.5 },
  { device: 'tpu-v3', minBlockK: 1.1, minSeqK: 6.6 },
  { device: 'tpu-v4', minBlockK: 1.0, minSeqK: 6.2 },
  { device: 'tpu-v5e', minBlockK: 1.1, minSeqK: 6.3 },
];

/**
 * The paper's Table 3: maximum context (thousands of tokens, K = 1024) in
 * end-to-end training with FSDP, Ring Attention. `hosts` is the number of
 * devices holding a share of the sequence: a TPU v3 core (16 GB) is one JAX
 * device, v4 chips run their two cores as one (v4-1024 = 512 chips of 32 GB),
 * v5e-256 is 256 chips of 16 GB. `confirmed`: the row is also in
 * shared/reference/ring-attention.md; the others are as remembered and could not
 * be checked against the paper's text here (docs/plan.md).
 */
export const PAPER_TABLE_3: ReadonlyArray<{ device: string; hosts: number; model: string; contextK: number; confirmed: boolean }> = [
  { device: 'a100-nvlink', hosts: 8, model: '3b', contextK: 512, confirmed: false },
  { device: 'a100-nvlink', hosts: 8, model: '7b', contextK: 256, confirmed: true },
  { device: 'a100-nvlink', hosts: 8, model: '13b', contextK: 128, confirmed: false },
  { device: 'a100-ib', hosts: 32, model: '7b', contextK: 4096, confirmed: true },
  { device: 'a100-ib', hosts: 32, model: '13b', contextK: 2048, confirmed: false },
  { device: 'tpu-v3', hosts: 512, model: '7b', contextK: 2048, confirmed: false },
  { device: 'tpu-v3', hosts: 512, model: '13b', contextK: 1024, confirmed: false },
  { device: 'tpu-v4', hosts: 512, model: '3b', contextK: 16384, confirmed: false },
  { device: 'tpu-v4', hosts: 512, model: '7b', contextK: 8192, confirmed: false },
  { device: 'tpu-v4', hosts: 512, model: '13b', contextK: 4096, confirmed: false },
  { device: 'tpu-v4', hosts: 512, model: '30b', contextK: 2048, confirmed: false },
  { device: 'tpu-v5e', hosts: 256, model: '3b', contextK: 4096, confirmed: false },
  { device: 'tpu-v5e', hosts: 256, model: '7b', contextK: 2048, confirmed: false },
];

export const THIS_MACHINE = 'this-machine';

/**
 * LLaMA-like shapes (non-embedding parameters ~ 12·h^2·layers). LLaMA-1 has no
 * 1B or 3B model; those take GPT-3's 1.3B and 2.7B shapes.
 */
export const MODEL_PRESETS: Readonly<Record<string, ModelPreset>> = {
  '1b': { name: '1b', hidden: 2048, layers: 24, heads: 16, source: 'GPT-3 XL shape (Brown et al. 2020, Table 2.1), 128-dim heads' },
  '3b': { name: '3b', hidden: 2560, layers: 32, heads: 32, source: 'GPT-3 2.7B shape (Brown et al. 2020, Table 2.1)' },
  '7b': { name: '7b', hidden: 4096, layers: 32, heads: 32, source: 'LLaMA 7B (Touvron et al. 2023, Table 2)' },
  '13b': { name: '13b', hidden: 5120, layers: 40, heads: 40, source: 'LLaMA 13B (Touvron et al. 2023, Table 2)' },
  '30b': { name: '30b', hidden: 6656, layers: 60, heads: 52, source: 'LLaMA 33B (Touvron et al. 2023, Table 2)' },
  '65b': { name: '65b', hidden: 8192, layers: 80, heads: 64, source: 'LLaMA 65B (Touvron et al. 2023, Table 2)' },
};

export const DEVICE_NAMES: readonly string[] = [...Object.keys(DEVICE_PRESETS), THIS_MACHINE];
export const MODEL_NAMES: readonly string[] = Object.keys(MODEL_PRESETS);

/** What `ringattn doctor` records about this machine. */
export interface MachineMeasurements {
  tflops: number;
  linkGBps: number;
  memoryGB: number;
  measuredAt: string;
  /**
   * RSS of a worker with engine, kernel and ZeroMQ loaded, before the model
   * (bytes). Absent in files written before doctor measured it.
   */
  runtimeBytes?: number;
}

export function writeMachineFile(m: MachineMeasurements, path: string = machineFilePath()): string {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(m, null, 2)}\n`);
  return path;
}

export function machineFilePath(env: NodeJS.ProcessEnv = process.env): string {
  const override = env.RINGATTN_MACHINE_FILE;
  return override && override.trim() !== '' ? override : join(homedir(), '.cache', 'ringattn', 'machine.json');
}

export function readMachineFile(path: string = machineFilePath()): MachineMeasurements {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new UserError(`no measurements of this machine at ${path}: run \`ringattn doctor\` first`);
    }
    throw new UserError(`cannot read ${path}: ${(e as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new UserError(`${path} is not valid JSON: run \`ringattn doctor\` again to rewrite it`);
  }
  if (typeof data !== 'object' || data === null) {
    throw new UserError(`${path} should hold an object {tflops, linkGBps, memoryGB, measuredAt}: run \`ringattn doctor\` again`);
  }
  const rec = data as Record<string, unknown>;
  for (const key of ['tflops', 'linkGBps', 'memoryGB'] as const) {
    const v = rec[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new UserError(`${path}: ${key} should be a positive number, got ${JSON.stringify(v)}: run \`ringattn doctor\` again`);
    }
  }
  const runtime = rec.runtimeBytes;
  if (runtime !== undefined && !(typeof runtime === 'number' && Number.isFinite(runtime) && runtime > 0)) {
    throw new UserError(`${path}: runtimeBytes should be a positive number, got ${JSON.stringify(runtime)}: run \`ringattn doctor\` again`);
  }
  return {
    tflops: rec.tflops as number,
    linkGBps: rec.linkGBps as number,
    memoryGB: rec.memoryGB as number,
    measuredAt: typeof rec.measuredAt === 'string' ? rec.measuredAt : 'unknown',
    ...(runtime !== undefined ? { runtimeBytes: runtime } : {}),
  };
}

/** The runtime's fixed overhead from the machine file; files from an older doctor lack it. */
export function machineRuntimeBytes(path: string = machineFilePath()): number {
  const m = readMachineFile(path);
  if (m.runtimeBytes === undefined) {
    throw new UserError(`${path} has no runtimeBytes (written by an older ringattn doctor): run \`ringattn doctor\` again to measure the runtime's memory`);
  }
  return m.runtimeBytes;
}

export function resolveDevice(name: string, env: NodeJS.ProcessEnv = process.env): DevicePreset {
  const key = name.trim().toLowerCase();
  if (key === THIS_MACHINE) {
    const path = machineFilePath(env);
    const m = readMachineFile(path);
    return {
      name: THIS_MACHINE,
      tflops: m.tflops,
      linkGBps: m.linkGBps,
      memoryGB: m.memoryGB,
      source: `measured by ringattn doctor at ${m.measuredAt} (${path})`,
    };
  }
  const preset = DEVICE_PRESETS[key];
  if (!preset) throw new UserError(`--device: unknown preset "${name}"; choose one of ${DEVICE_NAMES.join(', ')}`);
  return preset;
}

export function resolveModel(name: string): ModelPreset {
  const key = name.trim().toLowerCase();
  const preset = MODEL_PRESETS[key];
  if (!preset) throw new UserError(`--model: unknown preset "${name}"; choose one of ${MODEL_NAMES.join(', ')}`);
  return preset;
}
