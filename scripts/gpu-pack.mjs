#!/usr/bin/env node
// `npm run gpu:pack`: everything `gpu:check` needs on a machine with a GPU and
// neither Node nor network, in one folder and one .tar.xz beside it:
//   node                          this Node binary
//   ringattn/package.json         (marks dist/ as ES modules)
//   ringattn/dist/                the compiled library
//   ringattn/scripts/gpu-check.mjs
//   ringattn/build/Release/*.node the native CPU addon (what the check compares against)
//   ringattn/node_modules/webgpu  Dawn's bindings, this platform's dawn.node only
//   ringattn/node_modules/zod     (the size parser's import)
// Run there: cd gpu-pack && ./node ringattn/scripts/gpu-check.mjs --out gpu-check.json
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.resolve(process.argv[2] ?? path.join(root, 'gpu-pack'));
const app = path.join(out, 'ringattn');
const need = (p, what) => {
  if (!existsSync(p)) {
    console.error(`gpu:pack: ${p} is missing (${what})`);
    process.exit(2);
  }
  return p;
};

need(path.join(root, 'dist', 'engine', 'webgpu', 'engine.js'), 'run `npm run build` first');
const addons = readdirSync(need(path.join(root, 'build', 'Release'), 'run `npm run build:native` first')).filter((f) => f.endsWith('.node'));
const arch = process.platform === 'darwin' ? 'universal' : process.arch;
const dawn = need(path.join(root, 'node_modules', 'webgpu', 'dist', `${process.platform}-${arch}`, 'dawn.node'), 'the webgpu package');

rmSync(out, { recursive: true, force: true });
mkdirSync(path.join(app, 'scripts'), { recursive: true });
cpSync(process.execPath, path.join(out, 'node'));
writeFileSync(path.join(app, 'package.json'), `${JSON.stringify({ name: 'ringattn-gpu-check', private: true, type: 'module' }, null, 2)}\n`);
cpSync(path.join(root, 'dist'), path.join(app, 'dist'), { recursive: true, filter: (src) => !src.endsWith('.map') && !src.endsWith('.d.ts') });
cpSync(path.join(root, 'scripts', 'gpu-check.mjs'), path.join(app, 'scripts', 'gpu-check.mjs'));
mkdirSync(path.join(app, 'build', 'Release'), { recursive: true });
for (const f of addons) cpSync(path.join(root, 'build', 'Release', f), path.join(app, 'build', 'Release', f));
const webgpu = path.join(app, 'node_modules', 'webgpu');
mkdirSync(path.join(webgpu, 'dist', `${process.platform}-${arch}`), { recursive: true });
for (const f of ['package.json', 'index.js']) cpSync(path.join(root, 'node_modules', 'webgpu', f), path.join(webgpu, f));
cpSync(dawn, path.join(webgpu, 'dist', `${process.platform}-${arch}`, 'dawn.node'));
cpSync(path.join(root, 'node_modules', 'zod'), path.join(app, 'node_modules', 'zod'), { recursive: true });

const tarball = `${out}.tar.xz`;
execFileSync('tar', ['-cJf', tarball, '-C', path.dirname(out), path.basename(out)], { env: { ...process.env, XZ_OPT: '-6 -T0' } });
const mib = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;
const du = (p) => (statSync(p).isDirectory() ? readdirSync(p).reduce((s, f) => s + du(path.join(p, f)), 0) : statSync(p).size);
console.log(`gpu:pack: ${out} (${mib(du(out))}), ${tarball} (${mib(statSync(tarball).size)} compressed)`);
console.log(`on the GPU machine: tar -xJf ${path.basename(tarball)} && cd ${path.basename(out)} && ./node ringattn/scripts/gpu-check.mjs --out gpu-check.json`);
