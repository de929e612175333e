import * as tf from '@tensorflow/tfjs';
import { checkBlockArgs, checkGradArgs, classifyTile, isFullyMasked, tileRanges, type TileKind } from './mask.js';
import type { AttentionKernel, BlockArgs, BlockGradArgs, BlockGrads, BlockPartial, TileSizes } from './types.js';

/**
 * Blockwise attention from tfjs ops, on whatever tfjs backend is active
 * (wasm, cpu, tensorflow). Flash-style: query tiles x KV tiles with an fp32
 * online softmax, so at most tileQ x tileKV scores exist at once.
 *
 * Shapes are arranged so every matMul is 2-D and non-transposed: on wasm that
 * is the only fast path (transposed or batched matMuls fall back to scalar
 * loops, see docs/kernels.md). K (and V for the backward) are transposed
 * explicitly once per block, and heads are looped over in JS.
 */

// Smallest finite float32: the floor for a running max, so a row that has seen
// no key yet (max = -Infinity) never computes -Infinity - -Infinity = NaN.
const NEG_FLT_MAX = -3.4028234663852886e38;

interface Plan {
  qTiles: Array<{ start: number; len: number }>;
  kvTiles: Array<{ start: number; len: number }>;
  /** kinds[qi][kj] */
  kinds: TileKind[][];
}

function planTiles(a: BlockArgs, tileQ: number, tileKV: number): Plan {
  const qTiles = tileRanges(a.qLen, tileQ);
  const kvTiles = tileRanges(a.kvLen, tileKV);
  const kinds = qTiles.map((qt) => kvTiles.map((kt) => classifyTile(a, qt.start, qt.start + qt.len, kt.start, kt.start + kt.len)));
  return { qTiles, kvTiles, kinds };
}

/**
 * Additive mask for one tile: 0 where query row i may attend to key j, -Infinity
 * elsewhere, computed from global positions and document ids. Position tensors
 * are [qLen, 1] and [1, kvLen] for the whole block and sliced per tile.
 */
function tileBias(
  causal: boolean,
  window: number,
  qPosT: tf.Tensor2D,
  kvPosT: tf.Tensor2D,
  qSegT: tf.Tensor2D | null,
  kvSegT: tf.Tensor2D | null,
  qt: { start: number; len: number },
  kt: { start: number; len: number },
): tf.Tensor2D {
  return tf.tidy(() => {
    let allowed: tf.Tensor | null = null;
    if (causal) {
      const qp = qPosT.slice([qt.start, 0], [qt.len, 1]);
      const kp = kvPosT.slice([0, kt.start], [1, kt.len]);
      allowed = tf.lessEqual(kp, qp);
    }
    if (window) {
      // q - k < W, and (not causal) k - q < W.
      const qp = qPosT.slice([qt.start, 0], [qt.len, 1]);
      const kp = kvPosT.slice([0, kt.start], [1, kt.len]);
      const diff = tf.sub(qp, kp);
      let near: tf.Tensor = tf.less(diff, window);
      if (!causal) near = tf.logicalAnd(near, tf.greater(diff, -window));
      allowed = allowed ? tf.logicalAnd(allowed, near) : near;
    }
    if (qSegT && kvSegT) {
      const qs = qSegT.slice([qt.start, 0], [qt.len, 1]);
      const ks = kvSegT.slice([0, kt.start], [1, kt.len]);
      const same = tf.equal(qs, ks);
      allowed = allowed ? tf.logicalAnd(allowed, same) : same;
    }
    if (!allowed) return tf.zeros([qt.len, kt.len]) as tf.Tensor2D;
    return tf.where(allowed, tf.zeros([qt.len, kt.len]), tf.fill([qt.len, kt.len], -Infinity)) as tf.Tensor2D;
  });
}

