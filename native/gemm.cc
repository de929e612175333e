// SGEMM driver: blocking, packing schedule and the parallel split, compiled for
// the baseline CPU. The arithmetic (packing routines and the micro-kernel) is
// in gemm_impl.h, compiled once per instruction set behind gemm_kernel.h.
//
// On one thread (sgemmSerial) the call is the Goto loop nest, ordered so that
// the packs, which read operands that are usually not in any cache, overlap the
// arithmetic: each macro-kernel call prefetches into L2 the operands of the
// packs that follow it (see there).
//
// On several threads, for each chunk of op(B) (at most kMaxPackFloats once
// packed, normally all of it):
//   1. pack the chunk of op(B) into NR-column micro-panels over its whole depth,
//      split into (KC rows x a few panels) pack tasks;
//   2. compute tasks, one per tile of a 2-D grid over C (tm rows x tn columns,
//      tm a multiple of MR and at most MC, tn a multiple of NR and at most NC).
//      A task walks K in KC blocks: it packs its own rows of op(A) for that
//      block (MC x KC, stays in L2), then sweeps the B micro-panels (KC x NR,
//      each stays in L1 while the A micro-panels stream past it), prefetching
//      its next block of op(A) meanwhile.
// Both kinds of tasks run in one parallel loop: the pack tasks come first in
// the loop's order, and a compute task about to use a KC block of B waits for
// that block's pack tasks, which by then have all been claimed by running
// participants, so the wait is short and cannot deadlock.
//
// K is never split between tasks and the micro-kernel sums each KC block from
// zero before adding it to C, so every element of C sees the same sequence of
// operations whatever the grid, and the one-thread schedule too (the same KC
// blocks in the same order): results do not depend on the thread count.
#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gemm_kernel.h"
#include "runtime.h"

