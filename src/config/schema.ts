import * as z from 'zod';
import { sizeSchema } from './size.js';

/*
 * The cluster spec: one zod schema is the single source of truth for the YAML files,
 * the TypeScript types, the defaults, the JSON Schema that editors use and docs/config.md.
 * Every object is strict so a typo ("slot:") is an error instead of a silently ignored key.
 * Sections default to `{}` through `.prefault`, which parses the default, so the defaults of
 * their fields are filled in too (`.default` would hand back `{}` unparsed).
 */

const NAME_RE = /^[A-Za-z0-9_.-]+$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const HOSTNAME_RE = /^(?=.{1,253}\.?$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

function isIPv6(s: string): boolean {
  if (!/^[0-9A-Fa-f:.]+$/.test(s) || !s.includes(':')) return false;
  let head = s;
  let groupsFromV4 = 0;
  const lastColon = s.lastIndexOf(':');
  if (s.slice(lastColon + 1).includes('.')) {
    if (!IPV4_RE.test(s.slice(lastColon + 1))) return false;
    head = s.slice(0, lastColon + 1) + '0';
    groupsFromV4 = 1; // an embedded IPv4 address takes two groups; the placeholder counted one
  }
  const halves = head.split('::');
  if (halves.length > 2) return false;
  const groups = halves.map((h) => (h === '' ? [] : h.split(':')));
  if (groups.some((g) => g.some((x) => !/^[0-9A-Fa-f]{1,4}$/.test(x)))) return false;
  const n = groups.reduce((a, g) => a + g.length, 0) + groupsFromV4;
  return halves.length === 2 ? n < 8 : n === 8;
}

/** An IPv4 address, an IPv6 address or a DNS host name (a dotted all-digit name must be a valid IPv4). */
export function isHostOrIp(s: string): boolean {
  if (IPV4_RE.test(s) || isIPv6(s)) return true;
  return HOSTNAME_RE.test(s) && !/^[\d.]+$/.test(s);
}

/** 127.0.0.0/8, ::1 (also IPv4-mapped) and localhost: addresses that never leave this machine. */
export function isLoopback(address: string): boolean {
  const a = address.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (a === 'localhost' || a === 'localhost.' || a.endsWith('.localhost')) return true;
  if (a === '::1' || /^(0{1,4}:){7}0{0,3}1$/.test(a)) return true;
  const v4 = a.startsWith('::ffff:') ? a.slice(7) : a;
  return IPV4_RE.test(v4) && v4.startsWith('127.');
}

const WILDCARD_ADDRESSES = new Set(['0.0.0.0', '::', '*']);

const name = (what: string) =>
  z
    .string()
    .regex(NAME_RE, { error: `${what} may contain only letters, digits, "_", "." and "-"` })
    // "." and ".." would name a directory other than the one meant, should a name become a path.
    .refine((s) => !/^\.+$/.test(s), { error: `${what} must not be only dots` });

const address = z
  .string()
  .refine(isHostOrIp, { error: (iss) => `expected a host name or an IP address, got ${JSON.stringify(iss.input)}` });

const posInt = () => z.int().positive();
const millis = (def: number, what: string) => posInt().default(def).describe(`${what} (milliseconds).`);

const SshSchema = z
  .strictObject({
    user: z.string().min(1).optional().describe('Remote user; default: ssh decides (your ssh config, then the local user).'),
    port: z.int().min(1).max(65535).default(22).describe('sshd port.'),
    identityFile: z.string().min(1).optional().describe('Private key passed as `ssh -i`.'),
    options: z
      .array(z.string().min(1))
      .default(() => [])
      .describe('Extra `ssh -o` options, e.g. `StrictHostKeyChecking=accept-new`.'),
  })
  .describe('How to reach the host over ssh. Present means the host is launched over ssh unless `launch` says otherwise.');

const envValue = z.union([z.string(), z.number(), z.boolean()]).transform((v) => String(v));

const HostSchema = z
  .strictObject({
    name: name('a host name').describe('Name of the host in logs and run directories; unique.'),
    address: address.describe('Host name or IP address the other workers and the coordinator reach this host at.'),
    slots: z.int().min(1).default(1).describe('Workers (ring ranks) started on this host.'),
    launch: z
      .enum(['auto', 'local', 'ssh'])
      .default('auto')
      .describe('How workers are started. `auto`: `local` when the address is loopback (127.x.x.x, ::1, localhost) and there is no `ssh` section, else `ssh`.'),
    ssh: SshSchema.optional(),
    env: z
      .record(z.string().regex(ENV_NAME_RE, { error: 'an environment variable name is letters, digits and "_", not starting with a digit' }), envValue)
      .default(() => ({}))
      .describe('Extra environment variables for the workers on this host.'),
    workdir: z.string().min(1).optional().describe('Directory the workers run in on this host; default: the launcher\'s working directory (local) or the ssh login directory.'),
    netns: z
      .string()
      .regex(NAME_RE)
      .optional()
      .describe('Linux network namespace (`ip netns`) the workers of this local host run in; needs root. For testing multi-host rings on one machine.'),
    gpus: z
      .array(z.union([z.int().min(0), z.string().min(1)]))
      .optional()
      .describe(
        "The GPU of each slot, one entry per slot: an index (exported as CUDA_VISIBLE_DEVICES; for backend webgpu, the adapter's index in Dawn's list, as `ringattn doctor` prints it) or, for webgpu, (part of) an adapter's name. Default: slot i takes the host's i-th GPU.",
      ),
  })
  .describe('A machine that runs `slots` workers.');

const RingSchema = z
  .strictObject({
    basePort: z
      .int()
      .min(1024)
      .max(65535)
      .default(29500)
      .describe('The coordinator binds basePort; the worker of global rank r binds basePort + 1 + r.'),
    bindAddress: z
      .string()
      .refine((s) => WILDCARD_ADDRESSES.has(s) || isHostOrIp(s), {
        error: (iss) => `expected an IP address, a host name or * (every interface), got ${JSON.stringify(iss.input)}`,
      })
      .optional()
      .describe('Address the worker sockets bind to; 0.0.0.0, :: or * mean every interface. Default: the host\'s own address.'),
    transport: z
      .enum(['auto', 'tcp', 'ipc', 'shm'])
      .default('auto')
      .describe(
        '`auto`: between two workers on the same host, large blocks through a shared-memory channel (ring.shmBytes in /dev/shm, where the native addon is built and the space can be reserved) and the rest on ipc; tcp between hosts. `ipc`: ipc only. `shm`: as auto, but an error where the channel cannot be had. `ipc` and `shm` need a single host.',
      ),
    shmBytes: sizeSchema
      .prefault('128M')
      .describe(
        'Most bytes of each same-host link\'s shared-memory channel (size). The channel is made in /dev/shm at the first block of 2 MiB or more, sized for 4 of it up to this; a block larger than it, or arriving while it is full, goes on ipc.',
      ),
    connectTimeoutMs: millis(10000, 'Longest wait for a connection to a peer'),
    rendezvousTimeoutMs: millis(30000, 'Longest wait for every worker to join the coordinator'),
    heartbeatIntervalMs: millis(500, 'Interval between ZeroMQ heartbeats'),
    heartbeatTimeoutMs: millis(3000, 'Silence after which a peer is declared lost; must exceed heartbeatIntervalMs'),
    opTimeoutMs: millis(120000, 'Backstop: the longest wait for one ring message from a peer whose link is alive (a dead or frozen peer is found by the heartbeats), and how long after the first rank finishes the last may'),
    maxMessageBytes: sizeSchema.prefault('1G').describe('Largest ring message accepted, in bytes (size).'),
    maxQueuedBytes: sizeSchema
      .prefault('4G')
      .describe(
        'Most bytes of received messages that may wait for a receive not yet made; past it the ring fails naming the sender (a peer sending what this rank never receives). The ring algorithms keep at most a few blocks waiting: keep it at several times maxMessageBytes.',
      ),
    wire: z
      .enum(['float32', 'bfloat16', 'float16'])
      .default('float32')
      .describe('Number format of the KV blocks on the ring. `bfloat16` and `float16` halve the bytes of every hop and round K and V once, at their owner; dK/dV always travel in float32.'),
  })
  .describe('The ZeroMQ ring between the workers.');

const AttentionSchema = z
  .strictObject({
    causal: z.boolean().default(true).describe('Causal (decoder) mask.'),
    layout: z
      .enum(['auto', 'contiguous', 'zigzag', 'striped'])
      .default('auto')
      .describe('How the tokens of a sequence are spread over the ranks. `auto`: zigzag when causal, else contiguous.'),
    tileQ: z
      .union([z.literal('auto'), posInt()])
      .default('auto')
      .describe('Query rows per kernel tile. `auto`: measured on each host at first use and cached (the native kernel; 128 for the others).'),
    tileKV: z
      .union([z.literal('auto'), posInt()])
      .default('auto')
      .describe('Key/value rows per kernel tile. `auto`: as for tileQ.'),
    overlap: z.boolean().default(true).describe('Send the next KV block while computing on the current one.'),
    window: sizeSchema
      .optional()
      .describe(
        'Sliding window W (size): causal, query i attends keys j with i - W < j <= i; not causal, |i - j| < W. A KV block travels only as far as some rank still needs it. Absent: none. With a window, layout auto is contiguous.',
      ),
    scope: z
      .enum(['ring', 'local'])
      .default('ring')
      .describe("`ring`: every query sees the whole sequence (ring attention). `local`: each rank's queries see only the rank's own shard, the control that shows what the ring adds."),
  })
  .describe('Ring attention.');

const ModelSchema = z
  .strictObject({
    vocabSize: posInt().default(256).describe('Vocabulary size (256: bytes).'),
    dModel: posInt().default(64).describe('Width of the residual stream; divisible by heads.'),
    layers: posInt().default(2).describe('Transformer blocks.'),
    heads: posInt().default(4).describe('Query heads.'),
    kvHeads: posInt().optional().describe('Key/value heads (grouped-query attention); must divide heads. Default: heads.'),
    ffnHidden: posInt().optional().describe('Hidden width of the feed-forward block. Default: 4 * dModel.'),
    ffnChunk: sizeSchema.prefault(256).describe('Tokens per blockwise feed-forward chunk (size).'),
    norm: z.enum(['rms', 'layer']).default('rms').describe('RMSNorm or LayerNorm.'),
    tiedEmbeddings: z.boolean().default(true).describe('Share the input embedding with the output projection.'),
    ropeBase: z.number().positive().default(10000).describe('Rotary position embedding base.'),
    initStd: z.number().positive().default(0.02).describe('Standard deviation of the weight initialisation.'),
  })
  .superRefine((m, ctx) => {
    if (m.dModel % m.heads !== 0) {
      ctx.addIssue({ code: 'custom', path: ['heads'], message: `dModel ${m.dModel} is not divisible by heads ${m.heads}` });
    } else if ((m.dModel / m.heads) % 2 !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['dModel'],
        message: `the head dimension dModel/heads = ${m.dModel / m.heads} must be even (rotary embeddings rotate pairs)`,
      });
    }
    if (m.kvHeads !== undefined && m.heads % m.kvHeads !== 0) {
      ctx.addIssue({ code: 'custom', path: ['kvHeads'], message: `kvHeads ${m.kvHeads} does not divide heads ${m.heads}` });
    }
  })
  .transform((m) => ({ ...m, kvHeads: m.kvHeads ?? m.heads, ffnHidden: m.ffnHidden ?? 4 * m.dModel }))
  .describe('The transformer.');

