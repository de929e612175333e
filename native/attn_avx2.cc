// AVX2 + FMA copy of the kernel; built with -mavx2 -mfma (see binding.gyp) and
// only called when the CPU reports avx2 and fma.
#define RA_NS avx2
#define RA_W 8
#define RA_MR 6
#define RA_ISA "avx2"
#define RA_ENTRY variantAvx2
#include "attn_impl.h"
