import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { Job } from 'kubernetes-models/batch/v1/Job';
import { CLI, ROOT, runCli } from './helpers/cli.js';

/**
 * `ringattn launch --emit kubernetes`: the manifests are checked against the
 * Kubernetes API's schema (as kubernetes-models, pinned in devDependencies,
 * compiles it from the API's OpenAPI definitions), and their wiring is run:
 * one worker per pod of the Indexed Job, each with the command, environment
 * and volumes the manifests define, the pods' DNS names resolving through a
 * private /etc/hosts, inside a network namespace of the test's own.
 */

const CI_SPEC = path.join(ROOT, 'configs', 'ci.yaml');
const tmp = mkdtempSync(path.join(tmpdir(), 'ra-k8s-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));
const NAME = 'ra-k8s';

interface Manifests {
  configMap: any;
  secret: any;
  service: any;
  job: any;
  text: string;
}

async function emit(extra: string[] = []): Promise<Manifests> {
  const r = await runCli(['launch', '--emit', 'kubernetes', '--config', CI_SPEC, '--name', NAME, '--image', 'example.org/ringattn:0.1.0', ...extra]);
  assert.equal(r.code, 0, r.stderr);
  const docs = parseAllDocuments(r.stdout).map((d) => d.toJS());
  const kinds = docs.map((d) => d.kind);
  assert.deepEqual(kinds, ['ConfigMap', 'Secret', 'Service', 'Job']);
  return { configMap: docs[0], secret: docs[1], service: docs[2], job: docs[3], text: r.stdout };
}

test('the manifests validate against the Kubernetes API schema, and a broken one does not', async () => {
  const keyFile = path.join(tmp, 'job-key.json');
  const k = await runCli(['keygen', keyFile]);
  assert.equal(k.code, 0, k.stderr);
  const m = await emit(['--gpus-per-rank', '1', '--cpu', '2', '--memory', '4Gi', '--namespace', 'research', '--key-file', keyFile]);
  new ConfigMap(m.configMap).validate();
  new Secret(m.secret).validate();
  new Service(m.service).validate();
  new Job(m.job).validate();
  // The validator is real: the same Job with a mode Kubernetes does not have, or no containers, is refused.
  assert.throws(() => new Job({ ...m.job, spec: { ...m.job.spec, completionMode: 'Ordered' } }).validate(), /completionMode must be equal to one of the allowed values/);
  const noContainers = structuredClone(m.job);
  delete noContainers.spec.template.spec.containers;
  assert.throws(() => new Job(noContainers).validate(), /must have required property containers/);

  const job = m.job.spec;
  assert.equal(job.completionMode, 'Indexed');
  assert.equal(job.completions, 2);
  assert.equal(job.parallelism, 2);
  assert.equal(job.backoffLimit, 0);
  const pod = job.template.spec;
  assert.equal(pod.subdomain, m.service.metadata.name, 'pods are named by the headless Service');
  assert.equal(m.service.spec.clusterIP, 'None');
  assert.equal(m.service.spec.publishNotReadyAddresses, true);
  for (const [k, v] of Object.entries(m.service.spec.selector)) assert.equal(job.template.metadata.labels[k], v);
  assert.deepEqual(m.service.spec.ports, [{ name: 'coordinator', port: 29500, targetPort: 29500 }]);
  for (const doc of [m.configMap, m.secret, m.service, m.job]) assert.equal(doc.metadata.namespace, 'research');
  const c = pod.containers[0];
  assert.deepEqual(c.resources, { requests: { cpu: '2', memory: '4Gi' }, limits: { 'nvidia.com/gpu': 1 } });
  assert.deepEqual(c.command.slice(0, 2), ['ringattn', 'worker']);
  // The key is in the Secret only, mounted owner-read-only; the pods' environment has its path, not its bytes.
  const key = JSON.parse(readFileSync(keyFile, 'utf8'));
  assert.deepEqual(JSON.parse(m.secret.stringData['curve.json']), key);
  assert.equal(m.text.split(key.secretKey).length - 1, 1, 'the secret key appears once: in the Secret');
  assert.ok(!JSON.stringify([m.job, m.configMap, m.service]).includes(key.secretKey));
  assert.equal(pod.volumes.find((v: any) => v.name === 'key').secret.defaultMode, 0o400);
  const spec = parseAllDocuments(m.configMap.data['spec.yaml'])[0].toJS();
  assert.deepEqual(spec.hosts.map((h: any) => [h.name, h.address, h.slots]), [[`${NAME}-0`, `${NAME}-0.${NAME}`, 1], [`${NAME}-1`, `${NAME}-1.${NAME}`, 1]]);
  assert.equal(spec.security, 'curve');
  assert.equal(spec.ring.bindAddress, '0.0.0.0');

  const bad = await runCli(['launch', '--emit', 'kubernetes', '--config', CI_SPEC]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr.trim(), /^ringattn: --emit kubernetes needs --image: /);
  const badName = await runCli(['launch', '--emit', 'kubernetes', '--config', CI_SPEC, '--image', 'x', '--name', 'Ring_Attn']);
  assert.equal(badName.code, 2);
  assert.match(badName.stderr.trim(), /^ringattn: --name Ring_Attn: a Kubernetes name/);
  const badRanks = await runCli(['launch', '--emit', 'kubernetes', '--config', CI_SPEC, '--image', 'x', '--ranks', '3']);
  assert.equal(badRanks.code, 2);
  assert.match(badRanks.stderr.trim(), /^ringattn: --emit kubernetes: a ring of 3: sequence length 128 cannot be split/);
  assert.equal((await runCli(['keygen', keyFile])).code, 2, 'a key file is never overwritten');
});

const unshareMissing =
  process.getuid?.() !== 0
    ? 'needs root, for a network and mount namespace of its own (run the tests as root, as CI does)'
    : spawnSync('sh', ['-c', 'command -v unshare && command -v ip']).status !== 0
      ? 'needs unshare (util-linux) and ip (iproute2)'
      : null;
if (unshareMissing) process.stderr.write(`kubernetes.test: the pod wiring run is skipped: ${unshareMissing}\n`);

test('the pods as the manifests define them: rank from JOB_COMPLETION_INDEX, peers and coordinator by their DNS names, the key from the Secret', { skip: unshareMissing ?? false, timeout: 180000 }, async () => {
  const m = await emit();
  const pod = m.job.spec.template.spec;
  const container = pod.containers[0];
  const world = m.job.spec.completions as number;
  // The cluster DNS of the headless Service, as a private /etc/hosts: pod i at 127.0.0.(10 + i).
  const hosts = path.join(tmp, 'hosts');
  writeFileSync(hosts, ['127.0.0.1 localhost', ...Array.from({ length: world }, (_, i) => `127.0.0.${10 + i} ${NAME}-${i}.${NAME}`), ''].join('\n'));
  const script: string[] = ['set -e', 'ip link set lo up', `mount --bind ${hosts} /etc/hosts`];
  const podDirs: string[] = [];
  for (let i = 0; i < world; i++) {
    // Each volume of the pod, mounted where the manifest says: a folder of this test standing in for it.
    const root = path.join(tmp, `pod-${i}`);
    podDirs.push(root);
    const mapPath = (p: string) => {
      const mount = container.volumeMounts.find((v: any) => p === v.mountPath || p.startsWith(`${v.mountPath}/`));
      return mount ? path.join(root, mount.name, p.slice(mount.mountPath.length)) : p;
    };
    for (const mnt of container.volumeMounts) {
      const dir = path.join(root, mnt.name);
      mkdirSync(dir, { recursive: true });
      const vol = pod.volumes.find((v: any) => v.name === mnt.name);
      if (vol.configMap) {
        assert.equal(vol.configMap.name, m.configMap.metadata.name);
        for (const [f, text] of Object.entries(m.configMap.data)) writeFileSync(path.join(dir, f), text as string);
      } else if (vol.secret) {
        assert.equal(vol.secret.secretName, m.secret.metadata.name);
        for (const [f, text] of Object.entries(m.secret.stringData)) {
          writeFileSync(path.join(dir, f), text as string);
          chmodSync(path.join(dir, f), vol.secret.defaultMode);
        }
      } else assert.ok(vol.emptyDir, `volume ${mnt.name}`);
    }
    // Kubernetes sets JOB_COMPLETION_INDEX in each pod of an Indexed Job; the rest is the manifest's env.
    const env = [`JOB_COMPLETION_INDEX=${i}`, `PATH=${process.env.PATH}`, `HOME=${process.env.HOME}`];
    for (const e of container.env) {
      assert.equal(typeof e.value, 'string', `env ${e.name} has a literal value`);
      env.push(`${e.name}=${mapPath(e.value)}`);
    }
    const [cmd, ...args] = container.command;
    assert.equal(cmd, 'ringattn');
    const argv = [process.execPath, CLI, ...args.map(mapPath)].map((a) => `'${a}'`).join(' ');
    script.push(`env -i ${env.map((x) => `'${x}'`).join(' ')} ${argv} > ${root}/log 2>&1 & pids="$pids $!"`);
  }
  script.push('status=0', 'for p in $pids; do wait $p || status=1; done', 'exit $status');
  const child = spawn('unshare', ['--net', '--mount', 'sh', '-c', script.join('\n')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  const logs = podDirs.map((d, i) => `--- pod ${i}:\n${existsSync(path.join(d, 'log')) ? readFileSync(path.join(d, 'log'), 'utf8').slice(-3000) : '(no log)'}`).join('\n');
  assert.equal(code, 0, `${err}\n${logs}`);
  // Rank 0 (pod 0) trained and wrote the run; it found rank 1 at its DNS name, and rank 1 found the coordinator at pod 0's.
  const runDir = path.join(podDirs[0], 'runs', m.job.spec.template.spec.containers[0].command.at(-1).slice('/runs'.length));
  const steps = readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
  assert.deepEqual(steps, [1, 2, 3, 4]);
  const ring = JSON.parse(readFileSync(path.join(runDir, 'ring.json'), 'utf8'));
  assert.equal(ring.state, 'finished');
  assert.deepEqual(ring.ranks.map((r: any) => r.host), [`${NAME}-0`, `${NAME}-1`]);
  const log1 = readFileSync(path.join(podDirs[1], 'log'), 'utf8');
  assert.match(log1, /"rank":1,"host":"ra-k8s-1"/);
});
