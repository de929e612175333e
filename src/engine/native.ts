import { loadAddon } from '../addon/index.js';
import { EngineMemory, type AdamWArgs, type Engine, type IntTensor, type MatmulShape, type NormShape, type RopeShape, type Tensor } from './types.js';

/**
 * The native CPU engine (native/engine.cc). Buffers are typed arrays bound to
 * the addon once; ops are recorded here as a flat command list and run there,
 * in order, on a libuv worker thread, by one call per flush. So the JavaScript
 * thread (ring transfers, heartbeats) stays free while a segment computes, and
 * nothing is copied: the attention op reads q, k, v straight from the engine's
 * memory.
 */

interface EngineAddon {
  engineCreate(opts: { threads: number; isa?: string; blocking?: { mc: number; kc: number; nc: number } }): unknown;
  engineBind(handle: unknown, id: number, array: Float32Array | Int32Array | null): void;
  engineRun(handle: unknown, ints: Int32Array, nInts: number, floats: Float64Array, nFloats: number, hosts: (Float32Array | Int32Array)[]): Promise<void>;
  engineIsa(handle: unknown): string;
}

// Opcodes: must match native/engine.cc.
const OP = {
  zero: 1,
  write: 2,
  embed: 3,
  embedBackward: 4,
  norm: 5,
  normBackward: 6,
  matmul: 7,
  rope: 8,
  silu: 9,
  siluBackward: 10,
  add: 11,
  crossEntropy: 12,
  sumSquares: 13,
  adamw: 14,
  writeInts: 15,
} as const;

export interface NativeEngineOptions {
  threads: number;
  /** 'avx512' | 'avx2' | 'portable'; default RINGATTN_NATIVE_ISA, else the best the CPU runs. */
  isa?: string;
  /** The SGEMM's cache blocking (src/engine/tuning.ts); default the SGEMM's own. */
  blocking?: { mc: number; kc: number; nc: number };
  /** Cap on the bytes of all buffers; default RINGATTN_ENGINE_MAX_BYTES, else none (EngineMemory). */
  maxBytes?: number;
}

/** Why the native engine cannot run here, or null when it can. */
export function nativeEngineUnavailable(): string | null {
  const { addon, reason } = loadAddon<Partial<EngineAddon>>();
  if (!addon) return reason ?? 'native addon unavailable';
  if (typeof addon.engineCreate !== 'function') return 'the native addon was built without the engine; rebuild it (node scripts/build-native.mjs)';
  return null;
}

function doubled<A extends Int32Array | Float64Array>(old: A, grown: A): A {
  grown.set(old);
  return grown;
}

