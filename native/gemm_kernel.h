// The interface between the SGEMM driver (gemm.cc, compiled for the baseline
// CPU) and its compute variants (gemm_<isa>.cc, each compiled with its own
// target flags, all from gemm_impl.h). As for the attention kernel
// (attn_kernel.h), only plain structs and function pointers cross it: a variant
// translation unit must not instantiate std:: templates that the baseline code
// also uses, or the linker could keep the AVX copy of a shared inline function.
//
// Packed layouts (MR, NR: the variant's register tile):
//   A block: rows of op(A) in micro-panels of MR rows, each MR x kc, k-major
//            (for each k the MR values of that column, rows past the end zero).
//            Micro-panel p starts at p * MR * kc.
//   B:       micro-panels of NR columns of op(B), each holding kc rows, k-major
//            (for each k the NR values of that row, columns past the end zero).
//            Consecutive micro-panels are panelStride floats apart.
#pragma once

#include <stddef.h>

namespace ringattn {
namespace gemm {

// Memory the macro-kernel should bring into L2 while it computes (the operands
// of the packs that follow it): `rows` rows of rowBytes bytes, `stride` bytes
// apart, from base. Prefetching has no effect on results.
struct PrefetchRegion {
  const char* base;
  long stride, rowBytes;
  int rows;
};

struct Variant {
  const char* isa;
  int mr, nr;      // register tile
  int kc, mc, nc;  // default blocking: k depth, rows of a task, columns of a task
  int padFloats;   // extra floats a packed A buffer needs past its end (overlapping stores)

  // Packs op(A)[i0 .. i0+rows, k0 .. k0+kc) into dst. op(A)(i, k) is a[i*lda + k], or
  // a[k*lda + i] when trans. avail >= rows is how many rows of op(A) exist from i0 on
  // (the packer may read, never use, values of rows up to i0+avail).
  void (*packA)(const float* a, long lda, int trans, int i0, int rows, int avail, int k0, int kc, float* dst);

  // Packs op(B)[k0 .. k0+kc, j0 .. j0+cols) into micro-panels at dst, dst + panelStride, ...
  // (each kc x NR). op(B)(k, j) is b[k*ldb + j], or b[j*ldb + k] when trans.
  void (*packB)(const float* b, long ldb, int trans, int k0, int kc, int j0, int cols, float* dst, long panelStride);

  // C[0 .. rows, 0 .. cols) = (accumulate ? C : 0) + Ap Bp, where Ap is a packed A block
  // of `rows` rows and Bp the first of ceil(cols / NR) packed B micro-panels, bStride apart,
  // both of depth kc. Each element gets its kc products summed in k order starting from
  // zero, then added to C once: the result does not depend on where the tile lies.
  // Meanwhile the lines of pf[0 .. nPf) are prefetched into L2, spread over the whole call.
  void (*macro)(int rows, int cols, int kc, const float* ap, const float* bp, long bStride, float* c, long ldc,
                int accumulate, const PrefetchRegion* pf, int nPf);
};

const Variant* variantPortable();
#if defined(RINGATTN_X86)
const Variant* variantAvx2();
const Variant* variantAvx512();
#endif

// Variants this CPU can run, best first (defined in gemm.cc, baseline code).
int usableVariantCount();
const Variant* usableVariant(int i);

}  // namespace gemm
}  // namespace ringattn