const TrainSchema = z
  .strictObject({
    steps: posInt().default(200).describe('Optimizer steps.'),
    seqLen: sizeSchema.prefault(1024).describe('Tokens per training sequence (size), split over the ring.'),
    batch: posInt().default(1).describe('Sequences per step.'),
    lr: z.number().positive().default(3e-3).describe('Peak learning rate (AdamW).'),
    minLr: z.number().min(0).default(3e-4).describe('Learning rate at the end of the cosine decay; at most lr.'),
    warmupSteps: z.int().min(0).default(20).describe('Steps of linear warm-up.'),
    weightDecay: z.number().min(0).default(0.01).describe('AdamW weight decay.'),
    beta1: z.number().min(0).lt(1).default(0.9).describe('AdamW beta1.'),
    beta2: z.number().min(0).lt(1).default(0.95).describe('AdamW beta2.'),
    eps: z.number().positive().default(1e-8).describe('AdamW epsilon.'),
    gradClip: z.number().min(0).default(1.0).describe('Clip the global gradient norm to this; 0 = off.'),
    checkpointEvery: z.int().min(0).default(50).describe('Steps between checkpoints; 0 = only at the end.'),
    evalEvery: z.int().min(0).default(25).describe('Steps between evaluations; 0 = never.'),
    evalBatches: posInt().default(2).describe('Batches per evaluation.'),
    logEvery: posInt().default(1).describe('Steps between log lines.'),
    seed: z.int().min(0).default(1234).describe('Seed of the initialisation and the data order.'),
    lengthSchedule: z
      .array(
        z.strictObject({
          seqLen: sizeSchema.describe('Tokens per sequence in this stage (size), below train.seqLen.'),
          steps: posInt().describe('Updates in this stage.'),
          batch: posInt().optional().describe('Sequences per step in this stage. Default: train.batch.'),
        }),
      )
      .default(() => [])
      .describe(
        'Shorter sequences first, in this order, before the rest of the steps at train.seqLen (as long-context training does: a retrieval that is learned where the gradient is not spread over every position carries over to long sequences). Evaluation is always at train.seqLen. Empty: every step at train.seqLen.',
      ),
  })
  .superRefine((t, ctx) => {
    if (t.minLr > t.lr) ctx.addIssue({ code: 'custom', path: ['minLr'], message: `minLr ${t.minLr} is larger than lr ${t.lr}` });
    t.lengthSchedule.forEach((stage, i) => {
      if (stage.seqLen >= t.seqLen) {
        ctx.addIssue({ code: 'custom', path: ['lengthSchedule', i, 'seqLen'], message: `stage seqLen ${stage.seqLen} must be shorter than train.seqLen ${t.seqLen}` });
      }
    });
    const staged = t.lengthSchedule.reduce((n, stage) => n + stage.steps, 0);
    if (staged >= t.steps) {
      ctx.addIssue({ code: 'custom', path: ['lengthSchedule'], message: `the stages take ${staged} of the ${t.steps} steps and leave none at train.seqLen ${t.seqLen}` });
    }
  })
  .describe('Training.');

