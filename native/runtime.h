// What every baseline translation unit of the addon shares: the thread pool
// (one per process, used by the attention kernel and the engine alike) and the
// recycled aligned float buffers. Compiled for the baseline CPU only; variant
// files (compiled with AVX flags) must not include it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <new>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace ringattn {

// Subnormal floats cost about a hundred times a normal operation on x86. They
// appear as training sharpens attention: softmax weights near 2^-126 times a
// value, or times a gradient, land below the normal range. Flushing them to
// zero changes results by less than 1e-38 absolute. Every thread that runs the
// addon's arithmetic holds one of these (pool threads for their whole life).
class FlushDenormals {
 public:
  FlushDenormals() {
#if defined(__x86_64__) || defined(__i386__)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040);  // FTZ (bit 15) and DAZ (bit 6)
#endif
  }
  ~FlushDenormals() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(saved_);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned saved_ = 0;
};
// ---------------------------------------------------------------------------
// A small persistent pool. A parallel loop hands out task indices through an
// atomic counter; the calling thread works too, and each participant gets a
// fixed slot number for its scratch memory. Several loops may run at once
// (kernel calls from different libuv threads); helpers never block on
// anything but the queue, so a loop always finishes.

class Pool {
 public:
  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: threads outlive static destructors at exit
    return *pool;
  }

  void parallelFor(int n, int threads, const std::function<void(int task, int slot)>& fn) {
    if (threads > n) threads = n;
    if (threads <= 1) {
      for (int t = 0; t < n; t++) fn(t, 0);
      return;
    }
    Loop loop(fn, n, threads - 1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      while ((int)workers_.size() < threads - 1) workers_.emplace_back([this] { workerMain(); });
      for (int s = 1; s < threads; s++) queue_.push_back({&loop, s});
    }
    cv_.notify_all();
    loop.work(0);
    // Helpers that have not started yet (the pool may be busy with another
    // call's loop) have nothing left to do: withdraw them instead of waiting.
    int withdrawn = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = queue_.begin(); it != queue_.end();) {
        if (it->loop == &loop) {
          it = queue_.erase(it);
          withdrawn++;
        } else {
          ++it;
        }
      }
    }
    std::unique_lock<std::mutex> lock(loop.mu);
    loop.pending -= withdrawn;
    loop.cv.wait(lock, [&] { return loop.pending == 0; });
  }

 private:
  struct Loop {
    Loop(const std::function<void(int, int)>& f, int count, int helpers) : fn(f), n(count), pending(helpers) {}
    void work(int slot) {
      for (int t; (t = next.fetch_add(1)) < n;) fn(t, slot);
    }
    const std::function<void(int, int)>& fn;
    const int n;
    std::atomic<int> next{0};
    std::mutex mu;
    std::condition_variable cv;
    int pending;
  };
  struct Entry {
    Loop* loop;
    int slot;
  };

  void workerMain() {
    FlushDenormals flush;
    for (;;) {
      Entry e;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        e = queue_.front();
        queue_.pop_front();
      }
      e.loop->work(e.slot);
      std::lock_guard<std::mutex> lock(e.loop->mu);
      if (--e.loop->pending == 0) e.loop->cv.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> queue_;
  std::vector<std::thread> workers_;
};

// ---------------------------------------------------------------------------
// 64-byte aligned float buffers, recycled between calls: ring attention calls
// the kernel again and again with the same block sizes, and fresh multi-MiB
// allocations would cost page faults on every call.

class BufferCache {
 public:
  static BufferCache& instance() {
    static BufferCache* cache = new BufferCache();
    return *cache;
  }

  // A buffer of at least n floats (and at most twice that, so a small request
  // does not pin a huge buffer).
  float* take(size_t n, size_t* capacity) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < free_.size(); i++) {
        if (free_[i].cap >= n && free_[i].cap <= 2 * n + 1024) {
          Entry e = free_[i];
          free_.erase(free_.begin() + i);
          bytes_ -= e.cap * sizeof(float);
          *capacity = e.cap;
          return e.p;
        }
      }
    }
    const size_t cap = (n + 15) / 16 * 16 + 16;
    void* p = std::aligned_alloc(64, cap * sizeof(float));
    if (!p) throw std::bad_alloc();
    *capacity = cap;
    return static_cast<float*>(p);
  }

  void give(float* p, size_t cap) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back({p, cap});
    bytes_ += cap * sizeof(float);
    // Keep at most kMaxBytes, dropping the oldest first.
    while (bytes_ > kMaxBytes && !free_.empty()) {
      bytes_ -= free_.front().cap * sizeof(float);
      std::free(free_.front().p);
      free_.erase(free_.begin());
    }
  }

 private:
  static constexpr size_t kMaxBytes = size_t(512) << 20;
  struct Entry {
    float* p;
    size_t cap;
  };
  std::mutex mu_;
  std::vector<Entry> free_;
  size_t bytes_ = 0;
};

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n) { p_ = BufferCache::instance().take(n, &cap_); }
  Buffer(Buffer&& o) noexcept : p_(o.p_), cap_(o.cap_) { o.p_ = nullptr; }
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(cap_, o.cap_);
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (p_) BufferCache::instance().give(p_, cap_);
  }
  float* get() const { return p_; }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  float* p_ = nullptr;
  size_t cap_ = 0;
};

inline Buffer allocFloats(size_t n) { return Buffer(n); }

}  // namespace ringattn
