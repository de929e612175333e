import { parseSize } from '../config/size.js';
import { UserError } from '../errors.js';

/**
 * The compute engine: every op a transformer block needs, forward and backward,
 * on buffers the engine owns. The model (src/model/transformer.ts) is written
 * against this interface only; an engine decides where the buffers live and how
 * the ops run:
 *
 *   native  C++ addon (native/engine.cc): packed SGEMM, fused elementwise ops,
 *           the thread pool shared with the attention kernel, off the JS thread;
 *   tfjs    any tfjs backend (src/engine/tfjs.ts): the fallback, and the path
 *           for tfjs-node hosts.
 *
 * Ops are recorded in call order and run by `flush()`; a host-side read or
 * write is only valid around a flush (`read` flushes first). Arrays are
 * row-major; a matrix of `rows` x `cols` at a tensor's offset.
 *
 * The layer list, as in llm.c:
 *   embed / embedBackward              row gather of token embeddings; scatter-add
 *   norm / normBackward                RMSNorm or LayerNorm over the last axis
 *   matmul                             C (+)= op(A) op(B), every transpose combination
 *   rope                               rotary embedding from global positions (and its inverse)
 *   silu / siluBackward                the FFN's activation
 *   add                                residual adds
 *   crossEntropy                       softmax cross-entropy over a chunk of logits, loss and dlogits
 *   sumSquares, adamw                  gradient norm (for clipping) and the AdamW update
 */

/** A slice of a float32 buffer owned by an engine. */
export interface Tensor {
  readonly kind: 'f32';
  readonly id: number;
  readonly offset: number;
  readonly length: number;
}

/** A slice of an int32 buffer (token ids, targets) owned by an engine. */
export interface IntTensor {
  readonly kind: 'i32';
  readonly id: number;
  readonly offset: number;
  readonly length: number;
}

export type NormKind = 'rms' | 'layer';

export interface NormShape {
  kind: NormKind;
  rows: number;
  dim: number;
  eps: number;
}

export interface MatmulShape {
  /** C is m x n, op(A) is m x k, op(B) is k x n (A stored k x m when transA; B stored n x k when transB). */
  m: number;
  n: number;
  k: number;
  transA?: boolean;
  transB?: boolean;
  /** true: C += op(A) op(B); false: C = op(A) op(B). */
  accumulate?: boolean;
}

export interface RopeShape {
  rows: number;
  heads: number;
  headDim: number;
  /** The transpose (rotation by the opposite angle): rope's backward. */
  inverse?: boolean;
}

export interface AdamWArgs {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** lr * weightDecay for decayed tensors, 0 otherwise. */
  decay: number;
  /** 1 - beta^t for the update being made. */
  bc1: number;
  bc2: number;
  /** Gradients are multiplied by this first (global-norm clipping). */
  gradScale: number;
}

/** One query block against one KV block (src/kernels/types.ts has the layout and mask rules). */
export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  qLen: number;
  kvLen: number;
  causal: boolean;
  /** Sliding window W (src/kernels/types.ts); 0 or absent = none. */
  window?: number;
  /** Softmax scale, 1/sqrt(headDim) by convention. */
  scale: number;
}

/** Global token positions (and document ids) of the query and KV rows: the masks. */
export interface AttentionMask {
  qPos: IntTensor;
  kvPos: IntTensor;
  /** Both present or both null. */
  qSeg: IntTensor | null;
  kvSeg: IntTensor | null;
}

/**
 * Attention on the engine's own buffers, for engines whose memory is not the
 * host's (webgpu): ring attention keeps the query block, the running output
 * and the gradients on the device and moves only KV and dKV blocks through
 * the host. Layouts as in src/kernels/types.ts: q, o, dO, dq [qLen, heads,
 * headDim]; k, v, dk, dv [kvLen, kvHeads, headDim]; lse, delta [heads, qLen].
 * Recorded in order with the other ops, like them.
 */
export interface EngineAttention {
  /** o = 0, lse = -Infinity: the running result before the first KV block. */
  reset(s: AttentionShape, o: Tensor, lse: Tensor): void;
  /** Attention of q against one KV block, merged into the running o (normalised) and lse through the lse. */
  forward(s: AttentionShape, m: AttentionMask, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor): void;
  /** delta[h, i] = sum over d of dO[i, h, d] o[i, h, d]. */
  delta(s: AttentionShape, dO: Tensor, o: Tensor, delta: Tensor): void;
  /** Adds one KV block's share of the gradients into dq, dk, dv, given the final lse and delta. */
  backward(
    s: AttentionShape,
    m: AttentionMask,
    t: { q: Tensor; k: Tensor; v: Tensor; dO: Tensor; lse: Tensor; delta: Tensor },
    g: { dq: Tensor; dk: Tensor; dv: Tensor },
  ): void;
}

export interface Engine {
  /** 'native' or 'tfjs'. */
  readonly name: string;
  /** What runs, for logs: e.g. "native avx512, 2 threads". */
  readonly description: string;

