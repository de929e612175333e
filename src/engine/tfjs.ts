import * as tf from '@tensorflow/tfjs';
import { EngineMemory, type AdamWArgs, type Engine, type IntTensor, type MatmulShape, type NormShape, type RopeShape, type Tensor } from './types.js';

/**
 * The tfjs engine: the fallback where the native addon cannot build, and the
 * path for hosts whose tfjs backend is tfjs-node(-gpu). Buffers are host
 * typed arrays; matmuls run on the active tfjs backend (operands staged per
 * call), elementwise ops in plain loops with float64 intermediates. Ops run at
 * once, so flush has nothing to do. Same results as the native engine within
 * float32 rounding. `maxBytes` caps the buffers as in the native engine (EngineMemory).
 */
export function createTfjsEngine(opts: { maxBytes?: number } = {}): Engine {
  const arrays = new Map<number, Float32Array | Int32Array>();
  const memory = new EngineMemory('tfjs', opts.maxBytes);
  let nextId = 0;
  const f = (t: Tensor): Float32Array => {
    const a = arrays.get(t.id);
    if (!(a instanceof Float32Array)) throw new Error(`tfjs engine: buffer ${t.id} is not a live float buffer`);
    if (t.offset + t.length > a.length) throw new RangeError(`tfjs engine: tensor outside buffer ${t.id}`);
    return a.subarray(t.offset, t.offset + t.length);
  };
  const i32 = (t: IntTensor): Int32Array => {
    const a = arrays.get(t.id);
    if (!(a instanceof Int32Array)) throw new Error(`tfjs engine: buffer ${t.id} is not a live int buffer`);
    return a.subarray(t.offset, t.offset + t.length);
  };
  const need = (what: string, t: Tensor, n: number): Float32Array => {
    if (t.length < n) throw new RangeError(`tfjs engine: ${what} holds ${t.length} elements, needs ${n}`);
    return f(t);
  };

  // Wasm's matMul is fast only for plain 2-D operands: transpose explicitly first.
  function matmul(s: MatmulShape, c: Tensor, a: Tensor, b: Tensor): void {
    const { m, n, k } = s;
    const C = need('matmul c', c, m * n);
    const A = need('matmul a', a, m * k);
    const B = need('matmul b', b, k * n);
    // The result is copied out inside tidy and not returned from it: tidy walks a
    // returned value looking for tensors, element by element for a typed array.
    tf.tidy(() => {
      const ta = s.transA ? tf.transpose(tf.tensor2d(A.subarray(0, m * k), [k, m])) : tf.tensor2d(A.subarray(0, m * k), [m, k]);
      const tb = s.transB ? tf.transpose(tf.tensor2d(B.subarray(0, k * n), [n, k])) : tf.tensor2d(B.subarray(0, k * n), [k, n]);
      const out = tf.matMul(ta, tb).dataSync() as Float32Array;
      if (s.accumulate) for (let i = 0; i < m * n; i++) C[i] += out[i];
      else C.set(out);
    });
  }

  function normStats(kind: NormShape['kind'], x: Float32Array, r: number, d: number, eps: number): { mean: number; rstd: number } {
    let mean = 0;
    if (kind === 'layer') {
      for (let j = 0; j < d; j++) mean += x[r * d + j];
      mean /= d;
    }
    let ss = 0;
    for (let j = 0; j < d; j++) ss += (x[r * d + j] - mean) ** 2;
    return { mean, rstd: 1 / Math.sqrt(ss / d + eps) };
  }

  return {
    name: 'tfjs',
    description: `tfjs ${tf.getBackend()}`,
    floats(length) {
      memory.take(length, 'float32');
      const id = nextId++;
      arrays.set(id, new Float32Array(length));
      return { kind: 'f32', id, offset: 0, length };
    },
    ints(length) {
      memory.take(length, 'int32');
      const id = nextId++;
      arrays.set(id, new Int32Array(length));
      return { kind: 'i32', id, offset: 0, length };
    },
    bufferCount: () => arrays.size,
    write(dst, src) {
      need('write', dst, src.length).set(src);
    },
    writeInts(dst, src) {
      i32(dst).set(src);
    },
    async read(t) {
      return f(t);
    },
    async flush() {},
    zero(t) {
      f(t).fill(0);
    },
    embed(out, table, tokens, rows, dim) {
      const o = f(out);
      const e = f(table);
      const tok = i32(tokens);
      const vocab = e.length / dim;
      for (let i = 0; i < rows; i++) {
        if (!(tok[i] >= 0 && tok[i] < vocab)) throw new RangeError(`tfjs engine: token id ${tok[i]} outside the table of ${vocab}`);
        o.set(e.subarray(tok[i] * dim, (tok[i] + 1) * dim), i * dim);
      }
    },
    embedBackward(dTable, dOut, tokens, rows, dim) {
      const g = f(dTable);
      const dy = f(dOut);
      const tok = i32(tokens);
      for (let i = 0; i < rows; i++) for (let j = 0; j < dim; j++) g[tok[i] * dim + j] += dy[i * dim + j];
    },
    norm(s: NormShape, out, x, w, b) {
      const { rows, dim: d, eps, kind } = s;
      const y = need('norm out', out, rows * d);
      const X = need('norm x', x, rows * d);
      const W = f(w);
      const B = b ? f(b) : null;
      for (let r = 0; r < rows; r++) {
        const { mean, rstd } = normStats(kind, X, r, d, eps);
        for (let j = 0; j < d; j++) y[r * d + j] = (X[r * d + j] - mean) * rstd * W[j] + (B ? B[j] : 0);
      }
    },
    normBackward(s: NormShape, dx, dw, db, dOut, x, w) {
      const { rows, dim: d, eps, kind } = s;
      const DX = need('normBackward dx', dx, rows * d);
      const DW = f(dw);
      const DB = db ? f(db) : null;
      const DY = need('normBackward dOut', dOut, rows * d);
      const X = need('normBackward x', x, rows * d);
      const W = f(w);
      const sw = new Float64Array(d);
      const sb = new Float64Array(d);
      for (let r = 0; r < rows; r++) {
        const { mean, rstd } = normStats(kind, X, r, d, eps);
        let sg = 0;
        let sgx = 0;
        for (let j = 0; j < d; j++) {
          const xh = (X[r * d + j] - mean) * rstd;
          const g = DY[r * d + j] * W[j];
          sg += g;
          sgx += g * xh;
          sw[j] += DY[r * d + j] * xh;
          sb[j] += DY[r * d + j];
        }
        const mg = kind === 'layer' ? sg / d : 0;
        const mgx = sgx / d;
        for (let j = 0; j < d; j++) {
          const xh = (X[r * d + j] - mean) * rstd;
          DX[r * d + j] += rstd * (DY[r * d + j] * W[j] - mg - xh * mgx);
        }
      }
      for (let j = 0; j < d; j++) DW[j] += sw[j];
      if (DB) for (let j = 0; j < d; j++) DB[j] += sb[j];
    },
    matmul,
    rope(s: RopeShape, x, cos, sin) {
      const { rows, heads, headDim: hd } = s;
      const X = need('rope x', x, rows * heads * hd);
      const C = f(cos);
      const S = f(sin);
      const half = hd / 2;
      const sign = s.inverse ? -1 : 1;
      for (let r = 0; r < rows; r++) {
        for (let h = 0; h < heads; h++) {
          const base = (r * heads + h) * hd;
          for (let j = 0; j < half; j++) {
            const a = X[base + j];
            const b = X[base + half + j];
            const c = C[r * half + j];
            const sn = sign * S[r * half + j];
            X[base + j] = a * c - b * sn;
            X[base + half + j] = b * c + a * sn;
          }
        }
      }
    },
    silu(out, u, length) {
      const o = need('silu out', out, length);
      const U = need('silu u', u, length);
      for (let i = 0; i < length; i++) o[i] = U[i] / (1 + Math.exp(-U[i]));
    },
    siluBackward(du, dOut, u, length) {
      const D = need('siluBackward du', du, length);
      const G = need('siluBackward dOut', dOut, length);
      const U = need('siluBackward u', u, length);
      for (let i = 0; i < length; i++) {
        const sg = 1 / (1 + Math.exp(-U[i]));
        D[i] = G[i] * sg * (1 + U[i] * (1 - sg));
      }
    },
    add(out, a, b, length) {
      const o = need('add out', out, length);
      const A = need('add a', a, length);
      const B = need('add b', b, length);
      for (let i = 0; i < length; i++) o[i] = A[i] + B[i];
    },
    crossEntropy(rows, vocab, logits, targets, loss, gradScale) {
      const L = need('crossEntropy logits', logits, rows * vocab);
      const T = i32(targets);
      let sum = 0;
      for (let r = 0; r < rows; r++) {
        const row = L.subarray(r * vocab, (r + 1) * vocab);
        const t = T[r];
        if (t < 0) {
          if (gradScale !== null) row.fill(0);
          continue;
        }
        if (t >= vocab) throw new RangeError(`tfjs engine: target id ${t} outside the vocabulary of ${vocab}`);
        let m = -Infinity;
        for (let j = 0; j < vocab; j++) m = Math.max(m, row[j]);
        let s = 0;
        for (let j = 0; j < vocab; j++) s += Math.exp(row[j] - m);
        sum += m + Math.log(s) - row[t];
        if (gradScale !== null) {
          for (let j = 0; j < vocab; j++) row[j] = (Math.exp(row[j] - m) / s) * gradScale;
          row[t] -= gradScale;
        }
      }
      f(loss)[0] += sum;
    },
    sumSquares(out, x) {
      const X = f(x);
      let s = 0;
      for (let i = 0; i < X.length; i++) s += X[i] * X[i];
      f(out)[0] = s;
    },
    adamw(a: AdamWArgs, params, grads, m, v) {
      const P = f(params);
      const G = f(grads);
      const M = f(m);
      const V = f(v);
      // The same float64 expression, in the same order, as native/engine.cc.
      for (let i = 0; i < P.length; i++) {
        const g = a.gradScale === 1 ? G[i] : Math.fround(G[i] * a.gradScale);
        const mi = a.beta1 * M[i] + (1 - a.beta1) * g;
        const vi = a.beta2 * V[i] + (1 - a.beta2) * g * g;
        M[i] = mi;
        V[i] = vi;
        let p = P[i];
        if (a.decay !== 0) p -= a.decay * p;
        p -= (a.lr * (mi / a.bc1)) / (Math.sqrt(vi / a.bc2) + a.eps);
        P[i] = p;
      }
    },
    dispose() {
      arrays.clear();
    },
  };
}
