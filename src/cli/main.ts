import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Command, CommanderError } from 'commander';
import { UserError } from '../errors.js';
import { prepareAttn } from '../jobs/attn.js';
import { LAYOUTS, type Layout } from '../attention/layout.js';
import { loadSpec, specFromObject, worldSize, type ClusterSpec } from '../config/index.js';
import type { DoctorReport } from '../jobs/doctor.js';
import { defaultRunDir, runJob, runJobWithRestarts } from '../launch/launcher.js';
import { ensurePrivateDir } from '../train/checkpoint.js';
import type { ViewServer } from '../view/server.js';
import type { ComputeBackend } from '../engine/index.js';
import { writeMachineFile } from '../plan/presets.js';
import { intFlag, resolveSpec, ringOptions, SET_OPTION, withSetting } from './common.js';
import { benchCommand } from './bench.js';
import { planCommand } from './plan.js';
import { serveRun, viewCommand, viewOptions, type ViewFlags } from './view.js';
import { keygenCommand, launchCommand } from './launch.js';
import { workerCommand } from './worker.js';

/** Ranks to show on the console, from `--ranks 0,2`. */
function parseRanks(s?: string): number[] | undefined {
  if (!s) return undefined;
  return s.split(',').map((x) => intFlag(x.trim(), '--ranks', 0));
}

function trainCommand(): Command {
  const cmd = ringOptions(new Command('train').description('train a transformer whose sequences are sharded across the ring (default: the localhost ring of configs/localhost.yaml)'), { wire: true })
    .option('--run-dir <dir>', 'run directory (default <runDir>/train-<timestamp>)')
    .option('--resume', 'continue the run in --run-dir from its latest valid checkpoint')
    .option('--ranks <list>', 'show only these ranks\' log lines, e.g. 0,2')
    .option('--quiet', 'no worker log lines on the console')
    .option('--max-restarts <k>', 'after a failure, restart the ring from the last valid checkpoint, up to k times', '0')
    .option('--view', 'serve the live dashboard while training (see --port)');
  return viewOptions(cmd).action(
    async (opts: { config?: string; backend?: string; kernel?: string; runDir?: string; resume?: boolean; ranks?: string; quiet?: boolean; maxRestarts: string; view?: boolean } & ViewFlags) => {
      if (opts.resume && !opts.runDir) throw new UserError('--resume needs --run-dir: the run to continue');
      const maxRestarts = intFlag(opts.maxRestarts, '--max-restarts', 0);
      const spec = resolveSpec(opts);
      process.stderr.write(`ringattn train: ${worldSize(spec)} worker(s) on ${spec.hosts.map((h) => `${h.name}x${h.slots}`).join(', ')}, ${spec.train.steps} steps of ${spec.train.seqLen} tokens\n`);
      const runDirWanted = path.resolve(opts.runDir ?? defaultRunDir(spec, 'train'));
      let view: ViewServer | null = null;
      if (opts.view) {
        ensurePrivateDir(runDirWanted);
        view = await serveRun(runDirWanted, opts);
      }
      let outcome: Awaited<ReturnType<typeof runJobWithRestarts>>;
      try {
        outcome = await runJobWithRestarts(
          spec,
          { kind: 'train', args: { resume: !!opts.resume } },
          { runDir: runDirWanted, quiet: opts.quiet, ranks: parseRanks(opts.ranks), maxRestarts, restartArgs: (args) => ({ ...args, resume: true }) },
        );
      } finally {
        if (view) {
          // The run's end reaches open pages (they close their stream on it) before the server goes.
          view.refresh();
          await new Promise((r) => setTimeout(r, 300));
          await view.close();
          process.stderr.write(`dashboard stopped with the run; \`ringattn view ${runDirWanted}\` serves it again\n`);
        }
      }
      const { runDir, value, restarts } = outcome;
      const r = value as { finalLoss: number; steps: number; evalLoss?: number };
      const again = restarts > 0 ? ` after ${restarts} restart${restarts === 1 ? '' : 's'}` : '';
      const evalNote = r.evalLoss !== undefined ? ` (eval ${r.evalLoss.toFixed(4)})` : '';
      process.stdout.write(`trained ${r.steps} steps${again}, final loss ${r.finalLoss.toFixed(4)}${evalNote}; run directory ${runDir}\n`);
    },
  );
}

