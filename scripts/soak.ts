// npm run soak: the long soak of test/helpers/soak.ts (test/soak.test.ts runs a short one).
//
//   node --import tsx scripts/soak.ts [--steps 1000] [--workers 2] [--interval-ms 1000]
//        [--layers 1] [--seq-len 128] [--checkpoint-every 50] [--json]
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { formatSoak, runSoak } from '../test/helpers/soak.js';

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      steps: { type: 'string', default: '1000' },
      workers: { type: 'string', default: '2' },
      'interval-ms': { type: 'string', default: '1000' },
      layers: { type: 'string', default: '1' },
      'seq-len': { type: 'string' },
      'checkpoint-every': { type: 'string', default: '50' },
      json: { type: 'boolean', default: false },
    },
  });
  const r = await runSoak({
    steps: Number(values.steps),
    workers: Number(values.workers),
    intervalMs: Number(values['interval-ms']),
    layers: Number(values.layers),
    seqLen: values['seq-len'] ? Number(values['seq-len']) : undefined,
    checkpointEvery: Number(values['checkpoint-every']),
  });
  process.stdout.write(values.json ? `${JSON.stringify({ ...r, samples: undefined }, null, 2)}\n` : `${formatSoak(r)}\n`);
}
