// The native compute engine (src/engine/native.ts drives it): a table of
// buffers bound once from JavaScript, and a command list recorded there and
// run here, in order, on a libuv worker thread, so one await covers a whole
// segment of the model. Every command is bounds-checked against its buffers
// before anything runs. Matmuls go to the packed SGEMM (gemm.h); elementwise
// ops to the instruction-set variant (engine_impl.h); reductions over rows are
// split into fixed blocks and summed in block order, so results do not depend
// on the thread count.
#include <napi.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine_kernel.h"
#include "gemm.h"
#include "runtime.h"

namespace ringattn {
namespace {

// Opcodes: must match src/engine/native.ts.
enum Op : int32_t {
  kZero = 1,
  kWrite = 2,
  kEmbed = 3,
  kEmbedBackward = 4,
  kNorm = 5,
  kNormBackward = 6,
  kMatmul = 7,
  kRope = 8,
  kSilu = 9,
  kSiluBackward = 10,
  kAdd = 11,
  kCrossEntropy = 12,
  kSumSquares = 13,
  kAdamW = 14,
  kWriteInts = 15,
};

const EngineOps* pickOps(const std::string& isa) {
  std::vector<const EngineOps*> usable;
#if defined(RINGATTN_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) usable.push_back(engineOpsAvx512());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) usable.push_back(engineOpsAvx2());
#endif
  usable.push_back(engineOpsPortable());
  if (isa.empty()) return usable.front();
  for (const EngineOps* o : usable)
    if (isa == o->isa) return o;
  return nullptr;
}

struct Slot {
  void* p = nullptr;
  size_t n = 0;
  bool ints = false;
};

struct State {
  std::vector<Slot> slots;
  std::vector<std::unique_ptr<Napi::ObjectReference>> refs;
  const EngineOps* ops = nullptr;
  std::string isa;
  int threads = 1;
  GemmBlocking blocking{0, 0, 0};  // 0 = the SGEMM's defaults
};

struct Host {
  void* p;
  size_t n;
};

// Rows per block of a reduction over rows: fixed, so sums do not depend on threads.
constexpr int kRowBlock = 32;
constexpr size_t kElemBlock = 1 << 14;

class Program {
 public:
  Program(State* s, std::vector<int32_t> ints, std::vector<double> floats, std::vector<Host> hosts)
      : s_(s), slots_(s->slots), ints_(std::move(ints)), floats_(std::move(floats)), hosts_(std::move(hosts)) {}

  void run() {
    // Pass 1 checks every command; pass 2 runs them.
    for (int pass = 0; pass < 2; pass++) {
      pos_ = 0;
      fpos_ = 0;
      execute_ = pass == 1;
      while (pos_ < ints_.size()) step();
    }
  }

 private:
  int32_t next() {
    if (pos_ >= ints_.size()) throw std::runtime_error("truncated command list");
    return ints_[pos_++];
  }
  double nextFloat() {
    if (fpos_ >= floats_.size()) throw std::runtime_error("truncated command floats");
    return floats_[fpos_++];
  }
  int dim(const char* what) {
    const int32_t v = next();
    if (v < 0) throw std::runtime_error(std::string(what) + " is negative");
    return v;
  }
  // A tensor (buffer id, offset) that must hold `len` elements of the given kind.
  template <typename T>
  T* tensor(size_t len, bool ints, const char* what) {
    const int32_t id = next();
    const int32_t off = next();
    if (id < 0 || (size_t)id >= slots_.size() || !slots_[id].p)
      throw std::runtime_error(std::string(what) + ": unknown buffer " + std::to_string(id));
    const Slot& sl = slots_[id];
    if (sl.ints != ints) throw std::runtime_error(std::string(what) + ": wrong buffer type");
    if (off < 0 || (size_t)off + len > sl.n)
      throw std::runtime_error(std::string(what) + ": [" + std::to_string(off) + ", " + std::to_string((size_t)off + len) +
                               ") outside buffer " + std::to_string(id) + " of " + std::to_string(sl.n));
    return static_cast<T*>(sl.p) + off;
  }
  float* f32(size_t len, const char* what) { return tensor<float>(len, false, what); }
  int32_t* i32(size_t len, const char* what) { return tensor<int32_t>(len, true, what); }
  float* optF32(size_t len, const char* what) {
    if (ints_[pos_] < 0) {
      pos_ += 2;
      return nullptr;
    }
    return f32(len, what);
  }