function attnCommand(): Command {
  const cmd = new Command('attn')
    .description('ring attention on .npy arrays [seq, heads, dim] (float32), for checking against PyTorch or JAX')
    .requiredOption('--q <file>', 'queries [seq, heads, dim]')
    .requiredOption('--k <file>', 'keys [seq, kv_heads, dim]')
    .requiredOption('--v <file>', 'values [seq, kv_heads, dim]')
    .option('--dout <file>', 'gradient of the output [seq, heads, dim]: also writes dq, dk, dv')
    .option('--segments <file>', 'document id per token [seq] (int32/int64), for packed sequences')
    .option('--causal', 'causal mask', false)
    .option('--layout <layout>', `token layout: ${LAYOUTS.join(', ')} (default zigzag when causal without a window, else contiguous)`)
    .requiredOption('--out <dir>', 'output folder for out.npy, lse.npy (and dq/dk/dv.npy)');
  return ringOptions(cmd, { workers: true, wire: true })
    .action(async (opts: { q: string; k: string; v: string; dout?: string; segments?: string; causal: boolean; layout?: string; workers?: string; config?: string; backend?: string; kernel?: string; out: string }) => {
      const spec = resolveSpec(opts);
      const token = prepareAttn({ ...opts, window: spec.attention.window, layout: opts.layout as Layout | undefined }, worldSize(spec));
      const { value } = await runJob(spec, { kind: 'attn', args: { token } }, { quiet: true });
      for (const f of value as string[]) process.stdout.write(`${f}\n`);
    });
}

function formatDoctor(r: DoctorReport, spec: ClusterSpec): string {
  const lines: string[] = [];
  for (const x of r.ranks) {
    lines.push(`rank ${x.rank} (${x.host}): node ${x.node}, ring endpoint ${x.endpoint} bound, ${x.memoryGB.toFixed(1)} GiB memory`);
    for (const b of x.backends) lines.push(`  backend ${b.name.padEnd(14)} ${b.available ? (b.gpu ? 'usable (GPU)' : 'usable') : `unavailable: ${b.reason ?? ''}`}`);
    lines.push(`  attention kernel ${x.kernel}: ${x.kernelGflops.toFixed(1)} GFLOP/s forward (${x.kernelReason})`);
    if (x.webgpu.unavailable) lines.push(`  webgpu unavailable: ${x.webgpu.unavailable}`);
    else if (x.webgpu.adapters.length === 0) lines.push('  webgpu: no adapter (no Vulkan driver; see docs/launch.md)');
    for (const a of x.webgpu.adapters) {
      const kind = a.software ? 'software: correctness only' : 'hardware';
      const rates = a.error
        ? `not measured: ${a.error}`
        : a.matmulGflops !== undefined
          ? `matmul ${a.matmulGflops.toFixed(1)} GFLOP/s, attention ${a.attentionGflops!.toFixed(1)} GFLOP/s forward, ` +
            `max buffer ${((a.limits?.maxBufferSize ?? 0) / 2 ** 20).toFixed(0)} MiB, binding ${((a.limits?.maxStorageBufferBindingSize ?? 0) / 2 ** 20).toFixed(0)} MiB, workgroup memory ${((a.limits?.maxComputeWorkgroupStorageSize ?? 0) / 1024).toFixed(0)} KiB`
          : 'measured by the first rank of this host';
      lines.push(`  webgpu adapter ${a.index}: ${a.name} (${a.backend}, ${kind}): ${rates}`);
    }
    const t = x.tuning;
    lines.push(
      t.error
        ? `  tuning: not measured (${t.error})`
        : `  tuned for this host: attention tiles ${t.tiles?.tileQ}x${t.tiles?.tileKV}, GEMM blocking mc ${t.gemm?.mc} kc ${t.gemm?.kc} nc ${t.gemm?.nc} (${t.file})`,
    );
  }
  lines.push(`ring of ${r.ranks.length} (base port ${spec.ring.basePort}): hop latency ${r.latencyUs.toFixed(0)} us`);
  for (const h of r.hops) lines.push(`  hop ${String(h.bytes / 2 ** 20).padStart(3)} MiB: ${h.ms.toFixed(2)} ms, ${h.gbps.toFixed(2)} GB/s`);
  lines.push(`  all-reduce ${r.allReduce.bytes / 2 ** 20} MiB: ${r.allReduce.ms.toFixed(1)} ms, bus ${r.allReduce.busGBps.toFixed(2)} GB/s`);
  return lines.join('\n');
}

