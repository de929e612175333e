/**
 * Control messages between workers (DEALER) and the coordinator (ROUTER).
 * A message is one JSON frame followed by optional binary frames (typed arrays
 * that travel with it: input shards, results).
 */
import type { Payload } from '../ring/frame.js';
import type { RingPeer } from '../ring/transport.js';

export const PROTOCOL_VERSION = 2;
/** Largest control message accepted: a stray client cannot make the coordinator buffer more. */
export const MAX_CONTROL_BYTES = 1 << 30;

export type WorkerMessage =
  | { type: 'hello'; rank: number; host: string; endpoint: string; protocol: number; specHash: string; pid: number; node: string }
  | { type: 'result'; rank: number; name: string; value: unknown }
  | { type: 'done'; rank: number }
  /**
   * A heartbeat the coordinator can see (every ring.heartbeatIntervalMs, from the
   * worker's event loop, so a rank stuck in a long synchronous compute beats late),
   * or a job's note of what the rank runs on (`info`, merged into ring.json).
   */
  | { type: 'status'; rank: number; info?: Record<string, unknown> }
  /** userError: the rank's own input or set-up was wrong (exit 2, no restart), not the ring. */
  | { type: 'failed'; rank: number; message: string; userError?: boolean };

export type CoordinatorMessage =
  | { type: 'peers'; peers: RingPeer[] }
  | { type: 'input'; name: string; value: unknown }
  | { type: 'abort'; reason: string }
  /** The coordinator has the worker's `done`: only now may the worker exit (a sent message is only queued). */
  | { type: 'bye' }
  /** Liveness: a rank whose link has gone (silent past the heartbeat timeout) makes this send fail at the coordinator. */
  | { type: 'ping' };

export interface Envelope<T> {
  msg: T;
  blobs: Payload[];
}

/** Blobs travel as float32 unless they are int32; their kind is recorded in the JSON. */
export function encodeControl(msg: object, blobs: Payload[] = []): Array<Buffer | Payload> {
  const kinds = blobs.map((b) => (b instanceof Int32Array ? 'i32' : 'f32'));
  return [Buffer.from(JSON.stringify({ ...msg, blobKinds: kinds })), ...blobs];
}

export function decodeControl<T>(frames: Buffer[]): Envelope<T> {
  const parsed = JSON.parse(frames[0].toString('utf8')) as { blobKinds?: string[] } & T;
  if (typeof parsed !== 'object' || parsed === null || typeof (parsed as { type?: unknown }).type !== 'string') {
    throw new Error('control message without a type');
  }
  const kinds = parsed.blobKinds ?? [];
  if (kinds.length !== frames.length - 1) throw new Error('control message with a wrong number of frames');
  const blobs = frames.slice(1).map((f, i) => {
    const copy = new Uint8Array(f.length);
    copy.set(f);
    if (f.length % 4 !== 0) throw new Error('control blob length is not a multiple of 4');
    return kinds[i] === 'i32' ? new Int32Array(copy.buffer) : new Float32Array(copy.buffer);
  });
  delete parsed.blobKinds;
  return { msg: parsed as T, blobs };
}
