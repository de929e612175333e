// Same-host shared-memory byte channel (src/ring/shm.ts drives it): one
// single-producer single-consumer ring buffer in a file under /dev/shm, made by
// the sending rank and opened by its neighbour. The hand-off message that says
// where a block lies travels on the ZeroMQ link, in order, so the only shared
// state is the receiver's `consumed` counter; everything that orders memory
// between the two processes (that counter's load and store, the fences, the
// bulk copies) is here, in one place.
//   shmCreate(path, capacity) -> handle      the writer; capacity rounded up to 64
//   shmOpen(path) -> handle                  the reader
//   shmCapacity(handle) -> number
//   shmFree(handle) -> number                writer: bytes not yet consumed back
//   shmPut(handle, views) -> {offset, bytes, end} | null
//   shmTake(handle, offset, bytes, end, views) -> undefined
//   shmClose(handle) -> undefined            idempotent; any later use throws
#include <napi.h>

#if defined(__linux__)
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#endif

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace ringattn {
namespace {

#if defined(__linux__)

constexpr char kMagic[8] = {'r', 'i', 'n', 'g', 's', 'h', 'm', '\0'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kAlign = 64;
constexpr uint64_t kHeaderBytes = 128;  // two cache lines: identity, then `consumed`
// Far beyond any /dev/shm, and keeps every logical position exact as a JS number for ~2^53 bytes of traffic.
constexpr uint64_t kMaxCapacity = uint64_t(1) << 46;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t headerBytes;
  uint64_t capacity;
  uint8_t pad0[kAlign - 24];
  // Written only by the reader. A line of its own, so the writer's loads of it
  // do not bounce the line that holds the identity fields, and vice versa.
  uint64_t consumed;
  uint8_t pad1[kAlign - 8];
};
static_assert(sizeof(Header) == kHeaderBytes, "header layout");

struct Channel {
  std::string path;
  uint8_t* base = nullptr;  // null once closed
  size_t mapBytes = 0;
  uint64_t capacity = 0;
  uint64_t written = 0;  // the writer's logical position; private to its process
  bool writer = false;

  Header* header() const { return reinterpret_cast<Header*>(base); }
  uint8_t* data() const { return base + kHeaderBytes; }
  void unmap() {
    if (base) munmap(base, mapBytes);
    base = nullptr;
  }
};

// Tags the handles so a foreign External (another addon's) is refused, never dereferenced.
const napi_type_tag kChannelTag = {0x72696e6761747472ULL, 0x73686d6368616e6eULL};

std::string errnoText(int err) { return std::strerror(err); }

Napi::Value handleOf(Napi::Env env, Channel* ch) {
  auto ext = Napi::External<Channel>::New(env, ch, [](Napi::Env, Channel* c) {
    // Safety net for a channel never closed: the mapping goes with its last reference.
    c->unmap();
    delete c;
  });
  ext.TypeTag(&kChannelTag);
  return ext;
}

void ensureOpen(Napi::Env env, const Channel* ch) {
  if (!ch->base) throw Napi::Error::New(env, "ringattn shm: channel " + ch->path + " is closed");
}

Channel* channelOf(const Napi::CallbackInfo& info, const char* fn) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal() || !info[0].As<Napi::External<Channel>>().CheckTypeTag(&kChannelTag))
    throw Napi::TypeError::New(env, std::string("ringattn shm: ") + fn + ": the first argument is not a channel handle");
  Channel* ch = info[0].As<Napi::External<Channel>>().Data();
  ensureOpen(env, ch);
  return ch;
}

std::string pathArg(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 1 || !info[0].IsString())
    throw Napi::TypeError::New(info.Env(), std::string("ringattn shm: ") + fn + "(path, ...): path must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.empty() || path.find('\0') != std::string::npos)
    throw Napi::TypeError::New(info.Env(), std::string("ringattn shm: ") + fn + ": bad path");
  return path;
}

// A non-negative integer below 2^53, as a JS number must be to be exact.
uint64_t countArg(Napi::Env env, const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string("ringattn shm: ") + name + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 9007199254740991.0 || d != (double)(uint64_t)d)
    throw Napi::RangeError::New(env, std::string("ringattn shm: ") + name + " must be a non-negative integer");
  return (uint64_t)d;
}

struct View {
  uint8_t* data;
  size_t bytes;
};

