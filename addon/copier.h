// Copier: batched copies between a fixed set of endpoints, for targets that move request data
// themselves (the memory target: its store and the request's data). A target encodes a turn's
// copies as integers and runs them in one call at the end of the turn: no view is allocated per
// copy (Buffer.copy makes one) and a loop turn crosses into C++ once.
//
// Endpoints are bound once: Uint8Arrays (which may view SharedArrayBuffers), every copy
// bounds-checked against them, so JS never hands C++ a raw address; or a file descriptor (the
// ublk char device in user-copy mode), whose copies are pread/pwrite at the op's offset and which
// the kernel checks.
#pragma once

#include <napi.h>

#include <cstdint>
#include <vector>

namespace ublkd {

class Copier : public Napi::ObjectWrap<Copier> {
 public:
  static Napi::Function Define(Napi::Env env);
  // new Copier(endpoints: (Uint8Array | fd)[])
  explicit Copier(const Napi::CallbackInfo& info);

 private:
  // run(ops: Int32Array, count[, results: Int32Array]): performs ops 0..count-1 in order. An op
  // is kOpWords int32:
  //   [dst endpoint, dst offset lo, dst offset hi, src endpoint, src offset lo, src offset hi, bytes]
  // with src buffer -1 meaning "zeros" (fill the destination range with 0) and -2 "release"
  // (the range reads as zeros too, but its whole pages are given back to the kernel with
  // MADV_DONTNEED and only the partial pages at its edges are cleared: the destination must be
  // private anonymous memory, as ArrayBuffer and SharedArrayBuffer memory is). Offsets are split
  // in unsigned 32-bit halves. One side of an op may be a file: pwrite to it, pread from it. With
  // `results`, results[i] is op i's bytes done, or -errno of a failed file op (the other ops go
  // on); without, a failed file op throws. Throws RangeError for an op outside its buffers (or
  // between two files); ops before it have been performed.
  Napi::Value Run(const Napi::CallbackInfo& info);

  struct Bound {
    uint8_t* data;
    size_t bytes;
    // A file endpoint: data is null, bytes 0.
    int fd;
  };
  // The range op[at] (buffer), op[at + 1..2] (offset) of `bytes` bytes, or nullptr if it is not
  // inside a bound buffer.
  uint8_t* Range(const int32_t* op, int at, uint64_t bytes) const;
  // The descriptor if op[at] names a file endpoint, else -1.
  int FileAt(const int32_t* op, int at) const;

  std::vector<Bound> buffers_;
  // Keeps the bound arrays (and their memory) alive as long as the copier; empty for a file.
  std::vector<Napi::Reference<Napi::Uint8Array>> refs_;
};

}  // namespace ublkd