export function createNativeEngine(opts: NativeEngineOptions): Engine {
  const why = nativeEngineUnavailable();
  if (why) throw new Error(why);
  if (!Number.isInteger(opts.threads) || opts.threads < 1) throw new RangeError(`native engine: threads must be a positive integer, got ${opts.threads}`);
  const addon = loadAddon<EngineAddon>().addon!;
  const isa = opts.isa ?? (process.env.RINGATTN_NATIVE_ISA || undefined);
  const handle = addon.engineCreate({ threads: opts.threads, ...(isa ? { isa } : {}), ...(opts.blocking ? { blocking: opts.blocking } : {}) });
  const arrays = new Map<number, Float32Array | Int32Array>();
  const memory = new EngineMemory('native', opts.maxBytes);
  let nextId = 0;

  let ints = new Int32Array(1 << 12);
  let nInts = 0;
  let floats = new Float64Array(1 << 8);
  let nFloats = 0;
  let hosts: (Float32Array | Int32Array)[] = [];
  let running: Promise<void> = Promise.resolve();

  const pushInt = (x: number): void => {
    if (nInts === ints.length) ints = doubled(ints, new Int32Array(ints.length * 2));
    ints[nInts++] = x;
  };
  const pushFloat = (x: number): void => {
    if (nFloats === floats.length) floats = doubled(floats, new Float64Array(floats.length * 2));
    floats[nFloats++] = x;
  };
  // A host array copied into dst when the list runs; kept alive until then.
  const pushWrite = (op: number, dst: Tensor | IntTensor, src: Float32Array | Int32Array): void => {
    pushInt(op);
    pushInt(src.length);
    pushT(dst);
    pushInt(hosts.length);
    hosts.push(src);
  };
  const pushT = (t: Tensor | IntTensor | null): void => {
    if (t === null) {
      pushInt(-1);
      pushInt(0);
    } else {
      pushInt(t.id);
      pushInt(t.offset);
    }
  };
  const bind = <A extends Float32Array | Int32Array>(a: A): number => {
    const id = nextId++;
    addon.engineBind(handle, id, a);
    arrays.set(id, a);
    return id;
  };

  async function flush(): Promise<void> {
    await running;
    if (nInts === 0) return;
    // The addon copies the command list, so recording can go on at once.
    const run = addon.engineRun(handle, ints, nInts, floats, nFloats, hosts);
    nInts = 0;
    nFloats = 0;
    hosts = [];
    running = run.catch(() => undefined);
    await run;
  }

  return {
    name: 'native',
    description: `native ${addon.engineIsa(handle)}, ${opts.threads} thread${opts.threads === 1 ? '' : 's'}${opts.blocking ? `, GEMM blocking mc ${opts.blocking.mc} kc ${opts.blocking.kc}` : ''}`,
    floats(length) {
      memory.take(length, 'float32');
      return { kind: 'f32', id: bind(new Float32Array(length)), offset: 0, length };
    },
    ints(length) {
      memory.take(length, 'int32');
      return { kind: 'i32', id: bind(new Int32Array(length)), offset: 0, length };
    },
    bufferCount: () => arrays.size,
    write: (dst, src) => pushWrite(OP.write, dst, src),
    writeInts: (dst, src) => pushWrite(OP.writeInts, dst, src),
    async read(t) {
      await flush();
      const a = arrays.get(t.id) as Float32Array | undefined;
      if (!a) throw new Error(`native engine: read of a freed buffer ${t.id}`);
      return a.subarray(t.offset, t.offset + t.length);
    },
    flush,
    zero(t) {
      pushInt(OP.zero);
      pushInt(t.length);
      pushT(t);
    },
    embed(out, table, tokens, rows, dim) {
      pushInt(OP.embed);
      pushInt(rows);
      pushInt(dim);
      pushT(out);
      pushT(table);
      pushT(tokens);
    },
    embedBackward(dTable, dOut, tokens, rows, dim) {
      pushInt(OP.embedBackward);
      pushInt(rows);
      pushInt(dim);
      pushT(dTable);
      pushT(dOut);
      pushT(tokens);
    },
    norm(s: NormShape, out, x, w, b) {
      pushInt(OP.norm);
      pushInt(s.kind === 'layer' ? 1 : 0);
      pushInt(s.rows);
      pushInt(s.dim);
      pushFloat(s.eps);
      pushT(out);
      pushT(x);
      pushT(w);
      pushT(b);
    },
    normBackward(s: NormShape, dx, dw, db, dOut, x, w) {
      pushInt(OP.normBackward);
      pushInt(s.kind === 'layer' ? 1 : 0);
      pushInt(s.rows);
      pushInt(s.dim);
      pushFloat(s.eps);
      pushT(dx);
      pushT(dw);
      pushT(db);
      pushT(dOut);
      pushT(x);
      pushT(w);
    },
    matmul(s: MatmulShape, c, a, b) {
      pushInt(OP.matmul);
      pushInt(s.m);
      pushInt(s.n);
      pushInt(s.k);
      pushInt(s.transA ? 1 : 0);
      pushInt(s.transB ? 1 : 0);
      pushInt(s.accumulate ? 1 : 0);
      pushT(c);
      pushT(a);
      pushT(b);
    },
    rope(s: RopeShape, x, cos, sin) {
      pushInt(OP.rope);
      pushInt(s.rows);
      pushInt(s.heads);
      pushInt(s.headDim);
      pushInt(s.inverse ? 1 : 0);
      pushT(x);
      pushT(cos);
      pushT(sin);
    },
    silu(out, u, length) {
      pushInt(OP.silu);
      pushInt(length);
      pushT(out);
      pushT(u);
    },
    siluBackward(du, dOut, u, length) {
      pushInt(OP.siluBackward);
      pushInt(length);
      pushT(du);
      pushT(dOut);
      pushT(u);
    },
    add(out, a, b, length) {
      pushInt(OP.add);
      pushInt(length);
      pushT(out);
      pushT(a);
      pushT(b);
    },
    crossEntropy(rows, vocab, logits, targets, loss, gradScale) {
      pushInt(OP.crossEntropy);
      pushInt(rows);
      pushInt(vocab);
      pushInt(gradScale === null ? 0 : 1);
      pushFloat(gradScale ?? 0);
      pushT(logits);
      pushT(targets);
      pushT(loss);
    },
    sumSquares(out, x) {
      pushInt(OP.sumSquares);
      pushInt(x.length);
      pushT(out);
      pushT(x);
    },
    adamw(a: AdamWArgs, params, grads, m, v) {
      pushInt(OP.adamw);
      pushInt(params.length);
      for (const f of [a.lr, a.beta1, a.beta2, a.eps, a.decay, a.bc1, a.bc2, a.gradScale]) pushFloat(f);
      pushT(params);
      pushT(grads);
      pushT(m);
      pushT(v);
    },
    dispose() {
      void running.then(() => {
        for (const id of arrays.keys()) addon.engineBind(handle, id, null);
        arrays.clear();
      });
    },
  };
}