// Any typed array, as bytes. Reading the array's elements can run JavaScript
// (a getter) that detaches a buffer or closes the channel, so every element is
// read before any pointer is taken, and the caller checks the channel after.
std::vector<View> viewsArg(Napi::Env env, const Napi::Value& v, const char* fn) {
  if (!v.IsArray()) throw Napi::TypeError::New(env, std::string("ringattn shm: ") + fn + ": views must be an array of typed arrays");
  Napi::Array arr = v.As<Napi::Array>();
  std::vector<Napi::TypedArray> arrays;
  for (uint32_t i = 0, n = arr.Length(); i < n; i++) {
    Napi::Value e = arr.Get(i);
    if (!e.IsTypedArray()) throw Napi::TypeError::New(env, std::string("ringattn shm: ") + fn + ": views[" + std::to_string(i) + "] is not a typed array");
    arrays.push_back(e.As<Napi::TypedArray>());
  }
  std::vector<View> out;
  for (Napi::TypedArray& ta : arrays) {
    const size_t bytes = ta.ByteLength();
    uint8_t* data = bytes ? static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset() : nullptr;
    out.push_back({data, bytes});
  }
  return out;
}

Napi::Value Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = pathArg(info, "shmCreate");
  if (info.Length() < 2) throw Napi::TypeError::New(env, "ringattn shm: shmCreate(path, capacity)");
  uint64_t capacity = countArg(env, info[1], "capacity");
  if (capacity == 0 || capacity > kMaxCapacity)
    throw Napi::RangeError::New(env, "ringattn shm: capacity must be between 1 byte and 64 TiB");
  capacity = (capacity + kAlign - 1) / kAlign * kAlign;
  const uint64_t total = kHeaderBytes + capacity;

  // O_EXCL: a file left by another job (or planted by someone else) is refused, never reused.
  const int fd = open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) throw Napi::Error::New(env, "ringattn shm: cannot create " + path + ": " + errnoText(errno));
  auto fail = [&](const std::string& msg) {
    close(fd);
    unlink(path.c_str());
    return Napi::Error::New(env, msg);
  };
  // Reserve every page now. tmpfs (a container's /dev/shm is often 64 MiB)
  // would accept an ftruncate of any size and then kill us with SIGBUS at the
  // first page past its limit; posix_fallocate fails cleanly instead. Asked
  // for more than is free, it fails too, but only after taking pages one by
  // one up to the limit: on a tmpfs as large as the RAM (the default is half,
  // hosts vary) that invites the OOM killer, so a request that cannot fit is
  // refused first.
  struct statvfs vfs;
  const bool known = fstatvfs(fd, &vfs) == 0 && vfs.f_blocks != 0;
  const uint64_t freeBytes = known ? (uint64_t)vfs.f_bavail * vfs.f_frsize : 0;
  int err = known && freeBytes < total ? ENOSPC : 0;
  if (err == 0) {
    do err = posix_fallocate(fd, 0, (off_t)total);
    while (err == EINTR);
  }
  if (err != 0) {
    std::string why = "ringattn shm: cannot reserve " + std::to_string(total) + " bytes for " + path + ": " + errnoText(err);
    if (fstatvfs(fd, &vfs) == 0 && vfs.f_blocks != 0) why += " (" + std::to_string((uint64_t)vfs.f_bavail * vfs.f_frsize) + " bytes free there)";
    throw fail(why);
  }
  void* p = mmap(nullptr, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw fail("ringattn shm: cannot map " + path + ": " + errnoText(errno));
  close(fd);  // the mapping keeps the file

  auto* ch = new Channel();
  ch->path = path;
  ch->base = static_cast<uint8_t*>(p);
  ch->mapBytes = (size_t)total;
  ch->capacity = capacity;
  ch->writer = true;
  Header* h = ch->header();  // fallocate's pages read as zero: consumed starts at 0
  h->version = kVersion;
  h->headerBytes = (uint32_t)kHeaderBytes;
  h->capacity = capacity;
  // The magic last, after a fence: a reader that opens too early sees no magic rather than half a header.
  __atomic_thread_fence(__ATOMIC_RELEASE);
  std::memcpy(h->magic, kMagic, sizeof kMagic);
  return handleOf(env, ch);
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = pathArg(info, "shmOpen");
  // O_NOFOLLOW and the owner check: /dev/shm is shared by every user of the host.
  const int fd = open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) throw Napi::Error::New(env, "ringattn shm: cannot open " + path + ": " + errnoText(errno));
  auto fail = [&](const std::string& msg) {
    close(fd);
    return Napi::Error::New(env, "ringattn shm: " + path + " " + msg);
  };
  struct stat st;
  if (fstat(fd, &st) != 0) throw fail("cannot be examined: " + errnoText(errno));
  if (!S_ISREG(st.st_mode)) throw fail("is not a regular file");
  if (st.st_uid != geteuid()) throw fail("belongs to another user (uid " + std::to_string(st.st_uid) + ")");
  if ((uint64_t)st.st_size < kHeaderBytes + kAlign)
    throw fail("is not a ringattn shared-memory channel (" + std::to_string((uint64_t)st.st_size) + " bytes, too small)");
  const size_t total = (size_t)st.st_size;
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw fail("cannot be mapped: " + errnoText(errno));
  close(fd);
  const Header* h = static_cast<const Header*>(p);
  std::string bad;
  if (std::memcmp(h->magic, kMagic, sizeof kMagic) != 0) bad = "is not a ringattn shared-memory channel (bad magic)";
  else if (h->version != kVersion) bad = "is a channel of version " + std::to_string(h->version) + ", this build reads version " + std::to_string(kVersion);
  else if (h->headerBytes != kHeaderBytes || h->capacity == 0 || h->capacity % kAlign != 0 || h->capacity > kMaxCapacity ||
           kHeaderBytes + h->capacity != (uint64_t)total)
    bad = "has a corrupt header (capacity " + std::to_string(h->capacity) + ", file " + std::to_string((uint64_t)total) + " bytes)";
  if (!bad.empty()) {
    munmap(p, total);
    throw Napi::Error::New(env, "ringattn shm: " + path + " " + bad);
  }
  __atomic_thread_fence(__ATOMIC_ACQUIRE);  // pairs with the writer's fence before the magic

  auto* ch = new Channel();
  ch->path = path;
  ch->base = static_cast<uint8_t*>(p);
  ch->mapBytes = total;
  ch->capacity = h->capacity;
  return handleOf(env, ch);
}