/** Split [n, heads, d] into `heads` 2-D tensors [n, d] (after scaling, if asked). */
function perHead(x: Float32Array, n: number, heads: number, d: number, scale = 1): tf.Tensor2D[] {
  let t: tf.Tensor = tf.tensor3d(x, [n, heads, d]);
  if (scale !== 1) t = t.mul(scale);
  return tf.unstack(t.transpose([1, 0, 2])) as tf.Tensor2D[];
}

/** Split [n, heads, d] into `heads` transposed 2-D tensors [d, n]. */
function perHeadT(x: Float32Array, n: number, heads: number, d: number): tf.Tensor2D[] {
  return tf.unstack(tf.tensor3d(x, [n, heads, d]).transpose([1, 2, 0])) as tf.Tensor2D[];
}

function maskTensors(a: BlockArgs): { qPosT: tf.Tensor2D; kvPosT: tf.Tensor2D; qSegT: tf.Tensor2D | null; kvSegT: tf.Tensor2D | null } {
  return {
    qPosT: tf.tensor2d(a.qPos, [a.qLen, 1], 'int32'),
    kvPosT: tf.tensor2d(a.kvPos, [1, a.kvLen], 'int32'),
    qSegT: a.qSeg ? tf.tensor2d(a.qSeg, [a.qLen, 1], 'int32') : null,
    kvSegT: a.kvSeg ? tf.tensor2d(a.kvSeg, [1, a.kvLen], 'int32') : null,
  };
}

function checkTiles(opts: TileSizes): void {
  for (const [name, v] of Object.entries(opts)) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`tfjs kernel: ${name} must be a positive integer, got ${v}`);
  }
}

async function readAndDispose(ts: tf.Tensor[]): Promise<Float32Array[]> {
  try {
    const data = await Promise.all(ts.map((t) => t.data()));
    // Copy: some backends hand out their own buffer.
    return data.map((d) => Float32Array.from(d as Float32Array));
  } finally {
    tf.dispose(ts);
  }
}

