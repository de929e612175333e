import path from 'node:path';
import { stringify } from 'yaml';
import { specFromObject, worldSize, type ClusterSpec } from '../config/index.js';
import { UserError } from '../errors.js';
import { checkLayout } from '../attention/layout.js';
import type { CurveKeys } from '../ring/zap.js';
import { resolveLayout } from '../train/loop.js';

/**
 * Jobs for schedulers: `ringattn launch --emit slurm|kubernetes|spec` prints
 * what a user submits. Either way the scheduler starts `ringattn worker` once
 * per ring slot (scheduler mode, src/launch/external.ts): the rank comes from
 * the scheduler's variables, the ring's hosts from a spec naming the job's
 * own machines, and the CURVE key pair from a file only the job's owner can
 * read; no secret is ever in argv or in the environment.
 */

/** The spec of a ring over `hosts` (machine names, or names with the address peers reach them at, in rank order), `slotsPerHost` ranks on each. */
export function specForHosts(
  spec: ClusterSpec,
  hosts: Array<string | { name: string; address: string }>,
  slotsPerHost: number,
  opts: { basePort?: number; bindAddress?: string; source?: string } = {},
): ClusterSpec {
  const named = hosts.map((h) => (typeof h === 'string' ? { name: h.trim(), address: h.trim() } : h));
  if (named.length === 0 || named.some((h) => h.name === '')) throw new UserError('--hosts: expected a comma-separated list of machine names');
  return specFromObject(
    {
      ...spec,
      hosts: named.map((h) => ({ ...h, slots: slotsPerHost })),
      ring: { ...spec.ring, ...(opts.basePort !== undefined ? { basePort: opts.basePort } : {}), ...(opts.bindAddress !== undefined ? { bindAddress: opts.bindAddress } : {}) },
    },
    opts.source ?? '--emit spec',
  );
}

/** A train job's sequence must split over the ring's layout: said at emit time, with the option that sets the ring's size. */
function checkTrainLayout(spec: ClusterSpec, job: string, world: number, what: string): void {
  if (job !== 'train') return;
  try {
    checkLayout(resolveLayout(spec.attention), spec.train.seqLen, world);
  } catch (e) {
    throw new UserError(`${what}: a ring of ${world}: ${(e as Error).message}`);
  }
}

/** Ports a job of `world` ranks takes from ring.basePort: the coordinator, the ring, the reverse ring (attention.window). */
function portSpan(world: number): number {
  return 2 * world + 2;
}

export interface SlurmOptions {
  nodes: number;
  tasksPerNode: number;
  gpusPerNode?: number;
  partition?: string;
  time?: string;
  account?: string;
  jobName: string;
  /** Absolute; must be on a file system every node shares (the job's spec and key file live there). */
  runDir: string;
  job: string;
  /** How a node runs ringattn, as a shell words list (this install's `node bin/ringattn.js` by default). */
  ringattn: string[];
}

const shellWord = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/**
 * An sbatch script: the spec embedded, the ring's hosts taken from the
 * allocation at run time (block distribution: rank r on node r / tasks per
 * node), a port range of the job's own, a fresh key pair in a 0600 file that
 * is removed when the job ends, and one `srun` task per slot.
 */
