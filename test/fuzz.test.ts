import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseSpec } from '../src/config/index.js';
import { UserError } from '../src/errors.js';
import { encodeNpy, parseNpy } from '../src/tensor/npy.js';
import { ROOT } from './helpers/cli.js';
import { rng as prng } from './helpers/rng.js';

/*
 * A bounded, seeded fuzz of the two parsers of untrusted files: the cluster
 * spec (YAML) and .npy arrays. Every mutated input must either parse or be
 * refused with a UserError of one line; any other exception, a multi-line
 * message or a slow case (a hang in the making) fails, printing the seed and
 * case number that reproduce it. FUZZ_SEED and FUZZ_CASES override the
 * defaults (for a longer run by hand).
 */

const SEED = Number(process.env.FUZZ_SEED ?? 20240607);
const CASES = Number(process.env.FUZZ_CASES ?? 2500);
/** .npy parsing is ~20x cheaper than a spec's: more cases for the same time. */
const NPY_CASES = 4 * CASES;
/** Any single case taking longer is reported: both parsers are linear in their input. */
const SLOW_MS = 500;


interface Rng {
  float(): number;
  int(n: number): number;
  pick<T>(xs: readonly T[]): T;
}

function rngOf(seed: number): Rng {
  const f = prng(seed);
  return { float: f, int: (n) => Math.floor(f() * n), pick: (xs) => xs[Math.floor(f() * xs.length)] };
}

/** Runs `parse` on each mutated input; returns how many parsed and how many were refused. */
function fuzz<T>(what: string, cases: number, seeds: readonly T[], mutate: (x: T, r: Rng) => T, parse: (x: T) => unknown, show: (x: T) => string): { ok: number; refused: number; maxMs: number } {
  let ok = 0;
  let refused = 0;
  let maxMs = 0;
  for (let i = 0; i < cases; i++) {
    const r = rngOf(SEED * 7919 + i);
    let input = r.pick(seeds);
    const rounds = 1 + r.int(4);
    for (let k = 0; k < rounds; k++) input = mutate(input, r);
    const t0 = performance.now();
    try {
      parse(input);
      ok++;
    } catch (e) {
      const where = `${what} case ${i} (FUZZ_SEED=${SEED}): ${show(input)}`;
      if (!(e instanceof UserError)) assert.fail(`${where}\nthrew ${(e as Error)?.name}: ${(e as Error)?.message}`);
      assert.ok(e.message.length > 0 && !e.message.includes('\n'), `${where}\nmessage is not one line: ${JSON.stringify(e.message)}`);
      refused++;
    }
    const ms = performance.now() - t0;
    maxMs = Math.max(maxMs, ms);
    assert.ok(ms < SLOW_MS, `${what} case ${i} (FUZZ_SEED=${SEED}) took ${ms.toFixed(0)} ms: ${show(input)}`);
  }
  return { ok, refused, maxMs };
}

// ---------------------------------------------------------------- specs

const SPEC_SEEDS = [
  readFileSync(path.join(ROOT, 'configs', 'ci.yaml'), 'utf8'),
  readFileSync(path.join(ROOT, 'configs', 'localhost.yaml'), 'utf8'),
  readFileSync(path.join(ROOT, 'configs', 'multi-host.example.yaml'), 'utf8'),
  'hosts:\n  - name: a\n    address: 10.0.0.1\n    slots: 2\n    ssh: { user: me, port: 2222 }\n  - { name: b, address: "::1", slots: 1 }\nring: { basePort: 30000, maxMessageBytes: 64M }\nsecurity: curve\n',
  'hosts: [{ name: h, address: 127.0.0.1 }]\ntrain: { steps: 10, seqLen: 1K, lr: 1e-3 }\nmodel: { dModel: 64, heads: 4, kvHeads: 2 }\n',
];

const YAML_TOKENS = [
  ':', ': ', '- ', '-', '[', ']', '{', '}', ',', '&a ', '*a', '!!str ', '!!binary ', '!', '|', '>', '#', '"', "'", '\n', '\n  ', '\t', ' ', '%YAML 1.2\n', '---\n', '...\n', '? ', '<<: *a\n',
  '~', 'null', 'true', 'no', '-1', '0', '1e309', '-.inf', '.nan', '0x10', '0o17', '1_000', '99999999999999999999', '1.5', '64M', '1T', '-3K', 'NaN',
  'hosts', 'slots', 'address', 'name', 'ring', 'basePort', 'train', 'model', 'security', 'curve', 'ssh', 'port', 'env', 'gpus', 'netns',
  '127.0.0.1', '::1', '0.0.0.0', '256.1.1.1', 'a'.repeat(300), '\u0000', '\uFFFD', '\u202E', 'é',
];

