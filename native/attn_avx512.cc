// AVX-512 copy of the kernel; built with -mavx512f -mfma (see binding.gyp) and
// only called when the CPU reports avx512f.
#define RA_NS avx512
#define RA_W 16
#define RA_MR 8
#define RA_ISA "avx512"
#define RA_ENTRY variantAvx512
#include "attn_impl.h"
