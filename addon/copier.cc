#include "copier.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "errors.h"

namespace ublkd {

namespace {

constexpr uint32_t kOpWords = 7;
constexpr int32_t kSourceZeros = -1;
constexpr int32_t kSourceRelease = -2;

// Zero [dst, dst + bytes) by giving its whole pages back to the kernel (MADV_DONTNEED: private
// anonymous memory reads as zeros afterwards, and is no longer resident) and clearing only the
// partial pages at its edges. Should madvise refuse (locked memory), the pages are cleared.
void Release(uint8_t* dst, uint64_t bytes) {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t start = reinterpret_cast<uintptr_t>(dst);
  uintptr_t end = start + bytes;
  uintptr_t first = (start + page - 1) & ~(page - 1);
  uintptr_t last = end & ~(page - 1);
  if (first >= last) {
    memset(dst, 0, bytes);
    return;
  }
  memset(dst, 0, first - start);
  auto* whole = reinterpret_cast<uint8_t*>(first);
  if (madvise(whole, last - first, MADV_DONTNEED) != 0) memset(whole, 0, last - first);
  memset(reinterpret_cast<uint8_t*>(last), 0, end - last);
}

uint64_t Offset(const int32_t* op, int at) {
  return static_cast<uint64_t>(static_cast<uint32_t>(op[at + 1])) |
         (static_cast<uint64_t>(static_cast<uint32_t>(op[at + 2])) << 32);
}

// pread/pwrite all of [offset, offset + bytes) of fd, as far as the file goes: the bytes done,
// or -errno.
int64_t FileCopy(int fd, uint8_t* memory, uint64_t bytes, uint64_t offset, bool toFile) {
  uint64_t done = 0;
  while (done < bytes) {
    ssize_t n = toFile ? pwrite(fd, memory + done, bytes - done, static_cast<off_t>(offset + done))
                       : pread(fd, memory + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  return static_cast<int64_t>(done);
}

}  // namespace

int Copier::FileAt(const int32_t* op, int at) const {
  auto index = static_cast<uint32_t>(op[at]);
  return index < buffers_.size() && buffers_[index].data == nullptr ? buffers_[index].fd : -1;
}

uint8_t* Copier::Range(const int32_t* op, int at, uint64_t bytes) const {
  auto index = static_cast<uint32_t>(op[at]);
  uint64_t offset = Offset(op, at);
  if (index >= buffers_.size() || buffers_[index].data == nullptr || offset > buffers_[index].bytes || bytes > buffers_[index].bytes - offset) return nullptr;
  return buffers_[index].data + offset;
}

Napi::Function Copier::Define(Napi::Env env) {
  return DefineClass(env, "Copier", {InstanceMethod<&Copier::Run>("run")});
}

Copier::Copier(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Copier>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    ThrowType(env, "Copier(endpoints: (Uint8Array | fd)[])");
    return;
  }
  Napi::Array list = info[0].As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value value = list.Get(i);
    if (value.IsNumber()) {
      int32_t fd = value.As<Napi::Number>().Int32Value();
      if (fd < 0) {
        ThrowType(env, "Copier: a file endpoint must be a descriptor (>= 0)");
        return;
      }
      buffers_.push_back({nullptr, 0, fd});
      refs_.emplace_back();
      continue;
    }
    if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      ThrowType(env, "Copier: every endpoint must be a Uint8Array or a file descriptor");
      return;
    }
    Napi::Uint8Array array = value.As<Napi::Uint8Array>();
    buffers_.push_back({array.Data(), array.ByteLength(), -1});
    refs_.push_back(Napi::Persistent(array));
  }
}

Napi::Value Copier::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto isInt32Array = [](const Napi::Value& value) {
    return value.IsTypedArray() && value.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array;
  };
  if (info.Length() < 2 || !isInt32Array(info[0]) || !info[1].IsNumber() ||
      (info.Length() > 2 && !info[2].IsUndefined() && !isInt32Array(info[2]))) {
    return ThrowType(env, "run(ops: Int32Array, count[, results: Int32Array])");
  }
  Napi::Int32Array ops = info[0].As<Napi::Int32Array>();
  uint32_t count = info[1].As<Napi::Number>().Uint32Value();
  if (count > ops.ElementLength() / kOpWords) return ThrowType(env, "run: count exceeds the ops");
  int32_t* results = nullptr;
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    Napi::Int32Array array = info[2].As<Napi::Int32Array>();
    if (array.ElementLength() < count) return ThrowType(env, "run: results shorter than count");
    results = array.Data();
  }
  // A bound buffer unmapped since (munmap detaches it) must not be written through the pointer
  // taken at construction.
  for (size_t i = 0; i < refs_.size(); i++) {
    if (buffers_[i].data != nullptr && refs_[i].Value().ByteLength() != buffers_[i].bytes) {
      Napi::Error::New(env, "Copier: a bound buffer was detached").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  const int32_t* op = ops.Data();
  for (uint32_t i = 0; i < count; i++, op += kOpWords) {
    auto bytes = static_cast<uint64_t>(static_cast<uint32_t>(op[6]));
    if (results != nullptr) results[i] = static_cast<int32_t>(bytes);
    int dstFile = FileAt(op, 0);
    int srcFile = op[3] < 0 ? -1 : FileAt(op, 3);
    if (dstFile >= 0 || srcFile >= 0) {
      uint8_t* memory = dstFile >= 0 ? Range(op, 3, bytes) : Range(op, 0, bytes);
      if (memory == nullptr) {
        Napi::RangeError::New(env, "Copier: a file op's memory side is outside its buffer (or a file too)")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
      int64_t done = dstFile >= 0 ? FileCopy(dstFile, memory, bytes, Offset(op, 0), true)
                                  : FileCopy(srcFile, memory, bytes, Offset(op, 3), false);
      if (results != nullptr) {
        results[i] = static_cast<int32_t>(done);
      } else if (done < 0) {
        return ThrowErrno(env, dstFile >= 0 ? "pwrite" : "pread", static_cast<int>(-done));
      }
      continue;
    }
    uint8_t* dst = Range(op, 0, bytes);
    if (dst == nullptr) {
      Napi::RangeError::New(env, "Copier: destination outside its buffer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (op[3] == kSourceZeros) {
      memset(dst, 0, bytes);
      continue;
    }
    if (op[3] == kSourceRelease) {
      Release(dst, bytes);
      continue;
    }
    const uint8_t* src = Range(op, 3, bytes);
    if (src == nullptr) {
      Napi::RangeError::New(env, "Copier: source outside its buffer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    memmove(dst, src, bytes);
  }
  return env.Undefined();
}

}  // namespace ublkd
