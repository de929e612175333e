import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { stringify } from 'yaml';
import * as zmq from 'zeromq';
import { worldSize } from '../config/index.js';
import { UserError } from '../errors.js';
import { kubernetesManifests, manifestsYaml, slurmScript, specForHosts } from '../launch/emit.js';
import { readKeyFile } from '../launch/external.js';
import type { CurveKeys } from '../ring/zap.js';
import { intFlag, resolveSpec, SET_OPTION } from './common.js';

const CLI_ENTRY = fileURLToPath(new URL('../../bin/ringattn.js', import.meta.url));

interface LaunchFlags {
  emit: string;
  config?: string;
  set?: string[];
  job: string;
  runDir?: string;
  // slurm
  nodes?: string;
  tasksPerNode?: string;
  gpusPerNode?: string;
  partition?: string;
  time?: string;
  account?: string;
  jobName?: string;
  ringattn?: string;
  // kubernetes
  name?: string;
  namespace?: string;
  image?: string;
  ranks?: string;
  gpusPerRank?: string;
  cpu?: string;
  memory?: string;
  runVolumeClaim?: string;
  keyFile?: string;
  // spec
  hosts?: string;
  slotsPerHost?: string;
  basePort?: string;
}

const EMITS = ['slurm', 'kubernetes', 'spec'];

/** A DNS-1123 name from the spec's name. */
function dnsName(s: string): string {
  return `ringattn-${s.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '')}`.slice(0, 52).replace(/-+$/, '');
}

