import { formatSize } from '../config/size.js';
import {
  BYTES_PER_ELEMENT,
  MEMORY_EFFICIENT_CHUNK,
  MIN_SEQ_BLOCKS,
  SCHEMES,
  SCHEME_FORMULAS,
  SCHEME_LABELS,
  layerMemory,
  maxContext,
  memoryBytes,
  minBlockTokens,
  minSeqPerHostTokens,
  modelFlops,
  parameterCount,
  ringStep,
  stepTime,
  TRAINING_FLOPS_FACTOR,
  type DeviceSpec,
  type ModelShape,
  type RingStep,
  type Scheme,
} from './model.js';
import { jobReport, type JobReport, type JobSetting } from './setting.js';

export interface PlanInput {
  model: ModelShape & { name: string };
  device: DeviceSpec & { name: string; source?: string };
  batch: number;
  seqLen: number;
  hosts: number;
  /** Which whole-job count applies: our engine's run, or the paper's setting. */
  job: JobSetting;
}

export interface SchemeReport {
  formula: string;
  attentionBytes: number;
  ffnBytes: number;
  peakBytes: number;
  fits: boolean;
  /** Longest sequence whose one-layer peak fits a host's memory, for the hosts given. */
  maxContextTokens: number;
}

/** Everything `ringattn plan --json` prints. Bytes, tokens, FLOPs and seconds. */
export interface PlanReport {
  model: PlanInput['model'] & { parameters: number };
  device: PlanInput['device'];
  batch: number;
  seqLen: number;
  hosts: number;
  tokensPerHost: number;
  /** The whole training step per worker: every term, its peak, and the longest context that fits. */
  job: JobReport;
  bytesPerElement: number;
  memoryEfficientChunk: number;
  memory: Record<Scheme, SchemeReport>;
  minBlockTokens: number;
  minSeqPerHostTokens: number;
  ringStep: RingStep;
  modelFlops: number;
  trainingFlops: number;
  forwardS: number;
  trainingStepS: number;
  exposedTransferS: number;
}

export function planReport(input: PlanInput): PlanReport {
  const { model, device, batch, seqLen, hosts, job } = input;
  const workload = { batch, seqLen, hidden: model.hidden, heads: model.heads, hosts };
  const budget = memoryBytes(device);
  const memory = {} as Record<Scheme, SchemeReport>;
  for (const scheme of SCHEMES) {
    const m = layerMemory(scheme, workload);
    memory[scheme] = {
      formula: SCHEME_FORMULAS[scheme].peak,
      attentionBytes: m.attention,
      ffnBytes: m.ffn,
      peakBytes: m.peak,
      fits: m.peak <= budget,
      maxContextTokens: maxContext(scheme, workload, budget),
    };
  }
  const step = ringStep(workload, device);
  const time = stepTime(workload, model.layers, device);
  const flops = modelFlops(batch, seqLen, model.hidden, model.layers);
  return {
    model: { ...model, parameters: parameterCount(model.hidden, model.layers) },
    device,
    batch,
    seqLen,
    hosts,
    tokensPerHost: step.blockTokens,
    job: jobReport(job, { batch, seqLen, hosts }, budget),
    bytesPerElement: BYTES_PER_ELEMENT,
    memoryEfficientChunk: MEMORY_EFFICIENT_CHUNK,
    memory,
    minBlockTokens: minBlockTokens(device),
    minSeqPerHostTokens: minSeqPerHostTokens(device),
    ringStep: step,
    modelFlops: flops,
    trainingFlops: TRAINING_FLOPS_FACTOR * flops,
    forwardS: time.forwardS,
    trainingStepS: time.trainingS,
    exposedTransferS: time.exposedS,
  };
}

/** JSON has no Infinity; a one-host ring's compute/transfer ratio becomes null. */
export function planJson(report: PlanReport): string {
  return JSON.stringify(report, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
}

const int = (n: number): string => Math.round(n).toLocaleString('en-US');

/** Thousands of tokens with one decimal, the way the paper's Table 2 prints them. */
export function thousands(tokens: number): string {
  return `${(tokens / 1000).toFixed(1)}k`;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB', 'PB', 'EB'];
  let v = bytes;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}

export function formatSeconds(s: number): string {
  if (s === 0) return '0 s';
  if (s < 1e-3) return `${(s * 1e6).toFixed(1)} us`;
  if (s < 1) return `${(s * 1e3).toFixed(2)} ms`;
  if (s < 3600) return `${s.toFixed(2)} s`;
  return `${(s / 3600).toFixed(2)} h`;
}

const flopsText = (f: number): string => `${f.toExponential(2)} FLOPs`;

/** A token count as the user would type it when it is a power-of-two multiple. */
function tokens(n: number): string {
  const short = formatSize(n);
  return short === String(n) ? int(n) : `${int(n)} (${short})`;
}

function table(rows: string[][], rightAligned: boolean[]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) =>
    r
      .map((cell, c) => (rightAligned[c] ? cell.padStart(widths[c]) : cell.padEnd(widths[c])))
      .join('  ')
      .trimEnd(),
  );
}

const JOB_TITLES: Record<JobReport['kind'], string> = {
  engine: "Whole training step per worker: our engine's run (float32, native engine)",
  paper: "Whole training step per host: the paper's setting (bf16 activations, full checkpointing, blockwise attention + FFN)",
};

