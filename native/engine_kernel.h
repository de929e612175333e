// The interface between the engine's driver (engine.cc, compiled for the
// baseline CPU) and its elementwise ops (engine_impl.h, compiled once per
// instruction set). Each function works on a range of rows, so the driver can
// split any op across the pool; only plain types cross this boundary (see the
// note at the top of attn_kernel.h).
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace ringattn {

struct EngineOps {
  const char* isa;
  // out = norm(x) * w (+ b), rows [r0, r1) of dim columns; layer = 0 for RMSNorm.
  void (*norm)(int layer, int dim, float eps, float* out, const float* x, const float* w, const float* b, int r0, int r1);
  // dx += ..., and this range's partial sums of dw (and db) written to pdw, pdb.
  void (*normBackward)(int layer, int dim, float eps, float* dx, float* pdw, float* pdb, const float* dOut, const float* x,
                       const float* w, int r0, int r1);
  void (*rope)(int heads, int headDim, int inverse, float* x, const float* cos, const float* sin, int r0, int r1);
  // Elementwise over [i0, i1).
  void (*silu)(float* out, const float* u, size_t i0, size_t i1);
  void (*siluBackward)(float* du, const float* dOut, const float* u, size_t i0, size_t i1);
  void (*add)(float* out, const float* a, const float* b, size_t i0, size_t i1);
  // Rows [r0, r1) of logits [rows, vocab]; rowLoss[r] gets row r's loss (0 without a target).
  // With grad, logits become gradScale * dloss/dlogits.
  void (*crossEntropy)(int vocab, float* logits, const int32_t* targets, double* rowLoss, int grad, float gradScale, int r0,
                       int r1);
  // Sum of x[i]^2 over [i0, i1) in float64, in eight interleaved partial sums added in a fixed order.
  double (*sumSquares)(const float* x, size_t i0, size_t i1);
  // AdamW over [i0, i1), in float64 without contracted multiply-adds, so every variant gives the same bits.
  void (*adamw)(const double* hp, float* p, const float* g, float* m, float* v, size_t i0, size_t i1);
};

const EngineOps* engineOpsPortable();
#if defined(RINGATTN_X86)
const EngineOps* engineOpsAvx2();
const EngineOps* engineOpsAvx512();
#endif

}  // namespace ringattn