const PasskeySchema = z
  .strictObject({
    valueTokens: posInt().default(4).describe('Tokens of the planted value: the answer, scored after the query.'),
    minDepth: z.number().min(0).lt(1).default(0).describe('The key and value lie at or after this fraction of the sequence.'),
    maxDepth: z.number().gt(0).max(1).default(1).describe('The key and value lie before this fraction of the sequence.'),
  })
  .superRefine((p, ctx) => {
    if (p.minDepth >= p.maxDepth) ctx.addIssue({ code: 'custom', path: ['maxDepth'], message: `maxDepth ${p.maxDepth} must be larger than minDepth ${p.minDepth}` });
  })
  .describe('The passkey task (`kind: passkey`): a key and value planted in random filler, asked for at the end.');

const DataSchema = z
  .strictObject({
    kind: z
      .enum(['text', 'copy', 'recall', 'passkey'])
      .default('text')
      .describe('`text`: next-byte prediction on text files; `copy`, `recall` and `passkey`: synthetic long-range tasks.'),
    paths: z
      .array(z.string().min(1))
      .default(() => [])
      .describe('Text files or globs, relative to the spec file; empty = the built-in corpus.'),
    evalFraction: z.number().min(0).lt(1).default(0.05).describe('Fraction of the text held out for evaluation.'),
    passkey: PasskeySchema.prefault({}),
  })
  .describe('Training data.');

