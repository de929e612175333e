// The same-host shared-memory channel (src/ring/shm.ts, native/shm.cc): byte
// exact round trips through many wraps of the ring, no room reported as null
// and never waited for, a reader in another process, creation that fails
// cleanly where /dev/shm cannot hold the buffer, files that are not channels,
// and use after close.
//
//   node --import tsx --test test/shm.test.ts
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { freemem } from 'node:os';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadAddon } from '../src/addon/index.js';
import { shmAvailable, shmPath, ShmReader, ShmWriter, type ShmDescriptor } from '../src/ring/shm.js';
import { rng } from './helpers/rng.js';

// Linux only; there a missing addon fails here unless the build was skipped on purpose.
const skip =
  process.platform !== 'linux'
    ? `the shared-memory channel is Linux only (this is ${process.platform})`
    : !shmAvailable() && process.env.RINGATTN_SKIP_NATIVE
      ? `RINGATTN_SKIP_NATIVE is set: ${loadAddon().reason ?? ''}`
      : false;

const HELPER = fileURLToPath(new URL('./helpers/shm-reader.ts', import.meta.url));
const SMALL_DEVSHM = fileURLToPath(new URL('./helpers/shm-small-devshm.ts', import.meta.url));
const job = `test${process.pid}${randomBytes(4).toString('hex')}`;
const made: string[] = [];
let nextRank = 0;

/** A fresh channel path of this run; removed after the tests whatever happens. */
function freshPath(): string {
  const p = shmPath(job, nextRank++);
  made.push(p);
  return p;
}

after(() => {
  for (const p of made) rmSync(p, { force: true });
});


function randomPayload(r: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 256) | 0;
  return out;
}

/** `bytes` cut into up to `parts` views at random points (some empty), as the caller's tensors would be. */
function split(r: () => number, bytes: Uint8Array, parts: number): Uint8Array[] {
  const cuts = Array.from({ length: parts - 1 }, () => Math.floor(r() * (bytes.length + 1))).sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let at = 0;
  for (const c of [...cuts, bytes.length]) {
    out.push(bytes.subarray(at, c));
    at = c;
  }
  return out;
}

function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

test('shmPath names one file per sending rank and refuses ids that could leave /dev/shm', () => {
  assert.equal(shmPath('0123456789abcdef', 3), '/dev/shm/ringattn-0123456789abcdef-3.shm');
  assert.throws(() => shmPath('../etc', 0), /job id/);
  assert.throws(() => shmPath('a/b', 0), /job id/);
  assert.throws(() => shmPath('ab', -1), /rank/);
  assert.throws(() => shmPath('ab', 1.5), /rank/);
});

