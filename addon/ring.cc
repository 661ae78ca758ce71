#include "ring.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>
#include <cerrno>
#include <cstring>

#include "errors.h"
#include "native.h"

namespace ublkd {

namespace {

constexpr size_t kSqeBytes = 128;  // IORING_SETUP_SQE128
constexpr size_t kCqeBytes = sizeof(io_uring_cqe);
static_assert(kCqeBytes == 16, "CQEs are copied out in the kernel's 16-byte layout");

int SysSetup(uint32_t entries, io_uring_params* params) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, params));
}

int SysEnter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags, const void* arg,
             size_t arg_bytes) {
  return static_cast<int>(
      syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, arg_bytes));
}

uint32_t LoadAcquire(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void StoreRelease(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

// CLOCK_MONOTONIC in microseconds, truncated to 32 bits: JS subtracts two stamps modulo 2^32.
int32_t MonotonicMicros() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  uint64_t micros = static_cast<uint64_t>(now.tv_sec) * 1000000u + static_cast<uint64_t>(now.tv_nsec) / 1000u;
  return static_cast<int32_t>(static_cast<uint32_t>(micros));
}

void* MapRing(int fd, size_t bytes, off_t offset) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, offset);
  return p == MAP_FAILED ? nullptr : p;
}

}  // namespace

Napi::Function Ring::Define(Napi::Env env) {
  return DefineClass(env, "Ring",
                     {
                         InstanceMethod<&Ring::Enter>("enter"),
                         InstanceMethod<&Ring::WatchCompletions>("watchCompletions"),
                         InstanceMethod<&Ring::RegisterFiles>("registerFiles"),
                         InstanceMethod<&Ring::RegisterSparseBuffers>("registerSparseBuffers"),
                         InstanceMethod<&Ring::Close>("close"),
                         InstanceAccessor<&Ring::GetFd>("fd"),
                         InstanceAccessor<&Ring::GetClosed>("closed"),
                     });
}