  /** A zeroed float32 buffer. */
  floats(length: number): Tensor;
  ints(length: number): IntTensor;
  /** Buffers this engine holds now (the allocation test counts them). */
  bufferCount(): number;
  /** Host -> engine copy, recorded in order with the ops. */
  write(dst: Tensor, src: Float32Array): void;
  writeInts(dst: IntTensor, src: Int32Array): void;
  /**
   * Runs what was recorded, then returns the tensor's values. The array may be
   * the engine's own memory (native): valid until the next op writes that
   * tensor, and never to be written by the caller.
   */
  read(src: Tensor): Promise<Float32Array>;
  /** Runs every op recorded so far. */
  flush(): Promise<void>;

  zero(t: Tensor): void;
  /** out = table[tokens[i]] row by row; table is [vocab, dim]. */
  embed(out: Tensor, table: Tensor, tokens: IntTensor, rows: number, dim: number): void;
  /** dTable[tokens[i]] += dOut[i]. */
  embedBackward(dTable: Tensor, dOut: Tensor, tokens: IntTensor, rows: number, dim: number): void;
  /** out = norm(x) * w (+ b for LayerNorm). */
  norm(s: NormShape, out: Tensor, x: Tensor, w: Tensor, b: Tensor | null): void;
  /** dx += d/dx, dw += d/dw, db += d/db of norm, given dOut (statistics recomputed from x). */
  normBackward(s: NormShape, dx: Tensor, dw: Tensor, db: Tensor | null, dOut: Tensor, x: Tensor, w: Tensor): void;
  matmul(s: MatmulShape, c: Tensor, a: Tensor, b: Tensor): void;
  /** In place on x [rows, heads, headDim]; cos and sin are [rows, headDim / 2]. */
  rope(s: RopeShape, x: Tensor, cos: Tensor, sin: Tensor): void;
  /** out = u * sigmoid(u); out may be u. */
  silu(out: Tensor, u: Tensor, length: number): void;
  /** du = dOut * silu'(u); du may be dOut. */
  siluBackward(du: Tensor, dOut: Tensor, u: Tensor, length: number): void;
  /** out = a + b; out may be a or b. */
  add(out: Tensor, a: Tensor, b: Tensor, length: number): void;
  /**
   * Softmax cross-entropy of `logits` [rows, vocab] against targets (-1 = none).
   * loss[0] += the sum of token losses. With `gradScale` not null, logits are
   * replaced by gradScale * dLoss/dlogits (rows without a target become zero).
   */
  crossEntropy(rows: number, vocab: number, logits: Tensor, targets: IntTensor, loss: Tensor, gradScale: number | null): void;
  /** out[0] = sum of x^2, accumulated in float64 in index order. */
  sumSquares(out: Tensor, x: Tensor): void;
  /** One AdamW update of params, in float64 element by element (bit-identical on every rank and engine). */
  adamw(a: AdamWArgs, params: Tensor, grads: Tensor, m: Tensor, v: Tensor): void;
  /** Attention on engine buffers; absent when the engine's memory is the host's (ring attention then runs on host arrays). */
  readonly attention?: EngineAttention;
  /** Frees every buffer. */
  dispose(): void;
}

export function slice<T extends Tensor | IntTensor>(t: T, start: number, length: number): T {
  if (!(start >= 0 && length >= 0 && start + length <= t.length)) {
    throw new RangeError(`engine: slice [${start}, ${start + length}) outside a tensor of ${t.length}`);
  }
  return { ...t, offset: t.offset + start, length };
}

/** Environment variable that caps an engine's buffers, in bytes or a size ("48M"); unset or empty = no cap. */
export const ENGINE_MAX_BYTES_ENV = 'RINGATTN_ENGINE_MAX_BYTES';

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/**
 * The byte count of an engine's buffers, refusing one that would pass the cap:
 * the engine's `maxBytes` option, else RINGATTN_ENGINE_MAX_BYTES (which reaches
 * workers however they are started), else none. The cap makes "the longest
 * context that fits a worker" measurable (scripts/bench-max-context.ts),
 * independent of what else the machine holds.
 */
export class EngineMemory {
  readonly maxBytes: number | null;
  private readonly source: string;
  private used = 0;

  constructor(
    private readonly engine: string,
    maxBytes?: number,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    const raw = env[ENGINE_MAX_BYTES_ENV];
    if (maxBytes !== undefined) {
      if (!(Number.isSafeInteger(maxBytes) && maxBytes > 0)) throw new RangeError(`${engine} engine: maxBytes must be a positive integer, got ${maxBytes}`);
      this.maxBytes = maxBytes;
      this.source = 'the engine option maxBytes';
    } else {
      this.maxBytes = raw === undefined || raw.trim() === '' ? null : parseSize(raw, ENGINE_MAX_BYTES_ENV);
      this.source = ENGINE_MAX_BYTES_ENV;
    }
  }

  get bytes(): number {
    return this.used;
  }

  /** Counts a new buffer of `elements` 4-byte values; throws, before anything is allocated, when it does not fit. */
  take(elements: number, kind: 'float32' | 'int32'): void {
    const bytes = 4 * elements;
    if (this.maxBytes !== null && this.used + bytes > this.maxBytes) {
      throw new UserError(
        `${this.engine} engine: out of engine memory: a ${kind}[${elements}] buffer (${mib(bytes)}) would bring its buffers to ` +
          `${mib(this.used + bytes)}, past the cap of ${mib(this.maxBytes)} (${this.maxBytes} bytes, ${this.source})`,
      );
    }
    this.used += bytes;
  }
}