export function createTfjsKernel(opts: TileSizes): AttentionKernel {
  checkTiles(opts);
  const { tileQ, tileKV } = opts;

  async function forward(a: BlockArgs): Promise<BlockPartial> {
    checkBlockArgs(a);
    const { qLen, kvLen, heads, kvHeads, headDim: D, scale } = a;
    if (qLen === 0 || kvLen === 0 || isFullyMasked(a)) {
      return { o: new Float32Array(qLen * heads * D), lse: new Float32Array(heads * qLen).fill(-Infinity) };
    }
    const group = heads / kvHeads;
    const plan = planTiles(a, tileQ, tileKV);

    const [oAll, lseAll] = tf.tidy(() => {
      const qH = perHead(a.q, qLen, heads, D, scale); // scale folded into q once
      const kTH = perHeadT(a.k, kvLen, kvHeads, D); // [D, kvLen] per kv head
      const vH = perHead(a.v, kvLen, kvHeads, D); // [kvLen, D]
      const masks = maskTensors(a);
      const kTiles = kTH.map((kt) => plan.kvTiles.map((r) => kt.slice([0, r.start], [D, r.len])));
      const vTiles = vH.map((vt) => plan.kvTiles.map((r) => vt.slice([r.start, 0], [r.len, D])));
      const oTiles: tf.Tensor2D[][] = Array.from({ length: heads }, () => []);
      const lseTiles: tf.Tensor2D[][] = Array.from({ length: heads }, () => []);

      plan.qTiles.forEach((qt, qi) => {
        const qTile = qH.map((x) => x.slice([qt.start, 0], [qt.len, D]));
        let m: tf.Tensor2D[] = qTile.map(() => tf.fill([qt.len, 1], -Infinity) as tf.Tensor2D);
        let l: tf.Tensor2D[] = qTile.map(() => tf.zeros([qt.len, 1]) as tf.Tensor2D);
        let acc: tf.Tensor2D[] = qTile.map(() => tf.zeros([qt.len, D]) as tf.Tensor2D);
        plan.kvTiles.forEach((kt, kj) => {
          const kind = plan.kinds[qi][kj];
          if (kind === 'skip') return;
          const bias = kind === 'partial' ? tileBias(a.causal, a.window ?? 0, masks.qPosT, masks.kvPosT, masks.qSegT, masks.kvSegT, qt, kt) : null;
          for (let h = 0; h < heads; h++) {
            const g = Math.floor(h / group);
            const next = tf.tidy(() => {
              let s: tf.Tensor2D = tf.matMul(qTile[h], kTiles[g][kj]);
              if (bias) s = s.add(bias);
              const mNew = tf.maximum(m[h], s.max(1, true));
              const mSafe = tf.maximum(mNew, NEG_FLT_MAX);
              const p = tf.exp(s.sub(mSafe));
              const alpha = tf.exp(m[h].sub(mSafe));
              const lNew = l[h].mul(alpha).add(p.sum(1, true));
              const accNew = acc[h].mul(alpha).add(tf.matMul(p, vTiles[g][kj]));
              return [mNew, lNew, accNew] as tf.Tensor2D[];
            });
            tf.dispose([m[h], l[h], acc[h]]);
            [m[h], l[h], acc[h]] = next;
          }
          if (bias) bias.dispose();
        });
        for (let h = 0; h < heads; h++) {
          // A row that saw any key has l >= 1 (its maximum contributes exp(0) = 1),
          // so max(l, 1) only changes rows with l = 0, whose acc is 0 too: o = 0.
          oTiles[h].push(acc[h].div(tf.maximum(l[h], 1)));
          // l = 0 gives log 0 = -Infinity, and m = -Infinity there as well: lse = -Infinity.
          lseTiles[h].push(m[h].add(tf.log(l[h])));
        }
        tf.dispose([...m, ...l, ...acc, ...qTile]);
      });

      const o = tf.stack(oTiles.map((ts) => tf.concat(ts, 0)), 1); // [qLen, heads, D]
      const lse = tf.stack(lseTiles.map((ts) => tf.concat(ts, 0).reshape([qLen])), 0); // [heads, qLen]
      return [o, lse];
    });
    const [o, lse] = await readAndDispose([oAll, lseAll]);
    return { o, lse };
  }

  async function backward(a: BlockArgs, grad: BlockGradArgs, out: BlockGrads): Promise<void> {
    checkBlockArgs(a);
    checkGradArgs(a, grad, out);
    const { qLen, kvLen, heads, kvHeads, headDim: D, scale } = a;
    if (qLen === 0 || kvLen === 0 || isFullyMasked(a)) return;
    const group = heads / kvHeads;
    const plan = planTiles(a, tileQ, tileKV);
    // A row with lse = -Infinity saw no key in any block; with +Infinity in its
    // place p = exp(s - lse) is 0 for it, without a NaN from -Infinity - -Infinity.
    const lseSafe = Float32Array.from(grad.lse, (x) => (x === -Infinity ? Infinity : x));

    const [dqAll, dkAll, dvAll] = tf.tidy(() => {
      const qsH = perHead(a.q, qLen, heads, D, scale); // scale*q: s = (scale q) k^T, dk = ds^T (scale q)
      const kTH = perHeadT(a.k, kvLen, kvHeads, D);
      const kH = perHead(a.k, kvLen, kvHeads, D);
      const vTH = perHeadT(a.v, kvLen, kvHeads, D);
      const dOH = perHead(grad.dO, qLen, heads, D);
      const lseH = tf.unstack(tf.tensor2d(lseSafe, [heads, qLen])).map((x) => x.reshape([qLen, 1]) as tf.Tensor2D);
      const deltaH = tf.unstack(tf.tensor2d(grad.delta, [heads, qLen])).map((x) => x.reshape([qLen, 1]) as tf.Tensor2D);
      const masks = maskTensors(a);
      const qSlices = plan.qTiles.map((r) => ({
        qs: qsH.map((x) => x.slice([r.start, 0], [r.len, D])),
        dO: dOH.map((x) => x.slice([r.start, 0], [r.len, D])),
        lse: lseH.map((x) => x.slice([r.start, 0], [r.len, 1])),
        delta: deltaH.map((x) => x.slice([r.start, 0], [r.len, 1])),
      }));
      const dq: Array<Array<tf.Tensor2D | null>> = Array.from({ length: heads }, () => plan.qTiles.map(() => null));
      const dkTiles: tf.Tensor2D[][] = Array.from({ length: kvHeads }, () => []);
      const dvTiles: tf.Tensor2D[][] = Array.from({ length: kvHeads }, () => []);
      const addInto = (prev: tf.Tensor2D | null, x: tf.Tensor2D): tf.Tensor2D => {
        if (!prev) return x;
        const sum = prev.add(x) as tf.Tensor2D;
        tf.dispose([prev, x]);
        return sum;
      };

      plan.kvTiles.forEach((kt, kj) => {
        const kT = kTH.map((x) => x.slice([0, kt.start], [D, kt.len]));
        const k = kH.map((x) => x.slice([kt.start, 0], [kt.len, D]));
        const vT = vTH.map((x) => x.slice([0, kt.start], [D, kt.len]));
        const dk: Array<tf.Tensor2D | null> = kT.map(() => null);
        const dv: Array<tf.Tensor2D | null> = kT.map(() => null);
        plan.qTiles.forEach((qt, qi) => {
          const kind = plan.kinds[qi][kj];
          if (kind === 'skip') return;
          const bias = kind === 'partial' ? tileBias(a.causal, a.window ?? 0, masks.qPosT, masks.kvPosT, masks.qSegT, masks.kvSegT, qt, kt) : null;
          const t = qSlices[qi];
          for (let h = 0; h < heads; h++) {
            const g = Math.floor(h / group);
            const [dqC, dkC, dvC] = tf.tidy(() => {
              let s: tf.Tensor2D = tf.matMul(t.qs[h], kT[g]);
              if (bias) s = s.add(bias);
              const p = tf.exp(s.sub(t.lse[h])); // [tq, tk]
              const dvC = tf.matMul(p.transpose(), t.dO[h]); // [tk, D]
              const dp = tf.matMul(t.dO[h], vT[g]); // [tq, tk]
              const ds = p.mul(dp.sub(t.delta[h]));
              const dqC = tf.matMul(ds, k[g]); // [tq, D], times scale at the end
              const dkC = tf.matMul(ds.transpose(), t.qs[h]); // [tk, D]
              return [dqC, dkC, dvC] as tf.Tensor2D[];
            });
            dq[h][qi] = addInto(dq[h][qi], dqC);
            dk[g] = addInto(dk[g], dkC);
            dv[g] = addInto(dv[g], dvC);
          }
          if (bias) bias.dispose();
        });
        for (let g = 0; g < kvHeads; g++) {
          dkTiles[g].push(dk[g] ?? tf.zeros([kt.len, D]));
          dvTiles[g].push(dv[g] ?? tf.zeros([kt.len, D]));
        }
        tf.dispose([...kT, ...k, ...vT]);
      });

      const dqOut = tf
        .stack(dq.map((tiles) => tf.concat(tiles.map((x, qi) => x ?? tf.zeros([plan.qTiles[qi].len, D])), 0)), 1)
        .mul(scale);
      const dkOut = tf.stack(dkTiles.map((ts) => tf.concat(ts, 0)), 1);
      const dvOut = tf.stack(dvTiles.map((ts) => tf.concat(ts, 0)), 1);
      return [dqOut, dkOut, dvOut];
    });
    const [dq, dk, dv] = await readAndDispose([dqAll, dkAll, dvAll]);
    for (let x = 0; x < dq.length; x++) out.dq[x] += dq[x];
    for (let x = 0; x < dk.length; x++) {
      out.dk[x] += dk[x];
      out.dv[x] += dv[x];
    }
  }

  return { name: 'tfjs', forward, backward };
}
