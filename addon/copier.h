// Copier: batched memory copies between a fixed set of buffers, for targets that move request
// data in memory (the memory target: its store and the queue's I/O buffers). A target encodes a
// turn's copies as integers and runs them in one call at the end of the turn: no view is
// allocated per copy (Buffer.copy makes one) and a loop turn crosses into C++ once.
//
// Buffers are bound once, as Uint8Arrays (which may view SharedArrayBuffers); every copy is
// bounds-checked against them, so JS never hands C++ a raw address.
#pragma once

#include <napi.h>

#include <cstdint>
#include <vector>

namespace ublkd {

class Copier : public Napi::ObjectWrap<Copier> {
 public:
  static Napi::Function Define(Napi::Env env);
  // new Copier(buffers: Uint8Array[])
  explicit Copier(const Napi::CallbackInfo& info);

 private:
  // run(ops: Int32Array, count): performs ops 0..count-1 in order. An op is kOpWords int32:
  //   [dst buffer, dst offset lo, dst offset hi, src buffer, src offset lo, src offset hi, bytes]
  // with src buffer -1 meaning "zeros" (fill the destination range with 0) and -2 "release"
  // (the range reads as zeros too, but its whole pages are given back to the kernel with
  // MADV_DONTNEED and only the partial pages at its edges are cleared: the destination must be
  // private anonymous memory, as ArrayBuffer and SharedArrayBuffer memory is). Offsets are split
  // in unsigned 32-bit halves. Throws RangeError for an op outside its buffers; ops before it
  // have been performed.
  Napi::Value Run(const Napi::CallbackInfo& info);

  struct Bound {
    uint8_t* data;
    size_t bytes;
  };
  // The range op[at] (buffer), op[at + 1..2] (offset) of `bytes` bytes, or nullptr if it is not
  // inside a bound buffer.
  uint8_t* Range(const int32_t* op, int at, uint64_t bytes) const;

  std::vector<Bound> buffers_;
  // Keeps the bound arrays (and their memory) alive as long as the copier.
  std::vector<Napi::Reference<Napi::Uint8Array>> refs_;
};

}  // namespace ublkd
