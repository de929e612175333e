// SGEMM packing routines and micro-kernel, written once over GCC vector
// extensions and compiled once per instruction set. Before including, a
// variant file defines:
//   GM_NS     namespace of this copy (avx512, avx2, portable)
//   GM_W      floats per vector (16, 8, 4)
//   GM_MR     rows of the register tile
//   GM_NV     vectors per row of the register tile (NR = GM_NV * GM_W columns)
//   GM_KC, GM_MC, GM_NC  default blocking (see gemm_kernel.h)
//   GM_ISA    the name reported to JavaScript
//   GM_ENTRY  the function returning this copy's Variant table
//
// Everything here has internal linkage and uses no std:: templates, so code
// compiled with AVX flags can never be picked by the linker for baseline code.
// Layouts of the packed buffers are described in gemm_kernel.h.
#include "gemm_kernel.h"

namespace ringattn {
namespace gemm {
namespace GM_NS {
namespace {

constexpr int W = GM_W;
constexpr int MR = GM_MR;
constexpr int NV = GM_NV;
constexpr int NR = NV * W;

typedef float vf __attribute__((vector_size(W * 4)));
typedef int vi __attribute__((vector_size(W * 4)));

inline vf load(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
// x - (+0) is x for every x, so this folds to a plain broadcast.
inline vf splat(float x) { return x - vf{}; }
inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }

// A cursor over the cache lines of one PrefetchRegion: p is the next line, rem
// the lines left in its row, rowLines per row, the next row at row + stride.
struct PfStream {
  const char* p;
  const char* row;
  long stride;
  int rowLines, rem;
};

// Lines per row of a region, and the cursor at its start. With rows a whole
// number of lines apart, each row is walked from its first line; otherwise
// from its first byte, one line more, which covers its last byte however the
// row lies.
inline int regionRowLines(const PrefetchRegion& r) {
  if (r.rows <= 0 || r.rowBytes <= 0) return 0;
  const long off = (long)((unsigned long)r.base & 63);
  return (int)(r.stride % 64 == 0 ? (off + r.rowBytes + 63) / 64 : (r.rowBytes + 62) / 64 + 1);
}
inline void openRegion(const PrefetchRegion& r, PfStream* s) {
  const long off = (long)((unsigned long)r.base & 63);
  s->row = r.stride % 64 == 0 ? r.base - off : r.base;
  s->p = s->row;
  s->stride = r.stride;
  s->rowLines = s->rem = regionRowLines(r);
}
__attribute__((always_inline)) inline void pfNext(PfStream& s) {
  __builtin_prefetch(s.p, 0, 2);
  s.p += 64;
  if (--s.rem == 0) {
    s.row += s.stride;
    s.p = s.row;
    s.rem = s.rowLines;
  }
}

// ---------------------------------------------------------------------------
// Micro-kernel: the MR x NR tile C (=|+=) A B over kc, A an MR x kc micro-panel
// and B a kc x NR micro-panel (both k-major). The products are summed from zero
// in k order in registers and added to C once at the end, so every element's
// arithmetic is the same wherever its tile lies (edge tiles go through a
// temporary tile with the same code): results do not depend on the task split.
//
// While it runs, the kernel prefetches what comes next, so that it is not
// waited for from memory: the C tile the next call will write (cNext, ldNext),
// pfLines lines from pfB on into L2 (the caller's share of the next B
// micro-panel), and sCount lines of the stream s into L2 (its share of the
// operands of the caller's next pack). Shortly before its end it also brings
// its own rows of C into L1.

// R (<= MR) is the number of rows computed: the last micro-panel of a block
// with fewer rows left skips the zero padding.
template <int R>
__attribute__((always_inline)) inline void micro(int kc, const float* __restrict a, const float* __restrict b,
                                                 float* __restrict c, long ldc, int acc, const float* cNext,
                                                 long ldNext, const float* pfB, int pfLines, PfStream* s, int sCount) {
  vf r[R][NV];
#pragma GCC unroll 32
  for (int i = 0; i < R; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) r[i][v] = vf{};
  auto step = [&](int k) __attribute__((always_inline)) {
    __builtin_prefetch(a + (k + 12) * MR);
    vf bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) bv[v] = load(b + k * NR + v * W);
#pragma GCC unroll 32
    for (int i = 0; i < R; i++) {
      const vf av = splat(a[k * MR + i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) r[i][v] += av * bv[v];
    }
  };
  // Lines of one row of a C tile: its first and last float and every W-th one
  // between, which covers the row however it lies across lines.
  auto pfRow = [&](const float* row) __attribute__((always_inline)) {
#pragma GCC unroll 4
    for (int v = 0; v <= NV; v++) __builtin_prefetch(row + imin(v * W, NR - 1), 1, 3);
  };
  // The first iterations prefetch the next C tile (a row a k) and the share of
  // the next B panel (a line a k). The stream, whose lines may come from memory,
  // is spread evenly over the loop, so that its prefetches never hold many of
  // the L1's line fill buffers, which the loads of B and A need. The last R
  // iterations prefetch this tile's own rows of C into L1: the earlier prefetch
  // left them in L2 (the B panel streaming through L1 evicts them there), and
  // without this the stores at the end, split across lines whenever C is not
  // 64-byte aligned, would each wait for L2 in turn. In between, the bare loop.
  const int lead = imin(kc, imax(R, pfLines));
  const int sGap = sCount > 0 ? imax(1, kc / sCount) : kc;
  const int sEnd = sCount > 0 ? imin(kc, (sCount - 1) * sGap + 1) : 0;
  const int head = imax(lead, sEnd), tail = imax(0, kc - R);
  int sNext = sCount > 0 ? 0 : kc;
  PfStream st = *s;
  auto prologue = [&](int k) __attribute__((always_inline)) {
    if (k < R) pfRow(cNext + k * ldNext);
    if (k < pfLines) __builtin_prefetch(pfB + k * 16, 0, 2);
    if (k == sNext) {
      pfNext(st);
      sNext += sGap;
    }
  };
  int k = 0;
  if (head > tail) {
    for (; k < kc; k++) {
      prologue(k);
      if (k >= tail) pfRow(c + (k - tail) * ldc);
      step(k);
    }
  } else {
#pragma GCC unroll 2
    for (; k < head; k++) {
      prologue(k);
      step(k);
    }
#pragma GCC unroll 4
    for (; k < tail; k++) step(k);
#pragma GCC unroll 2
    for (; k < kc; k++) {
      pfRow(c + (k - tail) * ldc);
      step(k);
    }
  }
  *s = st;
  if (acc) {
#pragma GCC unroll 32
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) store(c + i * ldc + v * W, load(c + i * ldc + v * W) + r[i][v]);
  } else {
#pragma GCC unroll 32
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) store(c + i * ldc + v * W, r[i][v]);
  }
}

// The micro-kernel for the last rows < MR of a block, writing C directly.
__attribute__((noinline)) void microRows(int rows, int kc, const float* a, const float* b, float* c, long ldc,
                                         int acc, const float* cNext, long ldNext, const float* pfB, int pfLines,
                                         PfStream* s, int sCount) {
  switch (rows) {
#define GM_ROWS(R)                                                                                     \
  case R:                                                                                              \
    if (R < MR) micro<(R < MR ? R : 1)>(kc, a, b, c, ldc, acc, cNext, ldNext, pfB, pfLines, s, sCount); \
    break;
    GM_ROWS(1) GM_ROWS(2) GM_ROWS(3) GM_ROWS(4) GM_ROWS(5) GM_ROWS(6) GM_ROWS(7) GM_ROWS(8)
    GM_ROWS(9) GM_ROWS(10) GM_ROWS(11) GM_ROWS(12) GM_ROWS(13) GM_ROWS(14) GM_ROWS(15)
#undef GM_ROWS
    default:
      break;
  }
}
static_assert(MR <= 16, "microRows covers at most 15 edge rows");

void macro(int rows, int cols, int kc, const float* ap, const float* bp, long bStride, float* c, long ldc,
           int accumulate, const PrefetchRegion* pf, int nPf) {
  alignas(64) float tmp[MR * NR];
  const int nIr = (rows + MR - 1) / MR;
  const int panelLines = kc * NR / 16;  // 64-byte lines in one B micro-panel
  const int share = (panelLines + nIr - 1) / nIr;
  // The lines of pf, dealt out evenly over the micro-kernel calls (at most kc a call).
  long pfLeft = 0;
  for (int r = 0; r < nPf; r++) pfLeft += (long)pf[r].rows * regionRowLines(pf[r]);
  int region = -1;
  long regionLeft = 0;
  PfStream s{};
  long callsLeft = (long)nIr * ((cols + NR - 1) / NR);
  auto quota = [&]() -> int {
    if (pfLeft <= 0) return 0;
    while (regionLeft == 0) {
      region++;
      regionLeft = (long)pf[region].rows * regionRowLines(pf[region]);
      if (regionLeft) openRegion(pf[region], &s);
    }
    long q = (pfLeft + callsLeft - 1) / callsLeft;
    if (q > kc) q = kc;
    if (q > regionLeft) q = regionLeft;
    pfLeft -= q;
    regionLeft -= q;
    callsLeft--;
    return (int)q;
  };
  for (int jr = 0; jr < cols; jr += NR) {
    const float* b = bp + (long)(jr / NR) * bStride;
    const bool lastPanel = jr + NR >= cols;
    const float* bNext = lastPanel ? b : b + bStride;
    const int nc = imin(NR, cols - jr);
    for (int ir = 0, it = 0; ir < rows; ir += MR, it++) {
      const float* a = ap + (long)it * MR * kc;
      const int mr = imin(MR, rows - ir);
      float* cc = c + (long)ir * ldc + jr;
      // The tile after this one: down the same panel, else the top of the next.
      const float* cNext = ir + MR < rows ? cc + (long)MR * ldc : lastPanel ? cc : c + jr + NR;
      const int first = imin(it * share, panelLines);
      const float* pfb = bNext + (long)first * 16;
      const int lines = lastPanel ? 0 : imin(share, panelLines - first);
      const int q = quota();
      if (mr == MR && nc == NR) {
        micro<MR>(kc, a, b, cc, ldc, accumulate, cNext, ldc, pfb, lines, &s, q);
      } else if (nc == NR) {
        microRows(mr, kc, a, b, cc, ldc, accumulate, cNext, ldc, pfb, lines, &s, q);
      } else {
        micro<MR>(kc, a, b, tmp, NR, 0, cNext, ldc, pfb, lines, &s, q);
        for (int i = 0; i < mr; i++) {
          float* row = cc + (long)i * ldc;
          const float* t = tmp + i * NR;
          if (accumulate)
            for (int j = 0; j < nc; j++) row[j] += t[j];
          else
            for (int j = 0; j < nc; j++) row[j] = t[j];
        }
      }
    }
  }
  // Only when the quota was capped by a small kc: the rest at once.
  while (pfLeft > 0) {
    callsLeft = 1;
    for (int q = quota(); q > 0; q--) pfNext(s);
  }
}

// ---------------------------------------------------------------------------
// Packing. A transpose of a W x W block in registers: log2(W) stages, stage s
// swapping bit s of the row index with bit s of the column index.

template <int S>
struct ShuffleMasks {
  int lo[W], hi[W];
  constexpr ShuffleMasks() : lo(), hi() {
    for (int j = 0; j < W; j++) {
      const int base = (j & S) ? W : 0;
      lo[j] = base + (j & ~S);
      hi[j] = base + (j | S);
    }
  }
};

template <int S>
__attribute__((always_inline)) inline void transposeStage(vf* r) {
  static constexpr ShuffleMasks<S> m{};
  vi lo, hi;
  __builtin_memcpy(&lo, m.lo, sizeof lo);
  __builtin_memcpy(&hi, m.hi, sizeof hi);
#pragma GCC unroll 16
  for (int i = 0; i < W; i++) {
    if (i & S) continue;
    const vf x = r[i], y = r[i | S];
    r[i] = __builtin_shuffle(x, y, lo);
    r[i | S] = __builtin_shuffle(x, y, hi);
  }
}

__attribute__((always_inline)) inline void transpose(vf* r) {
  transposeStage<1>(r);
  if (W > 2) transposeStage<(W > 2 ? 2 : 1)>(r);
  if (W > 4) transposeStage<(W > 4 ? 4 : 1)>(r);
  if (W > 8) transposeStage<(W > 8 ? 8 : 1)>(r);
}

// dst[k*R + o + t] = rows[t][k] for k in [0, kc), t in [0, W): W source rows,
// each contiguous in k, written k-major with row stride R. When o + W > R
// (only for R < W) each store runs past its row into the next one, which the
// next store overwrites; the caller leaves room after the last.
template <int R>
__attribute__((always_inline)) inline void transposeRows(const float* const* rows, int kc, float* dst, int o) {
  int k = 0;
  for (; k + W <= kc; k += W) {
    vf v[W];
#pragma GCC unroll 16
    for (int t = 0; t < W; t++) v[t] = load(rows[t] + k);
    transpose(v);
#pragma GCC unroll 16
    for (int t = 0; t < W; t++) store(dst + (long)(k + t) * R + o, v[t]);
  }
  for (; k < kc; k++)
    for (int t = 0; t < W && o + t < R; t++) dst[(long)k * R + o + t] = rows[t][k];
}

// Where each source row holds values of several micro-panels (op(A) transposed,
// op(B) not), a pack copies a block of this many rows micro-panel by micro-panel
// before it goes on to the next rows: few enough rows that their lines stay in
// L1 for the following micro-panels, enough that each micro-panel is written in
// runs of whole lines.
constexpr int kPackRows = 16;

void packA(const float* a, long lda, int trans, int i0, int rows, int avail, int k0, int kc, float* dst) {
  const long ps = (long)MR * kc;  // floats between micro-panels
  if (trans) {
    // op(A)(i, k) = a[k*lda + i]: each k's values are contiguous. The source is read
    // kPackRows rows at a time, each of those blocks micro-panel by micro-panel.
    const float* src = a + (long)k0 * lda + i0;
    const int full = rows / MR, mr = rows - full * MR;
    for (int kb = 0; kb < kc; kb += kPackRows) {
      const int ke = imin(kc, kb + kPackRows);
      for (int p = 0; p < full; p++) {
        const float* s = src + (long)kb * lda + p * MR;
        float* d = dst + p * ps + (long)kb * MR;
        if (MR >= W) {
          for (int k = kb; k < ke; k++, s += lda, d += MR) {
#pragma GCC unroll 8
            for (int o = 0; o < MR; o += W) {
              const int oo = o + W <= MR ? o : MR - W;
              store(d + oo, load(s + oo));
            }
          }
        } else {
          // MR < W: copy W values (the extra ones exist in op(A)) into the slot of k, running
          // into the slot of k + 1, which is written after it. The very last k (whose excess
          // would land in the next micro-panel, written before) and micro-panels without W
          // values left in op(A) copy MR exactly.
          int k = kb;
          if (p * MR + W <= avail)
            for (; k < ke && k + 1 < kc; k++, s += lda, d += MR) store(d, load(s));
          for (; k < ke; k++, s += lda, d += MR) __builtin_memcpy(d, s, sizeof(float) * MR);
        }
      }
      if (mr) {
        for (int k = kb; k < ke; k++) {
          float* e = dst + full * ps + (long)k * MR;
          const float* t = src + (long)k * lda + full * MR;
          for (int i = 0; i < MR; i++) e[i] = i < mr ? t[i] : 0.0f;
        }
      }
    }
    return;
  }
  for (int p = 0; p < rows; p += MR, dst += ps) {
    const int mr = imin(MR, rows - p);
    // op(A)(i, k) = a[i*lda + k]: each row is contiguous in k; transpose W x W blocks.
    const float* src = a + (long)(i0 + p) * lda + k0;
    if (mr == MR) {
      for (int o = 0; o < MR; o += W) {
        const int oo = MR >= W ? (o + W <= MR ? o : MR - W) : 0;
        const float* rp[W];
        for (int t = 0; t < W; t++) rp[t] = src + (long)imin(oo + t, MR - 1) * lda;
        transposeRows<MR>(rp, kc, dst, oo);
      }
    } else {
      for (int k = 0; k < kc; k++) {
        float* d = dst + (long)k * MR;
        for (int i = 0; i < MR; i++) d[i] = i < mr ? src[(long)i * lda + k] : 0.0f;
      }
    }
  }
}

void packB(const float* b, long ldb, int trans, int k0, int kc, int j0, int cols, float* dst, long panelStride) {
  if (!trans) {
    // op(B)(k, j) = b[k*ldb + j]: each k's values are contiguous. The source is read
    // kPackRows rows at a time, each of those blocks micro-panel by micro-panel.
    const float* src = b + (long)k0 * ldb + j0;
    const int full = cols / NR, nc = cols - full * NR;
    for (int kb = 0; kb < kc; kb += kPackRows) {
      const int ke = imin(kc, kb + kPackRows);
      for (int p = 0; p < full; p++) {
        const float* s = src + (long)kb * ldb + p * NR;
        float* d = dst + p * panelStride + (long)kb * NR;
        for (int k = kb; k < ke; k++, s += ldb, d += NR) {
#pragma GCC unroll 4
          for (int v = 0; v < NV; v++) store(d + v * W, load(s + v * W));
        }
      }
      if (nc) {
        for (int k = kb; k < ke; k++) {
          float* e = dst + full * panelStride + (long)k * NR;
          const float* t = src + (long)k * ldb + full * NR;
          for (int j = 0; j < NR; j++) e[j] = j < nc ? t[j] : 0.0f;
        }
      }
    }
    return;
  }
  for (int p = 0; p < cols; p += NR, dst += panelStride) {
    const int nc = imin(NR, cols - p);
    // op(B)(k, j) = b[j*ldb + k]: each column of op(B) is contiguous in k.
    const float* src = b + (long)(j0 + p) * ldb + k0;
    if (nc == NR) {
      for (int g = 0; g < NV; g++) {
        const float* rp[W];
        for (int t = 0; t < W; t++) rp[t] = src + (long)(g * W + t) * ldb;
        transposeRows<NR>(rp, kc, dst, g * W);
      }
    } else {
      for (int k = 0; k < kc; k++) {
        float* d = dst + (long)k * NR;
        for (int j = 0; j < NR; j++) d[j] = j < nc ? src[(long)j * ldb + k] : 0.0f;
      }
    }
  }
}

const Variant kVariant = {GM_ISA, MR, NR, GM_KC, GM_MC, GM_NC, W, packA, packB, macro};

}  // namespace
}  // namespace GM_NS

const Variant* GM_ENTRY() { return &GM_NS::kVariant; }

}  // namespace gemm
}  // namespace ringattn
