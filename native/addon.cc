// N-API layer of the native attention kernel: argument checks, choice of the
// instruction-set variant, and the AsyncWorker that keeps the computation off
// the JavaScript thread (the pool and buffers are in runtime.h). Compiled for
// the baseline CPU; the arithmetic lives in attn_impl.h, compiled once per variant.
#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "attn_kernel.h"
#include "gemm.h"
#include "runtime.h"

namespace ringattn {

// native/engine.cc
void addEngineExports(Napi::Env env, Napi::Object exports);
// native/shm.cc
void addShmExports(Napi::Env env, Napi::Object exports);

namespace {

// ---------------------------------------------------------------------------
// Variants the running CPU can execute, best first.

std::vector<const Variant*> usableVariants() {
  std::vector<const Variant*> out;
#if defined(RINGATTN_X86)
  __builtin_cpu_init();
  // libgcc's checks include the OS enabling the wider registers (xgetbv).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) out.push_back(variantAvx512());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back(variantAvx2());
#endif
  out.push_back(variantPortable());
  return out;
}

const std::vector<const Variant*>& variants() {
  static const std::vector<const Variant*> v = usableVariants();
  return v;
}


int roundUp(int x, int m) { return (x + m - 1) / m * m; }

std::vector<TileInfo> tileInfo(const int32_t* pos, const int32_t* seg, int len, int tile) {
  std::vector<TileInfo> out;
  for (int t0 = 0; t0 < len; t0 += tile) {
    TileInfo ti{pos[t0], pos[t0], seg ? seg[t0] : 0, seg ? seg[t0] : 0};
    for (int i = t0; i < len && i < t0 + tile; i++) {
      if (pos[i] < ti.posMin) ti.posMin = pos[i];
      if (pos[i] > ti.posMax) ti.posMax = pos[i];
      if (seg && seg[i] < ti.segMin) ti.segMin = seg[i];
      if (seg && seg[i] > ti.segMax) ti.segMax = seg[i];
    }
    out.push_back(ti);
  }
  return out;
}

struct Prepared {
  std::vector<TileInfo> qTiles, kvTiles;
  Buffer kt, k, v, vt, q, dO, qb, dOb, lse2, delta;
};

void prepare(const Variant* var, Problem& p, Prepared& prep, bool backward) {
  // A tile longer than the block only costs memory.
  if (p.tileQ > p.qLen) p.tileQ = p.qLen;
  if (p.tileKV > p.kvLen) p.tileKV = p.kvLen;
  p.nQt = (p.qLen + p.tileQ - 1) / p.tileQ;
  p.nKt = (p.kvLen + p.tileKV - 1) / p.tileKV;
  p.dp = roundUp(p.headDim, var->panel);
  p.tkp = roundUp(p.tileKV, var->panel);
  prep.qTiles = tileInfo(p.qPos, p.qSeg, p.qLen, p.tileQ);
  prep.kvTiles = tileInfo(p.kvPos, p.kvSeg, p.kvLen, p.tileKV);
  p.qTiles = prep.qTiles.data();
  p.kvTiles = prep.kvTiles.data();
  const size_t kvT = (size_t)p.kvHeads * p.nKt * p.headDim * p.tkp;
  const size_t kvR = (size_t)p.kvHeads * p.nKt * p.tileKV * p.dp;
  prep.kt = allocFloats(kvT);
  prep.v = allocFloats(kvR);
  p.packKt = prep.kt.get();
  p.packV = prep.v.get();
  p.packK = p.packVt = p.packQ = p.packDO = p.packQB = p.packDOB = p.packLse2 = p.packDelta = nullptr;
  if (backward) {
    const size_t qR = (size_t)p.heads * p.nQt * p.tileQ * p.dp, q1 = (size_t)p.heads * p.nQt * p.tileQ;
    prep.k = allocFloats(kvR);
    prep.vt = allocFloats(kvT);
    prep.q = allocFloats(qR);
    prep.dO = allocFloats(qR);
    prep.qb = allocFloats(qR);
    prep.dOb = allocFloats(qR);
    prep.lse2 = allocFloats(q1);
    prep.delta = allocFloats(q1);
    p.packK = prep.k.get();
    p.packVt = prep.vt.get();
    p.packQ = prep.q.get();
    p.packDO = prep.dO.get();
    p.packQB = prep.qb.get();
    p.packDOB = prep.dOb.get();
    p.packLse2 = prep.lse2.get();
    p.packDelta = prep.delta.get();
  }
}

void runForward(const Variant* var, Problem& p, int threads) {
  Prepared prep;
  prepare(var, p, prep, false);
  Pool& pool = Pool::instance();
  pool.parallelFor(p.kvHeads * p.nKt, threads, [&](int t, int) { var->packKvForward(&p, t / p.nKt, t % p.nKt); });
  const size_t scratchN = var->scratchFloats(&p);
  std::vector<Buffer> scratch;
  for (int s = 0; s < threads; s++) scratch.push_back(allocFloats(scratchN));
  // Late query tiles first: under a causal mask with contiguous positions they
  // see the most keys, and starting them first evens out the threads' loads.
  pool.parallelFor(p.heads * p.nQt, threads, [&](int t, int slot) {
    const int it = p.nQt - 1 - t / p.heads, h = t % p.heads;
    var->forwardTile(&p, h, it, scratch[slot].get());
  });
}

// Backward split. A kv head done in one pass (backwardKvHead) owns its dk, dv
// rows and the dq rows of its query heads, so whole kv heads run in parallel
// without races. When kv heads do not divide evenly among the threads, the
// remaining heads are split finer in two passes: dk, dv by KV tile and dq by
// query tile (each pass recomputes the scores). Both paths accumulate every
// element in the same order, so the result does not depend on `threads`.
void runBackward(const Variant* var, Problem& p, int threads) {
  Prepared prep;
  prepare(var, p, prep, true);
  Pool& pool = Pool::instance();
  const int nKvPacks = p.kvHeads * p.nKt;
  pool.parallelFor(nKvPacks + p.heads * p.nQt, threads, [&](int t, int) {
    if (t < nKvPacks)
      var->packKvBackward(&p, t / p.nKt, t % p.nKt);
    else
      var->packQBackward(&p, (t - nKvPacks) / p.nQt, (t - nKvPacks) % p.nQt);
  });

  const int group = p.heads / p.kvHeads;
  const int fused = threads <= 1 ? p.kvHeads : p.kvHeads / threads * threads;
  const int rest = p.kvHeads - fused;
  const int nDkDv = rest * p.nKt, nDq = rest * group * p.nQt;
  const size_t scratchN = var->scratchFloats(&p);
  const size_t dqAccN = (size_t)group * p.nQt * p.tileQ * p.dp;
  std::vector<Buffer> scratch, dqAcc(threads);
  for (int s = 0; s < threads; s++) scratch.push_back(allocFloats(scratchN));
  std::mutex allocMu;
  pool.parallelFor(fused + nDkDv + nDq, threads, [&](int t, int slot) {
    float* ws = scratch[slot].get();
    if (t < fused) {
      if (!dqAcc[slot]) {
        std::lock_guard<std::mutex> lock(allocMu);
        dqAcc[slot] = allocFloats(dqAccN);
      }
      var->backwardKvHead(&p, t, ws, dqAcc[slot].get());
    } else if ((t -= fused) < nDkDv) {
      var->backwardDkDv(&p, fused + t / p.nKt, t % p.nKt, ws);
    } else {
      t -= nDkDv;
      var->backwardDq(&p, fused * group + t / p.nQt, t % p.nQt, ws);
    }
  });
}

// ---------------------------------------------------------------------------
// Arguments from JavaScript.

class Args {
 public:
  Args(const Napi::Object& obj) : obj_(obj), env_(obj.Env()) {}

