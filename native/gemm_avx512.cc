// AVX-512 copy of the SGEMM kernel; built with -mavx512f -mfma (see binding.gyp)
// and only called when the CPU reports avx512f. Register tile 14 x 32: 28 zmm
// accumulators, two B vectors per k and a broadcast of A.
#define GM_NS avx512
#define GM_W 16
#define GM_MR 14
#define GM_NV 2
#define GM_KC 512
#define GM_MC 168
#define GM_NC 4096
#define GM_ISA "avx512"
#define GM_ENTRY variantAvx512
#include "gemm_impl.h"
