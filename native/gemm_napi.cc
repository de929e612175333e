// N-API exports of the SGEMM (gemm.h): argument checks, and an AsyncWorker that
// keeps the multiply off the JavaScript thread.
//   sgemm({m, n, k, transA, transB, a, lda, b, ldb, c, ldc, beta, threads,
//          isa?, kc?, mc?, nc?}) -> Promise<void>
//   sgemmSync(same) -> undefined, on the calling thread
//   gemmIsas() -> usable instruction sets, best (the default) first
#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gemm.h"
#include "gemm_kernel.h"
#include "runtime.h"

namespace ringattn {
namespace {

std::vector<std::string> usableIsaNames() {
  std::vector<std::string> out;
  for (int i = 0; i < gemm::usableVariantCount(); i++) out.push_back(gemm::usableVariant(i)->isa);
  return out;
}

std::string prefixed(const std::string& msg) { return "ringattn native: " + msg; }

struct GemmCall {
  GemmArgs args;
  int threads;
  std::string isa;  // empty: best
  GemmBlocking blocking;
  std::vector<Napi::ObjectReference> refs;  // keeps the arrays alive while a worker runs
};

class GemmParser {
 public:
  GemmParser(const Napi::Object& obj) : obj_(obj), env_(obj.Env()) {}

  int intField(const char* name, int lo, int hi, bool optional = false, int dflt = 0) {
    Napi::Value v = obj_.Get(name);
    if (optional && (v.IsUndefined() || v.IsNull())) return dflt;
    if (!v.IsNumber()) throw Napi::TypeError::New(env_, prefixed(std::string(name) + " must be a number"));
    const double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= lo && d <= hi) || d != (double)(long long)d)
      throw Napi::RangeError::New(env_, prefixed(std::string(name) + " must be an integer in [" + std::to_string(lo) +
                                                 ", " + std::to_string(hi) + "]"));
    return (int)d;
  }

  bool boolField(const char* name) {
    Napi::Value v = obj_.Get(name);
    if (v.IsUndefined() || v.IsNull()) return false;
    if (!v.IsBoolean()) throw Napi::TypeError::New(env_, prefixed(std::string(name) + " must be a boolean"));
    return v.As<Napi::Boolean>().Value();
  }

  // A Float32Array of at least `rows` rows of `cols` floats, `ld` apart.
  float* matrix(const char* name, long rows, long cols, long ld, std::vector<Napi::ObjectReference>& refs) {
    Napi::Value v = obj_.Get(name);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Napi::TypeError::New(env_, prefixed(std::string(name) + " must be a Float32Array"));
    Napi::Float32Array arr = v.As<Napi::Float32Array>();
    const size_t need = rows == 0 || cols == 0 ? 0 : (size_t)(rows - 1) * (size_t)ld + (size_t)cols;
    if (arr.ElementLength() < need)
      throw Napi::RangeError::New(env_, prefixed(std::string(name) + " has " + std::to_string(arr.ElementLength()) +
                                                 " elements, needs " + std::to_string(need)));
    refs.push_back(Napi::Persistent(v.As<Napi::Object>()));
    return arr.Data();
  }

  Napi::Env env() const { return env_; }

 private:
  Napi::Object obj_;
  Napi::Env env_;
};

