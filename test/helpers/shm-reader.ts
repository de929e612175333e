// The receiving side of test/shm.test.ts's cross-process case: opens the
// channel named by argv[2], says "ready", then for each descriptor line on
// stdin (JSON {offset, bytes, end}) takes the message and answers its sha256.
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import { ShmReader } from '../../src/ring/shm.js';

const reader = ShmReader.open(process.argv[2]);
process.stdout.write('ready\n');
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const bytes = reader.takeCopy(JSON.parse(line));
  process.stdout.write(`${createHash('sha256').update(bytes).digest('hex')}\n`);
});
lines.on('close', () => reader.close());
