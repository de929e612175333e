// portable copy of the engine's elementwise ops; baseline flags: the fallback on any CPU.
#define EO_NS eng_portable
#define EO_ISA "portable"
#define EO_ENTRY engineOpsPortable
#include "engine_impl.h"
