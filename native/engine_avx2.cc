// avx2 copy of the engine's elementwise ops; built with -mavx2 -mfma; only called when the CPU reports avx2 and fma.
#define EO_NS eng_avx2
#define EO_ISA "avx2"
#define EO_ENTRY engineOpsAvx2
#include "engine_impl.h"