function mutateYaml(s: string, r: Rng): string {
  const at = r.int(s.length + 1);
  switch (r.int(8)) {
    case 0: // insert a token
      return s.slice(0, at) + r.pick(YAML_TOKENS) + s.slice(at);
    case 1: // delete a range
      return s.slice(0, at) + s.slice(at + 1 + r.int(20));
    case 2: // replace a character by any character
      return s.slice(0, at) + String.fromCharCode(r.int(128)) + s.slice(at + 1);
    case 3: {
      // swap two lines, or duplicate one
      const lines = s.split('\n');
      const a = r.int(lines.length);
      const b = r.int(lines.length);
      if (r.int(2)) [lines[a], lines[b]] = [lines[b], lines[a]];
      else lines.splice(a, 0, lines[b]);
      return lines.join('\n');
    }
    case 4: // replace a value after a colon
      return s.replace(/: ([^\n]*)/g, (m, v: string) => (r.int(6) === 0 ? `: ${r.pick(YAML_TOKENS)}` : `: ${v}`));
    case 5: // truncate
      return s.slice(0, at);
    case 6: // change indentation of a line
      return s.replace(/\n( *)/g, (m, sp: string) => (r.int(8) === 0 ? `\n${' '.repeat(r.int(7))}` : `\n${sp}`));
    default: // splice a piece of another spec
      return s.slice(0, at) + r.pick(SPEC_SEEDS).slice(r.int(200), r.int(400)) + s.slice(at);
  }
}

// ---------------------------------------------------------------- .npy

const NPY_SEEDS: Buffer[] = [
  encodeNpy(Float32Array.from({ length: 24 }, (_, i) => i / 7), [2, 3, 4]),
  encodeNpy(new Int32Array([1, -2, 3]), [3]),
  encodeNpy(new Float64Array(0), [0, 5]),
  encodeNpy(Float32Array.of(42), []),
  // A version 2.0 header.
  (() => {
    const v1 = encodeNpy(new Int32Array([7, 8]), [2]);
    const hlen = v1.readUInt16LE(8);
    const out = Buffer.alloc(v1.length + 2);
    v1.copy(out, 0, 0, 8);
    out[6] = 2;
    out.writeUInt32LE(hlen, 8);
    v1.copy(out, 12, 10);
    return out;
  })(),
];

const HEADER_TOKENS = [
  "'descr'", "'<f4'", "'>f4'", "'|u1'", "'<f2'", "'<i8'", "'<c16'", "[('a', '<f4')]", "'fortran_order'", 'True', 'False', 'None', "'shape'",
  '(', ')', '()', '(,)', '(1,)', '(-1,)', '(99999999999, 99999999999)', '(9007199254740993,)', '(2**40,)', '{', '}', ':', ',', "'", '"', '\\', '1L', '0x1', '1e3', '\n', ' ', '\u00ff',
  '('.repeat(2000), '['.repeat(2000), "{'a':".repeat(500),
];

