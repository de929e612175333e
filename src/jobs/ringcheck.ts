import { allReduceSum, barrier, broadcast } from '../ring/collectives.js';
import type { JobDefinition } from './types.js';

/**
 * A self-check of the ring: all-reduce, broadcast and barrier with known
 * answers, repeated `rounds` times. Tests and `doctor` use it; `holdMs` keeps
 * each round busy so a test can kill a worker mid-collective.
 */
export const ringcheckJob: JobDefinition = {
  kind: 'ringcheck',
  async worker(ctx) {
    const rounds = Number(ctx.args.rounds ?? 1);
    const length = Number(ctx.args.length ?? 1000);
    const holdMs = Number(ctx.args.holdMs ?? 0);
    const n = ctx.worldSize;
    for (let round = 0; round < rounds; round++) {
      const x = Float32Array.from({ length }, (_, i) => ((i + ctx.rank * 7 + round) % 13) - 6);
      const sum = await allReduceSum(ctx.ring, x);
      for (let i = 0; i < length; i++) {
        let expected = 0;
        for (let r = 0; r < n; r++) expected += ((i + r * 7 + round) % 13) - 6;
        if (sum[i] !== expected) throw new Error(`all-reduce mismatch at ${i}: ${sum[i]} != ${expected}`);
      }
      const [b] = await broadcast(ctx.ring, ctx.rank === 0 ? [new Int32Array([round, 42])] : null);
      if (b.data[0] !== round || b.data[1] !== 42) throw new Error('broadcast delivered the wrong value');
      if (holdMs > 0) await new Promise((r) => setTimeout(r, holdMs));
      await barrier(ctx.ring);
      ctx.log.info({ round }, 'ring check round passed');
    }
    await ctx.result('ok', { rank: ctx.rank, rounds, pid: process.pid });
  },
  async driver(ctx) {
    const out = [];
    for (let r = 0; r < ctx.worldSize; r++) out.push((await ctx.result(r, 'ok')).value);
    return out;
  },
};
