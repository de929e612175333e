// Baseline copy of the SGEMM kernel: 128-bit vectors, which the compiler maps to
// SSE2 on x86-64 and NEON on ARM64. Runs everywhere. Register tile 6 x 8: 12
// accumulators, which fit the 16 registers of SSE2.
#define GM_NS portable
#define GM_W 4
#define GM_MR 6
#define GM_NV 2
#define GM_KC 256
#define GM_MC 96
#define GM_NC 4096
#define GM_ISA "portable"
#define GM_ENTRY variantPortable
#include "gemm_impl.h"
