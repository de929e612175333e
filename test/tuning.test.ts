import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { loadEngine } from '../src/engine/index.js';
import { nativeEngineUnavailable } from '../src/engine/native.js';
import { attentionTiles, DEFAULT_TILES, tunedGemm, tunedTiles, tuningFilePath } from '../src/engine/tuning.js';

const dir = mkdtempSync(path.join(tmpdir(), 'ra-tuning-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const missing = nativeEngineUnavailable();

describe('block sizes tuned for the machine', { skip: missing ? `native addon unavailable: ${missing}` : false }, () => {
  test('the GEMM blocking is measured once, cached with its evidence, and measured again only when asked', async () => {
    const file = path.join(dir, 'gemm.json');
    const first = await tunedGemm({ threads: 1 }, { path: file });
    assert.equal(first.source, 'measured');
    assert.ok(first.value.mc > 0 && first.value.kc > 0 && first.value.nc > 0);
    const saved = JSON.parse(readFileSync(file, 'utf8'));
    const [key] = Object.keys(saved.entries);
    assert.match(key, /\| 1 thread\(s\) \| gemm$/);
    assert.equal(Object.keys(saved.entries[key].timings).length, 9, 'every candidate timed');
    assert.deepEqual(await tunedGemm({ threads: 1 }, { path: file }), { value: first.value, source: 'cached' });
    assert.equal((await tunedGemm({ threads: 1 }, { path: file, fresh: true })).source, 'measured');
    assert.ok(!existsSync(`${file}.lock`), 'the lock is released');
  });

  test('attention tiles per head shape; concurrent askers measure once', async () => {
    const file = path.join(dir, 'tiles.json');
    const q = { heads: 2, kvHeads: 1, headDim: 32, threads: 1 };
    const [a, b] = await Promise.all([tunedTiles(q, { path: file }), tunedTiles(q, { path: file })]);
    assert.deepEqual(a.value, b.value);
    assert.deepEqual([a.source, b.source].sort(), ['cached', 'measured']);
    assert.ok([64, 128, 256].includes(a.value.tileQ) && [64, 128, 256].includes(a.value.tileKV));
    const other = await tunedTiles({ ...q, headDim: 64 }, { path: file });
    assert.equal(other.source, 'measured', 'another head shape is another entry');
    assert.equal(Object.keys(JSON.parse(readFileSync(file, 'utf8')).entries).length, 2);
  });

  test('the engine takes the cached blocking', async () => {
    const saved = process.env.RINGATTN_TUNING_FILE;
    process.env.RINGATTN_TUNING_FILE = path.join(dir, 'engine.json');
    try {
      assert.equal(tuningFilePath(), path.join(dir, 'engine.json'));
      const { value } = await tunedGemm({ threads: 1 });
      const { engine, reason } = await loadEngine('native', { threads: 1 });
      assert.match(reason, new RegExp(`GEMM blocking mc ${value.mc} kc ${value.kc}, tuned for this machine`));
      engine.dispose();
    } finally {
      if (saved === undefined) delete process.env.RINGATTN_TUNING_FILE;
      else process.env.RINGATTN_TUNING_FILE = saved;
    }
  });
});

describe('tiles from the spec', () => {
  test('numbers pass through; auto means the default for kernels other than native', async () => {
    const q = { heads: 2, kvHeads: 2, headDim: 16, threads: 1 };
    assert.deepEqual(await attentionTiles({ tileQ: 32, tileKV: 48 }, 'native', q), { tileQ: 32, tileKV: 48, note: 'tiles from the spec' });
    const r = await attentionTiles({ tileQ: 'auto', tileKV: 'auto' }, 'reference', q);
    assert.equal(r.tileQ, DEFAULT_TILES.tileQ);
    assert.equal(r.tileKV, DEFAULT_TILES.tileKV);
    const half = await attentionTiles({ tileQ: 'auto', tileKV: 16 }, 'tfjs', q);
    assert.deepEqual([half.tileQ, half.tileKV], [DEFAULT_TILES.tileQ, 16]);
  });
});