  int intField(const char* name, int lo, int hi) {
    Napi::Value v = obj_.Get(name);
    if (!v.IsNumber()) throw Napi::TypeError::New(env_, std::string("ringattn native: ") + name + " must be a number");
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= lo && d <= hi) || d != (double)(int)d)
      throw Napi::RangeError::New(env_, std::string("ringattn native: ") + name + " must be an integer in [" +
                                            std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return (int)d;
  }

  double numberField(const char* name) {
    Napi::Value v = obj_.Get(name);
    if (!v.IsNumber()) throw Napi::TypeError::New(env_, std::string("ringattn native: ") + name + " must be a number");
    return v.As<Napi::Number>().DoubleValue();
  }

  bool boolField(const char* name) { return obj_.Get(name).ToBoolean().Value(); }

  bool has(const char* name) {
    Napi::Value v = obj_.Get(name);
    return !v.IsUndefined() && !v.IsNull();
  }

  std::string stringField(const char* name) {
    Napi::Value v = obj_.Get(name);
    return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
  }

  template <typename T>
  T* array(const char* name, napi_typedarray_type type, size_t minLength, bool optional = false) {
    Napi::Value v = obj_.Get(name);
    if (optional && (v.IsUndefined() || v.IsNull())) return nullptr;
    const char* typeName = type == napi_float32_array ? "Float32Array" : "Int32Array";
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
      throw Napi::TypeError::New(env_, std::string("ringattn native: ") + name + " must be a " + typeName);
    Napi::TypedArrayOf<T> a = v.As<Napi::TypedArrayOf<T>>();
    if (a.ElementLength() < minLength)
      throw Napi::RangeError::New(env_, std::string("ringattn native: ") + name + " has " +
                                            std::to_string(a.ElementLength()) + " elements, needs " +
                                            std::to_string(minLength));
    // Keep the array (and so its buffer) alive until the worker is destroyed.
    refs.push_back(Napi::Persistent(v.As<Napi::Object>()));
    return a.Data();
  }

