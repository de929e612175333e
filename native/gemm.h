// Single-precision GEMM of the native engine: C (+)= op(A) op(B), row-major,
// packed and blocked (Goto/BLIS style) with a register-tile micro-kernel per
// instruction set (gemm_impl.h), chosen at run time. Compiled for the baseline
// CPU; the arithmetic lives in the per-ISA variants behind gemm_kernel.h.
#pragma once

#include <napi.h>

namespace ringattn {

struct GemmArgs {
  int m, n, k;            // C is m x n; op(A) m x k; op(B) k x n; row-major
  bool transA, transB;    // op(A) = transA ? A^T : A (A stored k x m with lda when transposed)
  const float* a; int lda;
  const float* b; int ldb;
  float* c; int ldc;
  int beta;               // 0: C = op(A) op(B); 1: C += op(A) op(B)
};

struct GemmBlocking { int mc, kc, nc; };   // 0 = the variant's default

// Runs on the calling thread plus up to threads-1 pool helpers. isa: nullptr = best.
// Throws std::invalid_argument for an isa that is unknown or not usable on this CPU.
// Each element of C gets its K products summed in the same order whatever
// `threads` is (K is never split across threads), so results are bitwise
// independent of the thread count. Safe to call concurrently.
void sgemm(const GemmArgs& args, int threads, const char* isa = nullptr, GemmBlocking blocking = {0, 0, 0});

const char* gemmBestIsa();

// Adds sgemm, sgemmSync and gemmIsas to the addon's exports (gemm_napi.cc).
void addGemmExports(Napi::Env env, Napi::Object exports);

}  // namespace ringattn