Napi::Value Capacity(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)channelOf(info, "shmCapacity")->capacity);
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  Channel* ch = channelOf(info, "shmFree");
  if (!ch->writer) throw Napi::Error::New(info.Env(), "ringattn shm: shmFree on the reading end of " + ch->path);
  const uint64_t used = ch->written - __atomic_load_n(&ch->header()->consumed, __ATOMIC_ACQUIRE);
  // A `consumed` past what was written can only come from a broken reader: report no room.
  return Napi::Number::New(info.Env(), used > ch->capacity ? 0.0 : (double)(ch->capacity - used));
}

// The payload is stored contiguously, starting on a 64-byte boundary; when it
// does not fit before the end of the buffer it starts at 0 and the skipped tail
// counts as used. `end` is the writer's position after the message: the reader
// stores it as `consumed`, which frees the padding and the skipped tail along
// with the payload. Never waits: no room is null, and the caller sends the
// bytes another way.
Napi::Value Put(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Channel* ch = channelOf(info, "shmPut");
  if (!ch->writer) throw Napi::Error::New(env, "ringattn shm: shmPut on the reading end of " + ch->path);
  if (info.Length() < 2) throw Napi::TypeError::New(env, "ringattn shm: shmPut(handle, views)");
  const std::vector<View> views = viewsArg(env, info[1], "shmPut");
  ensureOpen(env, ch);
  uint64_t bytes = 0;
  for (const View& v : views) bytes += v.bytes;
  if (bytes > ch->capacity) return env.Null();

  uint64_t start = (ch->written + kAlign - 1) & ~(kAlign - 1);
  uint64_t offset = start % ch->capacity;
  if (ch->capacity - offset < bytes) {
    start += ch->capacity - offset;
    offset = 0;
  }
  const uint64_t end = start + bytes;
  // Acquire: the reader's copies out of the region we are about to overwrite
  // happened before it published `consumed`.
  const uint64_t consumed = __atomic_load_n(&ch->header()->consumed, __ATOMIC_ACQUIRE);
  // Room: the bytes a capacity back from the message's end have been read.
  // With nothing unread there is room for anything up to the capacity,
  // wherever the writer stands (else a message over half the capacity could
  // find an empty ring too small).
  if (end - consumed > ch->capacity && consumed != ch->written) return env.Null();

  uint8_t* dst = ch->data() + offset;
  for (const View& v : views) {
    if (v.bytes) std::memcpy(dst, v.data, v.bytes);
    dst += v.bytes;
  }
  // The payload before the hand-off. The hand-off crosses a socket (a syscall
  // on each side, full barriers in practice); this makes the order ours rather
  // than the kernel's.
  __atomic_thread_fence(__ATOMIC_RELEASE);
  ch->written = end;

  Napi::Object desc = Napi::Object::New(env);
  desc.Set("offset", Napi::Number::New(env, (double)offset));
  desc.Set("bytes", Napi::Number::New(env, (double)bytes));
  desc.Set("end", Napi::Number::New(env, (double)end));
  return desc;
}