  std::vector<Napi::ObjectReference> refs;

 private:
  Napi::Object obj_;
  Napi::Env env_;
};

struct Call {
  Problem p;
  const Variant* var;
  int threads;
};

Call parseCommon(Args& a, Napi::Env env) {
  Call c;
  std::memset(&c.p, 0, sizeof c.p);
  Problem& p = c.p;
  const int big = 1 << 30;
  p.qLen = a.intField("qLen", 0, big);
  p.kvLen = a.intField("kvLen", 0, big);
  p.heads = a.intField("heads", 1, 1 << 16);
  p.kvHeads = a.intField("kvHeads", 1, 1 << 16);
  p.headDim = a.intField("headDim", 1, 1 << 16);
  p.tileQ = a.intField("tileQ", 1, 1 << 16);
  p.tileKV = a.intField("tileKV", 1, 1 << 16);
  c.threads = a.intField("threads", 1, 1024);
  p.causal = a.boolField("causal") ? 1 : 0;
  // Optional: callers without a window leave it out.
  p.window = a.has("window") ? a.intField("window", 0, 0x7fffffff) : 0;
  p.scale = (float)a.numberField("scale");
  if (p.heads % p.kvHeads != 0)
    throw Napi::RangeError::New(env, "ringattn native: heads must be a multiple of kvHeads");
  const size_t qn = (size_t)p.qLen * p.heads * p.headDim, kvn = (size_t)p.kvLen * p.kvHeads * p.headDim;
  p.q = a.array<float>("q", napi_float32_array, qn);
  p.k = a.array<float>("k", napi_float32_array, kvn);
  p.v = a.array<float>("v", napi_float32_array, kvn);
  p.qPos = a.array<int32_t>("qPos", napi_int32_array, p.qLen);
  p.kvPos = a.array<int32_t>("kvPos", napi_int32_array, p.kvLen);
  p.qSeg = a.array<int32_t>("qSeg", napi_int32_array, p.qLen, true);
  p.kvSeg = a.array<int32_t>("kvSeg", napi_int32_array, p.kvLen, true);
  if (!p.qSeg != !p.kvSeg) throw Napi::TypeError::New(env, "ringattn native: qSeg and kvSeg must be given together");

  const std::string isa = a.stringField("isa");
  c.var = variants().front();
  if (!isa.empty()) {
    c.var = nullptr;
    for (const Variant* v : variants())
      if (isa == v->isa) c.var = v;
    if (!c.var) throw Napi::Error::New(env, "ringattn native: instruction set '" + isa + "' is not usable here");
  }
  return c;
}

class KernelWorker : public Napi::AsyncWorker {
 public:
  KernelWorker(Napi::Env env, Call call, bool backward, std::vector<Napi::ObjectReference> refs)
      : Napi::AsyncWorker(env, "ringattn.attention"),
        deferred_(Napi::Promise::Deferred::New(env)),
        call_(call),
        backward_(backward),
        refs_(std::move(refs)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    FlushDenormals flush;
    try {
      if (call_.p.qLen == 0 || call_.p.kvLen == 0) {
        if (!backward_) {
          // No keys: every row is fully masked.
          std::memset(call_.p.o, 0, sizeof(float) * call_.p.qLen * call_.p.heads * call_.p.headDim);
          for (size_t i = 0; i < (size_t)call_.p.heads * call_.p.qLen; i++) call_.p.lse[i] = -__builtin_inff();
        }
        return;
      }
      if (backward_)
        runBackward(call_.var, call_.p, call_.threads);
      else
        runForward(call_.var, call_.p, call_.threads);
    } catch (const std::bad_alloc&) {
      SetError("ringattn native: out of memory");
    } catch (const std::exception& e) {
      SetError(std::string("ringattn native: ") + e.what());
    }
  }

  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Call call_;
  bool backward_;
  std::vector<Napi::ObjectReference> refs_;
};

// forward({q, k, v, qPos, kvPos, qSeg?, kvSeg?, o, lse, qLen, kvLen, heads,
//          kvHeads, headDim, causal, scale, tileQ, tileKV, threads, isa?})
// resolves once o and lse are written.
Napi::Value Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "ringattn native: forward(args)");
  Args a(info[0].As<Napi::Object>());
  Call c = parseCommon(a, env);
  Problem& p = c.p;
  p.o = a.array<float>("o", napi_float32_array, (size_t)p.qLen * p.heads * p.headDim);
  p.lse = a.array<float>("lse", napi_float32_array, (size_t)p.heads * p.qLen);
  auto* w = new KernelWorker(env, c, false, std::move(a.refs));
  Napi::Promise promise = w->promise();
  w->Queue();
  return promise;
}