  // Rows of `dim` floats in the next tensor's buffer from its offset on (an
  // embedding table's vocabulary), without consuming the tensor.
  size_t tableRows(int dim) const {
    if (pos_ + 1 >= ints_.size() || dim <= 0) return 0;
    const int32_t id = ints_[pos_], off = ints_[pos_ + 1];
    if (id < 0 || (size_t)id >= slots_.size() || off < 0 || (size_t)off > slots_[id].n) return 0;
    return (slots_[id].n - off) / dim;
  }
  static void checkTokens(const int32_t* tok, int rows, size_t vocab, const char* what) {
    for (int i = 0; i < rows; i++)
      if (tok[i] < 0 || (size_t)tok[i] >= vocab)
        throw std::runtime_error(std::string(what) + ": token id " + std::to_string(tok[i]) + " outside the table of " + std::to_string(vocab));
  }

  void parallelRows(int rows, size_t perRow, const std::function<void(int, int)>& fn) {
    const int blocks = (rows + kRowBlock - 1) / kRowBlock;
    const int threads = (size_t)rows * perRow < (1 << 15) ? 1 : s_->threads;
    Pool::instance().parallelFor(blocks, threads, [&](int b, int) {
      const int r0 = b * kRowBlock, r1 = r0 + kRowBlock < rows ? r0 + kRowBlock : rows;
      fn(r0, r1);
    });
  }
  void parallelElems(size_t n, const std::function<void(size_t, size_t)>& fn) {
    const int blocks = (int)((n + kElemBlock - 1) / kElemBlock);
    Pool::instance().parallelFor(blocks, n < 2 * kElemBlock ? 1 : s_->threads, [&](int b, int) {
      const size_t i0 = (size_t)b * kElemBlock, i1 = i0 + kElemBlock < n ? i0 + kElemBlock : n;
      fn(i0, i1);
    });
  }

