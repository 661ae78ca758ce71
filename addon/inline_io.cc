#include "inline_io.h"

#include <fcntl.h>
#include <linux/io_uring.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "errors.h"

namespace ublkd {

namespace {

constexpr size_t kSqeBytes = 128;

int64_t Result(int64_t ret) { return ret < 0 ? -errno : ret; }

int64_t Perform(const io_uring_sqe& sqe) {
  auto* address = reinterpret_cast<void*>(static_cast<uintptr_t>(sqe.addr));
  auto offset = static_cast<off_t>(sqe.off);
  switch (sqe.opcode) {
    case IORING_OP_READ: {
      iovec iov{address, sqe.len};
      return Result(preadv2(sqe.fd, &iov, 1, offset, static_cast<int>(sqe.rw_flags)));
    }
    case IORING_OP_WRITE: {
      iovec iov{address, sqe.len};
      return Result(pwritev2(sqe.fd, &iov, 1, offset, static_cast<int>(sqe.rw_flags)));
    }
    case IORING_OP_FSYNC:
      return Result((sqe.fsync_flags & IORING_FSYNC_DATASYNC) != 0 ? fdatasync(sqe.fd) : fsync(sqe.fd));
    case IORING_OP_FALLOCATE:
      return Result(fallocate(sqe.fd, static_cast<int>(sqe.len), offset, static_cast<off_t>(sqe.addr)));
    default:
      return -EINVAL;
  }
}

}  // namespace

Napi::Value ExecuteSqes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsArrayBuffer() || !info[1].IsNumber() || !info[2].IsTypedArray()) {
    return ThrowType(env, "executeSqes(sqes: ArrayBuffer, count, results: Int32Array)");
  }
  Napi::ArrayBuffer sqes = info[0].As<Napi::ArrayBuffer>();
  uint32_t count = info[1].As<Napi::Number>().Uint32Value();
  Napi::TypedArray results_array = info[2].As<Napi::TypedArray>();
  if (results_array.TypedArrayType() != napi_int32_array) return ThrowType(env, "executeSqes: results must be an Int32Array");
  auto results = results_array.As<Napi::Int32Array>();
  if (count > sqes.ByteLength() / kSqeBytes || count > results.ElementLength()) {
    return ThrowType(env, "executeSqes: count exceeds the SQEs or the results");
  }
  const auto* slots = static_cast<const uint8_t*>(sqes.Data());
  for (uint32_t i = 0; i < count; i++) {
    io_uring_sqe sqe;
    memcpy(&sqe, slots + i * kSqeBytes, sizeof(sqe));
    results[i] = static_cast<int32_t>(Perform(sqe));
  }
  return env.Undefined();
}

}  // namespace ublkd
