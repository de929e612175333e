import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT } from './helpers/cli.js';

/** scripts/check-floors.mjs, the house rule `npm test` checks first, run on trees planted to break it (and on this one). */

const CHECK = path.join(ROOT, 'scripts', 'check-floors.mjs');
function check(root?: string): { code: number | null; lines: string[] } {
  const r = spawnSync(process.execPath, [CHECK, ...(root ? ['--root', root] : [])], { encoding: 'utf8' });
  return { code: r.status, lines: r.stderr.split('\n').filter((l) => l.startsWith('  ')).map((l) => l.trim()) };
}

function tree(files: Record<string, string>): string {
  const root = mkdtempSync(path.join(tmpdir(), 'ra-floors-'));
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    writeFileSync(path.join(root, rel), text);
  }
  mkdirSync(path.join(root, 'test'), { recursive: true });
  return root;
}

test('an import up a floor, across one floor, into test/ or scripts/, or from a folder without a floor is caught; down a floor is not', () => {
  const root = tree({
    'src/engine/a.ts': "import { x } from '../kernels/k.js';\nimport type { M } from '../model/m.js';\n",
    'src/kernels/k.ts': "export const x = 1;\nimport { r } from '../ring/r.js';\n",
    'src/ring/r.ts': "export const r = 1;\n",
    'src/model/m.ts': "export type M = 1;\nconst o = await import('../../test/oracles/o.js');\n",
    'src/newfolder/n.ts': 'export {};\n',
    'test/t.test.ts': "import { s } from '../scripts/s.js';\n",
  });
  try {
    const r = check(root);
    assert.equal(r.code, 1);
    assert.deepEqual(r.lines.sort(), [
      'src/engine/a.ts imports ../model/m.js: src/model (floor 5) is not below src/engine (floor 3)',
      'src/kernels/k.ts imports ../ring/r.js: src/ring (floor 2) is not below src/kernels (floor 2)',
      'src/model/m.ts imports ../../test/oracles/o.js: src/ never imports from test/',
      'src/newfolder/n.ts: src/newfolder has no floor in scripts/check-floors.mjs',
      'test/t.test.ts imports ../scripts/s.js: a test imports src/ or its helpers, never a script',
    ].sort());
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('this repository keeps the rule', () => {
  const r = check();
  assert.deepEqual(r.lines, []);
  assert.equal(r.code, 0);
});
