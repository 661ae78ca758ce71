#pragma once

#include <napi.h>

namespace ublkd {

// The kernel ABI as this compiler sees it (sizes, offsets, opcodes), for the TS pair test.
Napi::Object AbiLayout(Napi::Env env);

}  // namespace ublkd