GemmCall parseCall(const Napi::CallbackInfo& info, const char* fn) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject())
    throw Napi::TypeError::New(env, prefixed(std::string(fn) + "(args) needs an argument object"));
  GemmParser p(info[0].As<Napi::Object>());
  GemmCall call;
  std::memset(&call.args, 0, sizeof call.args);
  GemmArgs& g = call.args;
  const int big = 1 << 30;
  g.m = p.intField("m", 0, big);
  g.n = p.intField("n", 0, big);
  g.k = p.intField("k", 0, big);
  g.transA = p.boolField("transA");
  g.transB = p.boolField("transB");
  // Stored shapes: A is m x k (k x m when transposed), B is k x n (n x k when transposed).
  const long aRows = g.transA ? g.k : g.m, aCols = g.transA ? g.m : g.k;
  const long bRows = g.transB ? g.n : g.k, bCols = g.transB ? g.k : g.n;
  g.lda = p.intField("lda", 1, big);
  g.ldb = p.intField("ldb", 1, big);
  g.ldc = p.intField("ldc", 1, big);
  if (g.lda < aCols)
    throw Napi::RangeError::New(env, prefixed("lda (" + std::to_string(g.lda) + ") must be at least " + std::to_string(aCols)));
  if (g.ldb < bCols)
    throw Napi::RangeError::New(env, prefixed("ldb (" + std::to_string(g.ldb) + ") must be at least " + std::to_string(bCols)));
  if (g.ldc < g.n)
    throw Napi::RangeError::New(env, prefixed("ldc (" + std::to_string(g.ldc) + ") must be at least " + std::to_string(g.n)));
  g.beta = p.intField("beta", 0, 1);
  call.threads = p.intField("threads", 1, 1024);
  g.a = p.matrix("a", aRows, aCols, g.lda, call.refs);
  g.b = p.matrix("b", bRows, bCols, g.ldb, call.refs);
  g.c = p.matrix("c", g.m, g.n, g.ldc, call.refs);

  Napi::Value isa = info[0].As<Napi::Object>().Get("isa");
  if (!isa.IsUndefined() && !isa.IsNull()) {
    if (!isa.IsString()) throw Napi::TypeError::New(env, prefixed("isa must be a string"));
    call.isa = isa.As<Napi::String>().Utf8Value();
    bool usable = false;
    for (const std::string& name : usableIsaNames()) usable = usable || name == call.isa;
    if (!usable)
      throw Napi::RangeError::New(env, prefixed("instruction set '" + call.isa + "' is not usable here"));
  }
  call.blocking.kc = p.intField("kc", 1, 1 << 20, true, 0);
  call.blocking.mc = p.intField("mc", 1, 1 << 20, true, 0);
  call.blocking.nc = p.intField("nc", 1, 1 << 20, true, 0);
  return call;
}

// Runs the multiply; an error message (without the prefix) or empty.
std::string runCall(const GemmCall& call) {
  try {
    sgemm(call.args, call.threads, call.isa.empty() ? nullptr : call.isa.c_str(), call.blocking);
    return std::string();
  } catch (const std::bad_alloc&) {
    return "out of memory";
  } catch (const std::exception& e) {
    return e.what();
  }
}

class GemmWorker : public Napi::AsyncWorker {
 public:
  GemmWorker(Napi::Env env, GemmCall call)
      : Napi::AsyncWorker(env, "ringattn.sgemm"), deferred_(Napi::Promise::Deferred::New(env)), call_(std::move(call)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    FlushDenormals flush;
    const std::string err = runCall(call_);
    if (!err.empty()) SetError(prefixed(err));
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  GemmCall call_;
};

Napi::Value Sgemm(const Napi::CallbackInfo& info) {
  GemmCall call = parseCall(info, "sgemm");
  auto* w = new GemmWorker(info.Env(), std::move(call));
  Napi::Promise promise = w->promise();
  w->Queue();
  return promise;
}

Napi::Value SgemmSync(const Napi::CallbackInfo& info) {
  GemmCall call = parseCall(info, "sgemmSync");
  std::string err;
  {
    FlushDenormals flush;  // restored before JavaScript runs again
    err = runCall(call);
  }
  if (!err.empty()) throw Napi::Error::New(info.Env(), prefixed(err));
  return info.Env().Undefined();
}

Napi::Value GemmIsas(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::vector<std::string> names = usableIsaNames();
  Napi::Array out = Napi::Array::New(env, names.size());
  for (size_t i = 0; i < names.size(); i++) out.Set((uint32_t)i, Napi::String::New(env, names[i]));
  return out;
}

}  // namespace

void addGemmExports(Napi::Env env, Napi::Object exports) {
  exports.Set("sgemm", Napi::Function::New(env, Sgemm, "sgemm"));
  exports.Set("sgemmSync", Napi::Function::New(env, SgemmSync, "sgemmSync"));
  exports.Set("gemmIsas", Napi::Function::New(env, GemmIsas, "gemmIsas"));
}

}  // namespace ringattn