export function slurmScript(spec: ClusterSpec, o: SlurmOptions): string {
  const world = o.nodes * o.tasksPerNode;
  // The job's spec is validated now, on placeholder node names, so a mistake shows at emit time, not in the queue.
  specForHosts(spec, Array.from({ length: o.nodes }, (_, i) => `node${i}`), o.tasksPerNode, { source: '--emit slurm' });
  checkTrainLayout(spec, o.job, world, '--emit slurm');
  const span = portSpan(world);
  const slots = Math.floor(40000 / span);
  const cli = o.ringattn.map(shellWord).join(' ');
  const runDir = shellWord(o.runDir);
  const { hosts: _hosts, ...rest } = spec;
  const embedded = stringify({ ...rest, hosts: [{ name: 'placeholder', address: 'placeholder', slots: o.tasksPerNode }] }).trimEnd();
  if (embedded.includes('RINGATTN_SPEC_END')) throw new UserError('the spec contains the text RINGATTN_SPEC_END, which ends the embedded spec');
  const sbatch = [
    `#SBATCH --job-name=${o.jobName}`,
    `#SBATCH --nodes=${o.nodes}`,
    `#SBATCH --ntasks-per-node=${o.tasksPerNode}`,
    ...(o.gpusPerNode ? [`#SBATCH --gpus-per-node=${o.gpusPerNode}`] : []),
    ...(o.partition ? [`#SBATCH --partition=${o.partition}`] : []),
    ...(o.time ? [`#SBATCH --time=${o.time}`] : []),
    ...(o.account ? [`#SBATCH --account=${o.account}`] : []),
    `#SBATCH --output=${o.runDir}/slurm-%j.out`,
  ];
  return `#!/bin/bash
# ringattn ${o.job} "${spec.name}" on Slurm: ${o.nodes} node(s) x ${o.tasksPerNode} task(s), one task per ring slot.
# Made by \`ringattn launch --emit slurm\`. Submit with: sbatch THIS_FILE
${sbatch.join('\n')}
set -euo pipefail
umask 077
RUN_DIR=${runDir}
JOB_DIR="$RUN_DIR/slurm-$SLURM_JOB_ID"
mkdir -p "$JOB_DIR"
# The key pair never outlives the job.
trap 'rm -f "$JOB_DIR/curve.json"' EXIT

cat > "$JOB_DIR/base.yaml" <<'RINGATTN_SPEC_END'
${embedded}
RINGATTN_SPEC_END

# The ring's hosts are the allocation's nodes in Slurm's order; srun's block distribution puts rank r on node r / ${o.tasksPerNode}.
NODES=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd, -)
# A port range of this job's own (${span} ports from 20000 + (job id mod ${slots}) x ${span}), so that jobs sharing a node do not collide.
BASE_PORT=$(( 20000 + (SLURM_JOB_ID % ${slots}) * ${span} ))
${cli} launch --emit spec --config "$JOB_DIR/base.yaml" --hosts "$NODES" --slots-per-host ${o.tasksPerNode} --base-port "$BASE_PORT" > "$JOB_DIR/spec.yaml"
# A fresh CURVE key pair, in a file only this user can read; tasks get its path, never the key.
${cli} keygen "$JOB_DIR/curve.json"
export RINGATTN_CURVE_KEY_FILE="$JOB_DIR/curve.json"

# One task fails: srun stops the others and the job fails (rank 0 names the rank in this output).
srun --kill-on-bad-exit=1 --distribution=block --ntasks=${world} ${cli} worker --config "$JOB_DIR/spec.yaml" --job ${shellWord(o.job)} --run-dir "$RUN_DIR"
`;
}