function doctorCommand(): Command {
  return ringOptions(new Command('doctor').description('launch the ring and check it: hosts, Node, backends, kernel speed, hop latency and bandwidth, all-reduce'), { workers: true })
    .option('--json', 'print the report as JSON')
    .action(async (opts: { config?: string; workers?: string; backend?: string; kernel?: string; json?: boolean }) => {
      const spec = resolveSpec(opts);
      let report: DoctorReport;
      try {
        report = (await runJob(spec, { kind: 'doctor', args: {} }, { quiet: true })).value as DoctorReport;
      } catch (err) {
        process.stdout.write(`FAIL: ${(err as Error).message}\n`);
        throw new UserError('doctor: the ring does not work', 1);
      }
      if (opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      else process.stdout.write(`${formatDoctor(report, spec)}\n`);
      // Calibrate plan's "this-machine" device from rank 0's measurements.
      const big = report.hops[report.hops.length - 1];
      // The runtime's overhead: the largest over ranks, as plan counts the busiest worker.
      const file = writeMachineFile({
        tflops: report.ranks[0].kernelGflops / 1000,
        linkGBps: big.gbps,
        memoryGB: report.ranks[0].memoryGB,
        measuredAt: new Date().toISOString(),
        runtimeBytes: Math.max(...report.ranks.map((x) => x.runtimeBytes)),
      });
      process.stdout.write(`PASS: the ring of ${report.ranks.length} works (measurements saved to ${file} for \`ringattn plan --device this-machine\`)\n`);
    });
}

function generateCommand(): Command {
  return new Command('generate')
    .description('sample text from a trained checkpoint: prefill on the ring, decoding against its sharded KV cache')
    .requiredOption('--checkpoint <dir>', 'a checkpoint folder, or a run directory (its latest valid checkpoint)')
    .option('--prompt <text>', 'text to continue')
    .option('--prompt-file <file>', 'a file whose text to continue')
    .option('--max-tokens <n>', 'new tokens to sample', '200')
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', '0.8')
    .option('--top-k <k>', 'sample among the k most likely tokens')
    .option('--top-p <p>', 'sample among the most likely tokens whose probabilities add up to p')
    .option('--seed <n>', 'sampling seed', '0')
    .option('--config <spec.yaml>', "run on this spec's ring (its model must be the checkpoint's)")
    .option('--workers <n>', 'run on a ring of N local workers')
    .option('--backend <name>', 'where compute runs (one process): auto, webgpu, tensorflow-gpu, tensorflow, wasm, cpu')
    .action(async (opts: { checkpoint: string; prompt?: string; promptFile?: string; maxTokens: string; temperature: string; topK?: string; topP?: string; seed: string; config?: string; workers?: string; backend?: string }) => {
      const { resolveCheckpoint } = await import('../train/checkpoint.js');
      const { paramCount } = await import('../model/index.js');
      if (opts.prompt !== undefined && opts.promptFile !== undefined) throw new UserError('--prompt and --prompt-file: give one');
      if (opts.config !== undefined && opts.workers !== undefined) throw new UserError('--config and --workers: give one');
      let prompt: Buffer;
      if (opts.promptFile !== undefined) {
        if (!existsSync(opts.promptFile)) throw new UserError(`--prompt-file: ${opts.promptFile} does not exist`);
        prompt = readFileSync(opts.promptFile);
      } else if (opts.prompt !== undefined) prompt = Buffer.from(opts.prompt, 'utf8');
      else throw new UserError('give the text to continue: --prompt TEXT or --prompt-file FILE');
      if (prompt.length === 0) throw new UserError(`${opts.promptFile ?? '--prompt'}: the prompt is empty`);
      const temperature = Number(opts.temperature);
      if (!(temperature >= 0)) throw new UserError(`--temperature: expected a number >= 0, got "${opts.temperature}"`);
      const topP = opts.topP === undefined ? undefined : Number(opts.topP);
      if (topP !== undefined && !(topP > 0 && topP <= 1)) throw new UserError(`--top-p: expected a number in (0, 1], got "${opts.topP}"`);
      const args = {
        maxNewTokens: intFlag(opts.maxTokens, '--max-tokens', 0),
        temperature,
        topK: opts.topK === undefined ? undefined : intFlag(opts.topK, '--top-k'),
        topP,
        seed: intFlag(opts.seed, '--seed', 0),
      };
      const ckpt = resolveCheckpoint(opts.checkpoint);
      let spec = ckpt.spec as ClusterSpec;
      if (opts.config !== undefined) spec = loadSpec(opts.config);
      if (opts.workers !== undefined) {
        const n = intFlag(opts.workers, '--workers');
        spec = specFromObject({ ...spec, hosts: [{ name: 'localhost', address: '127.0.0.1', slots: n }] }, `--workers ${n}`);
      }
      if (paramCount(spec.model) !== ckpt.params.flat.length) {
        throw new UserError(`${opts.config ?? ckpt.path}: its model has ${paramCount(spec.model)} parameters, the checkpoint ${ckpt.params.flat.length}`);
      }
      // Never cut: positions past the trained length were never seen, and the user should know.
      if (prompt.length > spec.train.seqLen) {
        process.stderr.write(`warning: the prompt is ${prompt.length} tokens, longer than the ${spec.train.seqLen} the model was trained on; positions past ${spec.train.seqLen} were never seen in training\n`);
      }
      const tokens = Int32Array.from(prompt);
      process.stdout.write(prompt);
      let r: import('../model/generate.js').GenerateResult | Omit<import('../model/generate.js').GenerateResult, 'tokens'>;
      let where: string;
      if (opts.config !== undefined || opts.workers !== undefined) {
        ({ value: r } = (await runJob(spec, { kind: 'generate', args: { ...args, checkpoint: ckpt.path, prompt: Array.from(tokens), stream: true } }, { quiet: true })) as { value: typeof r });
        where = `${worldSize(spec)} workers`;
      } else {
        const { generate } = await import('../model/index.js');
        const { loadEngine } = await import('../engine/index.js');
        const { loadTunedKernel } = await import('../engine/tuning.js');
        const { hostThreads } = await import('../config/index.js');
        const threads = hostThreads(1);
        const { engine } = await loadEngine('auto', { threads, backend: (opts.backend ?? 'auto') as ComputeBackend });
        const { kernel } = await loadTunedKernel({ ...spec, kernel: 'auto' }, { heads: spec.model.heads, kvHeads: spec.model.kvHeads, headDim: spec.model.dModel / spec.model.heads, threads });
        r = await generate(spec.model, ckpt.params, tokens, { ...args, engine, kernel, window: spec.attention.window, layout: spec.attention.window ? 'contiguous' : 'zigzag', onToken: (t) => process.stdout.write(Buffer.of(t)) });
        where = '1 process';
      }
      process.stdout.write('\n');
      const rate = (count: number, ms: number) => (ms > 0 ? `${((count * 1000) / ms).toFixed(1)} tokens/s` : '-');
      process.stderr.write(
        `generate (${where}): prefill ${r.prefillTokens} tokens in ${r.prefillMs.toFixed(0)} ms (${rate(r.prefillTokens, r.prefillMs)}); ` +
          `time to first token ${r.timeToFirstTokenMs.toFixed(0)} ms; decode ${r.decodeTokens} tokens at ${rate(r.decodeTokens, r.decodeMs)}\n`,
      );
    });
}

function evalCommand(): Command {
  return new Command('eval')
    .description("a checkpoint's held-out accuracy on the ring, by depth of the planted key for the passkey task")
    .requiredOption('--checkpoint <dir>', 'a checkpoint folder, or a run directory (its latest valid checkpoint)')
    .option('--task <kind>', 'data to evaluate on: text, copy, recall, passkey (default: what the run trained on)')
    .option('--samples <n>', 'held-out sequences', '64')
    .option('--buckets <n>', 'depth buckets of the report', '8')
    .option('--workers <n>', 'a ring of N local workers instead of the run\'s hosts')
    .option(...SET_OPTION)
    .option('--json', 'the result as JSON')
    .action(async (opts: { checkpoint: string; task?: string; samples: string; buckets: string; workers?: string; set?: string[]; json?: boolean }) => {
      const { resolveCheckpoint } = await import('../train/checkpoint.js');
      const { depthBuckets, evalSpec } = await import('../jobs/eval.js');
      const { paramCount } = await import('../model/index.js');
      const samples = intFlag(opts.samples, '--samples');
      const buckets = intFlag(opts.buckets, '--buckets');
      const kinds = ['text', 'copy', 'recall', 'passkey'] as const;
      if (opts.task !== undefined && !(kinds as readonly string[]).includes(opts.task)) {
        throw new UserError(`--task: expected one of ${kinds.join(', ')}, got "${opts.task}"`);
      }
      const ckpt = resolveCheckpoint(opts.checkpoint);
      let spec = specFromObject(ckpt.spec, `${ckpt.path}/spec`);
      for (const a of opts.set ?? []) spec = specFromObject(withSetting(spec, a), `--set ${a}`);
      if (opts.workers !== undefined) {
        const n = intFlag(opts.workers, '--workers');
        spec = specFromObject({ ...spec, hosts: [{ name: 'localhost', address: '127.0.0.1', slots: n }] }, `--workers ${n}`);
      }
      spec = evalSpec(spec, opts.task as (typeof kinds)[number] | undefined);
      const want = paramCount(spec.model);
      if (want !== ckpt.params.flat.length) {
        throw new UserError(`${ckpt.path} holds ${ckpt.params.flat.length} parameters, the model of the spec ${want}: model fields cannot be changed with --set`);
      }
      const { value } = await runJob(spec, { kind: 'eval', args: { samples, checkpoint: ckpt.path } }, { quiet: true });
      const r = value as import('../train/loop.js').EvalResult;
      const byDepth = spec.data.kind === 'passkey' ? depthBuckets(r.perWindow, buckets) : [];
      const targets = r.perWindow.reduce((n, w) => n + w.targets, 0);
      const exact = r.perWindow.filter((w) => w.correct === w.targets).length;
      if (opts.json) {
        process.stdout.write(JSON.stringify({ checkpoint: ckpt.path, step: ckpt.step, task: spec.data.kind, seqLen: spec.train.seqLen, scope: spec.attention.scope, workers: worldSize(spec), samples, loss: r.loss, accuracy: r.accuracy, exactSamples: exact, byDepth }, null, 2) + '\n');
        return;
      }
      const lines = [
        `${ckpt.path} (step ${ckpt.step}) on ${spec.data.kind}, ${samples} held-out sequences of ${spec.train.seqLen} tokens, ${worldSize(spec)} worker(s), attention scope ${spec.attention.scope}`,
        `accuracy ${r.accuracy.toFixed(4)} (${Math.round(r.accuracy * targets)}/${targets} answer tokens), ${exact}/${samples} sequences exact, loss ${r.loss.toFixed(4)}`,
      ];
      if (byDepth.length > 0) {
        lines.push('depth        samples  accuracy  exact');
        for (const b of byDepth) {
          const range = `${b.from.toFixed(3)}-${b.to.toFixed(3)}`;
          lines.push(`${range.padEnd(12)} ${String(b.samples).padStart(7)}  ${b.samples ? b.accuracy.toFixed(4).padStart(8) : '       -'}  ${String(b.exact).padStart(5)}`);
        }
      }
      process.stdout.write(lines.join('\n') + '\n');
    });
}

export function buildProgram(): Command {
  const program = new Command('ringattn')
    .description('Ring Attention: train transformers on sequences sharded across a ZeroMQ ring of workers')
    .version('0.1.0')
    .showHelpAfterError(false)
    .exitOverride();
  program.addCommand(trainCommand());
  program.addCommand(benchCommand());
  program.addCommand(planCommand());
  program.addCommand(attnCommand());
  program.addCommand(doctorCommand());
  program.addCommand(generateCommand());
  program.addCommand(evalCommand());
  program.addCommand(viewCommand());
  program.addCommand(launchCommand());
  program.addCommand(keygenCommand());
  program.addCommand(workerCommand(), { hidden: true });
  for (const c of program.commands) c.exitOverride();
  return program;
}

/** Runs the CLI; user mistakes print one line and exit non-zero, never a stack trace. */
export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander already printed its message (or the help); keep its exit code, but 2 for usage errors.
      process.exit(err.exitCode === 0 ? 0 : 2);
    }
    if (err instanceof UserError) {
      process.stderr.write(`ringattn: ${err.message}\n`);
      process.exit(err.exitCode);
    }
    throw err;
  }
}