// new Ring(entries, cqEntries, setupFlags): setupFlags must include IORING_SETUP_SQE128.
Ring::Ring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Ring>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    ThrowType(env, "Ring(entries, cqEntries, setupFlags) takes three numbers");
    return;
  }
  uint32_t entries = info[0].As<Napi::Number>().Uint32Value();
  uint32_t cq_entries = info[1].As<Napi::Number>().Uint32Value();
  uint32_t flags = info[2].As<Napi::Number>().Uint32Value();
  if ((flags & IORING_SETUP_SQE128) == 0) {
    ThrowType(env, "Ring needs IORING_SETUP_SQE128: SQEs are staged as 128-byte entries");
    return;
  }
  io_uring_params params{};
  params.flags = flags | IORING_SETUP_CQSIZE;
  params.cq_entries = cq_entries;
  ring_fd_ = SysSetup(entries, &params);
  if (ring_fd_ < 0) {
    ThrowErrno(env, "io_uring_setup", errno);
    return;
  }
  sq_entries_ = params.sq_entries;
  cq_entries_ = params.cq_entries;

  sq_ring_bytes_ = params.sq_off.array + sq_entries_ * sizeof(uint32_t);
  cq_ring_bytes_ = params.cq_off.cqes + cq_entries_ * kCqeBytes;
  bool single_mmap = (params.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single_mmap) sq_ring_bytes_ = cq_ring_bytes_ = std::max(sq_ring_bytes_, cq_ring_bytes_);
  sq_ring_ = MapRing(ring_fd_, sq_ring_bytes_, IORING_OFF_SQ_RING);
  if (sq_ring_ != nullptr) {
    cq_ring_ = single_mmap ? sq_ring_ : MapRing(ring_fd_, cq_ring_bytes_, IORING_OFF_CQ_RING);
  }
  kernel_sqes_bytes_ = sq_entries_ * kSqeBytes;
  if (cq_ring_ != nullptr) {
    kernel_sqes_ = static_cast<uint8_t*>(MapRing(ring_fd_, kernel_sqes_bytes_, IORING_OFF_SQES));
  }
  if (kernel_sqes_ == nullptr) {
    int err = errno;
    Release();
    ThrowErrno(env, "mmap(io_uring)", err);
    return;
  }

  auto* sq = static_cast<uint8_t*>(sq_ring_);
  auto* cq = static_cast<uint8_t*>(cq_ring_);
  sq_head_ = reinterpret_cast<uint32_t*>(sq + params.sq_off.head);
  sq_tail_ = reinterpret_cast<uint32_t*>(sq + params.sq_off.tail);
  sq_mask_ = *reinterpret_cast<uint32_t*>(sq + params.sq_off.ring_mask);
  sq_flags_ = reinterpret_cast<uint32_t*>(sq + params.sq_off.flags);
  sq_array_ = reinterpret_cast<uint32_t*>(sq + params.sq_off.array);
  cq_head_ = reinterpret_cast<uint32_t*>(cq + params.cq_off.head);
  cq_tail_ = reinterpret_cast<uint32_t*>(cq + params.cq_off.tail);
  cq_mask_ = *reinterpret_cast<uint32_t*>(cq + params.cq_off.ring_mask);
  kernel_cqes_ = reinterpret_cast<io_uring_cqe*>(cq + params.cq_off.cqes);
  // Slot i of the SQ always points at SQE i: SQEs are written in ring order.
  for (uint32_t i = 0; i < sq_entries_; i++) sq_array_[i] = i;

  Napi::ArrayBuffer sqes = Napi::ArrayBuffer::New(env, sq_entries_ * kSqeBytes);
  Napi::ArrayBuffer cqes = Napi::ArrayBuffer::New(env, cq_entries_ * kCqeBytes);
  Napi::ArrayBuffer clock = Napi::ArrayBuffer::New(env, sizeof(int32_t) * kClockStamps);
  staged_sqes_ = static_cast<uint8_t*>(sqes.Data());
  reaped_cqes_ = static_cast<uint8_t*>(cqes.Data());
  clock_ = static_cast<int32_t*>(clock.Data());
  reaped_capacity_ = cq_entries_;
  sqes_ref_ = Napi::Persistent(sqes);
  cqes_ref_ = Napi::Persistent(cqes);
  clock_ref_ = Napi::Persistent(clock);
  info.This().As<Napi::Object>().Set("sqes", sqes);
  info.This().As<Napi::Object>().Set("cqes", cqes);
  info.This().As<Napi::Object>().Set("clock", clock);
  info.This().As<Napi::Object>().Set("sqEntries", Napi::Number::New(env, sq_entries_));
  info.This().As<Napi::Object>().Set("cqEntries", Napi::Number::New(env, cq_entries_));
  native_ = Native::From(env);
  native_->Track(this);
}

Ring::~Ring() { Release(); }

void Ring::Release() {
  if (ring_fd_ < 0 && sq_ring_ == nullptr) return;
  StopWatching();
  if (kernel_sqes_ != nullptr) munmap(kernel_sqes_, kernel_sqes_bytes_);
  if (cq_ring_ != nullptr && cq_ring_ != sq_ring_) munmap(cq_ring_, cq_ring_bytes_);
  if (sq_ring_ != nullptr) munmap(sq_ring_, sq_ring_bytes_);
  kernel_sqes_ = nullptr;
  cq_ring_ = sq_ring_ = nullptr;
  if (ring_fd_ >= 0) close(ring_fd_);
  ring_fd_ = -1;
  if (native_ != nullptr) native_->Untrack(this);
  native_ = nullptr;
}

uint32_t Ring::ReapCompletions() {
  uint32_t head = *cq_head_;
  uint32_t tail = LoadAcquire(cq_tail_);
  uint32_t count = std::min(tail - head, reaped_capacity_);
  for (uint32_t i = 0; i < count; i++) {
    memcpy(reaped_cqes_ + i * kCqeBytes, &kernel_cqes_[(head + i) & cq_mask_], kCqeBytes);
  }
  StoreRelease(cq_head_, head + count);
  return count;
}

