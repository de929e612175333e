// numpy's fp32 matmul (OpenBLAS): the GEMM ceiling every benchmark compares
// against. A long-lived child per thread count, with OPENBLAS_NUM_THREADS set
// and OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed from that child's environment
// only (they force OpenBLAS's AVX2 kernel), reports the OpenBLAS kernel it runs.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';

// ---------------------------------------------------------------------------
// numpy, in a long-lived child per thread count, driven line by line:
//   "setup N TRANS" -> seconds of one matmul; "run R" -> best seconds of R; "info" -> JSON.

const NUMPY_CODE = String.raw`
import json, sys, time
import numpy as np

def kernel_name():
    try:
        from threadpoolctl import threadpool_info
        for i in threadpool_info():
            if i.get('internal_api') == 'openblas':
                return '%s (OpenBLAS %s, threadpoolctl)' % (i.get('architecture'), i.get('version'))
    except Exception:
        pass
    try:
        import ctypes
        paths = []
        with open('/proc/self/maps') as f:
            for line in f:
                p = line.split()[-1]
                if 'openblas' in p.lower() and '.so' in p and p not in paths:
                    paths.append(p)
        for p in paths:
            lib = ctypes.CDLL(p)
            core = config = None
            for sym in ('scipy_openblas_get_corename64_', 'scipy_openblas_get_corename', 'openblas_get_corename64_', 'openblas_get_corename'):
                fn = getattr(lib, sym, None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p; core = fn().decode(); break
            for sym in ('scipy_openblas_get_config64_', 'scipy_openblas_get_config', 'openblas_get_config64_', 'openblas_get_config'):
                fn = getattr(lib, sym, None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p; config = fn().decode().strip(); break
            if core:
                return '%s (%s)' % (core, ' '.join(config.split())) if config else core
    except Exception:
        pass
    try:
        blas = np.__config__.CONFIG['Build Dependencies']['blas']
        return '%s %s (kernel unknown)' % (blas.get('name'), blas.get('version'))
    except Exception:
        return 'unknown'

rng = np.random.default_rng(1)
A = B = C = None
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == 'info':
        print(json.dumps({'numpy': np.__version__, 'kernel': kernel_name()}), flush=True)
    elif cmd[0] == 'setup':
        n = int(cmd[1]); t = cmd[2]
        a = rng.random((n, n), dtype=np.float32) - 0.5
        b = rng.random((n, n), dtype=np.float32) - 0.5
        A = a.T if t[0] == 'T' else a
        B = b.T if t[1] == 'T' else b
        C = np.empty((n, n), dtype=np.float32)
        np.matmul(A, B, out=C)
        t0 = time.perf_counter(); np.matmul(A, B, out=C); dt = time.perf_counter() - t0
        print(repr(dt), flush=True)
    elif cmd[0] == 'run':
        best = 1e30
        for _ in range(int(cmd[1])):
            t0 = time.perf_counter(); np.matmul(A, B, out=C); best = min(best, time.perf_counter() - t0)
        print(repr(best), flush=True)
`;

export class Numpy {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly lines: AsyncIterableIterator<string>;
  private stderr = '';

  constructor(threads: number) {
    // Only this child loses OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE.
    this.child = spawn('env', ['-u', 'OPENBLAS_CORETYPE', '-u', 'OPENBLAS_L2_SIZE', `OPENBLAS_NUM_THREADS=${threads}`, 'python3', '-c', NUMPY_CODE], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.child.on('error', (err) => (this.stderr += `${err.message}\n`));
    this.child.stdin.on('error', () => {}); // a child that died is reported by ask()
    this.lines = createInterface({ input: this.child.stdout })[Symbol.asyncIterator]();
  }

  async ask(cmd: string): Promise<string> {
    this.child.stdin.write(`${cmd}\n`);
    const r = await this.lines.next();
    if (r.done) throw new Error(`numpy child ended: ${this.stderr.trim().split('\n').pop() ?? 'no output'}`);
    return r.value;
  }

  close(): void {
    this.child.stdin.end();
  }
}

/** Best GFLOP/s of numpy's n^3 fp32 matmul on `threads` threads, and the kernel that ran; or why numpy could not run. */
export async function numpyMatmulRate(threads: number, n = 2048, reps = 10): Promise<{ gflops: number; numpy: string; kernel: string } | { error: string }> {
  const np = new Numpy(threads);
  try {
    const info = JSON.parse(await np.ask('info')) as { numpy: string; kernel: string };
    await np.ask(`setup ${n} NN`);
    const best = Number(await np.ask(`run ${reps}`));
    return { gflops: (2 * n ** 3) / best / 1e9, ...info };
  } catch (e) {
    return { error: (e as Error).message };
  } finally {
    np.close();
  }
}
