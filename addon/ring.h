// Ring: one io_uring with 128-byte SQEs, driven by raw syscalls.
//
// Mechanism only. JS encodes SQEs into `sqes` (a staging ArrayBuffer owned by the ring) and calls
// enter(count, minComplete, timeoutNs): the ring copies the staged SQEs into the kernel's SQ,
// makes one io_uring_enter, and copies every visible CQE (16 bytes each, kernel layout) into
// `cqes`, returning how many. One JS/C++ crossing per loop turn. `clock` holds two
// CLOCK_MONOTONIC stamps of the last enter in microseconds (low 32 bits): [0] when its SQEs
// went to the kernel, [1] when its wait ended.
//
// A ring belongs to the thread that created it; every method throws EBADF after close().
#pragma once

#include <linux/io_uring.h>
#include <napi.h>
#include <uv.h>

#include <cstdint>

namespace ublkd {

class Ring : public Napi::ObjectWrap<Ring> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Ring(const Napi::CallbackInfo& info);
  ~Ring() override;

  // Idempotent; called from close(), the finalizer and the env cleanup hook.
  void Release();

 private:
  Napi::Value Enter(const Napi::CallbackInfo& info);
  Napi::Value WatchCompletions(const Napi::CallbackInfo& info);
  Napi::Value RegisterFiles(const Napi::CallbackInfo& info);
  Napi::Value RegisterSparseBuffers(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value GetFd(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);

  uint32_t ReapCompletions();
  static void OnEventFdReadable(uv_poll_t* handle, int status, int events);
  void StopWatching();

  int ring_fd_ = -1;
  uint32_t sq_entries_ = 0;
  uint32_t cq_entries_ = 0;

  void* sq_ring_ = nullptr;
  size_t sq_ring_bytes_ = 0;
  void* cq_ring_ = nullptr;  // may alias sq_ring_ (IORING_FEAT_SINGLE_MMAP)
  size_t cq_ring_bytes_ = 0;
  uint8_t* kernel_sqes_ = nullptr;  // sq_entries_ SQEs of 128 bytes
  size_t kernel_sqes_bytes_ = 0;

  uint32_t* sq_head_ = nullptr;
  uint32_t* sq_tail_ = nullptr;
  uint32_t sq_mask_ = 0;
  uint32_t* sq_flags_ = nullptr;
  uint32_t* sq_array_ = nullptr;
  uint32_t* cq_head_ = nullptr;
  uint32_t* cq_tail_ = nullptr;
  uint32_t cq_mask_ = 0;
  io_uring_cqe* kernel_cqes_ = nullptr;

  // JS-visible staging (SQEs in), result (CQEs out) and clock buffers; the references keep
  // them alive.
  static constexpr int kClockSubmitted = 0;
  static constexpr int kClockReaped = 1;
  static constexpr int kClockKept = 2;  // not a stamp: staged SQEs the SQ had no room for
  static constexpr int kClockStamps = 3;
  Napi::Reference<Napi::ArrayBuffer> sqes_ref_;
  Napi::Reference<Napi::ArrayBuffer> cqes_ref_;
  Napi::Reference<Napi::ArrayBuffer> clock_ref_;
  int32_t* clock_ = nullptr;
  uint8_t* staged_sqes_ = nullptr;
  uint8_t* reaped_cqes_ = nullptr;
  uint32_t reaped_capacity_ = 0;

  // Completion wake-up into the event loop (control ring, event-loop mode).
  int event_fd_ = -1;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference on_completion_;
  napi_env env_ = nullptr;

  // The addon instance that tracks this ring for env teardown; cleared if it goes first.
  friend class Native;
  class Native* native_ = nullptr;
};

}  // namespace ublkd
