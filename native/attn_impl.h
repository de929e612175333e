// Blockwise attention forward and backward, written once over a generic
// vector type and compiled once per instruction set. Before including, a
// variant file defines:
//   RA_NS     namespace of this copy (avx512, avx2, portable)
//   RA_W      floats per vector (16, 8, 4)
//   RA_MR     rows of the register tile (the micro-kernel holds RA_MR x 2 vectors)
//   RA_ISA    the name reported to JavaScript
//   RA_ENTRY  the function returning this copy's Variant table
//
// Everything here has internal linkage and uses no std:: templates, so code
// compiled with AVX flags can never be picked by the linker for baseline code.
//
// Scores are kept in base 2: K is packed pre-multiplied by scale * log2(e), so
// a score s' = q.k * scale * log2(e) and softmax weights are exp2(s' - m).
#include "attn_kernel.h"

namespace ringattn {
namespace RA_NS {
namespace {

constexpr int W = RA_W;
constexpr int MR = RA_MR;
constexpr float kLog2e = 1.4426950408889634f;
constexpr double kLn2 = 0.69314718055994530942;

typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

inline vf load(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
// x - (+0) is x for every x, so the compiler folds the subtraction and keeps
// a plain broadcast (x + 0 would not fold: -0 + 0 is +0).
inline vf splat(float x) { return x - vf{}; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < W; i++) m = v[i] > m ? v[i] : m;
  return m;
}
inline float hsum(vf v) {
  float s = v[0];
  for (int i = 1; i < W; i++) s += v[i];
  return s;
}

// 2^x to about 1 ulp for x <= 127; x <= -127 (including -inf) gives exactly 0,
// so masked scores carry no weight and never produce NaN.
inline vf exp2v(vf x) {
  const vf lo = splat(-127.0f), hi = splat(127.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: the addition rounds to an integer
  vf n = (x + magic) - magic;
  vf f = x - n;  // in [-0.5, 0.5]
  // Taylor series of 2^f to degree 7: truncation error below 6e-9 on [-0.5, 0.5].
  vf p = splat(1.525273380405984e-05f);
  p = p * f + splat(1.5403530393381606e-04f);
  p = p * f + splat(1.3333558146428443e-03f);
  p = p * f + splat(9.618129107628477e-03f);
  p = p * f + splat(5.550410866482158e-02f);
  p = p * f + splat(2.402265069591007e-01f);
  p = p * f + splat(6.931471805599453e-01f);
  p = p * f + splat(1.0f);
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;  // n = -127 gives the bit pattern of +0
  return p * (vf)e;
}

inline int roundUp(int x, int m) { return (x + m - 1) / m * m; }
inline int imin(int a, int b) { return a < b ? a : b; }
inline size_t pad16(size_t n) { return (n + 15) & ~size_t(15); }

// ---------------------------------------------------------------------------
// Matrix multiply on tiles: C[M x N] (+)= A(M x K) * B(K x N).
// A(i, k) is A[i * lda + k], or A[k * lda + i] when TA (A stored transposed).
// B is packed in panels of NR columns: B(k, j) is at
// B[(j / NR) * bPanel + k * NR + j % NR], so the micro-kernel reads it as one
// contiguous stream. N is a multiple of NR (packing pads with zeros). C is
// row-major. The register tile is R rows x NR columns (2 vectors); the B panel
// stays in L1 while the rows of A stream past it.

constexpr int NR = 2 * W;

template <bool TA, int R>
inline void microTile(int K, const float* A, long lda, const float* B, float* C, long ldc, bool acc) {
  vf c0[R], c1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; r++) {
    c0[r] = acc ? load(C + r * ldc) : vf{};
    c1[r] = acc ? load(C + r * ldc + W) : vf{};
  }
  for (int k = 0; k < K; k++) {
    const vf b0 = load(B + (long)k * NR), b1 = load(B + (long)k * NR + W);
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) {
      const vf a = splat(TA ? A[(long)k * lda + r] : A[(long)r * lda + k]);
      c0[r] += a * b0;
      c1[r] += a * b1;
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; r++) {
    store(C + r * ldc, c0[r]);
    store(C + r * ldc + W, c1[r]);
  }
}

template <bool TA>
inline void microRows(int rows, int K, const float* A, long lda, const float* B, float* C, long ldc, bool acc) {
  switch (rows) {
#define RA_CASE(R) \
  case R:          \
    if (R <= MR) microTile<TA, (R <= MR ? R : 1)>(K, A, lda, B, C, ldc, acc); \
    break;
    RA_CASE(1) RA_CASE(2) RA_CASE(3) RA_CASE(4) RA_CASE(5) RA_CASE(6) RA_CASE(7) RA_CASE(8)
#undef RA_CASE
    default:
      break;
  }
}

// Not inlined, so every caller runs the very same instruction sequence: the
// fused and two-pass backward paths then agree bit for bit.
template <bool TA>
__attribute__((noinline)) void gemm(int M, int N, int K, const float* A, long lda, const float* B, long bPanel,
                                    float* C, long ldc, bool acc) {
  for (int j = 0; j < N; j += NR) {
    const float* b = B + (long)(j / NR) * bPanel;
    for (int i = 0; i < M; i += MR) {
      const float* a = TA ? A + i : A + (long)i * lda;
      microRows<TA>(imin(MR, M - i), K, a, lda, b, C + (long)i * ldc + j, ldc, acc);
    }
  }
}

// ---------------------------------------------------------------------------
// Packing and masks.

struct Geometry {
  int D, dp, tq, tk, tkp;
  int i0, mq;       // query tile rows [i0, i0 + mq)
  int j0, nk, nkp;  // KV tile rows [j0, j0 + nk), nk padded to NR
};

inline Geometry geometry(const Problem* p, int it, int jt) {
  Geometry g;
  g.D = p->headDim;
  g.dp = p->dp;
  g.tq = p->tileQ;
  g.tk = p->tileKV;
  g.tkp = p->tkp;
  g.i0 = it * g.tq;
  g.mq = imin(g.tq, p->qLen - g.i0);
  g.j0 = jt * g.tk;
  g.nk = jt >= 0 ? imin(g.tk, p->kvLen - g.j0) : 0;
  g.nkp = roundUp(g.nk, NR);
  return g;
}

// Packed tiles, one slot per (kv head, KV tile) or (head, query tile).
// "T" tiles are transposed (K^T, V^T: [D x tkp], panels over keys);
// "R" tiles are rows (K, V: [tileKV x dp], panels over head dims);
// query tiles come as rows for A operands and as panels for B operands.
inline size_t kvTileT(const Problem* p, int g, int jt) { return ((size_t)g * p->nKt + jt) * p->headDim * p->tkp; }
inline size_t kvTileR(const Problem* p, int g, int jt) { return ((size_t)g * p->nKt + jt) * p->tileKV * p->dp; }
inline size_t qTile(const Problem* p, int h, int it) { return ((size_t)h * p->nQt + it) * p->tileQ * p->dp; }
inline size_t qRows(const Problem* p, int h, int it) { return ((size_t)h * p->nQt + it) * p->tileQ; }

// Row-major copy of rows [r0, r0 + n) of one head of a token-major tensor,
// zero-padded from D to dp columns: an A operand.
void packRows(const float* src, int r0, int n, int nHeads, int head, int D, int dp, float* dst) {
  for (int r = 0; r < n; r++) {
    const float* s = src + ((size_t)(r0 + r) * nHeads + head) * D;
    float* d = dst + (size_t)r * dp;
    for (int c = 0; c < D; c++) d[c] = s[c];
    for (int c = D; c < dp; c++) d[c] = 0.0f;
  }
}

// The same rows as a B operand (K = rows, N = dp): panels of NR head dims,
// each `rowsAlloc` rows long.
void packRowPanels(const float* src, int r0, int n, int nHeads, int head, int D, int dp, int rowsAlloc, float* dst) {
  for (int c0 = 0; c0 < dp; c0 += NR) {
    float* panel = dst + (size_t)(c0 / NR) * rowsAlloc * NR;
    const int w = imin(NR, D - c0);  // real columns in this panel
    for (int r = 0; r < n; r++) {
      const float* s = src + ((size_t)(r0 + r) * nHeads + head) * D + c0;
      float* d = panel + (size_t)r * NR;
      if (w == NR) {
        store(d, load(s));
        store(d + W, load(s + W));
      } else {
        for (int c = 0; c < NR; c++) d[c] = c < w ? s[c] : 0.0f;
      }
    }
  }
}

// Rows [r0, r0 + n) transposed, as a B operand (K = D, N = tkp): panels of NR
// rows, zero past n, each value multiplied by `mul`.
void packColPanels(const float* src, int r0, int n, int nHeads, int head, int D, int tkp, float* dst, float mul) {
  for (int r = 0; r < tkp; r++) {
    float* d = dst + (size_t)(r / NR) * D * NR + r % NR;
    if (r < n) {
      const float* s = src + ((size_t)(r0 + r) * nHeads + head) * D;
      for (int c = 0; c < D; c++) d[(size_t)c * NR] = s[c] * mul;
    } else {
      for (int c = 0; c < D; c++) d[(size_t)c * NR] = 0.0f;
    }
  }
}

// Scores of disallowed pairs, and of the padding columns, become -inf.
void maskScores(const Problem* p, TileRelation rel, const Geometry& g, float* s) {
  const float ninf = -__builtin_inff();
  for (int i = 0; i < g.mq; i++) {
    float* row = s + (size_t)i * g.tkp;
    if (rel == kPartial) {
      const int32_t qp = p->qPos[g.i0 + i];
      const int32_t* kp = p->kvPos + g.j0;
      if (p->causal)
        for (int j = 0; j < g.nk; j++)
          if (kp[j] > qp) row[j] = ninf;
      if (p->window) {
        const int64_t w = p->window;
        for (int j = 0; j < g.nk; j++) {
          const int64_t d = (int64_t)qp - kp[j];
          if (d >= w || (!p->causal && -d >= w)) row[j] = ninf;
        }
      }
      if (p->qSeg) {
        const int32_t qs = p->qSeg[g.i0 + i];
        const int32_t* ks = p->kvSeg + g.j0;
        for (int j = 0; j < g.nk; j++)
          if (ks[j] != qs) row[j] = ninf;
      }
    }
    for (int j = g.nk; j < g.nkp; j++) row[j] = ninf;
  }
}

// ---------------------------------------------------------------------------
// Scratch of one thread.

struct Scratch {
  float* qp;    // tileQ x dp
  float* acc;   // tileQ x dp: output accumulator (forward) or dq tile (backward)
  float* s;     // tileQ x tkp: scores, then probabilities
  float* ds;    // tileQ x tkp: dP, then dS
  float* dk;    // tileKV x dp
  float* dv;    // tileKV x dp
  float* m;     // tileQ: running max (base 2)
  float* l;     // tileQ: running sum
};

struct ScratchSizes {
  size_t qd, qk, kd, q1;
};

inline ScratchSizes scratchSizes(const Problem* p) {
  return {pad16((size_t)p->tileQ * p->dp), pad16((size_t)p->tileQ * p->tkp), pad16((size_t)p->tileKV * p->dp),
          pad16(p->tileQ)};
}

size_t scratchFloats(const Problem* p) {
  const ScratchSizes z = scratchSizes(p);
  return 2 * z.qd + 2 * z.qk + 2 * z.kd + 2 * z.q1;
}

Scratch carve(const Problem* p, float* base) {
  const ScratchSizes z = scratchSizes(p);
  Scratch s;
  s.qp = base;
  s.acc = s.qp + z.qd;
  s.s = s.acc + z.qd;
  s.ds = s.s + z.qk;
  s.dk = s.ds + z.qk;
  s.dv = s.dk + z.kd;
  s.m = s.dv + z.kd;
  s.l = s.m + z.q1;
  return s;
}

void zero(float* x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = 0.0f;
}

// ---------------------------------------------------------------------------
// Forward.

void packKvForward(const Problem* p, int g, int jt) {
  const Geometry geo = geometry(p, 0, jt);
  packColPanels(p->k, geo.j0, geo.nk, p->kvHeads, g, geo.D, geo.tkp, p->packKt + kvTileT(p, g, jt),
                p->scale * kLog2e);
  packRowPanels(p->v, geo.j0, geo.nk, p->kvHeads, g, geo.D, geo.dp, geo.tk, p->packV + kvTileR(p, g, jt));
}

void forwardTile(const Problem* p, int h, int it, float* base) {
  const Scratch sc = carve(p, base);
  const int g = h / (p->heads / p->kvHeads);
  Geometry geo = geometry(p, it, -1);
  const int mq = geo.mq, dp = geo.dp, tkp = geo.tkp;
  const float ninf = -__builtin_inff();

  packRows(p->q, geo.i0, mq, p->heads, h, geo.D, dp, sc.qp);
  zero(sc.acc, (size_t)mq * dp);
  for (int i = 0; i < mq; i++) {
    sc.m[i] = ninf;
    sc.l[i] = 0.0f;
  }

  for (int jt = 0; jt < p->nKt; jt++) {
    const TileRelation rel = relate(p, p->qTiles[it], p->kvTiles[jt]);
    if (rel == kSkip) continue;
    geo = geometry(p, it, jt);

    gemm<false>(mq, geo.nkp, geo.D, sc.qp, dp, p->packKt + kvTileT(p, g, jt), (long)geo.D * NR, sc.s, tkp, false);
    maskScores(p, rel, geo, sc.s);

    // Online softmax: fold this tile's scores into the running max and sum,
    // rescaling what the output accumulator already holds.
    for (int i = 0; i < mq; i++) {
      float* row = sc.s + (size_t)i * tkp;
      vf mx = splat(ninf);
      for (int j = 0; j < geo.nkp; j += W) mx = vmax(mx, load(row + j));
      const float rowMax = hmax(mx);
      const float mOld = sc.m[i];
      const float mNew = rowMax > mOld ? rowMax : mOld;
      if (mNew == ninf) {  // nothing allowed in this row yet
        for (int j = 0; j < geo.nkp; j++) row[j] = 0.0f;
        continue;
      }
      const vf vm = splat(mNew);
      vf sum = vf{};
      for (int j = 0; j < geo.nkp; j += W) {
        const vf e = exp2v(load(row + j) - vm);
        store(row + j, e);
        sum += e;
      }
      if (mNew == mOld) {
        sc.l[i] += hsum(sum);
      } else {
        const float alpha = __builtin_exp2f(mOld - mNew);  // 0 while the row was empty
        sc.l[i] = sc.l[i] * alpha + hsum(sum);
        sc.m[i] = mNew;
        float* o = sc.acc + (size_t)i * dp;
        const vf va = splat(alpha);
        for (int d = 0; d < dp; d += W) store(o + d, load(o + d) * va);
      }
    }

    gemm<false>(mq, dp, geo.nk, sc.s, tkp, p->packV + kvTileR(p, g, jt), (long)geo.tk * NR, sc.acc, dp, true);
  }

  for (int i = 0; i < mq; i++) {
    float* dst = p->o + ((size_t)(geo.i0 + i) * p->heads + h) * geo.D;
    float* lse = p->lse + (size_t)h * p->qLen + geo.i0 + i;
    if (sc.l[i] > 0.0f) {
      const float inv = 1.0f / sc.l[i];
      const float* o = sc.acc + (size_t)i * dp;
      for (int d = 0; d < geo.D; d++) dst[d] = o[d] * inv;
      *lse = (float)(((double)sc.m[i] + __builtin_log2((double)sc.l[i])) * kLn2);
    } else {
      for (int d = 0; d < geo.D; d++) dst[d] = 0.0f;
      *lse = ninf;
    }
  }
}

// ---------------------------------------------------------------------------
// Backward. With the final lse, P = exp2(s' - lse2) exactly as the merged
// forward saw it; dS = P * (dP - delta) * scale, dV += P^T dO, dK += dS^T Q,
// dQ += dS K.

void packKvBackward(const Problem* p, int g, int jt) {
  const Geometry geo = geometry(p, 0, jt);
  const size_t t = kvTileT(p, g, jt), r = kvTileR(p, g, jt);
  packColPanels(p->k, geo.j0, geo.nk, p->kvHeads, g, geo.D, geo.tkp, p->packKt + t, p->scale * kLog2e);
  packColPanels(p->v, geo.j0, geo.nk, p->kvHeads, g, geo.D, geo.tkp, p->packVt + t, 1.0f);
  packRowPanels(p->k, geo.j0, geo.nk, p->kvHeads, g, geo.D, geo.dp, geo.tk, p->packK + r);
  packRowPanels(p->v, geo.j0, geo.nk, p->kvHeads, g, geo.D, geo.dp, geo.tk, p->packV + r);
}

void packQBackward(const Problem* p, int h, int it) {
  const Geometry geo = geometry(p, it, -1);
  const size_t t = qTile(p, h, it), r = qRows(p, h, it);
  packRows(p->q, geo.i0, geo.mq, p->heads, h, geo.D, geo.dp, p->packQ + t);
  packRows(p->dO, geo.i0, geo.mq, p->heads, h, geo.D, geo.dp, p->packDO + t);
  packRowPanels(p->q, geo.i0, geo.mq, p->heads, h, geo.D, geo.dp, geo.tq, p->packQB + t);
  packRowPanels(p->dO, geo.i0, geo.mq, p->heads, h, geo.D, geo.dp, geo.tq, p->packDOB + t);
  for (int i = 0; i < geo.mq; i++) {
    const float lse = p->lseFinal[(size_t)h * p->qLen + geo.i0 + i];
    // A row that saw no key at all has P = 0 everywhere: +inf makes every
    // exponent -inf (and so 0) without a NaN from -inf - -inf.
    p->packLse2[r + i] = lse == -__builtin_inff() ? __builtin_inff() : lse * kLog2e;
    p->packDelta[r + i] = p->delta[(size_t)h * p->qLen + geo.i0 + i];
  }
}

// One query tile of head h against one KV tile of kv head g. Every path calls
// this with the same arguments for the same pair, so results do not depend on
// how the work was split between threads.
void backwardPair(const Problem* p, int h, int g, int it, int jt, TileRelation rel, const Scratch& sc, float* dqAcc,
                  bool doKv, bool doQ) {
  const Geometry geo = geometry(p, it, jt);
  const int mq = geo.mq, dp = geo.dp, tkp = geo.tkp;
  const size_t qt = qTile(p, h, it), qr = qRows(p, h, it);
  const float* lse2 = p->packLse2 + qr;
  const float* delta = p->packDelta + qr;
  const size_t t = kvTileT(p, g, jt), r = kvTileR(p, g, jt);
  const long tPanel = (long)geo.D * NR;

  gemm<false>(mq, geo.nkp, geo.D, p->packQ + qt, dp, p->packKt + t, tPanel, sc.s, tkp, false);
  maskScores(p, rel, geo, sc.s);
  gemm<false>(mq, geo.nkp, geo.D, p->packDO + qt, dp, p->packVt + t, tPanel, sc.ds, tkp, false);
  const vf vscale = splat(p->scale);
  for (int i = 0; i < mq; i++) {
    float* prow = sc.s + (size_t)i * tkp;
    float* drow = sc.ds + (size_t)i * tkp;
    const vf vl = splat(lse2[i]), vd = splat(delta[i]);
    for (int j = 0; j < geo.nkp; j += W) {
      const vf pr = exp2v(load(prow + j) - vl);
      store(prow + j, pr);
      store(drow + j, pr * (load(drow + j) - vd) * vscale);
    }
  }
  if (doKv) {
    const long qPanel = (long)geo.tq * NR;
    gemm<true>(geo.nk, dp, mq, sc.s, tkp, p->packDOB + qt, qPanel, sc.dv, dp, true);
    gemm<true>(geo.nk, dp, mq, sc.ds, tkp, p->packQB + qt, qPanel, sc.dk, dp, true);
  }
  if (doQ) gemm<false>(mq, dp, geo.nk, sc.ds, tkp, p->packK + r, (long)geo.tk * NR, dqAcc, dp, true);
}

void addRows(float* dst, int r0, int n, int nHeads, int head, int D, const float* acc, int dp) {
  for (int r = 0; r < n; r++) {
    float* d = dst + ((size_t)(r0 + r) * nHeads + head) * D;
    const float* a = acc + (size_t)r * dp;
    for (int c = 0; c < D; c++) d[c] += a[c];
  }
}

void backwardKvHead(const Problem* p, int g, float* base, float* dqAcc) {
  const Scratch sc = carve(p, base);
  const int group = p->heads / p->kvHeads;
  const size_t qTileN = (size_t)p->tileQ * p->dp, kvTileN = (size_t)p->tileKV * p->dp;
  zero(dqAcc, (size_t)group * p->nQt * qTileN);
  for (int jt = 0; jt < p->nKt; jt++) {
    const Geometry geo = geometry(p, 0, jt);
    zero(sc.dk, kvTileN);
    zero(sc.dv, kvTileN);
    for (int hh = 0; hh < group; hh++) {
      const int h = g * group + hh;
      for (int it = 0; it < p->nQt; it++) {
        const TileRelation rel = relate(p, p->qTiles[it], p->kvTiles[jt]);
        if (rel == kSkip) continue;
        backwardPair(p, h, g, it, jt, rel, sc, dqAcc + ((size_t)hh * p->nQt + it) * qTileN, true, true);
      }
    }
    addRows(p->dk, geo.j0, geo.nk, p->kvHeads, g, geo.D, sc.dk, geo.dp);
    addRows(p->dv, geo.j0, geo.nk, p->kvHeads, g, geo.D, sc.dv, geo.dp);
  }
  for (int hh = 0; hh < group; hh++)
    for (int it = 0; it < p->nQt; it++) {
      const Geometry geo = geometry(p, it, -1);
      addRows(p->dq, geo.i0, geo.mq, p->heads, g * group + hh, geo.D, dqAcc + ((size_t)hh * p->nQt + it) * qTileN,
              geo.dp);
    }
}

void backwardDkDv(const Problem* p, int g, int jt, float* base) {
  const Scratch sc = carve(p, base);
  const int group = p->heads / p->kvHeads;
  const Geometry geo = geometry(p, 0, jt);
  zero(sc.dk, (size_t)p->tileKV * p->dp);
  zero(sc.dv, (size_t)p->tileKV * p->dp);
  for (int hh = 0; hh < group; hh++)
    for (int it = 0; it < p->nQt; it++) {
      const TileRelation rel = relate(p, p->qTiles[it], p->kvTiles[jt]);
      if (rel == kSkip) continue;
      backwardPair(p, g * group + hh, g, it, jt, rel, sc, nullptr, true, false);
    }
  addRows(p->dk, geo.j0, geo.nk, p->kvHeads, g, geo.D, sc.dk, geo.dp);
  addRows(p->dv, geo.j0, geo.nk, p->kvHeads, g, geo.D, sc.dv, geo.dp);
}

void backwardDq(const Problem* p, int h, int it, float* base) {
  const Scratch sc = carve(p, base);
  const int g = h / (p->heads / p->kvHeads);
  const Geometry geo = geometry(p, it, -1);
  zero(sc.acc, (size_t)p->tileQ * p->dp);
  for (int jt = 0; jt < p->nKt; jt++) {
    const TileRelation rel = relate(p, p->qTiles[it], p->kvTiles[jt]);
    if (rel == kSkip) continue;
    backwardPair(p, h, g, it, jt, rel, sc, sc.acc, false, true);
  }
  addRows(p->dq, geo.i0, geo.mq, p->heads, h, geo.D, sc.acc, geo.dp);
}

const Variant kVariant = {
    RA_ISA,          NR,         scratchFloats,  packKvForward, forwardTile,
    packKvBackward,  packQBackward, backwardKvHead, backwardDkDv,  backwardDq,
};

}  // namespace
}  // namespace RA_NS

const Variant* RA_ENTRY() { return &RA_NS::kVariant; }

}  // namespace ringattn
