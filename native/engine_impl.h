// The engine's elementwise ops, written once as plain loops that the compiler
// vectorises for each instruction set. A variant file defines EO_NS, EO_ISA and
// EO_ENTRY, then includes this. Internal linkage, no std:: templates (see
// engine_kernel.h).
#include "engine_kernel.h"

namespace ringattn {
namespace EO_NS {
namespace {

// e^x to about 2 ulp, branch-free so that loops over it vectorise; x below
// about -88 gives exactly 0.
inline float expApprox(float x) {
  float t = x * 1.4426950408889634f;
  t = t < -127.0f ? -127.0f : t;
  t = t > 127.0f ? 127.0f : t;
  const float magic = 12582912.0f;  // 1.5 * 2^23: the addition rounds to an integer
  const float n = (t + magic) - magic;
  const float f = t - n;
  float p = 1.525273380405984e-05f;
  p = p * f + 1.5403530393381606e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.618129107628477e-03f;
  p = p * f + 5.550410866482158e-02f;
  p = p * f + 2.402265069591007e-01f;
  p = p * f + 6.931471805599453e-01f;
  p = p * f + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;  // n = -127 gives +0
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// A row's mean (0 for RMSNorm) and 1 / sqrt(mean((x - mean)^2) + eps).
inline void rowStats(int layer, int dim, float eps, const float* xr, float* mean, float* rstd) {
  float m = 0.0f;
  if (layer) {
    float s = 0.0f;
    for (int j = 0; j < dim; j++) s += xr[j];
    m = s / dim;
  }
  float ss = 0.0f;
  for (int j = 0; j < dim; j++) {
    const float c = xr[j] - m;
    ss += c * c;
  }
  *mean = m;
  *rstd = 1.0f / __builtin_sqrtf(ss / dim + eps);
}

void norm(int layer, int dim, float eps, float* out, const float* x, const float* w, const float* b, int r0, int r1) {
  for (int r = r0; r < r1; r++) {
    const float* xr = x + (size_t)r * dim;
    float* yr = out + (size_t)r * dim;
    float mean, rstd;
    rowStats(layer, dim, eps, xr, &mean, &rstd);
    if (layer) {
      for (int j = 0; j < dim; j++) yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
    } else {
      for (int j = 0; j < dim; j++) yr[j] = xr[j] * rstd * w[j];
    }
  }
}

// xh = (x - mean) * rstd, g = dOut * w:
//   RMSNorm:   dx = rstd * (g - xh * mean(g * xh))
//   LayerNorm: dx = rstd * (g - mean(g) - xh * mean(g * xh))
//   dw = sum_rows dOut * xh,  db = sum_rows dOut
void normBackward(int layer, int dim, float eps, float* dx, float* pdw, float* pdb, const float* dOut, const float* x,
                  const float* w, int r0, int r1) {
  for (int j = 0; j < dim; j++) pdw[j] = 0.0f;
  if (layer)
    for (int j = 0; j < dim; j++) pdb[j] = 0.0f;
  for (int r = r0; r < r1; r++) {
    const float* xr = x + (size_t)r * dim;
    const float* dy = dOut + (size_t)r * dim;
    float* dxr = dx + (size_t)r * dim;
    float mean, rstd;
    rowStats(layer, dim, eps, xr, &mean, &rstd);
    float sg = 0.0f, sgx = 0.0f;
    for (int j = 0; j < dim; j++) {
      const float xh = (xr[j] - mean) * rstd;
      const float g = dy[j] * w[j];
      sg += g;
      sgx += g * xh;
      pdw[j] += dy[j] * xh;
    }
    const float mg = layer ? sg / dim : 0.0f, mgx = sgx / dim;
    for (int j = 0; j < dim; j++) {
      const float xh = (xr[j] - mean) * rstd;
      dxr[j] += rstd * (dy[j] * w[j] - mg - xh * mgx);
    }
    if (layer)
      for (int j = 0; j < dim; j++) pdb[j] += dy[j];
  }
}

// Half-split pairs (j, j + hd/2) rotated by the row's angles.
void rope(int heads, int hd, int inverse, float* x, const float* cos, const float* sin, int r0, int r1) {
  const int half = hd / 2;
  const float sign = inverse ? -1.0f : 1.0f;
  for (int r = r0; r < r1; r++) {
    const float* c = cos + (size_t)r * half;
    const float* s = sin + (size_t)r * half;
    for (int h = 0; h < heads; h++) {
      float* a = x + ((size_t)r * heads + h) * hd;
      float* b = a + half;
      for (int j = 0; j < half; j++) {
        const float aj = a[j], bj = b[j], sj = sign * s[j];
        a[j] = aj * c[j] - bj * sj;
        b[j] = bj * c[j] + aj * sj;
      }
    }
  }
}

void silu(float* out, const float* u, size_t i0, size_t i1) {
  for (size_t i = i0; i < i1; i++) out[i] = u[i] / (1.0f + expApprox(-u[i]));
}

// d/du [u * s(u)] = s(u) * (1 + u * (1 - s(u)))
void siluBackward(float* du, const float* dOut, const float* u, size_t i0, size_t i1) {
  for (size_t i = i0; i < i1; i++) {
    const float s = 1.0f / (1.0f + expApprox(-u[i]));
    du[i] = dOut[i] * s * (1.0f + u[i] * (1.0f - s));
  }
}

void add(float* out, const float* a, const float* b, size_t i0, size_t i1) {
  for (size_t i = i0; i < i1; i++) out[i] = a[i] + b[i];
}

void crossEntropy(int vocab, float* logits, const int32_t* targets, double* rowLoss, int grad, float gradScale, int r0,
                  int r1) {
  for (int r = r0; r < r1; r++) {
    float* l = logits + (size_t)r * vocab;
    const int32_t t = targets[r];
    if (t < 0) {
      rowLoss[r] = 0.0;
      if (grad)
        for (int j = 0; j < vocab; j++) l[j] = 0.0f;
      continue;
    }
    float m = l[0];
    for (int j = 1; j < vocab; j++) m = l[j] > m ? l[j] : m;
    float s = 0.0f;
    for (int j = 0; j < vocab; j++) s += expApprox(l[j] - m);
    const double lse = (double)m + __builtin_log((double)s);
    rowLoss[r] = lse - (double)l[t];
    if (grad) {
      const float inv = gradScale / s;
      for (int j = 0; j < vocab; j++) l[j] = expApprox(l[j] - m) * inv;
      l[t] -= gradScale;
    }
  }
}

double sumSquares(const float* x, size_t i0, size_t i1) {
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = i0;
  for (; i + 8 <= i1; i += 8)
    for (int j = 0; j < 8; j++) s[j] += (double)x[i + j] * x[i + j];
  for (int j = 0; i < i1; i++, j++) s[j] += (double)x[i] * x[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// hp: lr, beta1, beta2, eps, decay, bc1, bc2, gradScale. The same expression,
// in the same order, as the tfjs engine; contraction into FMA is off so that
// each operation rounds as written (IEEE division and square root are exact
// to the last bit on every ISA), which keeps replicated parameters identical.
__attribute__((optimize("fp-contract=off"))) void adamw(const double* hp, float* p, const float* g, float* m, float* v,
                                                       size_t i0, size_t i1) {
  const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], decay = hp[4], bc1 = hp[5], bc2 = hp[6], gs = hp[7];
  const double c1 = 1 - b1, c2 = 1 - b2;
  for (size_t i = i0; i < i1; i++) {
    const double gi = gs == 1.0 ? (double)g[i] : (double)(float)((double)g[i] * gs);
    const double mi = b1 * m[i] + c1 * gi;
    const double vi = b2 * v[i] + c2 * gi * gi;
    m[i] = (float)mi;
    v[i] = (float)vi;
    double pi = p[i];
    pi -= decay * pi;
    pi -= (lr * (mi / bc1)) / (__builtin_sqrt(vi / bc2) + eps);
    p[i] = (float)pi;
  }
}

const EngineOps kOps = {EO_ISA, norm, normBackward, rope, silu, siluBackward, add, crossEntropy, sumSquares, adamw};

}  // namespace
}  // namespace EO_NS

const EngineOps* EO_ENTRY() { return &EO_NS::kOps; }

}  // namespace ringattn