// backward({...forward's inputs, dO, lse, delta, dq, dk, dv}) adds the
// gradients into dq, dk, dv and resolves.
Napi::Value Backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "ringattn native: backward(args)");
  Args a(info[0].As<Napi::Object>());
  Call c = parseCommon(a, env);
  Problem& p = c.p;
  const size_t qn = (size_t)p.qLen * p.heads * p.headDim, kvn = (size_t)p.kvLen * p.kvHeads * p.headDim;
  p.dO = a.array<float>("dO", napi_float32_array, qn);
  p.lseFinal = a.array<float>("lse", napi_float32_array, (size_t)p.heads * p.qLen);
  p.delta = a.array<float>("delta", napi_float32_array, (size_t)p.heads * p.qLen);
  p.dq = a.array<float>("dq", napi_float32_array, qn);
  p.dk = a.array<float>("dk", napi_float32_array, kvn);
  p.dv = a.array<float>("dv", napi_float32_array, kvn);
  auto* w = new KernelWorker(env, c, true, std::move(a.refs));
  Napi::Promise promise = w->promise();
  w->Queue();
  return promise;
}

// Instruction sets this CPU can run, best (the default) first.
Napi::Value Isas(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto& vs = variants();
  Napi::Array out = Napi::Array::New(env, vs.size());
  for (size_t i = 0; i < vs.size(); i++) out.Set((uint32_t)i, Napi::String::New(env, vs[i]->isa));
  return out;
}

// dst[i] += src[i]: the all-reduce's reduce-scatter additions (src/ring/collectives.ts), in place.
// One float add per element, as JavaScript's (a double sum of two floats rounds to the same float),
// so every rank and either path give the same bits.
Napi::Value SumInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsTypedArray() || !info[1].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    Napi::TypeError::New(env, "sumInto(dst, src): two Float32Arrays").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float32Array dst = info[0].As<Napi::Float32Array>();
  Napi::Float32Array src = info[1].As<Napi::Float32Array>();
  if (dst.ElementLength() != src.ElementLength()) {
    Napi::RangeError::New(env, "sumInto: arrays of different lengths").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  float* d = dst.Data();
  const float* a = src.Data();
  const size_t n = dst.ElementLength();
  for (size_t i = 0; i < n; i++) d[i] += a[i];
  return env.Undefined();
}

