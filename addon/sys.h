// One function per system facility the TypeScript side needs and Node lacks.
#pragma once

#include <napi.h>

namespace ublkd {

Napi::Value AllocBuffer(const Napi::CallbackInfo& info);
Napi::Value BufferAddress(const Napi::CallbackInfo& info);
Napi::Value MmapReadOnly(const Napi::CallbackInfo& info);
Napi::Value Munmap(const Napi::CallbackInfo& info);
Napi::Value NoHugePages(const Napi::CallbackInfo& info);
Napi::Value PinThread(const Napi::CallbackInfo& info);
Napi::Value SetIoFlusher(const Napi::CallbackInfo& info);
Napi::Value DirectIoAlignment(const Napi::CallbackInfo& info);
Napi::Value ThreadAffinity(const Napi::CallbackInfo& info);
Napi::Value GetTid(const Napi::CallbackInfo& info);
Napi::Value EventFd(const Napi::CallbackInfo& info);
Napi::Value EventFdWrite(const Napi::CallbackInfo& info);
Napi::Value DupFd(const Napi::CallbackInfo& info);
Napi::Value AbandonMapping(const Napi::CallbackInfo& info);
Napi::Value UnshareMountNamespace(const Napi::CallbackInfo& info);
Napi::Value Exec(const Napi::CallbackInfo& info);
Napi::Value SendDatagram(const Napi::CallbackInfo& info);

}  // namespace ublkd
