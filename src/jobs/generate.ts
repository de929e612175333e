import type { JobDefinition } from './types.js';
import { referenceKernel } from '../kernels/reference.js';
import { resolveLayout } from '../train/loop.js';
import { resolveCheckpoint } from '../train/checkpoint.js';
import { workerCompute } from '../engine/compute.js';
import { generate, type GenerateResult } from '../model/generate.js';
import { paramSpecs } from '../model/params.js';

/**
 * `ringattn generate` on a ring: the driver reads the checkpoint and hands
 * every rank the parameters and the prompt; every rank runs the same
 * generation (prefill sharded by the layout, decode against the sharded KV
 * cache); rank 0 streams each token to the driver as it is produced.
 */

export interface GenerateArgs {
  /** Read by the driver only. */
  checkpoint: string;
  maxNewTokens: number;
  temperature: number;
  topK?: number;
  topP?: number;
  seed: number;
  /** The driver writes each token's byte to stdout as it arrives (the CLI); otherwise it only collects them. */
  stream?: boolean;
}

export const generateJob: JobDefinition = {
  kind: 'generate',
  async worker(ctx) {
    const { spec, ring } = ctx;
    const args = ctx.args as unknown as GenerateArgs;
    const { engine, kernel } = await workerCompute(spec, ctx.rank);
    const { blobs } = await ctx.input('inputs');
    const [params, prompt] = blobs as [Float32Array, Int32Array];
    const result = await generate(spec.model, { flat: params, specs: paramSpecs(spec.model) }, prompt, {
      maxNewTokens: args.maxNewTokens,
      temperature: args.temperature,
      topK: args.topK,
      topP: args.topP,
      seed: args.seed,
      engine,
      // An engine with attention of its own (webgpu) still decodes through a host kernel here.
      kernel: kernel ?? referenceKernel,
      ring,
      layout: resolveLayout(spec.attention),
      window: spec.attention.window,
      onToken: (token) => {
        if (ctx.rank === 0) void ctx.result('token', token);
      },
    });
    if (ctx.rank === 0) await ctx.result('done', { ...result, tokens: undefined });
  },
  async driver(ctx) {
    const a = ctx.args as unknown as GenerateArgs & { prompt: number[] };
    const { params } = resolveCheckpoint(a.checkpoint);
    const prompt = Int32Array.from(a.prompt);
    for (let r = 0; r < ctx.worldSize; r++) await ctx.send(r, 'inputs', {}, [params.flat, prompt]);
    const tokens: number[] = [];
    for (let i = 0; i < a.maxNewTokens; i++) {
      const t = (await ctx.result(0, 'token')).value as number;
      tokens.push(t);
      if (a.stream) process.stdout.write(Buffer.of(t));
    }
    const done = (await ctx.result(0, 'done')).value as Omit<GenerateResult, 'tokens'>;
    return { ...done, tokens };
  },
};