// The ring's 16-bit wire (src/ring/wire.ts holds the same rules in JavaScript, and the tests hold the two
// to the same bits): float32 -> bfloat16 / float16 with round to nearest, ties to even; and back, exactly.
static inline uint16_t bf16Bits(uint32_t u) {
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(((u >> 16) & 0x8000u) | 0x7fc0u);
  return (uint16_t)(((uint64_t)u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline uint16_t f16Bits(uint32_t u) {
  const uint32_t sign = (u >> 16) & 0x8000u;
  const int exp = (int)((u >> 23) & 0xffu);
  const uint32_t mant = u & 0x7fffffu;
  if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0u));
  const int e = exp - 127 + 15;
  if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign;
    const uint32_t m = mant | 0x800000u;
    const int shift = 14 - e;
    const uint32_t half = 1u << (shift - 1);
    const uint32_t rest = m & ((1u << shift) - 1u);
    uint32_t h = m >> shift;
    if (rest > half || (rest == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((uint32_t)e << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

static inline uint32_t f16ToBits(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  // JavaScript's NaN is stored as 0x7fc00000 whatever the half's sign and payload: so here too.
  if (exp == 0x1f) return mant ? 0x7fc00000u : (sign | 0x7f800000u);
  if (exp != 0) return sign | ((exp - 15 + 127) << 23) | (mant << 13);
  if (mant == 0) return sign;
  int e = -14;
  while (!(mant & 0x400u)) {
    mant <<= 1;
    e--;
  }
  return sign | ((uint32_t)(e + 127) << 23) | ((mant & 0x3ffu) << 13);
}

// toWire(format, src: Float32Array, dst: Uint16Array) and fromWire(format, src: Uint16Array, dst: Float32Array),
// format 0 = bfloat16, 1 = float16.
Napi::Value WireConvert(const Napi::CallbackInfo& info, bool narrow) {
  Napi::Env env = info.Env();
  const napi_typedarray_type wide = napi_float32_array, half = napi_uint16_array;
  if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != (narrow ? wide : half) ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != (narrow ? half : wide)) {
    Napi::TypeError::New(env, narrow ? "toWire(format, Float32Array, Uint16Array)" : "fromWire(format, Uint16Array, Float32Array)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int format = info[0].As<Napi::Number>().Int32Value();
  Napi::TypedArray a = info[1].As<Napi::TypedArray>(), b = info[2].As<Napi::TypedArray>();
  if (a.ElementLength() != b.ElementLength() || (format != 0 && format != 1)) {
    Napi::RangeError::New(env, "wire conversion: arrays of different lengths, or an unknown format").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const size_t n = a.ElementLength();
  if (narrow) {
    const uint32_t* src = reinterpret_cast<const uint32_t*>(a.As<Napi::Float32Array>().Data());
    uint16_t* dst = b.As<Napi::Uint16Array>().Data();
    if (format == 0) for (size_t i = 0; i < n; i++) dst[i] = bf16Bits(src[i]);
    else for (size_t i = 0; i < n; i++) dst[i] = f16Bits(src[i]);
  } else {
    const uint16_t* src = a.As<Napi::Uint16Array>().Data();
    uint32_t* dst = reinterpret_cast<uint32_t*>(b.As<Napi::Float32Array>().Data());
    if (format == 0) for (size_t i = 0; i < n; i++) dst[i] = (uint32_t)src[i] << 16;
    else for (size_t i = 0; i < n; i++) dst[i] = f16ToBits(src[i]);
  }
  return env.Undefined();
}

Napi::Value ToWire(const Napi::CallbackInfo& info) { return WireConvert(info, true); }
Napi::Value FromWire(const Napi::CallbackInfo& info) { return WireConvert(info, false); }

// Large blocks straight from the kernel and back (glibc only). The ring's KV
// chunks are allocated by ZeroMQ's I/O thread and freed on the JS thread when
// the collector finalizes them; by default glibc raises its mmap threshold to
// the size of the first such block freed, so every later multi-MiB block comes
// from the I/O thread's malloc arena instead, and arena memory freed in the
// middle of a heap stays resident. Measured: the per-worker peak grew with the
// ring size (docs/benchmarks.md, "Memory per worker"). A fixed threshold keeps
// every block >= 128 KiB an mmap of its own, returned to the OS by its free().
// Done here because every worker that runs a ring loads the addon (the ring
// does, see src/ring/transport.ts), however the worker was started (launcher,
// ssh, a scheduler); MALLOC_MMAP_THRESHOLD_ set by the user wins.
void fixMmapThreshold() {
#if defined(__GLIBC__)
  if (!std::getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  fixMmapThreshold();
  exports.Set("forward", Napi::Function::New(env, Forward, "forward"));
  exports.Set("backward", Napi::Function::New(env, Backward, "backward"));
  exports.Set("isas", Napi::Function::New(env, Isas, "isas"));
  exports.Set("sumInto", Napi::Function::New(env, SumInto, "sumInto"));
  exports.Set("toWire", Napi::Function::New(env, ToWire, "toWire"));
  exports.Set("fromWire", Napi::Function::New(env, FromWire, "fromWire"));
  addGemmExports(env, exports);
  addEngineExports(env, exports);
  addShmExports(env, exports);
  return exports;
}

}  // namespace
}  // namespace ringattn

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return ringattn::Init(env, exports); }

NODE_API_MODULE(ringattn_native, InitModule)