namespace ringattn {
namespace {

using gemm::Variant;

// Largest packed copy of op(B) one call keeps, in floats (64 MiB): larger B are
// processed in chunks of columns (and of depth, for a very deep K).
constexpr size_t kMaxPackFloats = size_t(16) << 20;
// Below this many flops a call runs on one thread: waking helpers costs more.
constexpr double kMinParallelFlops = 2.0 * 112 * 112 * 112;

std::vector<const Variant*> usableVariants() {
  std::vector<const Variant*> out;
#if defined(RINGATTN_X86)
  __builtin_cpu_init();
  // libgcc's checks include the OS enabling the wider registers (xgetbv).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) out.push_back(gemm::variantAvx512());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back(gemm::variantAvx2());
#endif
  out.push_back(gemm::variantPortable());
  return out;
}

const std::vector<const Variant*>& variants() {
  static const std::vector<const Variant*> v = usableVariants();
  return v;
}

const Variant* pickVariant(const char* isa) {
  if (!isa || !*isa) return variants().front();
  for (const Variant* v : variants())
    if (std::strcmp(isa, v->isa) == 0) return v;
  const std::string name(isa);
  if (name == "avx512" || name == "avx2" || name == "portable")
    throw std::invalid_argument("instruction set '" + name + "' is not usable on this CPU");
  throw std::invalid_argument("unknown instruction set '" + name + "' (expected avx512, avx2 or portable)");
}

inline long ceilDiv(long a, long b) { return (a + b - 1) / b; }
inline long roundUp(long a, long b) { return ceilDiv(a, b) * b; }

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void waitAtLeast(const std::atomic<int>& counter, int target) {
  for (int spins = 0; counter.load(std::memory_order_acquire) < target; spins++) {
    if (spins < 4096)
      cpuRelax();
    else
      std::this_thread::yield();
  }
}

struct Grid {
  int tm, tn;  // tile of one compute task
  int gm, gn;  // tasks down and across
};

// The task grid with the smallest estimated makespan. A task's cost, in flops
// at the kernel's rate: its multiply-adds (rows padded to whole register
// tiles), reading its B panel (about 16 flops a float) and packing its rows of
// A (about 32 flops a float), plus a fixed cost. The makespan is simulated the
// way the pool hands tasks out: in order, each to the participant free first.
// Grids with up to 4 * threads more rows or columns of tasks than the fewest
// (and at most twice as many tasks, or 8 per thread) are tried.
Grid chooseGrid(int M, int N, int K, int threads, int MR, int NR, int mcMax, int ncMax) {
  const int gmMin = (int)ceilDiv(M, mcMax), gmMax = (int)ceilDiv(M, MR);
  const int gnMin = (int)ceilDiv(N, ncMax), gnMax = (int)ceilDiv(N, NR);
  Grid best{(int)roundUp(ceilDiv(M, gmMin), MR), (int)roundUp(ceilDiv(N, gnMin), NR), 0, 0};
  best.gm = (int)ceilDiv(M, best.tm);
  best.gn = (int)ceilDiv(N, best.tn);
  if (threads <= 1) return best;
  const long maxTasks = std::max<long>(8L * threads, 2L * best.gm * best.gn);
  auto taskCost = [&](int rows, int cols) {
    return 2.0 * roundUp(rows, MR) * cols * K + 16.0 * K * cols + 32.0 * K * rows + 2e5;
  };
  std::vector<double> finish(threads);
  double bestCost = 1e300;
  const int gmTop = std::min(gmMax, gmMin + 4 * threads), gnTop = std::min(gnMax, gnMin + 4 * threads);
  for (int gm = gmMin; gm <= gmTop; gm++) {
    const int tm = (int)roundUp(ceilDiv(M, gm), MR);
    if (ceilDiv(M, tm) != gm) continue;  // the same tiles as a smaller gm
    if ((long)gm * gnMin > maxTasks) break;
    for (int gn = gnMin; gn <= gnTop && (long)gm * gn <= maxTasks; gn++) {
      const int tn = (int)roundUp(ceilDiv(N, gn), NR);
      if (ceilDiv(N, tn) != gn) continue;
      std::fill(finish.begin(), finish.end(), 0.0);
      for (int ti = 0; ti < gm; ti++) {
        const double rowCost = taskCost(std::min(tm, M - ti * tm), tn);
        const double lastCost = taskCost(std::min(tm, M - ti * tm), N - (gn - 1) * tn);
        for (int tj = 0; tj < gn; tj++) {
          auto first = std::min_element(finish.begin(), finish.end());
          *first += tj == gn - 1 ? lastCost : rowCost;
        }
      }
      const double cost = *std::max_element(finish.begin(), finish.end());
      if (cost < bestCost * 0.999) {
        bestCost = cost;
        best = Grid{tm, tn, gm, gn};
      }
    }
  }
  return best;
}

void zeroRows(const GemmArgs& g) {
  for (int i = 0; i < g.m; i++) std::memset(g.c + (long)i * g.ldc, 0, sizeof(float) * g.n);
}

// Where the operands of a pack lie in memory, for the macro-kernel before it to
// prefetch: rows [i0, i0+rows) x depth [k0, k0+kc) of op(A), or depth
// [k0, k0+kc) x columns [j0, j0+cols) of op(B), as stored.
gemm::PrefetchRegion regionA(const GemmArgs& g, int i0, int rows, int k0, int kc) {
  if (g.transA) return {(const char*)(g.a + (long)k0 * g.lda + i0), 4L * g.lda, 4L * rows, kc};
  return {(const char*)(g.a + (long)i0 * g.lda + k0), 4L * g.lda, 4L * kc, rows};
}
gemm::PrefetchRegion regionB(const GemmArgs& g, int k0, int kc, int j0, int cols) {
  if (g.transB) return {(const char*)(g.b + (long)j0 * g.ldb + k0), 4L * g.ldb, 4L * kc, cols};
  return {(const char*)(g.b + (long)k0 * g.ldb + j0), 4L * g.ldb, 4L * cols, kc};
}

// The rows [r * part / parts, r * (part + 1) / parts) of a region of r rows.
gemm::PrefetchRegion regionPart(gemm::PrefetchRegion r, int part, int parts) {
  const int r0 = (int)((long)r.rows * part / parts), r1 = (int)((long)r.rows * (part + 1) / parts);
  r.base += (long)r0 * r.stride;
  r.rows = r1 - r0;
  return r;
}

// One thread: the Goto loop nest, arranged so that packs do not wait on memory.
// For each block of at most ncMax columns and each KC block of depth, the row
// tiles in turn: pack the tile's block of op(A) (it stays in L2), then multiply
// it by that block of op(B), packed into bbuf (KC x ncMax, in L2 for the usual
// shapes). The first row tile packs op(B) as it goes, `group` columns at a time
// just before it multiplies them. Each multiply (macro-kernel call) prefetches
// into L2 the operands of the packs that follow it: the next group of op(B),
// and a share of what follows the tile (the next block of op(A), and the first
// group of the next block of op(B)). So the packs read from L2 at the speed of
// L2, not from memory one latency at a time, while the arithmetic before them
// keeps the memory busy.
//
// Every element of C sees the same sequence of operations as in the parallel
// schedule (the same KC blocks in the same order, each summed from zero by the
// same micro-kernel), so results are identical.
void sgemmSerial(const GemmArgs& g, const Variant* v, int kc, int mcMax, int ncMax) {
  const int MR = v->mr, NR = v->nr;
  const int M = g.m, N = g.n, K = g.k;
  const int tm = (int)roundUp(ceilDiv(M, ceilDiv(M, mcMax)), MR);
  const int tn = (int)roundUp(ceilDiv(N, ceilDiv(N, ncMax)), NR);
  const int gm = (int)ceilDiv(M, tm), nKb = (int)ceilDiv(K, kc);
  // Micro-panels of op(B) the first row tile packs at a time: about 64 KiB of them.
  const int group = std::max(1, 16384 / (std::min(kc, K) * NR)) * NR;
  const long bStride = (long)kc * NR;
  Buffer bbuf = allocFloats((size_t)ceilDiv(tn, NR) * bStride + 16);
  Buffer abuf = allocFloats((size_t)mcMax * kc + v->padFloats + 16);
  float* bp = bbuf.get();
  float* ap = abuf.get();
  auto depth = [&](int kb) { return std::min(kc, K - kb * kc); };
  // The packs that follow row tile ti of (jc, kb), as regions to prefetch.
  auto packsAfter = [&](int jc, int kb, int ti, gemm::PrefetchRegion* out) -> int {
    if (ti + 1 < gm) {
      const int i0 = (ti + 1) * tm;
      out[0] = regionA(g, i0, std::min(tm, M - i0), kb * kc, depth(kb));
      return 1;
    }
    if (++kb == nKb) {
      kb = 0;
      jc += tn;
      if (jc >= N) return 0;
    }
    out[0] = regionA(g, 0, std::min(tm, M), kb * kc, depth(kb));
    out[1] = regionB(g, kb * kc, depth(kb), jc, std::min(group, std::min(tn, N - jc)));
    return 2;
  };
  for (int jc = 0; jc < N; jc += tn) {
    const int ncols = std::min(tn, N - jc);
    const int nGroups = (int)ceilDiv(ncols, group);
    for (int kb = 0; kb < nKb; kb++) {
      const int k0 = kb * kc, kcb = depth(kb);
      const int accumulate = (g.beta || kb > 0) ? 1 : 0;
      for (int ti = 0; ti < gm; ti++) {
        const int i0 = ti * tm, rows = std::min(tm, M - i0);
        float* c = g.c + (long)i0 * g.ldc + jc;
        // The first block of op(A) of the call has nothing before it to prefetch it: it is
        // packed a micro-panel at a time, each just before it is multiplied by the first
        // micro-panels of op(B), while that multiply prefetches the next one.
        const bool firstA = jc == 0 && kb == 0 && ti == 0;
        if (!firstA) v->packA(g.a, g.lda, g.transA, i0, rows, M - i0, k0, kcb, ap);
        gemm::PrefetchRegion after[2], pf[4];
        const int nAfter = packsAfter(jc, kb, ti, after);
        if (ti > 0) {
          v->macro(rows, ncols, kcb, ap, bp, bStride, c, g.ldc, accumulate, after, nAfter);
          continue;
        }
        for (int gi = 0; gi < nGroups; gi++) {
          const int j0 = gi * group, cols = std::min(group, ncols - j0);
          float* bg = bp + (long)(j0 / NR) * bStride;
          v->packB(g.b, g.ldb, g.transB, k0, kcb, jc + j0, cols, bg, bStride);
          int nPf = 0;
          if (gi + 1 < nGroups) pf[nPf++] = regionB(g, k0, kcb, jc + j0 + group, std::min(group, ncols - j0 - group));
          for (int r = 0; r < nAfter; r++) pf[nPf++] = regionPart(after[r], gi, nGroups);
          if (!(firstA && gi == 0)) {
            v->macro(rows, cols, kcb, ap, bg, bStride, c + j0, g.ldc, accumulate, pf, nPf);
            continue;
          }
          const int nP = (int)ceilDiv(rows, MR);
          for (int p = 0; p < nP; p++) {
            const int r0 = p * MR, mr = std::min(MR, rows - r0);
            float* a = ap + (long)p * MR * kcb;
            v->packA(g.a, g.lda, g.transA, i0 + r0, mr, M - i0 - r0, k0, kcb, a);
            gemm::PrefetchRegion pp[5];
            int nPp = 0;
            if (p + 1 < nP) pp[nPp++] = regionA(g, i0 + r0 + MR, std::min(MR, rows - r0 - MR), k0, kcb);
            for (int r = 0; r < nPf; r++) pp[nPp++] = regionPart(pf[r], p, nP);
            v->macro(mr, cols, kcb, a, bg, bStride, c + (long)r0 * g.ldc + j0, g.ldc, accumulate, pp, nPp);
          }
        }
      }
    }
  }
}

}  // namespace

namespace gemm {
int usableVariantCount() { return (int)variants().size(); }
const Variant* usableVariant(int i) { return variants()[i]; }
}  // namespace gemm

const char* gemmBestIsa() { return variants().front()->isa; }

void sgemm(const GemmArgs& g, int threads, const char* isa, GemmBlocking blocking) {
  const Variant* v = pickVariant(isa);
  if (g.m <= 0 || g.n <= 0) return;
  if (g.k <= 0) {
    if (!g.beta) zeroRows(g);
    return;
  }
  const int MR = v->mr, NR = v->nr;
  const int M = g.m, N = g.n, K = g.k;
  const int kc = blocking.kc > 0 ? blocking.kc : v->kc;
  const int mcMax = (int)roundUp(blocking.mc > 0 ? blocking.mc : v->mc, MR);
  const int ncMax = (int)roundUp(blocking.nc > 0 ? blocking.nc : v->nc, NR);
  if (threads < 1) threads = 1;
  if (2.0 * M * N * K < kMinParallelFlops) threads = 1;
  if (threads == 1) {
    sgemmSerial(g, v, kc, mcMax, ncMax);
    return;
  }

  // Chunks of op(B): columns first (all of N when it fits), then depth.
  const long nPanelsAll = ceilDiv(N, NR);
  long chunkPanels = std::max(1L, std::min(nPanelsAll, (long)(kMaxPackFloats / ((size_t)K * NR))));
  long chunkK = K;
  if ((size_t)chunkPanels * NR * K > kMaxPackFloats)
    chunkK = std::max((long)kc, (long)(kMaxPackFloats / ((size_t)chunkPanels * NR)) / kc * kc);
  const long chunkCols = chunkPanels * NR;

  Buffer bpack = allocFloats((size_t)chunkPanels * NR * chunkK + 16);
  // One packed A block per participant (allocated here: nothing may throw on a pool helper).
  const size_t aFloats = (size_t)mcMax * kc + v->padFloats + 16;
  std::vector<Buffer> abufs;
  Pool& pool = Pool::instance();

  for (long jc = 0; jc < N; jc += chunkCols) {
    const int ncols = (int)std::min(chunkCols, (long)N - jc);
    const int nPanels = (int)ceilDiv(ncols, NR);
    const Grid grid = chooseGrid(M, ncols, K, threads, MR, NR, mcMax, ncMax);
    const int nCompute = grid.gm * grid.gn;
    for (long pk = 0; pk < K; pk += chunkK) {
      const int depth = (int)std::min(chunkK, (long)K - pk);
      const long bStride = (long)depth * NR;  // floats between micro-panels: each holds the chunk's depth
      const int nKb = (int)ceilDiv(depth, kc);
      const int panelsPerPack = std::max(1, std::min(nPanels, 65536 / (kc * NR)));
      const int nGroups = (int)ceilDiv(nPanels, panelsPerPack);
      const int nPack = nKb * nGroups;
      std::unique_ptr<std::atomic<int>[]> kbDone(new std::atomic<int>[nKb]);
      for (int i = 0; i < nKb; i++) kbDone[i].store(0, std::memory_order_relaxed);
      float* bp = bpack.get();
      const int slots = std::min(threads, nPack + nCompute);
      while ((int)abufs.size() < slots) abufs.push_back(allocFloats(aFloats));

      auto body = [&](int t, int slot) {
        if (t < nPack) {
          const int kb = t / nGroups, grp = t % nGroups;
          const int k0 = kb * kc, kcb = std::min(kc, depth - k0);
          const int p0 = grp * panelsPerPack;
          const int cols = std::min(ncols - p0 * NR, panelsPerPack * NR);
          v->packB(g.b, g.ldb, g.transB, (int)pk + k0, kcb, (int)jc + p0 * NR, cols, bp + (long)p0 * bStride + (long)k0 * NR,
                   bStride);
          kbDone[kb].fetch_add(1, std::memory_order_release);
          return;
        }
        t -= nPack;
        const int ti = t / grid.gn, tj = t % grid.gn;
        const int i0 = ti * grid.tm, rows = std::min(grid.tm, M - i0);
        const int j0 = tj * grid.tn, cols = std::min(grid.tn, ncols - j0);
        float* abuf = abufs[slot].get();
        for (int kb = 0; kb < nKb; kb++) {
          const int k0 = kb * kc, kcb = std::min(kc, depth - k0);
          const int accumulate = (g.beta || pk + k0 > 0) ? 1 : 0;
          waitAtLeast(kbDone[kb], nGroups);
          for (int ic = 0; ic < rows; ic += mcMax) {
            const int mcb = std::min(mcMax, rows - ic);
            v->packA(g.a, g.lda, g.transA, i0 + ic, mcb, M - (i0 + ic), (int)pk + k0, kcb, abuf);
            // The task's next block of op(A), for the macro-kernel to prefetch.
            gemm::PrefetchRegion next{nullptr, 0, 0, 0};
            int nNext = 1;
            if (ic + mcMax < rows)
              next = regionA(g, i0 + ic + mcMax, std::min(mcMax, rows - ic - mcMax), (int)pk + k0, kcb);
            else if (kb + 1 < nKb)
              next = regionA(g, i0, std::min(mcMax, rows), (int)pk + k0 + kc, std::min(kc, depth - k0 - kc));
            else
              nNext = 0;
            v->macro(mcb, cols, kcb, abuf, bp + (long)(j0 / NR) * bStride + (long)k0 * NR, bStride,
                     g.c + (long)(i0 + ic) * g.ldc + jc + j0, g.ldc, accumulate, &next, nNext);
          }
        }
      };
      pool.parallelFor(nPack + nCompute, threads, body);
    }
  }
}

}  // namespace ringattn