  void step() {
    const int32_t op = next();
    const EngineOps* ops = s_->ops;
    switch (op) {
      case kZero: {
        const size_t n = dim("zero length");
        float* t = f32(n, "zero");
        if (execute_) std::memset(t, 0, n * sizeof(float));
        break;
      }
      case kWrite:
      case kWriteInts: {
        const size_t n = dim("write length");
        const bool ints = op == kWriteInts;
        void* dst = ints ? (void*)i32(n, "write") : (void*)f32(n, "write");
        const int32_t h = next();
        if (h < 0 || (size_t)h >= hosts_.size() || hosts_[h].n < n) throw std::runtime_error("write: bad host array");
        // memmove: the host array may be this very memory (an all-reduce done in place on a read of it).
        if (execute_) std::memmove(dst, hosts_[h].p, n * 4);
        break;
      }
      case kEmbed: {
        const int rows = dim("rows"), d = dim("dim");
        float* out = f32((size_t)rows * d, "embed out");
        const size_t vocab = tableRows(d);
        const float* table = f32(vocab * d, "embed table");
        const int32_t* tok = i32(rows, "embed tokens");
        if (!execute_) break;
        checkTokens(tok, rows, vocab, "embed");
        parallelRows(rows, d, [&](int r0, int r1) {
          for (int i = r0; i < r1; i++) std::memcpy(out + (size_t)i * d, table + (size_t)tok[i] * d, d * sizeof(float));
        });
        break;
      }
      case kEmbedBackward: {
        const int rows = dim("rows"), d = dim("dim");
        const size_t vocab = tableRows(d);
        float* dTable = f32(vocab * d, "embedBackward table");
        const float* dOut = f32((size_t)rows * d, "embedBackward dOut");
        const int32_t* tok = i32(rows, "embedBackward tokens");
        if (!execute_) break;
        checkTokens(tok, rows, vocab, "embedBackward");
        for (int i = 0; i < rows; i++) {
          float* dst = dTable + (size_t)tok[i] * d;
          const float* src = dOut + (size_t)i * d;
          for (int j = 0; j < d; j++) dst[j] += src[j];
        }
        break;
      }
      case kNorm: {
        const int layer = next(), rows = dim("rows"), d = dim("dim");
        const float eps = (float)nextFloat();
        const size_t n = (size_t)rows * d;
        float* out = f32(n, "norm out");
        const float* x = f32(n, "norm x");
        const float* w = f32(d, "norm w");
        const float* b = optF32(d, "norm b");
        if (layer && !b) throw std::runtime_error("norm: LayerNorm needs a bias");
        if (execute_) parallelRows(rows, d, [&](int r0, int r1) { ops->norm(layer, d, eps, out, x, w, b, r0, r1); });
        break;
      }
      case kNormBackward: {
        const int layer = next(), rows = dim("rows"), d = dim("dim");
        const float eps = (float)nextFloat();
        const size_t n = (size_t)rows * d;
        float* dx = f32(n, "normBackward dx");
        float* dw = f32(d, "normBackward dw");
        float* db = optF32(d, "normBackward db");
        const float* dOut = f32(n, "normBackward dOut");
        const float* x = f32(n, "normBackward x");
        const float* w = f32(d, "normBackward w");
        if (layer && !db) throw std::runtime_error("normBackward: LayerNorm needs a bias gradient");
        if (!execute_ || rows == 0) break;
        const int blocks = (rows + kRowBlock - 1) / kRowBlock;
        Buffer partial = allocFloats((size_t)blocks * d * 2);
        float* pw = partial.get();
        float* pb = pw + (size_t)blocks * d;
        parallelRows(rows, d, [&](int r0, int r1) {
          const int blk = r0 / kRowBlock;
          ops->normBackward(layer, d, eps, dx, pw + (size_t)blk * d, pb + (size_t)blk * d, dOut, x, w, r0, r1);
        });
        for (int blk = 0; blk < blocks; blk++)
          for (int j = 0; j < d; j++) dw[j] += pw[(size_t)blk * d + j];
        if (layer)
          for (int blk = 0; blk < blocks; blk++)
            for (int j = 0; j < d; j++) db[j] += pb[(size_t)blk * d + j];
        break;
      }
      case kMatmul: {
        GemmArgs g;
        g.m = dim("m");
        g.n = dim("n");
        g.k = dim("k");
        g.transA = next() != 0;
        g.transB = next() != 0;
        g.beta = next() != 0 ? 1 : 0;
        g.c = f32((size_t)g.m * g.n, "matmul c");
        g.a = f32((size_t)g.m * g.k, "matmul a");
        g.b = f32((size_t)g.k * g.n, "matmul b");
        g.lda = g.transA ? g.m : g.k;
        g.ldb = g.transB ? g.k : g.n;
        g.ldc = g.n;
        if (execute_) sgemm(g, s_->threads, s_->isa.empty() ? nullptr : s_->isa.c_str(), s_->blocking);
        break;
      }
      case kRope: {
        const int rows = dim("rows"), heads = dim("heads"), hd = dim("headDim"), inverse = next();
        if (hd % 2) throw std::runtime_error("rope: head dimension must be even");
        float* x = f32((size_t)rows * heads * hd, "rope x");
        const float* c = f32((size_t)rows * hd / 2, "rope cos");
        const float* s = f32((size_t)rows * hd / 2, "rope sin");
        if (execute_)
          parallelRows(rows, (size_t)heads * hd, [&](int r0, int r1) { ops->rope(heads, hd, inverse, x, c, s, r0, r1); });
        break;
      }
      case kSilu: {
        const size_t n = dim("length");
        float* out = f32(n, "silu out");
        const float* u = f32(n, "silu u");
        if (execute_) parallelElems(n, [&](size_t i0, size_t i1) { ops->silu(out, u, i0, i1); });
        break;
      }
      case kSiluBackward: {
        const size_t n = dim("length");
        float* du = f32(n, "siluBackward du");
        const float* dOut = f32(n, "siluBackward dOut");
        const float* u = f32(n, "siluBackward u");
        if (execute_) parallelElems(n, [&](size_t i0, size_t i1) { ops->siluBackward(du, dOut, u, i0, i1); });
        break;
      }
      case kAdd: {
        const size_t n = dim("length");
        float* out = f32(n, "add out");
        const float* a = f32(n, "add a");
        const float* b = f32(n, "add b");
        if (execute_) parallelElems(n, [&](size_t i0, size_t i1) { ops->add(out, a, b, i0, i1); });
        break;
      }
      case kCrossEntropy: {
        const int rows = dim("rows"), vocab = dim("vocab"), grad = next();
        const float scale = (float)nextFloat();
        float* logits = f32((size_t)rows * vocab, "crossEntropy logits");
        const int32_t* targets = i32(rows, "crossEntropy targets");
        float* loss = f32(1, "crossEntropy loss");
        if (!execute_) break;
        for (int r = 0; r < rows; r++)
          if (targets[r] >= vocab) throw std::runtime_error("crossEntropy: target id outside the vocabulary");
        std::vector<double> rowLoss(rows);
        parallelRows(rows, vocab, [&](int r0, int r1) {
          ops->crossEntropy(vocab, logits, targets, rowLoss.data(), grad, scale, r0, r1);
        });
        double sum = 0;
        for (int r = 0; r < rows; r++) sum += rowLoss[r];
        loss[0] += (float)sum;
        break;
      }
      case kSumSquares: {
        const size_t n = dim("length");
        float* out = f32(1, "sumSquares out");
        const float* x = f32(n, "sumSquares x");
        if (!execute_) break;
        const int blocks = (int)((n + kElemBlock - 1) / kElemBlock);
        std::vector<double> part(blocks);
        parallelElems(n, [&](size_t i0, size_t i1) { part[i0 / kElemBlock] = ops->sumSquares(x, i0, i1); });
        double s = 0;
        for (double v : part) s += v;
        out[0] = (float)s;
        break;
      }
      case kAdamW: {
        const size_t n = dim("length");
        double hp[8];
        for (double& h : hp) h = nextFloat();  // lr, beta1, beta2, eps, decay, bc1, bc2, gradScale
        float* p = f32(n, "adamw params");
        const float* g = f32(n, "adamw grads");
        float* m = f32(n, "adamw m");
        float* v = f32(n, "adamw v");
        if (execute_) parallelElems(n, [&](size_t i0, size_t i1) { ops->adamw(hp, p, g, m, v, i0, i1); });
        break;
      }
      default:
        throw std::runtime_error("unknown opcode " + std::to_string(op));
    }
  }