function formatJob(j: JobReport, hosts: number): string[] {
  const out: string[] = [];
  const state = j.kind === 'paper' ? (j.fsdp ? '; parameters, gradients, optimizer state sharded (FSDP)' : '; parameters, gradients, optimizer state replicated') : '';
  out.push(JOB_TITLES[j.kind] + state);
  const rows: string[][] = [['term', 'when', 'bytes', 'count']];
  for (const t of j.terms) rows.push([t.name, t.phase, formatBytes(t.bytes), t.count]);
  out.push(...table(rows, [false, false, true, false]).map((l) => `  ${l}`));
  out.push(`  peak per worker      ${formatBytes(j.peakBytesPerWorker)} (${int(j.peakBytesPerWorker)} bytes)` +
    (j.peakPhase ? `, during ${j.peakPhase}` : '') + `; ${j.fits ? 'fits' : 'does not fit'} in ${formatBytes(j.budgetBytes)}`);
  const where = `${hosts} host${hosts === 1 ? '' : 's'}`;
  out.push(
    j.maxContextTokens === 0
      ? `  max context, ${where}: none (not even the smallest sequence fits)`
      : `  max context, ${where}: ${j.maxContextPow2 === 0 ? 'no power of two' : tokens(j.maxContextPow2)} (largest power of two); exactly ${int(j.maxContextTokens)} tokens`,
  );
  const c = j.engineCap;
  if (c) {
    out.push(`  engine buffers       ${formatBytes(c.engineBytes)} of an engine cap of ${formatBytes(c.capBytes)} per worker (${c.fits ? 'fits' : 'does not fit'})`);
    out.push(
      c.maxContextTokens === 0
        ? `  max context under the engine cap, ${where}: none`
        : `  max context under the engine cap, ${where}: ${c.maxContextPow2 === 0 ? 'no power of two' : tokens(c.maxContextPow2)} (largest power of two); exactly ${int(c.maxContextTokens)} tokens`,
    );
  }
  return out;
}

export function formatPlan(r: PlanReport): string {
  const { model, device, ringStep: step } = r;
  const out: string[] = [];
  out.push(
    `model   ${model.name}: hidden ${model.hidden}, ${model.layers} layers, ${model.heads} heads ` +
      `(~${(model.parameters / 1e9).toFixed(2)}B non-embedding parameters), batch ${r.batch}`,
  );
  out.push(
    `device  ${r.hosts} x ${device.name}: ${device.tflops} TFLOP/s, ${device.linkGBps} GB/s one-way link, ` +
      `${device.memoryGB} GB per host` + (device.source ? ` [${device.source}]` : ''),
  );
  out.push(`seq     ${tokens(r.seqLen)} tokens, ${int(r.tokensPerHost)} per host (c = s/N)`);
  out.push('');
  out.push(...formatJob(r.job, r.hosts));
  out.push('');
  out.push(`Activation memory per device, one layer (paper Table 1, bf16 bytes; memory-efficient chunk c = ${r.memoryEfficientChunk})`);
  const rows: string[][] = [['scheme', 'formula', 'attention', 'FFN', 'peak', 'fits', `max context, ${r.hosts} host${r.hosts === 1 ? '' : 's'}`]];
  for (const scheme of SCHEMES) {
    const m = r.memory[scheme];
    rows.push([
      SCHEME_LABELS[scheme],
      m.formula,
      formatBytes(m.attentionBytes),
      formatBytes(m.ffnBytes),
      formatBytes(m.peakBytes),
      m.fits ? 'yes' : 'no',
      m.maxContextTokens === 0 ? 'none' : tokens(m.maxContextTokens),
    ]);
  }
  out.push(...table(rows, [false, false, true, true, true, false, true]).map((l) => `  ${l}`));
  out.push('  One layer\'s activations only, as the paper\'s Table 1 counts them; the whole job is above.');
  out.push('  Only ring attention splits the sequence over hosts.');
  out.push('');
  out.push('Overlap (per ring step: 4bhc^2 FLOPs of compute against 4bch bytes sent)');
  const overlap: string[][] = [
    ['minimal block c >= F/B', `${int(r.minBlockTokens)} tokens (${thousands(r.minBlockTokens)})`],
    [`minimal sequence per host ${MIN_SEQ_BLOCKS}c`, `${int(r.minSeqPerHostTokens)} tokens (${thousands(r.minSeqPerHostTokens)})`],
    ['compute per ring step', `${formatSeconds(step.computeS)} (${flopsText(step.flops)})`],
    ['transfer per ring step', r.hosts === 1 ? '0 s (one host: nothing to send)' : `${formatSeconds(step.transferS)} (${formatBytes(step.bytes)})`],
    [
      'communication hidden',
      r.hosts === 1
        ? 'yes (one host)'
        : step.hidden
          ? `yes (compute/transfer ${step.computeToTransfer.toFixed(2)})`
          : `no (compute/transfer ${step.computeToTransfer.toFixed(2)}; needs ${int(r.minBlockTokens)} tokens per host)`,
    ],
  ];
  out.push(...table(overlap, [false, false]).map((l) => `  ${l}`));
  out.push('');
  out.push('Time at peak FLOP/s (a lower bound)');
  const time: string[][] = [
    ['model FLOPs per batch (forward)', flopsText(r.modelFlops)],
    ['ring step (one layer)', formatSeconds(step.stepS)],
    ['forward pass', formatSeconds(r.forwardS)],
    ['training step (fwd + bwd)', `${formatSeconds(r.trainingStepS)}` + (r.exposedTransferS > 0 ? `, of which ${formatSeconds(r.exposedTransferS)} waiting on transfers` : '')],
  ];
  out.push(...table(time, [false, false]).map((l) => `  ${l}`));
  out.push('');
  out.push('k = 1000 tokens in this report (as in the paper); --seq-len suffixes K/M/G are powers of two.');
  return out.join('\n') + '\n';
}