export interface KubernetesOptions {
  name: string;
  namespace?: string;
  image: string;
  ranks: number;
  gpusPerRank: number;
  cpu?: string;
  memory?: string;
  job: string;
  /** The run directory inside each pod. */
  runDir: string;
  /** A PersistentVolumeClaim for the run directory; without one it is an emptyDir (gone with the pod). */
  runVolumeClaim?: string;
  key: CurveKeys;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
export const SPEC_MOUNT = '/etc/ringattn';
export const KEY_MOUNT = '/etc/ringattn-key';

/**
 * An Indexed Job (one pod per ring slot, rank = JOB_COMPLETION_INDEX), a
 * headless Service whose DNS names the pods (`<name>-<index>.<name>`, rank
 * 0's hosting the coordinator), the spec as a ConfigMap and the key pair as a
 * Secret mounted 0400.
 */
export function kubernetesManifests(spec: ClusterSpec, o: KubernetesOptions): object[] {
  // Pod hostnames are <job name>-<index>, 63 characters at most.
  if (!DNS_LABEL.test(o.name) || o.name.length > 52) throw new UserError(`--name ${o.name}: a Kubernetes name of lowercase letters, digits and '-', at most 52 characters`);
  // Pod i of the Indexed Job is <name>-i; the headless Service's DNS gives it <name>-i.<name>.
  const hosts = Array.from({ length: o.ranks }, (_, i) => ({ name: `${o.name}-${i}`, address: `${o.name}-${i}.${o.name}` }));
  // Every pod binds all its interfaces (its pod IP); peers reach it by its DNS name. The link is CURVE-encrypted.
  const podSpec = specForHosts({ ...spec, security: 'curve' }, hosts, 1, { bindAddress: '0.0.0.0', source: '--emit kubernetes' });
  const world = worldSize(podSpec);
  checkTrainLayout(podSpec, o.job, world, '--emit kubernetes');
  const labels = { 'app.kubernetes.io/name': 'ringattn', 'app.kubernetes.io/instance': o.name };
  const meta = (name: string) => ({ name, ...(o.namespace ? { namespace: o.namespace } : {}), labels });
  const base = podSpec.ring.basePort;
  const resources: Record<string, Record<string, string | number>> = {};
  if (o.cpu || o.memory) resources.requests = { ...(o.cpu ? { cpu: o.cpu } : {}), ...(o.memory ? { memory: o.memory } : {}) };
  if (o.gpusPerRank > 0) resources.limits = { 'nvidia.com/gpu': o.gpusPerRank };
  return [
    { apiVersion: 'v1', kind: 'ConfigMap', metadata: meta(`${o.name}-spec`), data: { 'spec.yaml': stringify(podSpec) } },
    { apiVersion: 'v1', kind: 'Secret', metadata: meta(`${o.name}-key`), type: 'Opaque', stringData: { 'curve.json': JSON.stringify(o.key) } },
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: meta(o.name),
      spec: {
        clusterIP: 'None',
        selector: labels,
        // The ranks look each other up before they are ready: the rendezvous is how they become ready.
        publishNotReadyAddresses: true,
        ports: [{ name: 'coordinator', port: base, targetPort: base }],
      },
    },
    {
      apiVersion: 'batch/v1',
      kind: 'Job',
      metadata: meta(o.name),
      spec: {
        completionMode: 'Indexed',
        completions: world,
        parallelism: world,
        // A ring is a gang: one failed rank fails the job; `--resume` is how it continues.
        backoffLimit: 0,
        template: {
          metadata: { labels },
          spec: {
            subdomain: o.name,
            restartPolicy: 'Never',
            containers: [
              {
                name: 'worker',
                image: o.image,
                command: ['ringattn', 'worker', '--config', `${SPEC_MOUNT}/spec.yaml`, '--job', o.job, '--run-dir', o.runDir],
                env: [
                  { name: 'RINGATTN_WORLD_SIZE', value: String(world) },
                  { name: 'RINGATTN_CURVE_KEY_FILE', value: `${KEY_MOUNT}/curve.json` },
                ],
                ports: [{ name: 'coordinator', containerPort: base }],
                ...(Object.keys(resources).length > 0 ? { resources } : {}),
                volumeMounts: [
                  { name: 'spec', mountPath: SPEC_MOUNT, readOnly: true },
                  { name: 'key', mountPath: KEY_MOUNT, readOnly: true },
                  { name: 'runs', mountPath: path.posix.dirname(o.runDir) === '/' ? o.runDir : path.posix.dirname(o.runDir) },
                ],
              },
            ],
            volumes: [
              { name: 'spec', configMap: { name: `${o.name}-spec` } },
              { name: 'key', secret: { secretName: `${o.name}-key`, defaultMode: 0o400 } },
              o.runVolumeClaim ? { name: 'runs', persistentVolumeClaim: { claimName: o.runVolumeClaim } } : { name: 'runs', emptyDir: {} },
            ],
          },
        },
      },
    },
  ];
}

/** Manifests as one YAML stream. */
export function manifestsYaml(docs: object[]): string {
  return docs.map((d) => stringify(d)).join('---\n');
}