  State* s_;
  // A snapshot: JavaScript may bind new buffers while this runs.
  std::vector<Slot> slots_;
  std::vector<int32_t> ints_;
  std::vector<double> floats_;
  std::vector<Host> hosts_;
  size_t pos_ = 0, fpos_ = 0;
  bool execute_ = false;
};

class RunWorker : public Napi::AsyncWorker {
 public:
  RunWorker(Napi::Env env, std::unique_ptr<Program> prog, std::vector<Napi::ObjectReference> keep)
      : Napi::AsyncWorker(env, "ringattn.engine"),
        deferred_(Napi::Promise::Deferred::New(env)),
        prog_(std::move(prog)),
        keep_(std::move(keep)) {}
  Napi::Promise promise() const { return deferred_.Promise(); }
  void Execute() override {
    FlushDenormals flush;
    try {
      prog_->run();
    } catch (const std::bad_alloc&) {
      SetError("ringattn engine: out of memory");
    } catch (const std::exception& e) {
      SetError(std::string("ringattn engine: ") + e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::unique_ptr<Program> prog_;
  std::vector<Napi::ObjectReference> keep_;
};

State* stateOf(const Napi::Value& v) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "ringattn engine: not an engine handle");
  return v.As<Napi::External<State>>().Data();
}

// engineCreate({threads, isa?, blocking?: {mc, kc, nc}}) -> handle
Napi::Value Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "ringattn engine: engineCreate(options)");
  Napi::Object o = info[0].As<Napi::Object>();
  auto* s = new State();
  const double threads = o.Get("threads").ToNumber().DoubleValue();
  if (!(threads >= 1 && threads <= 1024)) {
    delete s;
    throw Napi::RangeError::New(env, "ringattn engine: threads must be in [1, 1024]");
  }
  s->threads = (int)threads;
  if (o.Get("isa").IsString()) s->isa = o.Get("isa").As<Napi::String>().Utf8Value();
  if (o.Get("blocking").IsObject()) {
    Napi::Object b = o.Get("blocking").As<Napi::Object>();
    const auto field = [&](const char* name) {
      const double v = b.Get(name).ToNumber().DoubleValue();
      return v >= 1 && v <= (1 << 20) ? (int)v : 0;
    };
    s->blocking = {field("mc"), field("kc"), field("nc")};
  }
  s->ops = pickOps(s->isa);
  if (!s->ops) {
    const std::string isa = s->isa;
    delete s;
    throw Napi::Error::New(env, "ringattn engine: instruction set '" + isa + "' is not usable here");
  }
  return Napi::External<State>::New(env, s, [](Napi::Env, State* st) { delete st; });
}

// engineBind(handle, id, Float32Array | Int32Array | null): null releases the slot.
Napi::Value Bind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  State* s = stateOf(info[0]);
  const double idd = info[1].ToNumber().DoubleValue();
  if (!(idd >= 0 && idd < (1 << 24))) throw Napi::RangeError::New(env, "ringattn engine: bad buffer id");
  const size_t id = (size_t)idd;
  if (s->slots.size() <= id) {
    s->slots.resize(id + 1);
    s->refs.resize(id + 1);
  }
  if (info[2].IsNull() || info[2].IsUndefined()) {
    s->slots[id] = Slot();
    s->refs[id].reset();
    return env.Undefined();
  }
  if (!info[2].IsTypedArray()) throw Napi::TypeError::New(env, "ringattn engine: a buffer must be a typed array");
  Napi::TypedArray a = info[2].As<Napi::TypedArray>();
  const napi_typedarray_type t = a.TypedArrayType();
  if (t != napi_float32_array && t != napi_int32_array)
    throw Napi::TypeError::New(env, "ringattn engine: a buffer must be a Float32Array or Int32Array");
  Slot sl;
  sl.ints = t == napi_int32_array;
  sl.n = a.ElementLength();
  sl.p = static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  s->slots[id] = sl;
  s->refs[id] = std::make_unique<Napi::ObjectReference>(Napi::Persistent(info[2].As<Napi::Object>()));
  return env.Undefined();
}