test('many messages of random sizes round trip byte for byte through many wraps, taken a few at a time', { skip }, (t) => {
  const path = freshPath();
  const capacity = 64 * 1024;
  const w = ShmWriter.create(path, capacity);
  const r = ShmReader.open(path);
  try {
    assert.equal(w.capacity, capacity);
    assert.equal(r.capacity, capacity);
    const rand = rng(12345);
    const pending: { desc: ShmDescriptor; payload: Uint8Array }[] = [];
    let sent = 0, taken = 0, wraps = 0, skips = 0, lastOffset = -1, lastEnd = 0, nulls = 0;
    while (taken < 2000) {
      // Write a few...
      for (let k = 1 + Math.floor(rand() * 5); k > 0 && sent < 2000; k--) {
        // Mostly small, some near the capacity, a few empty.
        const u = rand();
        const n = u < 0.05 ? 0 : u < 0.85 ? Math.floor(rand() * 9000) : Math.floor(capacity * (0.3 + 0.7 * rand()));
        const payload = randomPayload(rand, n);
        const desc = w.put(split(rand, payload, 1 + Math.floor(rand() * 3)));
        if (!desc) {
          nulls++;
          assert.ok(pending.length > 0, `put of ${n} bytes found no room in an empty ring`);
          break;
        }
        assert.equal(desc.bytes, n);
        assert.equal(desc.offset % 64, 0);
        assert.ok(desc.offset + n <= capacity);
        if (desc.offset < lastOffset) wraps++;
        // Started past the previous message's end (rounded up to 64): the tail was skipped.
        if (desc.end - n > Math.ceil(lastEnd / 64) * 64) {
          assert.equal(desc.offset, 0, 'a skip goes to the start');
          skips++;
        }
        lastOffset = desc.offset;
        lastEnd = desc.end;
        pending.push({ desc, payload });
        sent++;
      }
      // ...then take a few, into views cut differently from the writer's.
      for (let k = 1 + Math.floor(rand() * 5); k > 0 && pending.length > 0; k--) {
        const { desc, payload } = pending.shift()!;
        const into = split(rand, new Uint8Array(desc.bytes), 1 + Math.floor(rand() * 3));
        r.take(desc, into);
        const got = new Uint8Array(desc.bytes);
        let at = 0;
        for (const v of into) {
          got.set(v, at);
          at += v.length;
        }
        assert.deepEqual(got, payload, `message ${taken} (${desc.bytes} bytes at ${desc.offset})`);
        taken++;
      }
    }
    assert.equal(w.freeBytes(), capacity);
    assert.ok(wraps > 50, `only ${wraps} wraps`);
    assert.ok(skips > 10, `only ${skips} messages skipped a tail`);
    assert.ok(nulls > 10, `the ring was full only ${nulls} times`);
    t.diagnostic(`${sent} messages, ${wraps} wraps, ${skips} skipped tails, ${nulls} times full`);
  } finally {
    w.close();
    r.close();
    w.unlink();
  }
});

test('put is null when there is no room, or never could be, and succeeds once the reader has taken', { skip }, () => {
  const path = freshPath();
  const w = ShmWriter.create(path, 4096);
  const r = ShmReader.open(path);
  try {
    assert.equal(w.put([new Uint8Array(4097)]), null, 'larger than the capacity');
    const whole = randomPayload(rng(1), 4096);
    const a = w.put([whole]);
    assert.deepEqual(a, { offset: 0, bytes: 4096, end: 4096 });
    assert.equal(w.freeBytes(), 0);
    assert.equal(w.put([new Uint8Array(1)]), null, 'full');
    assert.deepEqual(r.takeCopy(a!), whole);
    assert.equal(w.freeBytes(), 4096);

    // 3000 bytes in; 2000 more do not fit in the 1096 left at the end, nor at the start while the first is unread.
    const b = w.put([new Uint8Array(3000).fill(7)])!;
    assert.deepEqual(b, { offset: 0, bytes: 3000, end: 7096 });
    assert.equal(w.put([new Uint8Array(2000)]), null, 'would overwrite an unread message');
    assert.equal(w.put([new Uint8Array(1200)]), null, 'the 1096 bytes left (after padding to 64) cannot hold 1200');
    r.take(b, [new Uint8Array(1000), new Uint8Array(2000)]);
    const c = w.put([new Uint8Array(2000).fill(9)])!;
    assert.deepEqual(c, { offset: 0, bytes: 2000, end: 4096 * 2 + 2000 }, 'wrapped to the start, the tail skipped');
    assert.deepEqual(r.takeCopy(c), new Uint8Array(2000).fill(9));
    assert.equal(w.freeBytes(), 4096);
    // Empty, the writer mid-buffer: a message of the whole capacity still fits, from the start.
    const full = randomPayload(rng(2), 4096);
    const e = w.put([full])!;
    assert.deepEqual(e, { offset: 0, bytes: 4096, end: 4096 * 4 });
    assert.deepEqual(r.takeCopy(e), full);
  } finally {
    w.close();
    r.close();
    w.unlink();
  }
});

