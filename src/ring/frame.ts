/**
 * Framing of ring messages: one header frame, then one frame per payload.
 * The header is a fixed little-endian binary record, so a foreign or damaged
 * message is recognised before any payload is trusted:
 *
 *   0  magic "RING"      4  version u8   5  payload count u8   6  tag length u8   7  part u8
 *   8  job id (8 bytes)  16 sequence u32  20 source rank u32
 *   24 step u32          28 op u32       32 tag (24 bytes, ASCII)   56 phase (16 bytes, ASCII)
 *   72 per payload, 24 bytes: dtype u8, rank of shape u8, reserved u16, dims 4 x u32
 *
 * Step, op and phase say which exchange a message belongs to (src/ring/transport.ts):
 * every rank runs the same sequence of ring ops, so op n on the sender is op n on
 * the receiver, and a message for an op the receiver has finished, or one whose
 * phase, step or tag that op cannot have, is caught the moment it arrives.
 *
 * The byte length of each payload follows from dtype and shape and must equal
 * the frame's actual length.
 *
 * Part: 0 = a whole message (header + payload frames); 1 = the head of a large
 * message whose payloads follow as raw byte chunks; 2 = one such chunk (one
 * frame, no descriptors). Chunking keeps every frame small, so ZeroMQ's
 * heartbeats, which travel between frames, are never stuck behind a 1 GiB one.
 * 3 = a message whose payloads lie in the link's shared-memory channel
 * (src/ring/shm.ts): one frame after the header, its descriptor (3 x f64).
 */

export type Payload = Float32Array | Int32Array | Uint8Array | Float64Array | Uint16Array;
/** bfloat16 and float16 travel as the raw 16-bit patterns of a Uint16Array (src/ring/wire.ts). */
export type DType = 'float32' | 'int32' | 'uint8' | 'float64' | 'bfloat16' | 'float16';

export interface Tensor {
  data: Payload;
  shape: number[];
  /** Required for a Uint16Array, whose bits alone do not say bfloat16 or float16; received tensors always carry it. */
  dtype?: DType;
}

export type FramePart = 'whole' | 'head' | 'chunk' | 'shm';
const PARTS: FramePart[] = ['whole', 'head', 'chunk', 'shm'];

export interface FrameHeader {
  jobId: string; // 16 hex digits
  part?: FramePart;
  seq: number;
  srcRank: number;
  /** The sender's training step (0 outside training). */
  step: number;
  /** Index of the ring op (one run of a ring algorithm) on the sender; 0 is the ring's own hello and bye. */
  op: number;
  /** The op's name, e.g. "attn.fwd", "grads". */
  phase: string;
  tag: string;
  tensors: Array<{ dtype: DType; shape: number[] }>;
}

export const FRAME_VERSION = 2;
const MAGIC = 0x474e4952; // "RING" read as little-endian u32
const FIXED = 72;
const PER_TENSOR = 24;
const MAX_TENSORS = 16;
const MAX_RANK = 4;
const TAG_BYTES = 24;
const PHASE_BYTES = 16;

const DTYPES: DType[] = ['float32', 'int32', 'uint8', 'float64', 'bfloat16', 'float16'];
const BYTES: Record<DType, number> = { float32: 4, int32: 4, uint8: 1, float64: 8, bfloat16: 2, float16: 2 };

export class FrameError extends Error {
  override name = 'FrameError';
}

export function dtypeOf(data: Payload): DType {
  if (data instanceof Uint16Array) throw new FrameError('a 16-bit payload must say its dtype (bfloat16 or float16)');
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof Float64Array) return 'float64';
  return 'uint8';
}

/** The dtype a tensor goes out as: its own, else its array's. */
export function tensorDType(t: Tensor): DType {
  return t.dtype ?? dtypeOf(t.data);
}

export function byteLengthOf(dtype: DType, shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
}

