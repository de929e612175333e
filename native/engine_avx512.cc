// avx512 copy of the engine's elementwise ops; built with -mavx512f -mfma; only called when the CPU reports avx512f.
#define EO_NS eng_avx512
#define EO_ISA "avx512"
#define EO_ENTRY engineOpsAvx512
#include "engine_impl.h"
