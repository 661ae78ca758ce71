// The export table: the only place that names what JS can call.
#include <sys/mman.h>
#include <unistd.h>

#include "abi_layout.h"
#include "copier.h"
#include "inline_io.h"
#include "native.h"
#include "ring.h"
#include "sys.h"

namespace ublkd {

Native::Native(Napi::Env env, Napi::Object exports) {
  DefineAddon(exports,
              {
                  InstanceValue("Ring", Ring::Define(env), napi_enumerable),
                  InstanceValue("Copier", Copier::Define(env), napi_enumerable),
                  InstanceValue("abiLayout", AbiLayout(env), napi_enumerable),
                  InstanceValue("pageSize", Napi::Number::New(env, sysconf(_SC_PAGESIZE)),
                                napi_enumerable),
              });
  exports.Set("allocBuffer", Napi::Function::New<AllocBuffer>(env, "allocBuffer"));
  exports.Set("bufferAddress", Napi::Function::New<BufferAddress>(env, "bufferAddress"));
  exports.Set("mmapReadOnly", Napi::Function::New<MmapReadOnly>(env, "mmapReadOnly"));
  exports.Set("munmap", Napi::Function::New<Munmap>(env, "munmap"));
  exports.Set("abandonMapping", Napi::Function::New<AbandonMapping>(env, "abandonMapping"));
  exports.Set("noHugePages", Napi::Function::New<NoHugePages>(env, "noHugePages"));
  exports.Set("pinThread", Napi::Function::New<PinThread>(env, "pinThread"));
  exports.Set("setIoFlusher", Napi::Function::New<SetIoFlusher>(env, "setIoFlusher"));
  exports.Set("directIoAlignment", Napi::Function::New<DirectIoAlignment>(env, "directIoAlignment"));
  exports.Set("threadAffinity", Napi::Function::New<ThreadAffinity>(env, "threadAffinity"));
  exports.Set("gettid", Napi::Function::New<GetTid>(env, "gettid"));
  exports.Set("eventFd", Napi::Function::New<EventFd>(env, "eventFd"));
  exports.Set("eventFdWrite", Napi::Function::New<EventFdWrite>(env, "eventFdWrite"));
  exports.Set("dupFd", Napi::Function::New<DupFd>(env, "dupFd"));
  exports.Set("unshareMountNamespace", Napi::Function::New<UnshareMountNamespace>(env, "unshareMountNamespace"));
  exports.Set("exec", Napi::Function::New<Exec>(env, "exec"));
  exports.Set("sendDatagram", Napi::Function::New<SendDatagram>(env, "sendDatagram"));
  exports.Set("executeSqes", Napi::Function::New<ExecuteSqes>(env, "executeSqes"));
}

// Runs when this environment (main thread or a worker) is torn down.
Native::~Native() {
  std::unordered_set<Ring*> open_rings;
  open_rings.swap(rings_);
  bool io_may_be_in_flight = !open_rings.empty();
  for (Ring* ring : open_rings) {
    ring->native_ = nullptr;
    ring->Release();
  }
  for (Mapping* mapping : mappings_) {
    if (mapping->mapped && !(io_may_be_in_flight && mapping->anonymous)) munmap(mapping->address, mapping->bytes);
    mapping->mapped = false;
    mapping->owner = nullptr;
  }
  mappings_.clear();
}

}  // namespace ublkd

using ublkd::Native;
NODE_API_ADDON(Native)