const BenchSchema = z
  .strictObject({
    seqLen: sizeSchema.prefault('64K').describe('Sequence length of the attention benchmark (size).'),
    heads: posInt().default(2).describe('Query heads (default sized so that 8M tokens fit two workers of a 24 GiB host).'),
    kvHeads: posInt().default(1).describe('Key/value heads; must divide heads. Only KV heads travel the ring.'),
    headDim: posInt().default(32).describe('Head dimension.'),
    backward: z.boolean().default(false).describe('Time the backward pass too.'),
    timeLimitS: posInt().default(300).describe('Stop after this many seconds.'),
    iterations: posInt().default(3).describe('Timed iterations (after one warm-up).'),
  })
  .superRefine((b, ctx) => {
    if (b.heads % b.kvHeads !== 0) {
      ctx.addIssue({ code: 'custom', path: ['kvHeads'], message: `kvHeads ${b.kvHeads} does not divide heads ${b.heads}` });
    }
  })
  .describe('`ringattn bench`: ring attention alone, without the model.');

export const ClusterSpecSchema = z
  .strictObject({
    name: name('name').default('ringattn').describe('Name of the spec, shown in logs and run directory names.'),
    runDir: z.string().min(1).default('runs').describe('Base folder for run directories (relative to the working directory).'),
    backend: z
      .enum(['auto', 'webgpu', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'])
      .default('auto')
      .describe(
        'Where the compute runs. `webgpu`: the webgpu engine on the slot\'s GPU (a software adapter too; never the CPU instead). The others are tfjs backends for the tfjs engine and kernel. `auto`: webgpu on a hardware adapter, else tfjs on tensorflow-gpu, else the native CPU engine (tfjs pieces on the first of tensorflow, wasm, cpu that loads).',
      ),
    kernel: z
      .enum(['auto', 'native', 'tfjs', 'reference'])
      .default('auto')
      .describe('Blockwise attention kernel. `auto`: the fastest one available on the worker.'),
    engine: z
      .enum(['auto', 'native', 'tfjs'])
      .default('auto')
      .describe('Compute engine of the model. `auto`: native (the C++ addon) if it loads, else tfjs on `backend`.'),
    threads: z
      .union([z.literal('auto'), posInt()])
      .default('auto')
      .describe("Compute threads per worker (engine and attention kernel). `auto`: the host's cores divided by the workers started on it."),
    security: z
      .enum(['auto', 'none', 'curve'])
      .default('auto')
      .describe('Ring encryption. `auto`: curve when any host is not loopback, else none.'),
    logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info').describe('Log level.'),
    hosts: z.array(HostSchema).min(1).describe('The machines of the ring; ranks are assigned host by host in this order.'),
    ring: RingSchema.prefault({}),
    attention: AttentionSchema.prefault({}),
    model: ModelSchema.prefault({}),
    train: TrainSchema.prefault({}),
    data: DataSchema.prefault({}),
    bench: BenchSchema.prefault({}),
  })
  .superRefine((spec, ctx) => {
    const firstByName = new Map<string, number>();
    const firstByAddress = new Map<string, number>();
    spec.hosts.forEach((h, i) => {
      const seen = firstByName.get(h.name);
      if (seen !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['hosts', i, 'name'], message: `duplicate host name "${h.name}" (also hosts[${seen}].name)` });
      } else firstByName.set(h.name, i);

      const addr = h.address.toLowerCase();
      const same = firstByAddress.get(addr);
      if (same !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['hosts', i, 'address'],
          message: `host "${h.name}" has the same address as host "${spec.hosts[same].name}" (${h.address}); list a machine once and give it more slots`,
        });
      } else firstByAddress.set(addr, i);

      if (h.launch === 'local' && h.ssh) {
        ctx.addIssue({
          code: 'custom',
          path: ['hosts', i, 'ssh'],
          message: `host "${h.name}" has launch: local and an ssh section; remove one of them`,
        });
      }
      if (h.netns && h.ssh) {
        ctx.addIssue({
          code: 'custom',
          path: ['hosts', i, 'netns'],
          message: `host "${h.name}" has a netns and an ssh section: a namespace applies to local workers only`,
        });
      }
      if (h.gpus && h.gpus.length !== h.slots) {
        ctx.addIssue({
          code: 'custom',
          path: ['hosts', i, 'gpus'],
          message: `gpus lists ${h.gpus.length} device(s) but the host has ${h.slots} slot(s); give one per slot`,
        });
      }
    });

    const world = worldSize(spec);
    // With a window every rank binds a second port, for the reverse ring: basePort + 1 + world + rank.
    const ports = spec.attention.window && world > 1 ? 2 * world : world;
    if (spec.ring.basePort + ports > 65535) {
      ctx.addIssue({
        code: 'custom',
        path: ['ring', 'basePort'],
        message: `basePort ${spec.ring.basePort} + ${ports} ports (${world} workers${ports > world ? ', two each with attention.window' : ''}) exceeds port 65535; use at most ${65535 - ports}`,
      });
    }
    if (spec.ring.heartbeatTimeoutMs <= spec.ring.heartbeatIntervalMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['ring', 'heartbeatTimeoutMs'],
        message: `heartbeatTimeoutMs ${spec.ring.heartbeatTimeoutMs} must be larger than heartbeatIntervalMs ${spec.ring.heartbeatIntervalMs}`,
      });
    }
    if (spec.hosts.length > 1 && (spec.ring.transport === 'ipc' || spec.ring.transport === 'shm')) {
      ctx.addIssue({
        code: 'custom',
        path: ['ring', 'transport'],
        message: `${spec.ring.transport} only connects workers on one machine and the spec has ${spec.hosts.length} hosts; use auto or tcp`,
      });
    }
    const bind = spec.ring.bindAddress;
    if (bind !== undefined && !WILDCARD_ADDRESSES.has(bind) && firstByAddress.size > 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['ring', 'bindAddress'],
        message: `bindAddress ${bind} exists on one machine only and the spec has ${firstByAddress.size} hosts; use 0.0.0.0 or leave it unset`,
      });
    }
  })
  .meta({
    title: 'ringattn cluster spec',
    description: 'Hosts, ring, model, training and benchmark settings of a ringattn run.',
  });

