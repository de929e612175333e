import { UserError } from '../errors.js';
import type { Shard } from '../model/types.js';
import { deriveSeed, Rng } from '../tensor/random.js';
import { BYTE_VOCAB, loadCorpus, type Corpus } from './corpus.js';

export type Split = 'train' | 'eval';
export type DataKind = 'text' | 'copy' | 'recall' | 'passkey';

/**
 * One training sequence seen whole: `tokens` holds seqLen+1 tokens and
 * `targets[p]` is the target of position p (tokens[p+1], or -1 = not scored),
 * for p in [0, seqLen). Every rank builds the same window, so the target of a
 * shard's last token, which lives on another rank, is simply read from it.
 */
export interface Window {
  tokens: Int32Array;
  targets: Int32Array;
  /** Passkey: where the planted key sits, as a fraction of seqLen (for accuracy by depth). */
  depth?: number;
}

/**
 * Everything the data pipeline needs to resume: windows are a pure function of
 * (seed, step, batch index, split), so there is no cursor, buffer or shuffle
 * state to save: the step to continue at and the seed are the whole state.
 */
export interface DataState {
  step: number;
  seed: number;
}

export interface DataSource {
  readonly kind: DataKind;
  readonly seqLen: number;
  /** False when there is no held-out split (text with evalFraction 0). */
  readonly hasEval: boolean;
  /** The window for sequence `batchIndex` of update `step`: identical on every rank. */
  windowFor(step: number, batchIndex: number, split: Split, seed: number): Window;
  /** One line for the log: what is being trained on. */
  describe(): string;
}

const SPLIT_KEY: Record<Split, number> = { train: 1, eval: 2 };

/** The generator of one window: independent streams per (seed, split, step, batch index). */
export function windowRng(seed: number, step: number, batchIndex: number, split: Split): Rng {
  return new Rng(deriveSeed(seed, SPLIT_KEY[split], step, batchIndex));
}

/** Targets of a plain next-token window: every position is scored. */
function nextTokenTargets(tokens: Int32Array): Int32Array {
  return tokens.slice(1);
}

/** A uniformly placed window of seqLen+1 bytes of `bytes`. */
export function textWindow(bytes: Uint8Array, seqLen: number, rng: Rng): Window {
  const span = bytes.length - (seqLen + 1);
  if (span < 0) throw new Error(`textWindow: ${bytes.length} bytes cannot hold a window of ${seqLen + 1}`);
  const start = rng.int(span + 1);
  const tokens = Int32Array.from(bytes.subarray(start, start + seqLen + 1));
  return { tokens, targets: nextTokenTargets(tokens) };
}

/**
 * Copy: h = floor((seqLen+1)/2) random tokens, then the same tokens again. Only
 * the copied half is scored, from the position holding the first repeated token
 * on (predicting the very first repeat would need to know where the half ends,
 * not to look back). Each scored target is the token that followed the previous
 * occurrence, h positions back: with the sequence split over ranks, the answer
 * lives on another rank, so only cross-shard attention can solve it.
 */
export function copyWindow(seqLen: number, vocab: number, rng: Rng): Window {
  const n = seqLen + 1;
  const h = Math.floor(n / 2);
  if (h < 1 || vocab < 2) throw new Error(`copyWindow: needs seqLen >= 1 and vocab >= 2`);
  const tokens = new Int32Array(n);
  for (let i = 0; i < h; i++) tokens[i] = rng.int(vocab);
  for (let i = h; i < n; i++) tokens[i] = tokens[(i - h) % h];
  const targets = new Int32Array(seqLen).fill(-1);
  for (let p = h; p < seqLen; p++) targets[p] = tokens[p + 1];
  return { tokens, targets };
}

/** Token layout of the recall task for a vocabulary of `vocab`. */
export function recallAlphabet(vocab: number): { filler: number; keyBase: number; keys: number; valueBase: number; values: number } {
  const keys = Math.floor((vocab - 1) / 2);
  return { filler: 0, keyBase: 1, keys, valueBase: 1 + keys, values: vocab - 1 - keys };
}

/**
 * Associative recall: n distinct keys, each followed by its value, at the start
 * of the window; filler in the middle; the same keys in a random order at the
 * end, each again followed by its value. Only the values of the queries are
 * scored (the target at a query key's position): the answer sits at the start
 * of the sequence, on another rank once the sequence is sharded.
 * n = min(number of keys, floor((seqLen+1)/8)), so pairs and queries fill at
 * most half of the window.
 */
