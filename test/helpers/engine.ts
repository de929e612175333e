import { createNativeEngine, nativeEngineUnavailable } from '../../src/engine/native.js';
import { createTfjsEngine } from '../../src/engine/tfjs.js';
import type { Engine } from '../../src/engine/types.js';

/** The engine production would pick with `engine: auto` (native if it loads, else tfjs), on one thread. */
export function testEngine(threads = 1): Engine {
  return nativeEngineUnavailable() ? createTfjsEngine() : createNativeEngine({ threads });
}