test('a descriptor the writer could not have made is refused before anything is copied', { skip }, () => {
  const path = freshPath();
  const w = ShmWriter.create(path, 4096);
  const r = ShmReader.open(path);
  try {
    const d = w.put([new Uint8Array(100).fill(5)])!;
    assert.throws(() => r.take({ ...d, offset: 4000 }, [new Uint8Array(100)]), RangeError, 'past the end');
    assert.throws(() => r.take({ ...d, offset: 64 }, [new Uint8Array(100)]), RangeError, 'offset not where end says');
    assert.throws(() => r.take({ ...d, end: d.end + 8192 }, [new Uint8Array(100)]), RangeError, 'more than a capacity ahead');
    assert.throws(() => r.take({ ...d, bytes: 5000 }, [new Uint8Array(5000)]), RangeError, 'larger than the buffer');
    assert.throws(() => r.take({ ...d, offset: -1 }, [new Uint8Array(100)]), RangeError);
    assert.throws(() => r.take({ ...d, end: 2 ** 60 }, [new Uint8Array(100)]), RangeError);
    assert.throws(() => r.take(d, [new Uint8Array(99)]), /views hold 99 bytes/);
    assert.equal(w.freeBytes(), 4096 - 100, 'nothing was consumed');
    assert.deepEqual(r.takeCopy(d), new Uint8Array(100).fill(5));
    assert.throws(() => r.take(d, [new Uint8Array(100)]), RangeError, 'taken twice');
    const e = w.put([new Uint8Array(10)])!;
    const f = w.put([new Uint8Array(10)])!;
    r.take(f, [new Uint8Array(10)]);
    assert.throws(() => r.take(e, [new Uint8Array(10)]), RangeError, 'taken after a later one');
  } finally {
    w.close();
    r.close();
    w.unlink();
  }
});

test('a reader in another process takes a stream of messages, named only by descriptors sent over a pipe', { skip, timeout: 20_000 }, async () => {
  const path = freshPath();
  const w = ShmWriter.create(path, 1 << 20);
  const child = spawn(process.execPath, ['--import', 'tsx', HELPER, path], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const replies = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    const next = async (): Promise<string> => {
      const { value, done } = await replies.next();
      if (done) throw new Error(`the reader exited (code ${child.exitCode}) before answering`);
      return value as string;
    };
    assert.equal(await next(), 'ready');
    // The reader has it mapped: the name can go, as the transport will do.
    w.unlink();
    assert.equal(existsSync(path), false);

    const rand = rng(99);
    const expected: string[] = [];
    let answered = 0, waited = 0;
    // Descriptors go out in small groups, so the reader sometimes lags the
    // writer by most of the ring and the writer runs out of room.
    let held: ShmDescriptor[] = [];
    let group = 1;
    const flush = () => {
      if (held.length) child.stdin!.write(held.map((d) => `${JSON.stringify(d)}\n`).join(''));
      held = [];
      group = 1 + Math.floor(rand() * 6);
    };
    for (let i = 0; i < 300; i++) {
      const payload = randomPayload(rand, Math.floor(rand() * 300_000));
      const views = split(rand, payload, 1 + Math.floor(rand() * 3));
      let desc = w.put(views);
      // No room: wait for an answer (the reader has consumed by then) and try again.
      while (!desc) {
        flush();
        assert.ok(answered < expected.length, 'no room with nothing outstanding');
        assert.equal(await next(), expected[answered], `message ${answered}`);
        answered++;
        waited++;
        desc = w.put(views);
      }
      expected.push(sha256(payload));
      held.push(desc);
      if (held.length >= group) flush();
    }
    flush();
    while (answered < expected.length) {
      assert.equal(await next(), expected[answered], `message ${answered}`);
      answered++;
    }
    assert.ok(waited > 0, 'the stream never filled the ring');
    assert.equal(w.freeBytes(), 1 << 20);
    child.stdin!.end();
    const code = await new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', resolve)));
    assert.equal(code, 0);
  } finally {
    child.kill();
    w.close();
    w.unlink();
  }
});

function checkReserveError(message: string, path: string): void {
  assert.ok(!message.includes('\n'), message);
  assert.ok(message.includes(path), message);
  assert.match(message, /^ringattn shm: cannot reserve \d+ bytes for \S+: No space left on device/);
}