export function recallWindow(seqLen: number, vocab: number, rng: Rng): Window {
  const a = recallAlphabet(vocab);
  const len = seqLen + 1;
  const n = Math.min(a.keys, Math.floor(len / 8));
  if (n < 1 || a.values < 1) throw new Error(`recallWindow: needs seqLen >= 7 and vocab >= 3`);
  const tokens = new Int32Array(len).fill(a.filler);
  const targets = new Int32Array(seqLen).fill(-1);
  // Partial Fisher-Yates: the first n entries become n distinct keys.
  const pool = Array.from({ length: a.keys }, (_, i) => a.keyBase + i);
  for (let i = 0; i < n; i++) {
    const j = i + rng.int(a.keys - i);
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  const value = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const v = a.valueBase + rng.int(a.values);
    value.set(pool[i], v);
    tokens[2 * i] = pool[i];
    tokens[2 * i + 1] = v;
  }
  const order = pool.slice(0, n);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const q0 = len - 2 * n;
  for (let i = 0; i < n; i++) {
    const p = q0 + 2 * i;
    tokens[p] = order[i];
    tokens[p + 1] = value.get(order[i])!;
    targets[p] = tokens[p + 1];
  }
  return { tokens, targets };
}

/** The passkey task's options (the spec's `data.passkey`). */
export interface PasskeyOptions {
  /** Answer tokens: the value planted after the key and asked for at the end. */
  valueTokens: number;
  /** The planted key and value lie within [minDepth, maxDepth) of the sequence. */
  minDepth: number;
  maxDepth: number;
}

/**
 * Token layout of the passkey task: filler tokens, the key and query markers,
 * then one block of `perValue` tokens for each answer position. Answer token j
 * is drawn from block j, so one attention layer can retrieve it by content
 * (query "answer j" matches key "a token of block j"), wherever it was planted:
 * the task tests reach across the sequence, not a copying circuit.
 */
export function passkeyAlphabet(vocab: number, valueTokens: number): { fillers: number; key: number; query: number; valueBase: number; perValue: number } {
  const perValue = Math.floor((vocab - 2) / (valueTokens + 1));
  const fillers = vocab - 2 - valueTokens * perValue;
  return { fillers, key: fillers, query: fillers + 1, valueBase: fillers + 2, perValue };
}

/** The range of key positions the depth range allows: the key and its value lie in [minDepth, maxDepth) * seqLen, before the query. */
export function passkeySpan(seqLen: number, o: PasskeyOptions): { first: number; last: number } {
  const L = o.valueTokens;
  const first = Math.ceil(o.minDepth * seqLen);
  // The query marker sits at seqLen - L; the planted value must end before it.
  const end = Math.min(Math.floor(o.maxDepth * seqLen), seqLen - L);
  return { first, last: end - (L + 1) };
}

/**
 * Passkey retrieval: random filler, a key marker followed by a random value of
 * `valueTokens` tokens at a random depth, and at the end the query marker
 * followed by the same value. Only the value after the query is scored: the
 * answer exists only where it was planted, on another rank once the sequence
 * is sharded, so only attention across shards can solve it.
 */
export function passkeyWindow(seqLen: number, vocab: number, o: PasskeyOptions, rng: Rng): Window {
  const a = passkeyAlphabet(vocab, o.valueTokens);
  const L = o.valueTokens;
  const { first, last } = passkeySpan(seqLen, o);
  if (a.fillers < 1 || a.perValue < 2 || last < first) throw new Error('passkeyWindow: the vocabulary or sequence is too small (createDataSource checks this)');
  const tokens = new Int32Array(seqLen + 1);
  for (let i = 0; i <= seqLen; i++) tokens[i] = rng.int(a.fillers);
  const p = first + rng.int(last - first + 1);
  const q = seqLen - L;
  tokens[p] = a.key;
  tokens[q] = a.query;
  const targets = new Int32Array(seqLen).fill(-1);
  for (let j = 0; j < L; j++) {
    const v = a.valueBase + j * a.perValue + rng.int(a.perValue);
    tokens[p + 1 + j] = v;
    tokens[q + 1 + j] = v;
    targets[q + j] = v;
  }
  return { tokens, targets, depth: p / seqLen };
}

/** This rank's part of a window: tokens at `positions`, their targets (the next token of the full window). */
export function shardOf(window: Window, positions: Int32Array): Shard {
  const n = positions.length;
  const tokens = new Int32Array(n);
  const targets = new Int32Array(n);
  const seqLen = window.targets.length;
  for (let i = 0; i < n; i++) {
    const p = positions[i];
    if (p < 0 || p >= seqLen) throw new Error(`shardOf: position ${p} outside the window of ${seqLen}`);
    tokens[i] = window.tokens[p];
    targets[i] = window.targets[p];
  }
  return { tokens, targets, positions: positions.slice() };
}

/** Scored target tokens of a whole window (all ranks together). */
export function countTargets(window: Window): number {
  let n = 0;
  for (let i = 0; i < window.targets.length; i++) if (window.targets[i] >= 0) n++;
  return n;
}

export interface DataSpecLike {
  kind: DataKind;
  paths: readonly string[];
  evalFraction: number;
  passkey?: PasskeyOptions;
}

export const PASSKEY_DEFAULTS: PasskeyOptions = { valueTokens: 4, minDepth: 0, maxDepth: 1 };

export interface DataSourceOptions {
  /** Directory relative `data.paths` are resolved against (the spec file's folder). */
  cwd?: string;
  /** A corpus already loaded (tests, or to share one between sources). */
  corpus?: Corpus;
}