// enter(stagedCount, minComplete, timeoutNs) -> number of CQEs copied into `cqes`.
// Submits every SQE not yet consumed by the kernel (staged now or left over from a busy turn),
// waits for minComplete completions or timeoutNs (0 = no limit when minComplete > 0). Stamps
// `clock` before submitting and after waiting, so JS needs no clock read of its own. Staged SQEs
// the SQ has no room for (the kernel left earlier ones unconsumed) stay staged: moved to the
// front of `sqes`, their count in clock[kClockKept], for JS to stage after them and send next.
Napi::Value Ring::Enter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (ring_fd_ < 0) return ThrowErrno(env, "io_uring_enter", EBADF);
  uint32_t staged = info[0].As<Napi::Number>().Uint32Value();
  uint32_t min_complete = info[1].As<Napi::Number>().Uint32Value();
  int64_t timeout_ns = info[2].As<Napi::Number>().Int64Value();
  if (staged > sq_entries_ || min_complete > cq_entries_ || timeout_ns < 0) {
    return ThrowType(env, "enter: staged count, minComplete or timeout out of range");
  }

  clock_[kClockSubmitted] = MonotonicMicros();
  uint32_t tail = *sq_tail_;
  uint32_t unconsumed = tail - LoadAcquire(sq_head_);
  uint32_t copied = std::min(staged, sq_entries_ - unconsumed);
  // SAFETY: copied <= staged <= sq_entries_ and staged_sqes_ holds sq_entries_ SQEs of kSqeBytes.
  for (uint32_t i = 0; i < copied; i++) {
    memcpy(kernel_sqes_ + ((tail + i) & sq_mask_) * kSqeBytes, staged_sqes_ + i * kSqeBytes,
           kSqeBytes);
  }
  if (copied < staged) {
    memmove(staged_sqes_, staged_sqes_ + copied * kSqeBytes, (staged - copied) * kSqeBytes);
  }
  clock_[kClockKept] = static_cast<int32_t>(staged - copied);
  tail += copied;
  StoreRelease(sq_tail_, tail);
  uint32_t to_submit = tail - LoadAcquire(sq_head_);

  uint32_t sq_flags = LoadAcquire(sq_flags_);
  bool must_enter = to_submit > 0 || min_complete > 0 ||
                    (sq_flags & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN)) != 0;
  if (must_enter) {
    uint32_t flags = IORING_ENTER_GETEVENTS;
    __kernel_timespec ts{};
    io_uring_getevents_arg arg{};
    const void* arg_ptr = nullptr;
    size_t arg_bytes = 0;
    if (timeout_ns > 0 && min_complete > 0) {
      ts.tv_sec = timeout_ns / 1000000000;
      ts.tv_nsec = timeout_ns % 1000000000;
      arg.ts = reinterpret_cast<uint64_t>(&ts);
      arg_ptr = &arg;
      arg_bytes = sizeof(arg);
      flags |= IORING_ENTER_EXT_ARG;
    }
    int ret = SysEnter(ring_fd_, to_submit, min_complete, flags, arg_ptr, arg_bytes);
    // ETIME: the wait timed out; EINTR: a signal; EAGAIN/EBUSY: the kernel is short of CQ room
    // or memory and kept our SQEs for the next turn. None of these loses work: reap and go on.
    if (ret < 0 && errno != ETIME && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
      return ThrowErrno(env, "io_uring_enter", errno);
    }
  }
  clock_[kClockReaped] = MonotonicMicros();
  return Napi::Number::New(env, ReapCompletions());
}

void Ring::OnEventFdReadable(uv_poll_t* handle, int status, int /*events*/) {
  auto* ring = static_cast<Ring*>(handle->data);
  uint64_t count;
  // Drain the counter; a spurious wake-up only costs an empty reap in JS.
  while (read(ring->event_fd_, &count, sizeof(count)) == sizeof(count)) {
  }
  if (status < 0 || ring->on_completion_.IsEmpty()) return;
  Napi::Env env(ring->env_);
  Napi::HandleScope scope(env);
  ring->on_completion_.MakeCallback(env.Global(), {});
  if (env.IsExceptionPending()) {
    napi_fatal_exception(env, env.GetAndClearPendingException().Value());
  }
}