/** Writes a fresh CURVE key pair to `file` (0600), refusing to replace one. */
export function writeKeyFile(file: string): CurveKeys {
  const keys = zmq.curveKeyPair() as CurveKeys;
  let fd: number;
  try {
    fd = openSync(file, 'wx', 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(code === 'EEXIST' ? `${file} exists: a key file is never overwritten` : `${file}: cannot create it (${code})`);
  }
  try {
    writeSync(fd, `${JSON.stringify(keys)}\n`);
  } finally {
    closeSync(fd);
  }
  return keys;
}

export function keygenCommand(): Command {
  return new Command('keygen')
    .description("write a fresh CURVE key pair for a job's ring to FILE (mode 0600), for RINGATTN_CURVE_KEY_FILE")
    .argument('<file>', 'the key file to create')
    .action((file: string) => {
      writeKeyFile(file);
    });
}

export function launchCommand(): Command {
  return new Command('launch')
    .description('print a job for a scheduler: an sbatch script (slurm), manifests (kubernetes), or the spec of a ring over given hosts (spec)')
    .requiredOption('--emit <kind>', `what to print: ${EMITS.join(', ')}`)
    .option('--config <file>', 'cluster spec (YAML); default: configs/localhost.yaml')
    .option(...SET_OPTION)
    .option('--job <kind>', 'job the ranks run: train, bench, doctor', 'train')
    .option('--run-dir <dir>', 'run directory (slurm: on a file system every node shares; kubernetes: inside the pods, default /runs/<name>)')
    .option('--nodes <n>', 'slurm: nodes (default: the spec\'s host count)')
    .option('--tasks-per-node <t>', "slurm: ring slots per node (default: the spec's slots per host)")
    .option('--gpus-per-node <g>', 'slurm: GPUs per node (--gpus-per-node of sbatch)')
    .option('--partition <p>', 'slurm: partition')
    .option('--time <t>', 'slurm: time limit, e.g. 4:00:00')
    .option('--account <a>', 'slurm: account')
    .option('--job-name <name>', 'slurm: job name (default ringattn-<spec name>)')
    .option('--ringattn <command>', 'slurm: how a node runs ringattn (default: this install, by absolute path)')
    .option('--name <name>', 'kubernetes: name of the Job, Service, ConfigMap and Secret (default ringattn-<spec name>)')
    .option('--namespace <ns>', 'kubernetes: namespace')
    .option('--image <image>', 'kubernetes: container image with ringattn installed')
    .option('--ranks <n>', 'kubernetes: ring slots, one pod each (default: the spec\'s world size)')
    .option('--gpus-per-rank <g>', 'kubernetes: nvidia.com/gpu per pod', '0')
    .option('--cpu <q>', 'kubernetes: CPU request per pod, e.g. 8')
    .option('--memory <q>', 'kubernetes: memory request per pod, e.g. 32Gi')
    .option('--run-volume-claim <pvc>', 'kubernetes: PersistentVolumeClaim for the run directory (default: an emptyDir)')
    .option('--key-file <file>', 'kubernetes: the job key pair to put in the Secret (default: a fresh one)')
    .option('--hosts <list>', 'spec: machine names, comma-separated, in rank order')
    .option('--slots-per-host <t>', 'spec: ring slots on each host', '1')
    .option('--base-port <p>', 'spec: ring.basePort')
    .action((o: LaunchFlags) => {
      if (!EMITS.includes(o.emit)) throw new UserError(`--emit: expected one of ${EMITS.join(', ')}, got "${o.emit}"`);
      const spec = resolveSpec({ config: o.config, set: o.set });
      if (o.emit === 'spec') {
        if (!o.hosts) throw new UserError('--emit spec needs --hosts: the machine names of the ring, in rank order');
        const hosts = o.hosts.split(',').map((h) => h.trim());
        const out = specForHosts(spec, hosts, intFlag(o.slotsPerHost, '--slots-per-host'), { basePort: o.basePort === undefined ? undefined : intFlag(o.basePort, '--base-port', 1) });
        process.stdout.write(stringify(out));
        return;
      }
      if (o.emit === 'slurm') {
        const perHost = new Set(spec.hosts.map((h) => h.slots));
        if (o.tasksPerNode === undefined && perHost.size > 1) throw new UserError(`${o.config ?? 'the spec'}: its hosts have different slot counts (${[...perHost].join(', ')}); give --tasks-per-node`);
        const runDir = path.resolve(o.runDir ?? path.join(spec.runDir, `${o.job}-slurm`));
        process.stdout.write(
          slurmScript(spec, {
            nodes: o.nodes === undefined ? spec.hosts.length : intFlag(o.nodes, '--nodes'),
            tasksPerNode: o.tasksPerNode === undefined ? [...perHost][0] : intFlag(o.tasksPerNode, '--tasks-per-node'),
            gpusPerNode: o.gpusPerNode === undefined ? undefined : intFlag(o.gpusPerNode, '--gpus-per-node', 0),
            partition: o.partition,
            time: o.time,
            account: o.account,
            jobName: o.jobName ?? dnsName(spec.name),
            runDir,
            job: o.job,
            ringattn: o.ringattn ? o.ringattn.split(' ').filter(Boolean) : [process.execPath, CLI_ENTRY],
          }),
        );
        return;
      }
      if (!o.image) throw new UserError('--emit kubernetes needs --image: a container image with ringattn installed (docs/launch.md)');
      const name = o.name ?? dnsName(spec.name);
      if (o.keyFile !== undefined && !existsSync(o.keyFile)) throw new UserError(`--key-file ${o.keyFile}: no such file`);
      const key = o.keyFile !== undefined ? readKeyFile(o.keyFile, '--key-file') : (zmq.curveKeyPair() as CurveKeys);
      const docs = kubernetesManifests(spec, {
        name,
        namespace: o.namespace,
        image: o.image,
        ranks: o.ranks === undefined ? worldSize(spec) : intFlag(o.ranks, '--ranks'),
        gpusPerRank: intFlag(o.gpusPerRank, '--gpus-per-rank', 0),
        cpu: o.cpu,
        memory: o.memory,
        job: o.job,
        runDir: o.runDir ?? `/runs/${name}`,
        runVolumeClaim: o.runVolumeClaim,
        key,
      });
      process.stdout.write(manifestsYaml(docs));
    });
}
