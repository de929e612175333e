import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { UserError } from '../src/errors.js';
import { encodeNpy, readNpy, readNpyAs, writeNpy } from '../src/tensor/npy.js';

const dir = mkdtempSync(join(tmpdir(), 'ringattn-npy-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function userError(pattern: RegExp) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof UserError, `expected a UserError, got ${String(e)}`);
    assert.match(e.message, pattern);
    return true;
  };
}

/** A .npy file with a hand-written header (for malformed-input tests). */
function rawNpy(header: string, data: Uint8Array = new Uint8Array(0), version = 1): Buffer {
  const prefix = version === 1 ? 10 : 12;
  const total = Math.ceil((prefix + header.length + 1) / 64) * 64;
  const padded = header + ' '.repeat(total - prefix - header.length - 1) + '\n';
  const out = Buffer.alloc(total + data.length);
  out.write('\x93NUMPY', 0, 'latin1');
  out[6] = version;
  out[7] = 0;
  if (version === 1) out.writeUInt16LE(total - prefix, 8);
  else out.writeUInt32LE(total - prefix, 8);
  out.write(padded, prefix, 'latin1');
  out.set(data, total);
  return out;
}

function shapeCount(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

describe('npy round trip', () => {
  const shapes = [[], [0], [2, 0], [5], [3, 4], [2, 3, 4], [1, 1, 1, 7]];
  for (const shape of shapes) {
    it(`float32 and int32, shape [${shape.join(', ')}]`, () => {
      const n = shapeCount(shape);
      const f = Float32Array.from({ length: n }, (_, i) => (i - 3.25) * 1.5e-3 * (i % 2 ? -1 : 1));
      const k = Int32Array.from({ length: n }, (_, i) => (i * 2654435761) | 0);
      const ff = join(dir, `rt-f-${shape.join('x')}.npy`);
      const fi = join(dir, `rt-i-${shape.join('x')}.npy`);
      writeNpy(ff, f, shape);
      writeNpy(fi, k, shape);
      const rf = readNpy(ff);
      const ri = readNpy(fi);
      assert.equal(rf.dtype, 'float32');
      assert.deepEqual(rf.shape, shape);
      assert.deepEqual(rf.data, f);
      assert.equal(ri.dtype, 'int32');
      assert.deepEqual(ri.shape, shape);
      assert.deepEqual(ri.data, k);
      // Data starts on a 64-byte boundary.
      const bytes = readFileSync(ff);
      assert.equal((10 + bytes.readUInt16LE(8)) % 64, 0);
      assert.equal(bytes.length, 10 + bytes.readUInt16LE(8) + 4 * n);
    });
  }

  it('special float values survive', () => {
    const f = Float32Array.from([NaN, Infinity, -Infinity, -0, 3.4028234663852886e38, 1.401298464324817e-45]);
    const file = join(dir, 'special.npy');
    writeNpy(file, f, [6]);
    const r = readNpyAs(file, 'float32', 1);
    assert.ok(Number.isNaN(r.data[0]));
    assert.deepEqual([...r.data.subarray(1)], [...f.subarray(1)]);
    assert.ok(Object.is(r.data[3], -0));
  });

  it('switches to a version 2.0 header when the header outgrows 65535 bytes', () => {
    const shape = [...Array(25000).fill(1), 3];
    const file = join(dir, 'v2.npy');
    writeNpy(file, Float32Array.from([1, 2, 3]), shape);
    const bytes = readFileSync(file);
    assert.equal(bytes[6], 2);
    assert.equal((12 + bytes.readUInt32LE(8)) % 64, 0);
    const r = readNpy(file);
    assert.deepEqual(r.shape, shape);
    assert.deepEqual([...r.data], [1, 2, 3]);
  });

  it('overwrites an existing file in place, leaving no temporary files', () => {
    const sub = join(dir, 'overwrite');
    mkdirSync(sub);
    const file = join(sub, 'x.npy');
    writeNpy(file, Float32Array.from([1]), [1]);
    writeNpy(file, Float32Array.from([2, 3]), [2]);
    assert.deepEqual([...readNpy(file).data], [2, 3]);
    assert.deepEqual(readdirSync(sub), ['x.npy']);
  });

  it('rejects data that does not match the shape (a caller bug)', () => {
    assert.throws(() => encodeNpy(new Float32Array(5), [2, 3]), /holds 6 elements, data has 5/);
  });
});

describe('npy write failures', () => {
  it('a failed rename leaves no temporary file behind', () => {
    const sub = join(dir, 'fail-rename');
    mkdirSync(join(sub, 'target.npy'), { recursive: true }); // a directory where the file should go
    assert.throws(() => writeNpy(join(sub, 'target.npy'), new Float32Array(4), [4]), userError(/target\.npy: cannot write/));
    assert.deepEqual(readdirSync(sub), ['target.npy']);
  });
  it('a missing directory is a UserError naming the file', () => {
    const file = join(dir, 'no-such-dir', 'a.npy');
    assert.throws(() => writeNpy(file, new Int32Array(2), [2]), userError(/no-such-dir.*cannot write/));
  });
});

describe('npy malformed input', () => {
  const good = (): Buffer => encodeNpy(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]);
  const write = (name: string, bytes: Uint8Array): string => {
    const file = join(dir, name);
    writeFileSync(file, bytes);
    return file;
  };

  it('bad magic', () => {
    const b = good();
    b[1] = 0x4f;
    assert.throws(() => readNpy(write('magic.npy', b)), userError(/magic\.npy: not a \.npy file \(bad magic/));
    assert.throws(() => readNpy(write('short.npy', Buffer.from('hi'))), userError(/not a \.npy file/));
  });
  it('unsupported version', () => {
    const b = good();
    b[6] = 9;
    assert.throws(() => readNpy(write('version.npy', b)), userError(/unsupported \.npy format version 9\.0/));
  });
  it('truncated data says how many bytes were expected and found', () => {
    const b = good();
    assert.throws(() => readNpy(write('trunc.npy', b.subarray(0, b.length - 5))), userError(/trunc\.npy: truncated data \(expected 24 bytes .*found 19\)/));
  });
  it('trailing bytes', () => {
    assert.throws(() => readNpy(write('trail.npy', Buffer.concat([good(), Buffer.alloc(3)]))), userError(/3 unexpected bytes after the data/));
  });
  it('truncated header', () => {
    assert.throws(() => readNpy(write('trunc-header.npy', good().subarray(0, 40))), userError(/truncated header/));
  });
  it('header garbage', () => {
    const cases: Array<[string, RegExp]> = [
      ["{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", /malformed header/],
      ["{'descr': '<f4', 'fortran_order': False}", /no 'shape' key/],
      ["{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}", /unknown name 'Maybe'/],
      ["{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }", /'shape' must be a tuple of non-negative integers/],
      ['[1, 2]', /not a dict/],
      ["{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", /'fortran_order' must be True or False/],
    ];
    cases.forEach(([header, pattern], i) => {
      assert.throws(() => readNpy(write(`garbage-${i}.npy`, rawNpy(header, new Uint8Array(8)))), userError(pattern));
    });
  });
  it('unsupported dtypes name the dtype', () => {
    assert.throws(() => readNpy(write('f2.npy', rawNpy("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", new Uint8Array(4)))), userError(/unsupported dtype '<f2'/));
    assert.throws(() => readNpy(write('be.npy', rawNpy("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", new Uint8Array(8)))), userError(/'>f4': big-endian/));
    assert.throws(
      () => readNpy(write('struct.npy', rawNpy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", new Uint8Array(8)))),
      userError(/structured/),
    );
  });
  it('fortran order', () => {
    assert.throws(() => readNpy(write('fortran.npy', rawNpy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 1), }", new Uint8Array(8)))), userError(/fortran_order is True/));
  });
  it('missing file', () => {
    assert.throws(() => readNpy(join(dir, 'absent.npy')), userError(/absent\.npy: cannot read \(no such file\)/));
  });
});

describe('readNpyAs', () => {
  const i64 = (values: bigint[], shape: number[]): string => {
    const file = join(dir, `i64-${values.join('_')}.npy`);
    const data = new Uint8Array(BigInt64Array.from(values).buffer);
    writeFileSync(file, rawNpy(`{'descr': '<i8', 'fortran_order': False, 'shape': (${shape.join(', ')},), }`, data));
    return file;
  };
  const f64 = (values: number[]): string => {
    const file = join(dir, `f64-${values.length}-${values[0]}.npy`);
    writeFileSync(file, encodeNpy(Float64Array.from(values), [values.length]));
    return file;
  };
  it('converts int64 to int32 within range and refuses values outside it', () => {
    assert.deepEqual([...readNpyAs(i64([1n, -2n, 2147483647n, -2147483648n], [4]), 'int32').data], [1, -2, 2147483647, -2147483648]);
    assert.throws(() => readNpyAs(i64([1n, 2147483648n], [2]), 'int32'), userError(/value 2147483648 at index 1 does not fit in int32/));
  });
  it('converts float64 to float32 and refuses overflow', () => {
    assert.deepEqual([...readNpyAs(f64([0.5, -1.25, 1e-50]), 'float32').data], [0.5, -1.25, 0]);
    assert.throws(() => readNpyAs(f64([1, 1e39]), 'float32'), userError(/value 1e\+39 at index 1 does not fit in float32/));
  });
  it('refuses the wrong kind of dtype', () => {
    const ff = join(dir, 'as-f.npy');
    const fi = join(dir, 'as-i.npy');
    writeNpy(ff, new Float32Array(2), [2]);
    writeNpy(fi, new Int32Array(2), [2]);
    assert.throws(() => readNpyAs(ff, 'int32'), userError(/as-f\.npy: expected an integer array .* found dtype '<f4'/));
    assert.throws(() => readNpyAs(fi, 'float32'), userError(/as-i\.npy: expected a float array .* found dtype '<i4'/));
  });
  it('checks the rank', () => {
    const file = join(dir, 'rank.npy');
    writeNpy(file, new Float32Array(6), [2, 3]);
    assert.equal(readNpyAs(file, 'float32', 2).shape.length, 2);
    assert.throws(() => readNpyAs(file, 'float32', 1), userError(/expected a 1-D array, found shape \(2, 3\)/));
  });
});

// ---------------------------------------------------------------- interop with numpy

function numpyMissing(): string | undefined {
  try {
    execFileSync('python3', ['-c', 'import numpy'], { stdio: 'pipe' });
    return undefined;
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    if (err.code === 'ENOENT') return 'python3 is not installed';
    return `numpy is not importable: ${String(err.stderr ?? e).trim().split('\n').pop()}`;
  }
}
const skipNumpy = numpyMissing();

describe('npy interop with numpy', { skip: skipNumpy }, () => {
  const pydir = join(dir, 'numpy');
  mkdirSync(pydir, { recursive: true });

  it('reads files written by numpy (f4, f8, i4, i8, 0-d, empty, v2 and v3 headers)', () => {
    const script = `
import numpy as np, sys
from numpy.lib import format as fmt
d = sys.argv[1]
np.save(d + '/f4.npy', (np.arange(24, dtype=np.float32) * 0.5 - 3).reshape(2, 3, 4))
np.save(d + '/f8.npy', np.array([[1.5, -2.25], [1e-3, 3e10]], dtype=np.float64))
np.save(d + '/i4.npy', np.array([-7, 0, 2**31 - 1], dtype=np.int32))
np.save(d + '/i8.npy', np.array([[1, -2], [3, 2**31 - 1]], dtype=np.int64))
np.save(d + '/scalar.npy', np.float32(2.5))
np.save(d + '/empty.npy', np.zeros((3, 0), dtype=np.float32))
np.save(d + '/big.npy', np.arange(12, dtype=np.int64).astype('>i8'))
np.save(d + '/fortran.npy', np.asfortranarray(np.ones((2, 3), dtype=np.float32)))
np.save(d + '/half.npy', np.ones(3, dtype=np.float16))
for v in (2, 3):
    with open(d + '/v%d.npy' % v, 'wb') as f:
        fmt.write_array(f, np.arange(6, dtype=np.float32).reshape(3, 2), version=(v, 0))
`;
    execFileSync('python3', ['-c', script, pydir], { stdio: 'pipe' });

    const f4 = readNpy(join(pydir, 'f4.npy'));
    assert.equal(f4.dtype, 'float32');
    assert.deepEqual(f4.shape, [2, 3, 4]);
    assert.deepEqual([...f4.data], Array.from({ length: 24 }, (_, i) => i * 0.5 - 3));

    const f8 = readNpy(join(pydir, 'f8.npy'));
    assert.equal(f8.dtype, 'float64');
    assert.deepEqual([...f8.data], [1.5, -2.25, 1e-3, 3e10]);
    assert.deepEqual([...readNpyAs(join(pydir, 'f8.npy'), 'float32', 2).data], [1.5, -2.25, Math.fround(1e-3), Math.fround(3e10)]);

    assert.deepEqual([...readNpy(join(pydir, 'i4.npy')).data], [-7, 0, 2 ** 31 - 1]);
    const i8 = readNpy(join(pydir, 'i8.npy'));
    assert.equal(i8.dtype, 'int64');
    assert.deepEqual([...i8.data], [1n, -2n, 3n, 2n ** 31n - 1n]);
    assert.deepEqual([...readNpyAs(join(pydir, 'i8.npy'), 'int32').data], [1, -2, 3, 2 ** 31 - 1]);

    const scalar = readNpy(join(pydir, 'scalar.npy'));
    assert.deepEqual(scalar.shape, []);
    assert.deepEqual([...scalar.data], [2.5]);
    const empty = readNpy(join(pydir, 'empty.npy'));
    assert.deepEqual(empty.shape, [3, 0]);
    assert.equal(empty.data.length, 0);

    for (const v of [2, 3]) {
      const r = readNpy(join(pydir, `v${v}.npy`));
      assert.deepEqual(r.shape, [3, 2]);
      assert.deepEqual([...r.data], [0, 1, 2, 3, 4, 5]);
    }

    assert.throws(() => readNpy(join(pydir, 'big.npy')), userError(/'>i8': big-endian/));
    assert.throws(() => readNpy(join(pydir, 'fortran.npy')), userError(/fortran_order is True/));
    assert.throws(() => readNpy(join(pydir, 'half.npy')), userError(/unsupported dtype '<f2'/));
  });

  it('numpy reads the files this module writes', () => {
    writeNpy(join(pydir, 'ours-f.npy'), Float32Array.from([0.25, -1, 3.5, 7, 8, 9]), [3, 2]);
    writeNpy(join(pydir, 'ours-i.npy'), Int32Array.from([-5, 6]), [2]);
    writeNpy(join(pydir, 'ours-0d.npy'), Float32Array.from([4]), []);
    const script = `
import numpy as np, sys
d = sys.argv[1]
a = np.load(d + '/ours-f.npy'); assert a.dtype == np.float32 and a.shape == (3, 2), (a.dtype, a.shape)
assert a.tolist() == [[0.25, -1.0], [3.5, 7.0], [8.0, 9.0]], a
b = np.load(d + '/ours-i.npy'); assert b.dtype == np.int32 and b.tolist() == [-5, 6], b
c = np.load(d + '/ours-0d.npy'); assert c.shape == () and float(c) == 4.0, c
print('ok')
`;
    assert.equal(execFileSync('python3', ['-c', script, pydir], { encoding: 'utf8' }).trim(), 'ok');
  });
});
