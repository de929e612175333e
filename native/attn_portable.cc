// Baseline copy of the kernel: 128-bit vectors, which the compiler maps to
// SSE2 on x86-64 and NEON on ARM64. Runs everywhere.
#define RA_NS portable
#define RA_W 4
#define RA_MR 6
#define RA_ISA "portable"
#define RA_ENTRY variantPortable
#include "attn_impl.h"
