// The interface between the N-API layer (addon.cc, compiled for the baseline
// CPU) and the compute variants (attn_<isa>.cc, each compiled with its own
// target flags). Only plain structs and function pointers cross it: a variant
// translation unit must not instantiate std:: templates that the baseline code
// also uses, or the linker could keep the AVX copy of a shared inline function.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace ringattn {

// Summary of one query tile or KV tile, for skipping whole tiles.
struct TileInfo {
  int32_t posMin, posMax;
  int32_t segMin, segMax;
};

enum TileRelation { kSkip = 0, kFull = 1, kPartial = 2 };

struct Problem {
  // Dimensions (validated by addon.cc).
  int qLen, kvLen, heads, kvHeads, headDim;
  int tileQ, tileKV;
  int causal;
  // Sliding window W (src/kernels/types.ts): q - k < W, and |q - k| < W without causal; 0 = none.
  int window;
  float scale;

  // Inputs, token-major: q [qLen, heads, D], k and v [kvLen, kvHeads, D].
  const float* q;
  const float* k;
  const float* v;
  const int32_t* qPos;
  const int32_t* kvPos;
  const int32_t* qSeg;   // null when documents are not packed
  const int32_t* kvSeg;

  // Forward outputs: o [qLen, heads, D], lse [heads, qLen].
  float* o;
  float* lse;

  // Backward inputs and accumulators.
  const float* dO;        // [qLen, heads, D]
  const float* lseFinal;  // [heads, qLen]
  const float* delta;     // [heads, qLen]
  float* dq;              // [qLen, heads, D]
  float* dk;              // [kvLen, kvHeads, D]
  float* dv;

  // Filled by the dispatcher before any task runs.
  int nQt, nKt;          // number of query / KV tiles
  int dp;                // headDim padded to the variant's panel width
  int tkp;               // tileKV padded to the variant's panel width
  const TileInfo* qTiles;
  const TileInfo* kvTiles;

  // Shared packed copies, written in the pack phase, read-only afterwards
  // (layouts in attn_impl.h). Per (kv head, KV tile): K^T pre-scaled by
  // scale * log2(e), K, V, V^T. Per (head, query tile): Q and dO as rows and
  // as panels, the final lse in base 2, delta.
  float* packKt;
  float* packK;
  float* packV;
  float* packVt;
  float* packQ;
  float* packDO;
  float* packQB;
  float* packDOB;
  float* packLse2;
  float* packDelta;
};

// Work split used by the dispatcher. All functions are safe to call
// concurrently for different task indices; each writes disjoint memory.
struct Variant {
  const char* isa;
  int panel;  // columns of a packed panel; head dims and KV tiles are padded to a multiple of it
  // Scratch floats one thread needs for any task (64-byte aligned by caller).
  size_t (*scratchFloats)(const Problem* p);
  // Forward: pack (kv head g, KV tile jt) -> kt, vp.
  void (*packKvForward)(const Problem* p, int g, int jt);
  // Forward for (head h, query tile it): writes o and lse rows of that tile.
  void (*forwardTile)(const Problem* p, int h, int it, float* scratch);
  // Backward packs: (g, jt) -> kt, kp, vp, vt; (h, it) -> qp, dOp, lse2, delta.
  void (*packKvBackward)(const Problem* p, int g, int jt);
  void (*packQBackward)(const Problem* p, int h, int it);
  // Backward for a whole kv head g in one pass; dqAcc holds
  // (heads/kvHeads) * nQt * tileQ * dp floats of scratch.
  void (*backwardKvHead)(const Problem* p, int g, float* scratch, float* dqAcc);
  // Two-pass backward pieces for when kv heads are fewer than threads.
  void (*backwardDkDv)(const Problem* p, int g, int jt, float* scratch);
  void (*backwardDq)(const Problem* p, int h, int it, float* scratch);
};

// static: every translation unit gets its own copy (see the note at the top).
static inline TileRelation relate(const Problem* p, const TileInfo& q, const TileInfo& kv) {
  if (p->causal && kv.posMin > q.posMax) return kSkip;
  if (p->qSeg && (q.segMax < kv.segMin || kv.segMax < q.segMin)) return kSkip;
  // 64-bit differences: positions are int32, and so may be their distance's negation.
  const int64_t w = p->window;
  if (w && ((int64_t)q.posMin - kv.posMax >= w || (!p->causal && (int64_t)kv.posMin - q.posMax >= w))) return kSkip;
  bool full = (!p->causal || kv.posMax <= q.posMin) &&
              (!w || ((int64_t)q.posMax - kv.posMin < w && (p->causal || (int64_t)kv.posMax - q.posMin < w))) &&
              (!p->qSeg || (q.segMin == q.segMax && kv.segMin == kv.segMax && q.segMin == kv.segMin));
  return full ? kFull : kPartial;
}

const Variant* variantPortable();
#if defined(RINGATTN_X86)
const Variant* variantAvx2();
const Variant* variantAvx512();
#endif

}  // namespace ringattn
