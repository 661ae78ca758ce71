// The addon instance: one per Node environment (main thread and each worker thread).
// It owns the export table and releases every ring still open when its environment is torn
// down, so a worker that exits or dies never leaks a ring (and with it the ublk char device).
#pragma once

#include <napi.h>

#include <unordered_set>

namespace ublkd {

class Ring;

class Native : public Napi::Addon<Native> {
 public:
  Native(Napi::Env env, Napi::Object exports);
  ~Native();

  static Native* From(Napi::Env env) { return env.GetInstanceData<Native>(); }
  void Track(Ring* ring) { rings_.insert(ring); }
  void Untrack(Ring* ring) { rings_.erase(ring); }

 private:
  std::unordered_set<Ring*> rings_;
};

}  // namespace ublkd