// The descriptor comes from another process, so before a byte is copied it is
// held to what the writer could have produced: the message lies inside the
// buffer, where `end` says, and starts at or after everything consumed so far
// (which also refuses one taken twice or out of order) but no more than a
// capacity past it.
Napi::Value Take(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Channel* ch = channelOf(info, "shmTake");
  if (ch->writer) throw Napi::Error::New(env, "ringattn shm: shmTake on the writing end of " + ch->path);
  if (info.Length() < 5) throw Napi::TypeError::New(env, "ringattn shm: shmTake(handle, offset, bytes, end, views)");
  const uint64_t offset = countArg(env, info[1], "offset");
  const uint64_t bytes = countArg(env, info[2], "bytes");
  const uint64_t end = countArg(env, info[3], "end");
  const std::vector<View> views = viewsArg(env, info[4], "shmTake");
  ensureOpen(env, ch);
  uint64_t into = 0;
  for (const View& v : views) into += v.bytes;
  // Only this process stores `consumed`, so a relaxed load reads its own last store.
  const uint64_t consumed = __atomic_load_n(&ch->header()->consumed, __ATOMIC_RELAXED);
  const uint64_t cap = ch->capacity;
  const uint64_t start = end - bytes;
  if (bytes > cap || offset > cap - bytes || end < bytes || start < consumed || start - consumed > cap || start % cap != offset)
    throw Napi::RangeError::New(env, "ringattn shm: descriptor {offset " + std::to_string(offset) + ", bytes " + std::to_string(bytes) + ", end " +
                                         std::to_string(end) + "} does not fit " + ch->path + " (capacity " + std::to_string(cap) +
                                         ", consumed " + std::to_string(consumed) + ")");
  if (into != bytes)
    throw Napi::RangeError::New(env, "ringattn shm: shmTake: the views hold " + std::to_string(into) + " bytes, the message " + std::to_string(bytes));

  // Pairs with the writer's release fence (through the hand-off's socket).
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  const uint8_t* src = ch->data() + offset;
  for (const View& v : views) {
    if (v.bytes) std::memcpy(v.data, src, v.bytes);
    src += v.bytes;
  }
  // Release: the copies above are done before the writer may reuse the bytes.
  __atomic_store_n(&ch->header()->consumed, end, __ATOMIC_RELEASE);
  return env.Undefined();
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal() || !info[0].As<Napi::External<Channel>>().CheckTypeTag(&kChannelTag))
    throw Napi::TypeError::New(env, "ringattn shm: shmClose: the argument is not a channel handle");
  info[0].As<Napi::External<Channel>>().Data()->unmap();
  return env.Undefined();
}

#endif  // __linux__

}  // namespace

// Linux only (/dev/shm, posix_fallocate); elsewhere the functions are absent
// and src/ring/shm.ts reports the channel unavailable.
void addShmExports(Napi::Env env, Napi::Object exports) {
#if defined(__linux__)
  exports.Set("shmCreate", Napi::Function::New(env, Create, "shmCreate"));
  exports.Set("shmOpen", Napi::Function::New(env, Open, "shmOpen"));
  exports.Set("shmCapacity", Napi::Function::New(env, Capacity, "shmCapacity"));
  exports.Set("shmFree", Napi::Function::New(env, Free, "shmFree"));
  exports.Set("shmPut", Napi::Function::New(env, Put, "shmPut"));
  exports.Set("shmTake", Napi::Function::New(env, Take, "shmTake"));
  exports.Set("shmClose", Napi::Function::New(env, Close, "shmClose"));
#else
  (void)env;
  (void)exports;
#endif
}

}  // namespace ringattn
