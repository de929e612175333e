import type { JobTerm } from './job.js';

/**
 * The whole training job per host in the paper's setting (Liu, Zaharia, Abbeel
 * 2023, section 5: LLaMA models, full gradient checkpointing of both attention
 * and feedforward, blockwise attention and FFN, FSDP; the JAX code keeps fp32
 * attention logits). Each term is a count; docs/plan.md gives the reasons.
 *
 * Symbols: b batch, c = ceil(s/N) tokens per host, h hidden, L layers, V vocab.
 */

/** Activations in bfloat16, as Table 1 counts them. */
const ACT = 2;
/** Parameters, gradients and AdamW's two moments in float32: 16 bytes per parameter. */
const STATE_BYTES_PER_PARAM = 16;
/** Logits and their gradient in float32 for the loss. */
const LOGIT = 4;
/** The FFN's chunk: the JAX code's query chunk, 512 tokens. */
export const PAPER_FFN_CHUNK = 512;
/** LLaMA's tokenizer (Touvron et al. 2023). */
export const LLAMA_VOCAB = 32000;

export interface PaperJob {
  hidden: number;
  layers: number;
  vocab: number;
  batch: number;
  seqLen: number;
  hosts: number;
  /** Parameters, gradients and optimizer state sharded over the hosts (FSDP), or replicated. */
  fsdp: boolean;
}

/** LLaMA-like parameters: 4h^2 attention + 8h^2 FFN per layer, an untied embedding and head. */
export function paperParameters(j: Pick<PaperJob, 'hidden' | 'layers' | 'vocab'>): number {
  return 12 * j.hidden * j.hidden * j.layers + 2 * j.vocab * j.hidden;
}

export function paperTerms(j: PaperJob): JobTerm[] {
  const { hidden: h, layers: L, vocab: V, batch: b, hosts: N } = j;
  const c = Math.ceil(j.seqLen / N);
  const P = paperParameters(j);
  const shard = j.fsdp ? N : 1;
  const bch = b * c * h;
  // FSDP gathers a block's full fp32 weights before computing it and holds its full
  // gradient until the reduce-scatter; replicated state already holds them.
  const gathered = (weights: number): number => (j.fsdp && N > 1 ? 2 * 4 * weights : 0);
  return [
    {
      name: 'modelState',
      bytes: (STATE_BYTES_PER_PARAM * P) / shard,
      phase: 'always',
      count: `16 bytes x ${P} parameters (fp32 weights, gradients, AdamW m, v)${j.fsdp ? ` / ${N} hosts (FSDP)` : ', replicated'}`,
    },
    {
      name: 'checkpoints',
      bytes: ACT * (2 * L + 1) * bch,
      phase: 'always',
      count: '2bch per checkpoint: the inputs of every attention and every FFN block, and the final hidden state',
    },
    {
      name: 'attentionBackward',
      bytes: ACT * 15 * bch + gathered(4 * h * h),
      phase: 'attentionBackward',
      count: '30bch: recomputed norm, q, k, v, o; gradients in, dO, dq, dk, dv, dh; K, V, dK, dV arriving on the ring' +
        (j.fsdp && N > 1 ? '; the block\'s gathered 4h^2 weights and gradients in fp32' : ''),
    },
    {
      name: 'ffnBackward',
      bytes: ACT * (2 * bch + 2 * b * Math.min(c, PAPER_FFN_CHUNK) * 4 * h) + gathered(8 * h * h),
      phase: 'ffnBackward',
      count: '4bch: recomputed norm and its gradient; the 4h-wide hidden of one 512-token chunk and its gradient' +
        (j.fsdp && N > 1 ? '; the block\'s gathered 8h^2 weights and gradients in fp32' : ''),
    },
    {
      name: 'lossHead',
      bytes: 2 * LOGIT * b * c * V + gathered(V * h),
      phase: 'lossHead',
      count: '8bcV: fp32 logits of the shard and their gradient' + (j.fsdp && N > 1 ? '; the head\'s gathered weights and gradient' : ''),
    },
  ];
}