test('creation fails with one line naming the path where /dev/shm has not the room', { skip }, (t) => {
  const fs = statfsSync('/dev/shm');
  const free = fs.bavail * fs.bsize;
  if (fs.blocks === 0) return t.skip('/dev/shm reports no size limit');
  if (free > 2 ** 40) return t.skip(`/dev/shm has ${free} bytes free, more than 1 TiB: not asking for more`);
  // Refused before any page is taken; but were that check lost, posix_fallocate
  // would take pages up to the limit before failing, which must not be most of the memory.
  if (free > freemem() / 2)
    return t.skip(`/dev/shm's ${free} free bytes are over half the free memory (${freemem()}); the private 64 MiB /dev/shm case covers this`);
  const path = freshPath();
  assert.throws(() => ShmWriter.create(path, free + (1 << 20)), (err: Error) => (checkReserveError(err.message, path), true));
  assert.equal(existsSync(path), false, 'the failed file is removed');
});

test('in a 64 MiB /dev/shm (a default container) a channel that fits is usable to its last page, and a larger one is refused', { skip, timeout: 20_000 }, (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root, to mount a private /dev/shm (run the tests as root, as CI does)');
  const probe = spawnSync('unshare', ['--mount', '--propagation', 'private', 'true']);
  if (probe.error || probe.status !== 0) return t.skip(`unshare --mount is not usable here: ${probe.error?.message ?? probe.stderr.toString().trim()}`);
  // The mount is private to the child's namespace: this host's /dev/shm is not touched.
  const run = spawnSync(
    'unshare',
    ['--mount', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm && exec "$0" --import tsx "$1"', process.execPath, SMALL_DEVSHM],
    { encoding: 'utf8', timeout: 15_000 },
  );
  assert.equal(run.status, 0, `the helper failed (${run.signal ?? run.status}): ${run.stderr}`);
  const result = JSON.parse(run.stdout.trim()) as { fits: boolean; message: string; leftBehind: boolean };
  assert.ok(result.fits, 'the 48 MiB channel did not round trip');
  checkReserveError(result.message, '/dev/shm/ringattn-big-0.shm');
  assert.equal(result.leftBehind, false);
});

test('creating over an existing file fails (O_EXCL)', { skip }, () => {
  const path = freshPath();
  const w = ShmWriter.create(path, 4096);
  try {
    assert.throws(() => ShmWriter.create(path, 4096), (err: Error) => err.message.includes(path) && /File exists/.test(err.message));
    assert.ok(ShmReader.open(path), 'the first one is untouched');
  } finally {
    w.close();
    w.unlink();
  }
});

test('opening what is not a channel fails clearly', { skip }, () => {
  const junk = freshPath();
  writeFileSync(junk, randomBytes(8192), { mode: 0o600 });
  assert.throws(() => ShmReader.open(junk), (err: Error) => err.message.includes(junk) && /not a ringattn shared-memory channel \(bad magic\)/.test(err.message));
  const tiny = freshPath();
  writeFileSync(tiny, 'hello', { mode: 0o600 });
  assert.throws(() => ShmReader.open(tiny), /not a ringattn shared-memory channel \(5 bytes, too small\)/);
  const missing = freshPath();
  assert.throws(() => ShmReader.open(missing), (err: Error) => err.message.includes(missing) && /No such file/.test(err.message));
});

test('after close, put, take and freeBytes throw, and close again is harmless', { skip }, () => {
  const path = freshPath();
  const w = ShmWriter.create(path, 4096);
  const r = ShmReader.open(path);
  const d = w.put([new Uint8Array(10)])!;
  w.close();
  r.close();
  w.unlink();
  assert.throws(() => w.put([new Uint8Array(10)]), /is closed/);
  assert.throws(() => w.freeBytes(), /is closed/);
  assert.throws(() => r.take(d, [new Uint8Array(10)]), /is closed/);
  assert.throws(() => r.takeCopy(d), /is closed/);
  w.close();
  r.close();
  w.unlink();
});

test('a views array whose getter closes the channel mid-call gets an error, not a write to unmapped memory', { skip }, () => {
  const path = freshPath();
  const w = ShmWriter.create(path, 4096);
  try {
    const views = [new Uint8Array(10)];
    Object.defineProperty(views, 0, { get: () => (w.close(), new Uint8Array(10)) });
    assert.throws(() => w.put(views), /is closed/);
  } finally {
    w.close();
    w.unlink();
  }
});
