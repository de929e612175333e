import type { Tensor } from './frame.js';
import { loadAddon } from '../addon/index.js';

/**
 * The number format KV blocks travel the ring in (`ring.wire`). float32 is
 * exact; bfloat16 and float16 halve the bytes of every hop, as the paper's
 * bf16 blocks do. A rank computes on its own block in float32 and on the
 * others' blocks as they arrived, so a 16-bit wire rounds K and V once, at the
 * sender, and nothing else: the dK/dV accumulators always travel in float32.
 */
export type WireFormat = 'float32' | 'bfloat16' | 'float16';
export const WIRE_FORMATS: readonly WireFormat[] = ['float32', 'bfloat16', 'float16'];

const f32 = new Float32Array(1);

/** Round to nearest, ties to even, to bfloat16 bits (the top half of float32); NaN stays a quiet NaN. */
function bf16Bits(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) & 0x8000) | 0x7fc0;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** IEEE half precision bits, round to nearest, ties to even; overflow becomes infinity, tiny values subnormals or zero. */
function f16Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    // A subnormal half: shift the mantissa with its implicit bit into place, rounding what falls off.
    const m = mant | 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = m & ((1 << shift) - 1);
    let h = m >>> shift;
    if (rest > half || (rest === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent, up to infinity.
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
  return sign | h;
}

function f16ToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/**
 * The same conversions in the native addon (loadWireNative below), bit for bit
 * (test/data-plane.test.ts): element-by-element JavaScript is slower than the loopback link itself.
 * Format 0 is bfloat16, 1 float16.
 */
export interface WireNative {
  toWire(format: 0 | 1, src: Float32Array, dst: Uint16Array): void;
  fromWire(format: 0 | 1, src: Uint16Array, dst: Float32Array): void;
}

/** `x` as it goes on the wire: float32 as is, else a 16-bit tensor of the same length. */
export function toWire(x: Float32Array, format: WireFormat, native?: WireNative | null): Tensor {
  if (format === 'float32') return { data: x, shape: [x.length] };
  const out = new Uint16Array(x.length);
  if (native) {
    native.toWire(format === 'bfloat16' ? 0 : 1, x, out);
    return { data: out, shape: [x.length], dtype: format };
  }
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const convert = format === 'bfloat16' ? bf16Bits : f16Bits;
  for (let i = 0; i < x.length; i++) out[i] = convert(bits[i]);
  return { data: out, shape: [x.length], dtype: format };
}

/** A received tensor as float32 (a float32 one is returned as is, not copied). */
export function fromWire(t: Tensor, native?: WireNative | null): Float32Array {
  if (t.data instanceof Float32Array) return t.data;
  if (!(t.data instanceof Uint16Array) || (t.dtype !== 'bfloat16' && t.dtype !== 'float16')) {
    throw new Error(`fromWire: expected a float32, bfloat16 or float16 tensor, got ${t.dtype ?? t.data.constructor.name}`);
  }
  const h = t.data;
  const out = new Float32Array(h.length);
  if (native) {
    native.fromWire(t.dtype === 'bfloat16' ? 0 : 1, h, out);
    return out;
  }
  if (t.dtype === 'bfloat16') {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < h.length; i++) bits[i] = h[i] << 16;
  } else {
    for (let i = 0; i < h.length; i++) out[i] = f16ToFloat(h[i]);
  }
  return out;
}

/** One value through the wire and back: what a 16-bit format makes of it. */
export function roundTrip(x: number, format: WireFormat): number {
  f32[0] = x;
  if (format === 'float32') return f32[0];
  const t = toWire(f32, format);
  return fromWire(t)[0];
}

/** The addon's 16-bit wire conversions (the same bits as the functions above), or null where the addon is absent. */
export function loadWireNative(): WireNative | null {
  const { addon } = loadAddon<Partial<WireNative>>();
  return typeof addon?.toWire === 'function' && typeof addon.fromWire === 'function' ? (addon as WireNative) : null;
}
