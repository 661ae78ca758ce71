// Inline I/O: SQEs performed synchronously by the calling thread, for backings whose io_uring
// I/O the kernel would hand to a worker thread anyway (files without FMODE_NOWAIT, such as
// tmpfs in Linux 6.12). JS encodes the same SQEs it would submit to a ring; one call performs a
// whole batch, so a loop turn crosses into C++ once however many requests it serves.
#pragma once

#include <napi.h>

namespace ublkd {

// executeSqes(sqes: ArrayBuffer, count, results: Int32Array): performs SQEs 0..count-1 of
// `sqes` (128-byte slots, as a ring's staging buffer) in order with the matching system call
// and writes each result, as the CQE would carry it (bytes, or a negative errno), to results.
//   IORING_OP_READ       preadv2(fd, addr/len, off, rw_flags)
//   IORING_OP_WRITE      pwritev2(fd, addr/len, off, rw_flags)   (RWF_DSYNC for FUA)
//   IORING_OP_FSYNC      fdatasync(fd) with IORING_FSYNC_DATASYNC, fsync(fd) otherwise
//   IORING_OP_FALLOCATE  fallocate(fd, mode = len, offset = off, length = addr)
// Any other opcode gets -EINVAL. A bad address is the kernel's to refuse (-EFAULT).
Napi::Value ExecuteSqes(const Napi::CallbackInfo& info);

}  // namespace ublkd
