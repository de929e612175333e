import { closeSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { UserError } from '../errors.js';

/**
 * NumPy .npy files, versions 1.0, 2.0 and 3.0, written from the format
 * description in numpy's `numpy.lib.format`:
 *   6 bytes  magic "\x93NUMPY"
 *   2 bytes  major, minor version
 *   2 bytes (v1) or 4 bytes (v2, v3) little-endian header length
 *   header   a Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...)}
 *            (latin-1 in v1/v2, utf-8 in v3), padded with spaces and ended by '\n'
 *            so the data starts at a multiple of 64 bytes
 *   data     the array's bytes in C order
 * Only little-endian float32/float64/int32/int64 in C order are supported.
 */

export type NpyDtype = 'float32' | 'float64' | 'int32' | 'int64';
export type NpyData = Float32Array | Float64Array | Int32Array | BigInt64Array;

export interface NpyArray {
  dtype: NpyDtype;
  shape: number[];
  data: NpyData;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY
const ALIGN = 64;

const DESCR_TO_DTYPE: Record<string, { dtype: NpyDtype; size: number }> = {
  '<f4': { dtype: 'float32', size: 4 },
  '<f8': { dtype: 'float64', size: 8 },
  '<i4': { dtype: 'int32', size: 4 },
  '<i8': { dtype: 'int64', size: 8 },
};
const DTYPE_TO_DESCR: Record<NpyDtype, string> = { float32: '<f4', float64: '<f8', int32: '<i4', int64: '<i8' };
const HOST_LE = endianness() === 'LE';

// ---------------------------------------------------------------- header parsing

type PyValue = string | number | boolean | null | PyValue[] | PyDict;
interface PyDict {
  [key: string]: PyValue;
}

class HeaderSyntaxError extends Error {}

/** A recursive-descent parser for the Python literal subset .npy headers use. */
class PyLiteralParser {
  private i = 0;
  private depth = 0;
  constructor(private readonly s: string) {}

  parseAll(): PyValue {
    const v = this.value();
    this.ws();
    if (this.i !== this.s.length) this.fail(`unexpected '${this.s[this.i]}'`);
    return v;
  }

  private fail(msg: string): never {
    throw new HeaderSyntaxError(`${msg} at offset ${this.i}`);
  }

  private ws(): void {
    while (this.i < this.s.length && /\s/.test(this.s[this.i])) this.i++;
  }

  private value(): PyValue {
    this.ws();
    const c = this.s[this.i];
    if (c === undefined) this.fail('unexpected end');
    if (c === '{') return this.dict();
    if (c === '(') return this.sequence('(', ')');
    if (c === '[') return this.sequence('[', ']');
    if (c === "'" || c === '"') return this.string();
    if (c === '-' || c === '+' || (c >= '0' && c <= '9')) return this.int();
    const word = /^[A-Za-z_]\w*/.exec(this.s.slice(this.i));
    if (word) {
      this.i += word[0].length;
      if (word[0] === 'True') return true;
      if (word[0] === 'False') return false;
      if (word[0] === 'None') return null;
      this.fail(`unknown name '${word[0]}'`);
    }
    this.fail(`unexpected '${c}'`);
  }

  private string(): string {
    const quote = this.s[this.i++];
    let out = '';
    while (this.i < this.s.length && this.s[this.i] !== quote) {
      if (this.s[this.i] === '\\') {
        this.i++;
        if (this.i >= this.s.length) break;
      }
      out += this.s[this.i++];
    }
    if (this.s[this.i] !== quote) this.fail('unterminated string');
    this.i++;
    return out;
  }

  private int(): number {
    const m = /^[-+]?\d+L?/.exec(this.s.slice(this.i));
    if (!m) this.fail('bad number');
    this.i += m[0].length;
    const n = Number(m[0].replace(/L$/, ''));
    if (!Number.isSafeInteger(n)) this.fail(`integer ${m[0]} out of range`);
    return n;
  }

  private nest(): void {
    // A real header nests two deep; a hostile one must not reach the stack limit.
    if (++this.depth > 32) this.fail('nested too deeply');
  }

  private sequence(open: string, close: string): PyValue[] {
    this.nest();
    this.i++; // open
    const items: PyValue[] = [];
    for (;;) {
      this.ws();
      if (this.s[this.i] === close) {
        this.i++;
        this.depth--;
        return items;
      }
      items.push(this.value());
      this.ws();
      if (this.s[this.i] === ',') this.i++;
      else if (this.s[this.i] !== close) this.fail(`expected ',' or '${close}' after item of '${open}...${close}'`);
    }
  }

  private dict(): PyDict {
    this.nest();
    this.i++; // {
    const out: PyDict = {};
    for (;;) {
      this.ws();
      if (this.s[this.i] === '}') {
        this.i++;
        this.depth--;
        return out;
      }
      const c = this.s[this.i];
      if (c !== "'" && c !== '"') this.fail('dict keys must be strings');
      const key = this.string();
      this.ws();
      if (this.s[this.i] !== ':') this.fail("expected ':'");
      this.i++;
      out[key] = this.value();
      this.ws();
      if (this.s[this.i] === ',') this.i++;
      else if (this.s[this.i] !== '}') this.fail("expected ',' or '}'");
    }
  }
}

function pyTuple(shape: readonly number[]): string {
  if (shape.length === 0) return '()';
  if (shape.length === 1) return `(${shape[0]},)`;
  return `(${shape.join(', ')})`;
}

// ---------------------------------------------------------------- reading

function ioReason(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (err && err.code === 'ENOENT') return 'no such file';
  if (err && err.code === 'EACCES') return 'permission denied';
  if (err && err.code === 'EISDIR') return 'is a directory';
  return (err?.message ?? String(e)).split('\n')[0];
}

function swapBytes(bytes: Uint8Array, size: number): void {
  for (let o = 0; o < bytes.length; o += size) {
    for (let a = o, b = o + size - 1; a < b; a++, b--) {
      const t = bytes[a];
      bytes[a] = bytes[b];
      bytes[b] = t;
    }
  }
}

/** Parses .npy bytes; `file` only names the source in error messages. */
export function parseNpy(buf: Uint8Array, file: string): NpyArray {
  const bad = (msg: string): never => {
    throw new UserError(`${file}: ${msg}`);
  };
  if (buf.length < 8 || !MAGIC.equals(Buffer.from(buf.buffer, buf.byteOffset, 6))) {
    bad('not a .npy file (bad magic bytes; expected \\x93NUMPY)');
  }
  const major = buf[6];
  const minor = buf[7];
  if (major !== 1 && major !== 2 && major !== 3) bad(`unsupported .npy format version ${major}.${minor} (supported: 1.0, 2.0, 3.0)`);
  const lenSize = major === 1 ? 2 : 4;
  if (buf.length < 8 + lenSize) bad('truncated header (file ends inside the header length)');
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen = lenSize === 2 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = 8 + lenSize;
  const dataStart = headerStart + headerLen;
  if (dataStart > buf.length) bad(`truncated header (header length says ${headerLen} bytes, only ${buf.length - headerStart} present)`);
  const headerText = Buffer.from(buf.buffer, buf.byteOffset + headerStart, headerLen).toString(major === 3 ? 'utf8' : 'latin1');
  const snippet = JSON.stringify(headerText.trim().slice(0, 80));

  let header: PyValue;
  try {
    header = new PyLiteralParser(headerText).parseAll();
  } catch (e) {
    if (e instanceof HeaderSyntaxError) bad(`malformed header (${e.message}): ${snippet}`);
    throw e;
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) bad(`malformed header (not a dict): ${snippet}`);
  const dict = header as PyDict;
  for (const key of ['descr', 'fortran_order', 'shape']) {
    if (!(key in dict)) bad(`malformed header (no '${key}' key): ${snippet}`);
  }

  const descr = dict.descr;
  if (typeof descr !== 'string') bad('unsupported dtype: structured arrays are not supported');
  const d = JSON.stringify(descr).slice(1, -1); // one line, whatever the file holds
  const known = DESCR_TO_DTYPE[d];
  if (!known) {
    if (/^>[a-zA-Z]\d+$/.test(d) && d !== '>i1' && d !== '>u1') {
      bad(`unsupported dtype '${d}': big-endian data is not supported (save with arr.astype('<${d.slice(1)}'))`);
    }
    bad(`unsupported dtype '${d}' (supported: ${Object.keys(DESCR_TO_DTYPE).join(', ')})`);
  }
  if (typeof dict.fortran_order !== 'boolean') bad(`malformed header ('fortran_order' must be True or False): ${snippet}`);
  if (dict.fortran_order) bad('fortran_order is True (column-major data is not supported; save np.ascontiguousarray(arr))');
  const shapeV = dict.shape;
  if (!Array.isArray(shapeV) || !shapeV.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)) {
    bad(`malformed header ('shape' must be a tuple of non-negative integers): ${snippet}`);
  }
  const shape = shapeV as number[];
  const count = shape.reduce((a, b) => a * b, 1);
  const nbytes = count * known.size;
  if (!Number.isSafeInteger(nbytes)) bad(`shape ${pyTuple(shape)} is too large`);
  const found = buf.length - dataStart;
  if (found < nbytes) bad(`truncated data (expected ${nbytes} bytes for shape ${pyTuple(shape)} ${d}, found ${found})`);
  if (found > nbytes) bad(`${found - nbytes} unexpected bytes after the data (expected ${nbytes} bytes for shape ${pyTuple(shape)} ${d})`);

  // Copy into a fresh buffer: the file's data offset need not be aligned for a typed-array view.
  const bytes = new Uint8Array(nbytes);
  bytes.set(buf.subarray(dataStart, dataStart + nbytes));
  if (!HOST_LE) swapBytes(bytes, known.size);
  let data: NpyData;
  switch (known.dtype) {
    case 'float32':
      data = new Float32Array(bytes.buffer, 0, count);
      break;
    case 'float64':
      data = new Float64Array(bytes.buffer, 0, count);
      break;
    case 'int32':
      data = new Int32Array(bytes.buffer, 0, count);
      break;
    case 'int64':
      data = new BigInt64Array(bytes.buffer, 0, count);
      break;
  }
  return { dtype: known.dtype, shape, data };
}

export function readNpy(file: string): NpyArray {
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (e) {
    throw new UserError(`${file}: cannot read (${ioReason(e)})`);
  }
  return parseNpy(buf, file);
}

export interface NpyAs<T extends Float32Array | Int32Array> {
  shape: number[];
  data: T;
}

const FLT_MAX = 3.4028234663852886e38;
// Values between FLT_MAX and this round down to FLT_MAX rather than overflowing.
const FLT_ROUND_LIMIT = 3.4028235677973366e38;

/**
 * Reads a .npy file as float32 (from <f4 or <f8) or int32 (from <i4 or <i8),
 * refusing values the narrower type cannot hold, and optionally checking the rank.
 */
export function readNpyAs(file: string, want: 'float32', expectShapeRank?: number): NpyAs<Float32Array>;
export function readNpyAs(file: string, want: 'int32', expectShapeRank?: number): NpyAs<Int32Array>;
export function readNpyAs(file: string, want: 'float32' | 'int32', expectShapeRank?: number): NpyAs<Float32Array | Int32Array> {
  const arr = readNpy(file);
  if (expectShapeRank !== undefined && arr.shape.length !== expectShapeRank) {
    throw new UserError(`${file}: expected a ${expectShapeRank}-D array, found shape ${pyTuple(arr.shape)}`);
  }
  const descr = DTYPE_TO_DESCR[arr.dtype];
  if (want === 'float32') {
    if (arr.dtype === 'float32') return { shape: arr.shape, data: arr.data as Float32Array };
    if (arr.dtype === 'float64') {
      const src = arr.data as Float64Array;
      for (let i = 0; i < src.length; i++) {
        const x = src[i];
        if (Number.isFinite(x) && Math.abs(x) >= FLT_ROUND_LIMIT) {
          throw new UserError(`${file}: value ${x} at index ${i} does not fit in float32 (max ${FLT_MAX})`);
        }
      }
      return { shape: arr.shape, data: Float32Array.from(src) };
    }
    throw new UserError(`${file}: expected a float array (<f4 or <f8), found dtype '${descr}'`);
  }
  if (arr.dtype === 'int32') return { shape: arr.shape, data: arr.data as Int32Array };
  if (arr.dtype === 'int64') {
    const src = arr.data as BigInt64Array;
    const out = new Int32Array(src.length);
    for (let i = 0; i < src.length; i++) {
      const x = src[i];
      if (x < -2147483648n || x > 2147483647n) throw new UserError(`${file}: value ${x} at index ${i} does not fit in int32`);
      out[i] = Number(x);
    }
    return { shape: arr.shape, data: out };
  }
  throw new UserError(`${file}: expected an integer array (<i4 or <i8), found dtype '${descr}'`);
}

// ---------------------------------------------------------------- writing

/** The bytes of a .npy file: version 1.0, or 2.0 when the header outgrows 65535 bytes. */
export function encodeNpy(data: Float32Array | Float64Array | Int32Array, shape: readonly number[]): Buffer {
  if (!shape.every((x) => Number.isSafeInteger(x) && x >= 0)) throw new RangeError(`npy: bad shape [${shape.join(', ')}]`);
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) throw new RangeError(`npy: shape ${pyTuple(shape)} holds ${count} elements, data has ${data.length}`);
  const descr = data instanceof Float32Array ? '<f4' : data instanceof Float64Array ? '<f8' : data instanceof Int32Array ? '<i4' : null;
  if (!descr) throw new TypeError('npy: data must be a Float32Array, Float64Array or Int32Array');
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${pyTuple(shape)}, }`;
  let major = 1;
  let prefix = 10;
  let total = Math.ceil((prefix + dict.length + 1) / ALIGN) * ALIGN;
  if (total - prefix > 0xffff) {
    major = 2;
    prefix = 12;
    total = Math.ceil((prefix + dict.length + 1) / ALIGN) * ALIGN;
  }
  const headerLen = total - prefix;
  const header = dict + ' '.repeat(headerLen - dict.length - 1) + '\n';
  const out = Buffer.alloc(total + data.byteLength);
  MAGIC.copy(out, 0);
  out[6] = major;
  out[7] = 0;
  if (major === 1) out.writeUInt16LE(headerLen, 8);
  else out.writeUInt32LE(headerLen, 8);
  out.write(header, prefix, 'latin1');
  const body = new Uint8Array(out.buffer, out.byteOffset + total, data.byteLength);
  body.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  if (!HOST_LE) swapBytes(body, data.BYTES_PER_ELEMENT);
  return out;
}

/**
 * Writes a .npy file atomically: to a temporary file in the same directory,
 * flushed, then renamed over `file`. Readers see the old file or the complete
 * new one, never a partial file; a failed write leaves no temporary behind.
 */
export function writeNpy(file: string, data: Float32Array | Float64Array | Int32Array, shape: readonly number[]): void {
  const bytes = encodeNpy(data, shape);
  const tmp = join(dirname(file), `.${basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fd: number | null = null;
  try {
    fd = openSync(tmp, 'wx');
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
    closeSync(fd);
    fd = null;
    renameSync(tmp, file);
  } catch (e) {
    if (fd !== null) {
      try {
        closeSync(fd);
      } catch {
        // already failing; the write error is the one to report
      }
    }
    try {
      unlinkSync(tmp);
    } catch {
      // never created, or already gone
    }
    throw new UserError(`${file}: cannot write (${ioReason(e)})`);
  }
}
