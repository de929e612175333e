// Builds the native attention kernel (binding.gyp, native/) at `npm install`.
// Nothing is downloaded: node-gyp is the copy npm ships, and Node's own headers
// are passed with --nodedir. A failed build never fails the installation: it
// prints one warning line, records why in build/native-status.json (read by
// loadNativeKernel and `ringattn doctor`), and exits 0; ringattn then uses the
// tfjs kernel. RINGATTN_SKIP_NATIVE=1 skips the build.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = join(root, 'build');
const statusPath = join(buildDir, 'native-status.json');
const logPath = join(buildDir, 'native-build.log');
const addonPath = join(buildDir, 'Release', 'ringattn_native.node');

function record(status) {
  mkdirSync(buildDir, { recursive: true });
  writeFileSync(statusPath, JSON.stringify({ ...status, node: process.version, date: new Date().toISOString() }, null, 2) + '\n');
}

function fail(reason) {
  record({ ok: false, reason });
  console.warn(`ringattn: native attention kernel not built (${reason}); the tfjs kernel will be used`);
  process.exit(0);
}

if (process.env.RINGATTN_SKIP_NATIVE && process.env.RINGATTN_SKIP_NATIVE !== '0') {
  record({ ok: false, skipped: true, reason: 'skipped because RINGATTN_SKIP_NATIVE is set' });
  console.warn('ringattn: RINGATTN_SKIP_NATIVE is set; native attention kernel not built');
  process.exit(0);
}

// node-gyp: the one npm was started with, else the one inside npm's own install
// next to this Node (Unix: <prefix>/lib/node_modules, Windows: <prefix>/node_modules).
function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  const bin = dirname(process.execPath);
  for (const base of [join(bin, '..', 'lib', 'node_modules'), join(bin, 'node_modules')]) {
    candidates.push(join(base, 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  }
  return candidates.find((p) => existsSync(p));
}

// Node's headers: an explicit nodedir, else the prefix this Node runs from.
// Without them node-gyp would try to download them, which we never want.
function findNodeDir() {
  const candidates = [];
  if (process.env.npm_config_nodedir) candidates.push(process.env.npm_config_nodedir);
  candidates.push(resolve(dirname(process.execPath), '..'));
  return candidates.find((dir) => existsSync(join(dir, 'include', 'node', 'node_api.h')) && existsSync(join(dir, 'include', 'node', 'common.gypi')));
}

const nodeGyp = findNodeGyp();
if (!nodeGyp) fail(`node-gyp not found (looked for npm's copy next to ${process.execPath})`);
const nodeDir = findNodeDir();
if (!nodeDir) fail(`Node headers not found (no include/node/node_api.h under ${resolve(dirname(process.execPath), '..')}; set npm_config_nodedir)`);

const jobs = String(Number(process.env.RINGATTN_NATIVE_JOBS) || Math.min(4, availableParallelism()));
const started = Date.now();
const result = spawnSync(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodeDir}`, '--jobs', jobs], {
  cwd: root,
  encoding: 'utf8',
  env: { ...process.env, npm_config_nodedir: nodeDir },
  timeout: 15 * 60 * 1000,
  maxBuffer: 64 * 1024 * 1024,
});
const log = `${result.stdout ?? ''}${result.stderr ?? ''}`;
mkdirSync(buildDir, { recursive: true });
writeFileSync(logPath, log);

// The most telling line of a failed build: a compiler error, a Python
// exception from gyp, else node-gyp's own complaint.
function firstError(text) {
  const lines = text.split('\n');
  const pick =
    lines.find((l) => /(^|: )(fatal )?error\b/i.test(l) && !/^(gyp|make)/.test(l)) ??
    lines.find((l) => /^[A-Za-z.]*(Error|Exception): /.test(l)) ??
    lines.find((l) => /^gyp ERR! stack Error/.test(l)) ??
    lines.find((l) => /^gyp ERR!/.test(l));
  return pick?.replace(/^gyp ERR! (stack )?/, '').trim().slice(0, 300);
}

if (result.error || result.status !== 0 || !existsSync(addonPath)) {
  const why = result.error
    ? `${result.error.message}`
    : `node-gyp exited with ${result.status ?? result.signal}: ${firstError(log) ?? 'see build/native-build.log'}`;
  fail(`${why}; full log in ${logPath}`);
}

// Load it once in a fresh process, so a broken binary is reported now rather than at first use.
const probe = spawnSync(process.execPath, ['-e', `console.log(JSON.stringify(require(${JSON.stringify(addonPath)}).isas()))`], {
  encoding: 'utf8',
});
if (probe.status !== 0) fail(`built addon does not load: ${(probe.stderr || '').trim().split('\n')[0]}`);
const isas = JSON.parse(probe.stdout.trim());
record({ ok: true, isas, seconds: Math.round((Date.now() - started) / 1000) });
console.log(`ringattn: native attention kernel built (${isas.join(', ')})`);