function mutateNpy(b: Buffer, r: Rng): Buffer {
  const headerEnd = b.length >= 10 && b[6] === 1 ? Math.min(b.length, 10 + b.readUInt16LE(8)) : Math.min(b.length, 12);
  const at = r.int(b.length + 1);
  switch (r.int(9)) {
    case 0: {
      // flip a byte, mostly in the header
      const c = Buffer.from(b);
      const i = r.int(3) ? r.int(Math.max(1, headerEnd)) : r.int(Math.max(1, c.length));
      if (c.length) c[i % c.length] ^= 1 + r.int(255);
      return c;
    }
    case 1: // truncate
      return b.subarray(0, at);
    case 2: // append
      return Buffer.concat([b, Buffer.alloc(1 + r.int(64), r.int(256))]);
    case 3: {
      // a random header length
      const c = Buffer.from(b);
      if (c.length >= 12) c[6] === 1 ? c.writeUInt16LE(r.int(65536), 8) : c.writeUInt32LE(r.int(2 ** 32), 8);
      return c;
    }
    case 4: {
      // the version byte
      const c = Buffer.from(b);
      if (c.length > 7) c[6] = r.pick([0, 1, 2, 3, 4, 255]);
      return c;
    }
    case 5: {
      // a token spliced into the header text; the length field follows (version 1)
      if (b.length < 10 || b[6] !== 1) return b;
      const hlen = b.readUInt16LE(8);
      const text = b.subarray(10, 10 + hlen).toString('latin1');
      const p = r.int(text.length + 1);
      const nt = (text.slice(0, p) + r.pick(HEADER_TOKENS) + text.slice(p + r.int(4))).slice(0, 65535);
      const head = Buffer.alloc(10);
      b.copy(head, 0, 0, 8);
      head.writeUInt16LE(nt.length, 8);
      return Buffer.concat([head, Buffer.from(nt, 'latin1'), b.subarray(10 + hlen)]);
    }
    case 6: {
      // rewrite the shape
      const text = b.toString('latin1');
      const shapes = ['()', '(0,)', '(3,)', '(1, 1, 1, 1, 1, 1, 1)', '(4294967296, 4294967296)', '(-3,)', '(1.5,)', "('a',)", '(True,)', '[2, 3]'];
      return Buffer.from(text.replace(/'shape': \([^)]*\)/, `'shape': ${r.pick(shapes)}`), 'latin1');
    }
    case 7: // random bytes
      return Buffer.from(Array.from({ length: r.int(300) }, () => r.int(256)));
    default: {
      // overwrite a range with one byte value
      const c = Buffer.from(b);
      c.fill(r.int(256), Math.min(at, c.length), Math.min(c.length, at + r.int(16)));
      return c;
    }
  }
}

describe('fuzz (bounded, seeded)', () => {
  it(`mutated cluster specs: parsed, or refused with a one-line UserError (${CASES} cases)`, { timeout: 120000 }, () => {
    const t0 = Date.now();
    const res = fuzz('spec', CASES, SPEC_SEEDS, mutateYaml, (s) => parseSpec(s, 'fuzz.yaml'), (s) => JSON.stringify(s.slice(0, 300)));
    console.log(`fuzz spec: ${CASES} cases in ${Date.now() - t0} ms, ${res.ok} parsed, ${res.refused} refused, slowest ${res.maxMs.toFixed(1)} ms`);
    assert.ok(res.refused > CASES / 10 && res.ok > 0, 'the mutations should produce both outcomes');
  });

  it('a YAML alias bomb is refused, not expanded', () => {
    const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]', ...'bcdefghi'.split('').map((c, i) => `${c}: &${c} [${Array(9).fill(`*${String.fromCharCode(97 + i)}`).join(',')}]`), 'hosts: *i', ''].join('\n');
    const t0 = Date.now();
    assert.throws(() => parseSpec(bomb, 'bomb.yaml'), (e: unknown) => e instanceof UserError && !e.message.includes('\n'));
    assert.ok(Date.now() - t0 < 2000);
  });

  it('a .npy header nested 60000 deep, or with control characters in its dtype, is refused in one line', () => {
    const header = (text: string) => {
      const head = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, 0, 0]);
      head.writeUInt16LE(text.length, 8);
      return Buffer.concat([head, Buffer.from(text, 'latin1')]);
    };
    for (const text of [
      `{'descr': '<f4', 'fortran_order': False, 'shape': ${'('.repeat(60000)}}`,
      `{'descr': ${'['.repeat(30000)}}`,
      `{'descr': '\n<f4\r', 'fortran_order': False, 'shape': (1,), }`,
    ]) {
      assert.throws(() => parseNpy(header(text), 'deep.npy'), (e: unknown) => e instanceof UserError && !e.message.includes('\n'));
    }
  });

  it(`mutated .npy files: parsed consistently, or refused with a one-line UserError (${NPY_CASES} cases)`, { timeout: 120000 }, () => {
    const t0 = Date.now();
    const res = fuzz(
      'npy',
      NPY_CASES,
      NPY_SEEDS,
      mutateNpy,
      (b) => {
        const a = parseNpy(b, 'fuzz.npy');
        // What parses must be self-consistent.
        assert.equal(a.data.length, a.shape.reduce((x, y) => x * y, 1));
        return a;
      },
      (b) => b.subarray(0, 160).toString('base64'),
    );
    console.log(`fuzz npy: ${NPY_CASES} cases in ${Date.now() - t0} ms, ${res.ok} parsed, ${res.refused} refused, slowest ${res.maxMs.toFixed(1)} ms`);
    assert.ok(res.refused > NPY_CASES / 10 && res.ok > 0, 'the mutations should produce both outcomes');
  });
});
