import { unlinkSync } from 'node:fs';
import { loadAddon } from '../addon/index.js';

/**
 * A same-host byte channel from one rank to its neighbour through a file in
 * /dev/shm, so a large block crosses with two memcpys instead of a trip through
 * the kernel's socket buffers; the ZeroMQ link carries only the descriptor
 * that `put` returns. A single-producer single-consumer ring buffer: the
 * descriptors arrive in the order they were made (one ZeroMQ link, in order),
 * and the reader hands space back in that order, so nothing else is shared.
 * The counters, fences and copies are in native/shm.cc.
 *
 * The sender creates the file and the receiver opens it; the sender unlinks it
 * (once the receiver has it open the mapping outlives the name). `put` never
 * waits: null means no room now, and the caller sends the bytes on ZeroMQ.
 */

/**
 * Below this a message goes inline on ZeroMQ even to a same-host successor. The
 * channel costs two copies and the receiver's fresh pages; measured on loopback
 * (docs/benchmarks.md) that pays from 4 MiB blocks on and loses on the
 * all-reduce's 1 MiB segments.
 */
export const SHM_MIN_BYTES = 2 << 20;

/** Messages of the first large one a ring's channel is sized for: one being read, one being written, slack. */
export const SHM_BLOCKS = 4;

/** Where a message lies: the receiver passes it back to `take` as it came. */
export interface ShmDescriptor {
  /** First byte in the data area. */
  offset: number;
  bytes: number;
  /** The writer's logical position after this message (padding and any skipped tail included): the reader's `consumed` once taken. */
  end: number;
}

/** An opaque handle of native/shm.cc. */
export type ShmHandle = { readonly __brand: 'ShmHandle' };

/** native/shm.cc's exports; views may be any typed arrays, taken as their bytes. */
export interface ShmNative {
  shmCreate(path: string, capacity: number): ShmHandle;
  shmOpen(path: string): ShmHandle;
  shmCapacity(h: ShmHandle): number;
  shmFree(h: ShmHandle): number;
  shmPut(h: ShmHandle, views: ArrayBufferView[]): ShmDescriptor | null;
  shmTake(h: ShmHandle, offset: number, bytes: number, end: number, views: ArrayBufferView[]): void;
  shmClose(h: ShmHandle): void;
}

/** The addon's shared-memory channel (native/shm.cc, Linux only), or null where the addon or the platform lacks it. */
function loadShmNative(): ShmNative | null {
  const { addon } = loadAddon<Partial<ShmNative>>();
  const names: (keyof ShmNative)[] = ['shmCreate', 'shmOpen', 'shmCapacity', 'shmFree', 'shmPut', 'shmTake', 'shmClose'];
  return addon && names.every((n) => typeof addon[n] === 'function') ? (addon as ShmNative) : null;
}

/** True where the channel can be used: Linux, and an addon built with native/shm.cc. */
export function shmAvailable(): boolean {
  return process.platform === 'linux' && loadShmNative() !== null;
}

function native(): ShmNative {
  const n = process.platform === 'linux' ? loadShmNative() : null;
  if (n) return n;
  const why = process.platform !== 'linux' ? `not on ${process.platform}` : (loadAddon().reason ?? 'the native addon was built without native/shm.cc; rebuild it (node scripts/build-native.mjs)');
  throw new Error(`ringattn shm: shared-memory channel unavailable (${why})`);
}

/** The channel file of the link that `fromRank` sends on in job `jobId`. */
export function shmPath(jobId: string, fromRank: number): string {
  // The id goes into a path under a directory every user shares: nothing that could leave it.
  if (!/^[A-Za-z0-9_-]+$/.test(jobId)) throw new Error(`ringattn shm: job id ${JSON.stringify(jobId)} is not usable in a file name`);
  if (!Number.isSafeInteger(fromRank) || fromRank < 0) throw new Error(`ringattn shm: rank ${fromRank} is not a non-negative integer`);
  return `/dev/shm/ringattn-${jobId}-${fromRank}.shm`;
}

/** The sending end. */
export class ShmWriter {
  private unlinked = false;

  private constructor(
    private readonly n: ShmNative,
    private readonly h: ShmHandle,
    readonly path: string,
    /** The data area's size: the requested capacity rounded up to a multiple of 64. */
    readonly capacity: number,
  ) {}

  /** Creates the file (it must not exist) and reserves all of its memory now; throws, naming the path, where that cannot be done. */
  static create(path: string, capacityBytes: number): ShmWriter {
    const n = native();
    const h = n.shmCreate(path, capacityBytes);
    return new ShmWriter(n, h, path, n.shmCapacity(h));
  }

  /**
   * Copies the views, one after another, into one contiguous run of the
   * buffer; null if they do not fit now (or ever: more than `capacity`). A
   * message can need more than its size in free space: it starts on a 64-byte
   * boundary, and at the start of the buffer when it would cross the end.
   */
  put(views: Uint8Array[]): ShmDescriptor | null {
    return this.n.shmPut(this.h, views);
  }

  /** Bytes the reader has handed back, counting from the writer's position (a message may still not fit; see `put`). */
  freeBytes(): number {
    return this.n.shmFree(this.h);
  }

  /** Unmaps; any later put throws. Does not unlink. */
  close(): void {
    this.n.shmClose(this.h);
  }

  /** Removes the file's name; the mappings stay valid. Idempotent, and a no-op where the file is already gone. */
  unlink(): void {
    if (this.unlinked) return;
    this.unlinked = true;
    try {
      unlinkSync(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

/** The receiving end. */
export class ShmReader {
  private constructor(
    private readonly n: ShmNative,
    private readonly h: ShmHandle,
    readonly path: string,
    readonly capacity: number,
  ) {}

  /** Opens a channel the writer created; throws if the file is not one (or not this user's). */
  static open(path: string): ShmReader {
    const n = native();
    const h = n.shmOpen(path);
    return new ShmReader(n, h, path, n.shmCapacity(h));
  }

  /**
   * Copies the message into `into` in order (their lengths must add up to
   * desc.bytes), then hands its space back to the writer. Messages must be
   * taken in the order they were put; taking one frees every earlier one too.
   */
  take(desc: ShmDescriptor, into: Uint8Array[]): void {
    this.n.shmTake(this.h, desc.offset, desc.bytes, desc.end, into);
  }

  /** `take` into a new array. */
  takeCopy(desc: ShmDescriptor): Uint8Array {
    if (!Number.isSafeInteger(desc.bytes) || desc.bytes < 0 || desc.bytes > this.capacity)
      throw new RangeError(`ringattn shm: descriptor of ${desc.bytes} bytes does not fit ${this.path} (capacity ${this.capacity})`);
    const out = new Uint8Array(desc.bytes);
    this.take(desc, [out]);
    return out;
  }

  /** Unmaps; any later take throws. */
  close(): void {
    this.n.shmClose(this.h);
  }
}
