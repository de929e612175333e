import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { UserError } from '../src/errors.js';
import {
  ClusterSpecSchema,
  canonicalJson,
  defaultSpecPath,
  formatSize,
  isHostOrIp,
  isLoopback,
  loadSpec,
  parseSize,
  parseSpec,
  rankTable,
  resolvedLaunch,
  resolvedSecurity,
  resolvedTransport,
  sizeSchema,
  specFromObject,
  specHash,
  worldSize,
  workerThreads,
} from '../src/config/index.js';
import { availableParallelism } from 'node:os';
import { DOCS_FILE, SCHEMA_FILE, renderConfigDocs, renderJsonSchema } from '../src/config/docs.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const FIX = 'test/fixtures/config';
const fixture = (name: string) => join(ROOT, FIX, name);

/** Runs `fn`, asserts it throws a one-line UserError with exit code 2, and returns the message. */
function userError(fn: () => unknown): string {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof UserError, `expected a UserError, got ${String(caught)}`);
  assert.equal(caught.exitCode, 2);
  assert.ok(!caught.message.includes('\n'), `message is not one line: ${JSON.stringify(caught.message)}`);
  return caught.message;
}

const HOST = 'hosts:\n  - name: local\n    address: 127.0.0.1\n';

describe('parseSize', () => {
  test('integers and K/M/G suffixes are powers of two', () => {
    assert.equal(parseSize(4096, 'x'), 4096);
    assert.equal(parseSize('4096', 'x'), 4096);
    assert.equal(parseSize('64K', 'x'), 65536);
    assert.equal(parseSize('64k', 'x'), 65536);
    assert.equal(parseSize('8M', 'x'), 8388608);
    assert.equal(parseSize('1G', 'x'), 1073741824);
    assert.equal(parseSize('1.5K', 'x'), 1536);
    assert.equal(parseSize(' 2K ', 'x'), 2048);
  });

  test('bad sizes name the value and say what is expected', () => {
    assert.equal(
      userError(() => parseSize('1.3K', 'train.seqLen')),
      'train.seqLen: "1.3K" is not a whole number (1331.2); write an integer or a size whose value is whole',
    );
    assert.equal(
      userError(() => parseSize('8Q', '--seq-len')),
      '--seq-len: expected a positive integer or a size like "64K", "8M", "1G" (powers of two), got "8Q"',
    );
    for (const bad of [0, -4, 1.5, Number.NaN, '', 'K', '-1K', '1e3', '1KB', '0']) {
      assert.match(userError(() => parseSize(bad, 'n')), /^n: /, `accepted ${String(bad)}`);
    }
  });

  test('sizeSchema yields numbers and formatSize writes them back', () => {
    assert.equal(sizeSchema.parse('64K'), 65536);
    assert.equal(sizeSchema.parse(100), 100);
    assert.equal(sizeSchema.safeParse('1.3K').success, false);
    assert.equal(sizeSchema.safeParse(-1).success, false);
    assert.equal(formatSize(65536), '64K');
    assert.equal(formatSize(1536), '1536');
    assert.equal(formatSize(3 * 2 ** 30), '3G');
  });
});