export type ClusterSpec = z.output<typeof ClusterSpecSchema>;
export type ClusterSpecInput = z.input<typeof ClusterSpecSchema>;
export type HostSpec = ClusterSpec['hosts'][number];
export type RingSpec = ClusterSpec['ring'];
export type AttentionSpec = ClusterSpec['attention'];
export type ModelSpec = ClusterSpec['model'];
export type TrainSpec = ClusterSpec['train'];
export type DataSpec = ClusterSpec['data'];
export type BenchSpec = ClusterSpec['bench'];

/** Number of ranks in the ring: the slots of every host. */
export function worldSize(spec: Pick<ClusterSpec, 'hosts'>): number {
  return spec.hosts.reduce((n, h) => n + h.slots, 0);
}

/** `launch: auto` resolved: local for a loopback address without an ssh section, else ssh. */
export function resolvedLaunch(host: Pick<HostSpec, 'launch' | 'address' | 'ssh'>): 'local' | 'ssh' {
  if (host.launch !== 'auto') return host.launch;
  return isLoopback(host.address) && !host.ssh ? 'local' : 'ssh';
}

/** `security: auto` resolved: curve as soon as one host is reached over the network. */
export function resolvedSecurity(spec: Pick<ClusterSpec, 'security' | 'hosts'>): 'none' | 'curve' {
  if (spec.security !== 'auto') return spec.security;
  return spec.hosts.some((h) => !isLoopback(h.address)) ? 'curve' : 'none';
}