// watchCompletions(callback): registers an eventfd with the ring and calls back from the event
// loop whenever CQEs were posted, so a ring can be served without blocking its thread.
Napi::Value Ring::WatchCompletions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (ring_fd_ < 0) return ThrowErrno(env, "io_uring_register", EBADF);
  if (!info[0].IsFunction()) return ThrowType(env, "watchCompletions(callback)");
  if (poll_ != nullptr) return ThrowErrno(env, "io_uring_register(eventfd)", EEXIST);
  event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) return ThrowErrno(env, "eventfd", errno);
  if (syscall(__NR_io_uring_register, ring_fd_, IORING_REGISTER_EVENTFD, &event_fd_, 1) < 0) {
    int err = errno;
    close(event_fd_);
    event_fd_ = -1;
    return ThrowErrno(env, "io_uring_register(eventfd)", err);
  }
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  poll_ = new uv_poll_t;
  poll_->data = this;
  uv_poll_init(loop, poll_, event_fd_);
  uv_poll_start(poll_, UV_READABLE, &Ring::OnEventFdReadable);
  on_completion_ = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

// registerFiles(fds): the ring's fixed-file table (IORING_REGISTER_FILES); an SQE with
// IOSQE_FIXED_FILE names a file by its index here, and the kernel skips fget/fput for it.
Napi::Value Ring::RegisterFiles(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (ring_fd_ < 0) return ThrowErrno(env, "io_uring_register", EBADF);
  if (!info[0].IsArray()) return ThrowType(env, "registerFiles(fds: number[])");
  Napi::Array list = info[0].As<Napi::Array>();
  std::vector<int32_t> fds(list.Length());
  for (uint32_t i = 0; i < fds.size(); i++) {
    Napi::Value fd = list.Get(i);
    if (!fd.IsNumber()) return ThrowType(env, "registerFiles: fds must be numbers");
    fds[i] = fd.As<Napi::Number>().Int32Value();
  }
  if (syscall(__NR_io_uring_register, ring_fd_, IORING_REGISTER_FILES, fds.data(),
              static_cast<unsigned>(fds.size())) < 0) {
    return ThrowErrno(env, "io_uring_register(files)", errno);
  }
  return env.Undefined();
}

// registerSparseBuffers(count): an empty fixed-buffer table of `count` slots
// (IORING_REGISTER_BUFFERS2 with IORING_RSRC_REGISTER_SPARSE), which the ublk driver fills with a
// request's pages (UBLK_F_AUTO_BUF_REG) for READ_FIXED/WRITE_FIXED to name by index.
Napi::Value Ring::RegisterSparseBuffers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (ring_fd_ < 0) return ThrowErrno(env, "io_uring_register", EBADF);
  if (!info[0].IsNumber()) return ThrowType(env, "registerSparseBuffers(count: number)");
  io_uring_rsrc_register table{};
  table.nr = info[0].As<Napi::Number>().Uint32Value();
  table.flags = IORING_RSRC_REGISTER_SPARSE;
  if (syscall(__NR_io_uring_register, ring_fd_, IORING_REGISTER_BUFFERS2, &table,
              static_cast<unsigned>(sizeof(table))) < 0) {
    return ThrowErrno(env, "io_uring_register(sparse buffers)", errno);
  }
  return env.Undefined();
}

void Ring::StopWatching() {
  if (poll_ != nullptr) {
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_),
             [](uv_handle_t* handle) { delete reinterpret_cast<uv_poll_t*>(handle); });
    poll_ = nullptr;
  }
  if (event_fd_ >= 0) close(event_fd_);
  event_fd_ = -1;
  if (!on_completion_.IsEmpty()) on_completion_.Reset();
}

Napi::Value Ring::Close(const Napi::CallbackInfo& info) {
  Release();
  return info.Env().Undefined();
}

Napi::Value Ring::GetFd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), ring_fd_);
}

Napi::Value Ring::GetClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), ring_fd_ < 0);
}

}  // namespace ublkd
