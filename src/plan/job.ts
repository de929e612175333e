/**
 * The whole training job's memory on one worker: a list of counted terms, each
 * alive for the whole step or only during one phase of it. The peak is what is
 * always alive plus the largest phase: buffers of different phases (the loss
 * head's logits, one layer's backward, the gradient all-reduce) are never alive
 * together, so adding them all would count memory twice.
 *
 * Two counts fill these terms: src/plan/engine-memory.ts (what our engine
 * allocates, float32) and src/plan/paper-memory.ts (the paper's setting).
 */

/** When a term's memory is alive. */
export type Phase = 'always' | 'attentionForward' | 'attentionBackward' | 'ffnBackward' | 'lossHead' | 'allReduce';

export interface JobTerm {
  /** A stable key, e.g. "adamState". */
  name: string;
  bytes: number;
  phase: Phase;
  /** The count in words, e.g. "2 x P floats (AdamW m, v)". */
  count: string;
  /** Held in the compute engine's own buffers, which its memory cap (RINGATTN_ENGINE_MAX_BYTES) counts. */
  engine?: boolean;
}

/** Bytes of the terms held in engine buffers: what an engine memory cap limits. */
export function engineBytes(terms: readonly JobTerm[]): number {
  return terms.filter((t) => t.engine).reduce((s, t) => s + t.bytes, 0);
}

export interface JobMemory {
  /** Bytes one worker holds at the peak of a training step: everything `always` plus the largest phase. */
  peakBytesPerWorker: number;
  /** The phase that sets the peak (null when only `always` terms exist). */
  peakPhase: Phase | null;
  terms: JobTerm[];
}

export function jobMemory(terms: JobTerm[]): JobMemory {
  const always = terms.filter((t) => t.phase === 'always').reduce((s, t) => s + t.bytes, 0);
  const byPhase = new Map<Phase, number>();
  for (const t of terms) if (t.phase !== 'always') byPhase.set(t.phase, (byPhase.get(t.phase) ?? 0) + t.bytes);
  let peakPhase: Phase | null = null;
  let phaseBytes = 0;
  for (const [phase, bytes] of byPhase) {
    if (peakPhase === null || bytes > phaseBytes) {
      peakPhase = phase;
      phaseBytes = bytes;
    }
  }
  return { peakBytesPerWorker: always + phaseBytes, peakPhase, terms };
}

export interface JobContext {
  /** Longest sequence (all hosts together) whose peak fits the budget, in whole multiples of `unit`; 0 if none. */
  maxContextTokens: number;
  /** The largest power of two that fits and is a multiple of `unit` (the paper's convention); 0 if none. */
  maxContextPow2: number;
}

/**
 * The longest sequence whose whole-job peak fits `budgetBytes`. Sequences are
 * searched in multiples of `unit` (the hosts, or our layout's quantum) because
 * every host holds the same share. The peak is non-decreasing in the sequence
 * length, so doubling then bisection finds the exact figure.
 */
export function jobMaxContext(peakAt: (seqLen: number) => number, budgetBytes: number, unit: number): JobContext {
  const fits = (k: number): boolean => peakAt(k * unit) <= budgetBytes;
  if (!fits(1)) return { maxContextTokens: 0, maxContextPow2: 0 };
  const cap = Math.floor(Number.MAX_SAFE_INTEGER / unit / 2);
  let lo = 1;
  let hi = 2;
  while (hi < cap && fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid;
  }
  const exact = lo * unit;
  // The peak grows with the sequence, so every multiple of unit up to exact fits too.
  let pow2 = 2 ** Math.floor(Math.log2(exact));
  if (pow2 > exact) pow2 /= 2;
  while (pow2 >= 1 && pow2 % unit !== 0) pow2 /= 2;
  return { maxContextTokens: exact, maxContextPow2: pow2 >= 1 ? pow2 : 0 };
}
