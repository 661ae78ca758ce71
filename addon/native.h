// The addon instance: one per Node environment (main thread and each worker thread).
// It owns the export table and releases every ring and mapping still open when its environment
// is torn down, so a worker that exits or dies never leaks them (and with them the ublk char
// device).
#pragma once

#include <napi.h>

#include <unordered_set>

namespace ublkd {

class Ring;
class Native;

// A mapping exposed as an external ArrayBuffer (sys.cc). munmap() unmaps and detaches the buffer
// so JS sees a zero-length buffer instead of touching unmapped memory; the finalizer frees the
// record. The owning environment unmaps whatever is still mapped when it is torn down: a
// descriptor mapping left behind would keep the ublk char device open. Anonymous memory (I/O
// buffers) is left mapped instead if a ring of the environment was still open then (its thread
// was terminated mid-loop): I/O the kernel still runs for that ring may write into it, and an
// unmapped range would be reused.
struct Mapping {
  void* address;
  size_t bytes;
  bool mapped;
  bool anonymous;
  Native* owner;  // cleared when the owner goes first
};

class Native : public Napi::Addon<Native> {
 public:
  Native(Napi::Env env, Napi::Object exports);
  ~Native();

  static Native* From(Napi::Env env) { return env.GetInstanceData<Native>(); }
  void Track(Ring* ring) { rings_.insert(ring); }
  void Untrack(Ring* ring) { rings_.erase(ring); }
  void Track(Mapping* mapping) { mappings_.insert(mapping); }
  void Untrack(Mapping* mapping) { mappings_.erase(mapping); }

 private:
  std::unordered_set<Ring*> rings_;
  std::unordered_set<Mapping*> mappings_;
};

}  // namespace ublkd