/** `ring.transport: auto` resolved for the link between two hosts (by name). */
export function resolvedTransport(spec: Pick<ClusterSpec, 'ring'>, hostA: string, hostB: string): 'tcp' | 'ipc' {
  const t = spec.ring.transport;
  if (t === 'tcp' || t === 'ipc') return t;
  // shm hands its blocks over on ipc.
  return hostA === hostB ? 'ipc' : 'tcp';
}

export interface RankEntry {
  /** Global rank: position in the ring. */
  rank: number;
  /** Host name. */
  host: string;
  /** Address peers connect to. */
  address: string;
  /** Address the worker binds (ring.bindAddress, else the host's address). */
  bindAddress: string;
  /** Index of the worker among its host's slots. */
  localRank: number;
  /** Port the worker binds: basePort + 1 + rank. */
  port: number;
  /** Device index for CUDA_VISIBLE_DEVICES. */
  /** The slot's `gpus` entry, else its index on the host. */
  gpu: number | string;
}

/** Every rank of the ring, assigned host by host in file order. */
export function rankTable(spec: Pick<ClusterSpec, 'hosts' | 'ring'>): RankEntry[] {
  const out: RankEntry[] = [];
  for (const h of spec.hosts) {
    for (let localRank = 0; localRank < h.slots; localRank++) {
      const rank = out.length;
      out.push({
        rank,
        host: h.name,
        address: h.address,
        bindAddress: spec.ring.bindAddress ?? h.address,
        localRank,
        port: spec.ring.basePort + 1 + rank,
        gpu: h.gpus?.[localRank] ?? localRank,
      });
    }
  }
  return out;
}

/** The adapter a rank's slot asks for: its host's `gpus` entry, and its index on the host. */
export function slotGpu(spec: Pick<ClusterSpec, 'hosts' | 'ring'>, rank: number): { want: number | string | undefined; slot: number } {
  const e = rankTable(spec)[rank];
  const host = spec.hosts.find((h) => h.name === e.host);
  return { want: host?.gpus?.[e.localRank], slot: e.localRank };
}

/** The JSON Schema of what may be written in a spec file (defaults are optional there). */
export function clusterJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(ClusterSpecSchema, { io: 'input', target: 'draft-07' }) as Record<string, unknown>;
}