describe('valid specs', () => {
  test('a minimal spec loads with every default filled in', () => {
    const spec = loadSpec(fixture('minimal.yaml'));
    assert.equal(spec.name, 'ringattn');
    assert.equal(spec.runDir, 'runs');
    assert.equal(spec.backend, 'auto');
    assert.equal(spec.kernel, 'auto');
    assert.equal(spec.threads, 'auto');
    assert.equal(spec.engine, 'auto');
    assert.equal(spec.security, 'auto');
    assert.equal(spec.logLevel, 'info');
    assert.deepEqual(spec.hosts, [{ name: 'local', address: '127.0.0.1', slots: 2, launch: 'auto', env: {} }]);
    assert.deepEqual(spec.ring, {
      basePort: 29500,
      transport: 'auto',
      shmBytes: 128 * 2 ** 20,
      connectTimeoutMs: 10000,
      rendezvousTimeoutMs: 30000,
      heartbeatIntervalMs: 500,
      heartbeatTimeoutMs: 3000,
      opTimeoutMs: 120000,
      maxMessageBytes: 2 ** 30,
      maxQueuedBytes: 2 ** 32,
      wire: 'float32',
    });
    assert.deepEqual(spec.attention, { causal: true, layout: 'auto', tileQ: 'auto', tileKV: 'auto', overlap: true, scope: 'ring' });
    assert.deepEqual(spec.model, {
      vocabSize: 256,
      dModel: 64,
      layers: 2,
      heads: 4,
      kvHeads: 4,
      ffnHidden: 256,
      ffnChunk: 256,
      norm: 'rms',
      tiedEmbeddings: true,
      ropeBase: 10000,
      initStd: 0.02,
    });
    assert.deepEqual(spec.train, {
      steps: 200,
      seqLen: 1024,
      batch: 1,
      lr: 3e-3,
      minLr: 3e-4,
      warmupSteps: 20,
      weightDecay: 0.01,
      beta1: 0.9,
      beta2: 0.95,
      eps: 1e-8,
      gradClip: 1,
      checkpointEvery: 50,
      evalEvery: 25,
      evalBatches: 2,
      logEvery: 1,
      seed: 1234,
      lengthSchedule: [],
    });
    assert.deepEqual(spec.data, { kind: 'text', paths: [], evalFraction: 0.05, passkey: { valueTokens: 4, minDepth: 0, maxDepth: 1 } });
    assert.deepEqual(spec.bench, { seqLen: 65536, heads: 2, kvHeads: 1, headDim: 32, backward: false, timeLimitS: 300, iterations: 3 });
    assert.equal(worldSize(spec), 2);
    assert.equal(resolvedLaunch(spec.hosts[0]), 'local');
    assert.equal(resolvedSecurity(spec), 'none');
  });

  test('defaults are fresh objects, not shared between loads', () => {
    const a = loadSpec(fixture('minimal.yaml'));
    a.data.paths.push('x');
    a.hosts[0].env.X = '1';
    const b = loadSpec(fixture('minimal.yaml'));
    assert.deepEqual(b.data.paths, []);
    assert.deepEqual(b.hosts[0].env, {});
  });

  test('rankTable assigns ranks host by host in file order', () => {
    const spec = loadSpec(fixture('three-hosts.yaml'));
    assert.equal(worldSize(spec), 6);
    assert.deepEqual(
      rankTable(spec).map((r) => [r.rank, r.host, r.address, r.localRank, r.port, r.gpu]),
      [
        [0, 'a', '127.0.0.1', 0, 40001, 0],
        [1, 'a', '127.0.0.1', 1, 40002, 1],
        [2, 'b', '127.0.0.2', 0, 40003, 0],
        [3, 'c', 'node-c.example.org', 0, 40004, 2],
        [4, 'c', 'node-c.example.org', 1, 40005, 0],
        [5, 'c', 'node-c.example.org', 2, 40006, 1],
      ],
    );
    assert.deepEqual(
      rankTable(spec).map((r) => r.bindAddress),
      ['127.0.0.1', '127.0.0.1', '127.0.0.2', 'node-c.example.org', 'node-c.example.org', 'node-c.example.org'],
    );
    assert.deepEqual(spec.hosts.map(resolvedLaunch), ['local', 'local', 'ssh']);
    assert.equal(resolvedSecurity(spec), 'curve');
    assert.equal(resolvedTransport(spec, 'a', 'a'), 'ipc');
    assert.equal(resolvedTransport(spec, 'a', 'c'), 'tcp');
    assert.equal(spec.hosts[2].ssh?.port, 22);
    assert.deepEqual(spec.hosts[2].ssh?.options, []);
    assert.equal(spec.train.seqLen, 8388608);
    assert.equal(spec.model.kvHeads, 2);
    assert.equal(spec.model.ffnHidden, 384);
    assert.deepEqual(spec.data.paths, [fixture('corpus/a.txt'), '/abs/b.txt'], 'relative data paths resolve against the spec file');
  });

  test('env values are coerced to strings', () => {
    const spec = parseSpec(`${HOST}    env: { OMP_NUM_THREADS: 4, DEBUG: true, NAME: x }\n`, 's.yaml');
    assert.deepEqual(spec.hosts[0].env, { OMP_NUM_THREADS: '4', DEBUG: 'true', NAME: 'x' });
  });

  test('the shipped configs load and point editors at the JSON Schema', () => {
    for (const name of ['localhost.yaml', 'ci.yaml', 'multi-host.example.yaml']) {
      const file = join(ROOT, 'configs', name);
      const firstLine = readFileSync(file, 'utf8').split('\n')[0];
      assert.equal(firstLine, '# yaml-language-server: $schema=../schema/cluster.schema.json', name);
      loadSpec(file);
    }
    const local = loadSpec(defaultSpecPath());
    assert.equal(defaultSpecPath(), join(ROOT, 'configs', 'localhost.yaml'));
    assert.equal(worldSize(local), 2);
    assert.ok(local.hosts.every((h) => isLoopback(h.address) && resolvedLaunch(h) === 'local'));
    const ci = loadSpec(join(ROOT, 'configs', 'ci.yaml'));
    assert.deepEqual(
      [worldSize(ci), ci.model.dModel, ci.model.layers, ci.train.seqLen, ci.train.steps, ci.train.checkpointEvery, ci.train.evalEvery],
      [2, 32, 1, 128, 4, 2, 2],
    );
    const multi = loadSpec(join(ROOT, 'configs', 'multi-host.example.yaml'));
    assert.equal(multi.security, 'curve');
    assert.deepEqual(multi.hosts.map((h) => [h.slots, resolvedLaunch(h)]), [[2, 'ssh'], [2, 'ssh']]);
  });
});

