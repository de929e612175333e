// Run by test/shm.test.ts inside a private mount namespace whose /dev/shm is a
// 64 MiB tmpfs, as in a default container: a channel that fits is written
// through every page without a SIGBUS, and one that does not fit is refused
// with an error. Prints one JSON line.
import { existsSync } from 'node:fs';
import { ShmReader, ShmWriter } from '../../src/ring/shm.js';

const small = '/dev/shm/ringattn-small-0.shm';
const w = ShmWriter.create(small, 48 << 20);
const r = ShmReader.open(small);
const payload = new Uint8Array(48 << 20).fill(0xa5);
const got = r.takeCopy(w.put([payload])!);
const fits = got.length === payload.length && got.every((b) => b === 0xa5);
w.close();
r.close();
w.unlink();

const big = '/dev/shm/ringattn-big-0.shm';
let message = '';
try {
  ShmWriter.create(big, 256 << 20).close();
} catch (err) {
  message = (err as Error).message;
}
process.stdout.write(`${JSON.stringify({ fits, message, leftBehind: existsSync(big) })}\n`);
