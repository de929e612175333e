#!/usr/bin/env node
// The house rule, checked: a folder of src/ imports only from floors below its
// own (docs/architecture.md); src/ never imports a test oracle or a script; a
// test never imports a script. Run by `npm test` before the suites. Plain
// Node, no dependency: it reads the import specifiers of every .ts file.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

/** Floor of each folder of src/, lowest first; a file directly in src/ is its own case below. */
const FLOORS = {
  config: 1,
  tensor: 1,
  addon: 1,
  ring: 2,
  kernels: 2,
  engine: 3,
  attention: 4,
  model: 5,
  train: 6,
  plan: 6,
  bench: 6,
  jobs: 7,
  launch: 8,
  view: 9,
  cli: 10,
};
// errors.ts is below everything; index.ts (the package's entry) above everything.
const FILE_FLOORS = { 'errors.ts': 0, 'index.ts': 11 };

function* tsFiles(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* tsFiles(p);
    else if (e.name.endsWith('.ts')) yield p;
  }
}

function specifiers(text) {
  const out = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?\sfrom\s+'([^']+)'/g)) out.push(m[1]);
  for (const m of text.matchAll(/import\(\s*'([^']+)'\s*\)/g)) out.push(m[1]);
  return out;
}

/** Where a path of the repository sits: [area, floor] (floor only inside src/). */
function place(rel) {
  const parts = rel.split(path.sep);
  if (parts[0] !== 'src') return [parts[0], undefined];
  if (parts.length === 2) return [`src/${parts[1]}`, FILE_FLOORS[parts[1].replace(/\.js$/, '.ts')]];
  return [`src/${parts[1]}`, FLOORS[parts[1]]];
}

function violations(root = ROOT) {
  const found = [];
  for (const area of ['src', 'test']) {
    for (const file of tsFiles(path.join(root, area))) {
      const from = path.relative(root, file);
      const [fromArea, fromFloor] = place(from);
      if (area === 'src' && fromFloor === undefined) found.push(`${from}: src/${from.split(path.sep)[1]} has no floor in scripts/check-floors.mjs`);
      for (const spec of specifiers(readFileSync(file, 'utf8'))) {
        if (!spec.startsWith('.')) continue;
        const to = path.relative(root, path.resolve(path.dirname(file), spec));
        const [toArea, toFloor] = place(to);
        if (area === 'src' && (toArea === 'test' || toArea === 'scripts')) found.push(`${from} imports ${spec}: src/ never imports from ${toArea}/`);
        else if (area === 'test' && toArea === 'scripts') found.push(`${from} imports ${spec}: a test imports src/ or its helpers, never a script`);
        else if (area === 'src' && toArea !== fromArea && toFloor !== undefined && fromFloor !== undefined && toFloor >= fromFloor) {
          found.push(`${from} imports ${spec}: ${toArea} (floor ${toFloor}) is not below ${fromArea} (floor ${fromFloor})`);
        }
      }
    }
  }
  return found;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  // --root DIR: check another tree (test/floors.test.ts plants broken ones).
  const at = process.argv.indexOf('--root');
  const found = violations(at > 0 ? path.resolve(process.argv[at + 1]) : ROOT);
  if (found.length > 0) {
    process.stderr.write(`check-floors: ${found.length} import(s) break the house rule (docs/architecture.md):\n${found.map((f) => `  ${f}`).join('\n')}\n`);
    process.exit(1);
  }
  process.stdout.write(`check-floors: every import of src/ runs down a floor; no test imports a script\n`);
}