/** The text of a `text` data section: the one given, else read from `data.paths` (or the built-in corpus). */
export function corpusFor(data: DataSpecLike, opts: DataSourceOptions): Corpus {
  return opts.corpus ?? loadCorpus(data.paths, { evalFraction: data.evalFraction, cwd: opts.cwd });
}

/**
 * The data of a run, from the spec's `data` section, `train.seqLen` and the
 * model's vocabulary. Text is byte-level, so it needs vocabSize >= 256; the
 * synthetic tasks draw from the model's vocabulary.
 */
export function createDataSource(
  data: DataSpecLike,
  seqLen: number,
  vocabSize: number,
  opts: DataSourceOptions = {},
): DataSource {
  if (!Number.isInteger(seqLen) || seqLen < 1) throw new UserError(`train.seqLen must be a positive integer, got ${seqLen}`);
  if (data.kind === 'copy') {
    if (vocabSize < 2) throw new UserError(`the copy task needs model.vocabSize >= 2, got ${vocabSize}`);
    if (seqLen < 3) throw new UserError(`the copy task needs train.seqLen >= 3, got ${seqLen}`);
    return synthetic('copy', seqLen, (rng) => copyWindow(seqLen, vocabSize, rng), `copy task, vocabulary ${vocabSize}, ${Math.floor((seqLen + 1) / 2)} tokens copied`);
  }
  if (data.kind === 'recall') {
    if (vocabSize < 3) throw new UserError(`the recall task needs model.vocabSize >= 3, got ${vocabSize}`);
    if (seqLen < 7) throw new UserError(`the recall task needs train.seqLen >= 7, got ${seqLen}`);
    const n = Math.min(recallAlphabet(vocabSize).keys, Math.floor((seqLen + 1) / 8));
    return synthetic('recall', seqLen, (rng) => recallWindow(seqLen, vocabSize, rng), `associative recall, ${n} key/value pairs per sequence`);
  }
  if (data.kind === 'passkey') {
    const o = data.passkey ?? PASSKEY_DEFAULTS;
    const a = passkeyAlphabet(vocabSize, o.valueTokens);
    if (a.fillers < 1 || a.perValue < 2) {
      throw new UserError(`the passkey task with data.passkey.valueTokens ${o.valueTokens} needs model.vocabSize >= ${2 * (o.valueTokens + 1) + 2}, got ${vocabSize}`);
    }
    if (!(o.minDepth < o.maxDepth)) throw new UserError(`data.passkey.minDepth ${o.minDepth} must be below maxDepth ${o.maxDepth}`);
    const span = passkeySpan(seqLen, o);
    if (span.last < span.first) {
      throw new UserError(
        `train.seqLen ${seqLen} leaves no room for a key and ${o.valueTokens} value tokens between depths ${o.minDepth} and ${o.maxDepth} before the query; lengthen the sequence or widen the depths`,
      );
    }
    return synthetic(
      'passkey',
      seqLen,
      (rng) => passkeyWindow(seqLen, vocabSize, o, rng),
      `passkey retrieval: ${o.valueTokens} answer tokens of ${a.perValue} values each, key at depth ${o.minDepth}-${o.maxDepth} among ${seqLen} tokens`,
    );
  }
  if (vocabSize < BYTE_VOCAB) {
    throw new UserError(`text data is byte-level and needs model.vocabSize >= ${BYTE_VOCAB}, got ${vocabSize}`);
  }
  const corpus = corpusFor(data, opts);
  if (corpus.train.length < seqLen + 1) {
    throw new UserError(
      `the training text has ${corpus.train.length} bytes, fewer than one window of train.seqLen + 1 = ${seqLen + 1}; add data or shorten train.seqLen`,
    );
  }
  const hasEval = corpus.eval.length > 0;
  if (hasEval && corpus.eval.length < seqLen + 1) {
    throw new UserError(
      `the held-out text (data.evalFraction ${data.evalFraction}) has ${corpus.eval.length} bytes, fewer than one window of ${seqLen + 1}; ` +
        `raise data.evalFraction, add data, or set it to 0 to disable the eval loss`,
    );
  }
  const what = corpus.isDefault ? 'the built-in corpus' : `${corpus.parts.length} file(s)`;
  return {
    kind: 'text',
    seqLen,
    hasEval,
    windowFor(step, batchIndex, split, seed) {
      const bytes = split === 'train' ? corpus.train : corpus.eval;
      if (bytes.length === 0) throw new Error('windowFor: there is no held-out split (data.evalFraction is 0)');
      return textWindow(bytes, seqLen, windowRng(seed, step, batchIndex, split));
    },
    describe: () => `text from ${what}: ${corpus.train.length} training bytes, ${corpus.eval.length} held out`,
  };
}

function synthetic(kind: DataKind, seqLen: number, make: (rng: Rng) => Window, what: string): DataSource {
  return {
    kind,
    seqLen,
    hasEval: true,
    windowFor: (step, batchIndex, split, seed) => make(windowRng(seed, step, batchIndex, split)),
    describe: () => what,
  };
}