describe('mistakes give file:line:col: path: message', () => {
  const cases: Array<[string, string]> = [
    ['unknown-key.yaml', '4:5: hosts[0].slot: unknown key "slot" (did you mean "slots"?)'],
    ['wrong-type.yaml', '5:10: model.heads: expected a number, got "four"'],
    ['negative-slots.yaml', '4:12: hosts[0].slots: must be >= 1, got -1'],
    ['duplicate-hosts.yaml', '4:11: hosts[1].name: duplicate host name "gpu" (also hosts[0].name)'],
    ['kvheads.yaml', '6:12: model.kvHeads: kvHeads 3 does not divide heads 4'],
    ['bad-size.yaml', '5:11: train.seqLen: expected a positive integer or a size like "64K", "8M", "1G" (powers of two), got "8Q"'],
    ['syntax.yaml', '4:1: YAML syntax error: All mapping items must start at the same column'],
    ['missing-name.yaml', '2:5: hosts[0].name: required field is missing'],
    ['several.yaml', '1:10: backend: expected one of auto, webgpu, tensorflow-gpu, tensorflow, wasm, cpu, got "gpu" (did you mean "cpu"?) (and 2 more)'],
  ];
  for (const [name, expected] of cases) {
    test(name, () => {
      const file = join(FIX, name);
      assert.equal(userError(() => loadSpec(file)), `${file}:${expected}`);
    });
  }

  test('a missing file', () => {
    assert.equal(userError(() => loadSpec('nope/missing.yaml')), 'nope/missing.yaml: cannot read the cluster spec: no such file');
  });

  test('an empty file and a non-mapping', () => {
    assert.equal(userError(() => parseSpec('', 'e.yaml')), 'e.yaml:1:1: (root): the spec is empty; it needs at least `hosts`');
    assert.equal(userError(() => parseSpec('- a\n', 'e.yaml')), 'e.yaml:1:1: (root): expected a mapping, got a list');
  });

  test('unknown keys are reported at the key, with a suggestion when one is close', () => {
    assert.equal(userError(() => parseSpec(`${HOST}modle:\n  dModel: 8\n`, 's.yaml')), 's.yaml:4:1: modle: unknown key "modle" (did you mean "model"?)');
    assert.equal(
      userError(() => parseSpec(`${HOST}ring:\n  basePort: 3000\n  color: red\n`, 's.yaml')),
      's.yaml:6:3: ring.color: unknown key "color"; expected one of basePort, bindAddress, transport, shmBytes, connectTimeoutMs, ' +
        'rendezvousTimeoutMs, heartbeatIntervalMs, heartbeatTimeoutMs, opTimeoutMs, maxMessageBytes, maxQueuedBytes, wire',
    );
  });

  test('a key without a value is reported at the key', () => {
    assert.equal(
      userError(() => parseSpec(`${HOST}train:\n  seqLen:\n`, 's.yaml')),
      's.yaml:5:3: train.seqLen: expected a positive integer or a size like "64K", "8M", "1G" (powers of two), got null',
    );
  });

  test('a missing section key points at the parent mapping', () => {
    assert.equal(userError(() => parseSpec('name: x\n', 's.yaml')), 's.yaml:1:1: hosts: required field is missing');
  });

  test('cross-field checks', () => {
    const check = (yaml: string, expected: string) => assert.equal(userError(() => parseSpec(yaml, 's.yaml')), `s.yaml:${expected}`);
    check(`${HOST}model:\n  dModel: 30\n  heads: 4\n`, '6:10: model.heads: dModel 30 is not divisible by heads 4');
    check(`${HOST}model:\n  dModel: 12\n  heads: 4\n`, '5:11: model.dModel: the head dimension dModel/heads = 3 must be even (rotary embeddings rotate pairs)');
    check(`${HOST}bench:\n  heads: 6\n  kvHeads: 4\n`, '6:12: bench.kvHeads: kvHeads 4 does not divide heads 6');
    check(
      `${HOST}    slots: 40\nring:\n  basePort: 65500\n`,
      '6:13: ring.basePort: basePort 65500 + 40 ports (40 workers) exceeds port 65535; use at most 65495',
    );
    check(
      `${HOST}ring:\n  heartbeatIntervalMs: 1000\n  heartbeatTimeoutMs: 1000\n`,
      '6:23: ring.heartbeatTimeoutMs: heartbeatTimeoutMs 1000 must be larger than heartbeatIntervalMs 1000',
    );
    check(
      `${HOST}    launch: local\n    ssh:\n      user: me\n`,
      '6:7: hosts[0].ssh: host "local" has launch: local and an ssh section; remove one of them',
    );
    check(
      `${HOST}    slots: 2\n    gpus: [0]\n`,
      '5:11: hosts[0].gpus: gpus lists 1 device(s) but the host has 2 slot(s); give one per slot',
    );
    check(
      `${HOST}  - name: other\n    address: 127.0.0.1\n`,
      '5:14: hosts[1].address: host "other" has the same address as host "local" (127.0.0.1); list a machine once and give it more slots',
    );
    check(
      `${HOST}  - name: b\n    address: 10.0.0.2\nring:\n  transport: ipc\n`,
      '7:14: ring.transport: ipc only connects workers on one machine and the spec has 2 hosts; use auto or tcp',
    );
    check(
      `${HOST}  - name: b\n    address: 10.0.0.2\nring:\n  bindAddress: 10.0.0.2\n`,
      '7:16: ring.bindAddress: bindAddress 10.0.0.2 exists on one machine only and the spec has 2 hosts; use 0.0.0.0 or leave it unset',
    );
    check(`${HOST}train:\n  lr: 1e-4\n  minLr: 1e-3\n`, '6:10: train.minLr: minLr 0.001 is larger than lr 0.0001');
    assert.equal(parseSpec(`${HOST}  - name: b\n    address: 10.0.0.2\nring:\n  bindAddress: '*'\n`, 's.yaml').ring.bindAddress, '*');
    check(`${HOST}ring:\n  bindAddress: 'a b'\n`, '5:16: ring.bindAddress: expected an IP address, a host name or * (every interface), got "a b"');
    // launch: local on a non-loopback address is allowed (e.g. network namespaces, or this machine's LAN address).
    const ns = parseSpec('hosts:\n  - name: ns1\n    address: 10.200.0.1\n    launch: local\n', 's.yaml');
    assert.equal(resolvedLaunch(ns.hosts[0]), 'local');
    assert.equal(resolvedSecurity(ns), 'curve');
  });

  test('other value checks', () => {
    const check = (yaml: string, expected: string) => assert.equal(userError(() => parseSpec(yaml, 's.yaml')), `s.yaml:${expected}`);
    check('hosts: []\n', '1:8: hosts: needs at least 1 item(s)');
    check('hosts:\n  - name: a b\n    address: 127.0.0.1\n', '2:11: hosts[0].name: a host name may contain only letters, digits, "_", "." and "-"');
    check('hosts:\n  - name: a\n    address: 999.1.1.1\n', '3:14: hosts[0].address: expected a host name or an IP address, got "999.1.1.1"');
    check(`${HOST}    launch: sssh\n`, '4:13: hosts[0].launch: expected one of auto, local, ssh, got "sssh" (did you mean "ssh"?)');
    check(`${HOST}    env:\n      1A: x\n`, '5:7: hosts[0].env.1A: an environment variable name is letters, digits and "_", not starting with a digit');
    check(`${HOST}ring:\n  basePort: 80\n`, '5:13: ring.basePort: must be >= 1024, got 80');
    check(`${HOST}train:\n  steps: 2.5\n`, '5:10: train.steps: expected an integer, got 2.5');
    check(`${HOST}train:\n  seqLen: 1.3K\n`, '5:11: train.seqLen: "1.3K" is not a whole number (1331.2); write an integer or a size whose value is whole');
    check(`${HOST}attention:\n  causal: yes\n`, '5:11: attention.causal: expected true or false, got "yes"');
  });

  test('specFromObject validates objects built in code', () => {
    assert.equal(specFromObject({ hosts: [{ name: 'a', address: '::1', slots: 3 }] }).hosts[0].slots, 3);
    assert.equal(userError(() => specFromObject({ hosts: [{ name: 'a', address: '::1', slots: 0 }] }, 'flags')), 'flags: hosts[0].slots: must be >= 1, got 0');
  });
});

