// AVX2 + FMA copy of the SGEMM kernel; built with -mavx2 -mfma (see binding.gyp)
// and only called when the CPU reports avx2 and fma. Register tile 6 x 16: 12
// ymm accumulators, two B vectors per k and a broadcast of A.
#define GM_NS avx2
#define GM_W 8
#define GM_MR 6
#define GM_NV 2
#define GM_KC 512
#define GM_MC 144
#define GM_NC 4096
#define GM_ISA "avx2"
#define GM_ENTRY variantAvx2
#include "gemm_impl.h"