export function encodeHeader(h: FrameHeader): Buffer {
  if (h.tensors.length > MAX_TENSORS) throw new FrameError(`at most ${MAX_TENSORS} payloads per message`);
  if (h.tag.length > TAG_BYTES || !/^[\x20-\x7e]*$/.test(h.tag)) throw new FrameError(`bad tag "${h.tag}"`);
  if (h.phase.length > PHASE_BYTES || !/^[\x21-\x7e]*$/.test(h.phase)) throw new FrameError(`bad phase "${h.phase}"`);
  const buf = Buffer.alloc(FIXED + PER_TENSOR * h.tensors.length);
  buf.writeUInt32LE(MAGIC, 0);
  buf.writeUInt8(FRAME_VERSION, 4);
  buf.writeUInt8(h.tensors.length, 5);
  buf.writeUInt8(h.tag.length, 6);
  buf.writeUInt8(PARTS.indexOf(h.part ?? 'whole'), 7);
  buf.write(h.jobId, 8, 8, 'hex');
  buf.writeUInt32LE(h.seq >>> 0, 16);
  buf.writeUInt32LE(h.srcRank, 20);
  buf.writeUInt32LE(h.step >>> 0, 24);
  buf.writeUInt32LE(h.op >>> 0, 28);
  buf.write(h.tag, 32, TAG_BYTES, 'ascii');
  buf.write(h.phase, 56, PHASE_BYTES, 'ascii');
  h.tensors.forEach((t, i) => {
    if (t.shape.length > MAX_RANK) throw new FrameError(`payload rank ${t.shape.length} > ${MAX_RANK}`);
    const o = FIXED + i * PER_TENSOR;
    buf.writeUInt8(DTYPES.indexOf(t.dtype) + 1, o);
    buf.writeUInt8(t.shape.length, o + 1);
    t.shape.forEach((d, j) => buf.writeUInt32LE(d, o + 4 + 4 * j));
  });
  return buf;
}

export function decodeHeader(buf: Buffer): FrameHeader {
  if (buf.length < FIXED || buf.readUInt32LE(0) !== MAGIC) throw new FrameError('not a ringattn message (bad magic)');
  const version = buf.readUInt8(4);
  if (version !== FRAME_VERSION) throw new FrameError(`protocol version ${version}, expected ${FRAME_VERSION}`);
  const n = buf.readUInt8(5);
  const tagLen = buf.readUInt8(6);
  const part = PARTS[buf.readUInt8(7)];
  if (!part) throw new FrameError('malformed message header (unknown part)');
  if (n > MAX_TENSORS || tagLen > TAG_BYTES || buf.length !== FIXED + PER_TENSOR * n) {
    throw new FrameError('malformed message header');
  }
  const tensors: FrameHeader['tensors'] = [];
  for (let i = 0; i < n; i++) {
    const o = FIXED + i * PER_TENSOR;
    const code = buf.readUInt8(o);
    const rank = buf.readUInt8(o + 1);
    if (code < 1 || code > DTYPES.length || rank > MAX_RANK) throw new FrameError('malformed payload descriptor');
    const shape: number[] = [];
    for (let j = 0; j < rank; j++) shape.push(buf.readUInt32LE(o + 4 + 4 * j));
    tensors.push({ dtype: DTYPES[code - 1], shape });
  }
  return {
    jobId: buf.toString('hex', 8, 16),
    part,
    seq: buf.readUInt32LE(16),
    srcRank: buf.readUInt32LE(20),
    step: buf.readUInt32LE(24),
    op: buf.readUInt32LE(28),
    phase: buf.toString('ascii', 56, 56 + PHASE_BYTES).replace(/\0+$/, ''),
    tag: buf.toString('ascii', 32, 32 + tagLen),
    tensors,
  };
}

/** Views a received frame as the typed array its descriptor names; copies only when misaligned. */
export function payloadFromFrame(frame: Buffer, dtype: DType, shape: number[]): Payload {
  const expected = byteLengthOf(dtype, shape);
  if (frame.length !== expected) {
    throw new FrameError(`payload of ${frame.length} bytes, header says ${dtype}[${shape.join(',')}] = ${expected} bytes`);
  }
  const size = BYTES[dtype];
  let { buffer, byteOffset } = frame;
  if (byteOffset % size !== 0) {
    const copy = new Uint8Array(frame.length);
    copy.set(frame);
    buffer = copy.buffer;
    byteOffset = 0;
  }
  const n = expected / size;
  switch (dtype) {
    case 'float32':
      return new Float32Array(buffer, byteOffset, n);
    case 'int32':
      return new Int32Array(buffer, byteOffset, n);
    case 'float64':
      return new Float64Array(buffer, byteOffset, n);
    case 'bfloat16':
    case 'float16':
      return new Uint16Array(buffer, byteOffset, n);
    default:
      return new Uint8Array(buffer, byteOffset, n);
  }
}