// engineRun(handle, Int32Array commands, count, Float64Array floats, count, hostArrays[]) -> Promise
Napi::Value Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  State* s = stateOf(info[0]);
  if (!info[1].IsTypedArray() || !info[3].IsTypedArray() || !info[5].IsArray())
    throw Napi::TypeError::New(env, "ringattn engine: engineRun(handle, ints, n, floats, n, hosts)");
  Napi::Int32Array ia = info[1].As<Napi::Int32Array>();
  Napi::Float64Array fa = info[3].As<Napi::Float64Array>();
  const size_t ni = (size_t)info[2].ToNumber().Int64Value(), nf = (size_t)info[4].ToNumber().Int64Value();
  if (ni > ia.ElementLength() || nf > fa.ElementLength()) throw Napi::RangeError::New(env, "ringattn engine: bad counts");
  std::vector<int32_t> ints(ia.Data(), ia.Data() + ni);
  std::vector<double> floats(fa.Data(), fa.Data() + nf);
  Napi::Array hs = info[5].As<Napi::Array>();
  std::vector<Host> hosts;
  std::vector<Napi::ObjectReference> keep;
  for (uint32_t i = 0; i < hs.Length(); i++) {
    Napi::Value h = hs.Get(i);
    if (!h.IsTypedArray()) throw Napi::TypeError::New(env, "ringattn engine: host arrays must be typed arrays");
    Napi::TypedArray a = h.As<Napi::TypedArray>();
    hosts.push_back({static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset(), a.ByteLength() / 4});
    keep.push_back(Napi::Persistent(h.As<Napi::Object>()));
  }
  auto* w = new RunWorker(env, std::make_unique<Program>(s, std::move(ints), std::move(floats), std::move(hosts)), std::move(keep));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value EngineIsa(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), stateOf(info[0])->ops->isa);
}

}  // namespace

void addEngineExports(Napi::Env env, Napi::Object exports) {
  exports.Set("engineCreate", Napi::Function::New(env, Create, "engineCreate"));
  exports.Set("engineBind", Napi::Function::New(env, Bind, "engineBind"));
  exports.Set("engineRun", Napi::Function::New(env, Run, "engineRun"));
  exports.Set("engineIsa", Napi::Function::New(env, EngineIsa, "engineIsa"));
}

}  // namespace ringattn