describe('helpers', () => {
  test('threads: auto shares each host\'s cores among the workers started on it', () => {
    const cores = availableParallelism();
    const spec = specFromObject({
      hosts: [
        { name: 'a', address: '127.0.0.1', slots: 2 },
        { name: 'b', address: '127.0.0.2', slots: 3 },
      ],
    });
    assert.equal(spec.threads, 'auto');
    assert.equal(workerThreads(spec, 0), Math.max(1, Math.floor(cores / 2)));
    assert.equal(workerThreads(spec, 4), Math.max(1, Math.floor(cores / 3)));
    assert.equal(workerThreads({ ...spec, threads: 5 }, 4), 5);
    assert.equal(workerThreads(specFromObject({ hosts: [{ name: 'a', address: '127.0.0.1', slots: 64 }] }), 0), 1, 'never below one thread');
  });
  test('isLoopback and isHostOrIp', () => {
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', 'localhost', 'LOCALHOST', '::ffff:127.0.0.1', '[::1]']) assert.ok(isLoopback(a), a);
    for (const a of ['10.0.0.1', '192.0.2.10', '0.0.0.0', '::', 'example.org', '128.0.0.1', '::2']) assert.ok(!isLoopback(a), a);
    for (const a of ['127.0.0.1', '::1', 'fe80::1', '2001:db8::8a2e:370:7334', '::ffff:192.0.2.1', 'node-a', 'node-a.example.org']) {
      assert.ok(isHostOrIp(a), a);
    }
    for (const a of ['', '256.1.1.1', '1.2.3', 'a b', '-x', 'fe80:::1', '1:2:3:4:5:6:7:8:9', 'x_y']) assert.ok(!isHostOrIp(a), a);
  });

  test('specHash is stable under key order and changes with any field', () => {
    const a = parseSpec(`${HOST}train:\n  steps: 10\n  seqLen: 1K\n`, 'a.yaml');
    const b = parseSpec(`train:\n  seqLen: 1024\n  steps: 10\n${HOST}`, 'b.yaml');
    const c = parseSpec(`${HOST}train:\n  steps: 11\n  seqLen: 1K\n`, 'c.yaml');
    assert.match(specHash(a), /^[0-9a-f]{64}$/);
    assert.equal(specHash(a), specHash(b));
    assert.notEqual(specHash(a), specHash(c));
    assert.equal(canonicalJson({ b: 1, a: [1, { d: undefined, c: 'x' }] }), '{"a":[1,{"c":"x"}],"b":1}');
  });

  test('the schema is the one source: JSON Schema and docs are current', () => {
    assert.equal(readFileSync(SCHEMA_FILE, 'utf8'), renderJsonSchema(), 'run: node --import tsx scripts/gen-schema.ts');
    assert.equal(readFileSync(DOCS_FILE, 'utf8'), renderConfigDocs(), 'run: node --import tsx scripts/gen-schema.ts');
    const schema = JSON.parse(readFileSync(SCHEMA_FILE, 'utf8')) as { required: string[]; additionalProperties: boolean };
    assert.deepEqual(schema.required, ['hosts'], 'defaults are optional on the input side');
    assert.equal(schema.additionalProperties, false);
    const docs = readFileSync(DOCS_FILE, 'utf8');
    for (const key of Object.keys(ClusterSpecSchema.parse({ hosts: [{ name: 'h', address: '127.0.0.1' }] }).train)) {
      assert.ok(docs.includes(`| \`${key}\` |`), `docs/config.md lacks train.${key}`);
    }
  });
});
