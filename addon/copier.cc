#include "copier.h"

#include <cstring>

#include "errors.h"

namespace ublkd {

namespace {

constexpr uint32_t kOpWords = 7;

}  // namespace

uint8_t* Copier::Range(const int32_t* op, int at, uint64_t bytes) const {
  auto index = static_cast<uint32_t>(op[at]);
  uint64_t offset = static_cast<uint64_t>(static_cast<uint32_t>(op[at + 1])) |
                    (static_cast<uint64_t>(static_cast<uint32_t>(op[at + 2])) << 32);
  if (index >= buffers_.size() || offset > buffers_[index].bytes || bytes > buffers_[index].bytes - offset) return nullptr;
  return buffers_[index].data + offset;
}

Napi::Function Copier::Define(Napi::Env env) {
  return DefineClass(env, "Copier", {InstanceMethod<&Copier::Run>("run")});
}

Copier::Copier(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Copier>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    ThrowType(env, "Copier(buffers: Uint8Array[])");
    return;
  }
  Napi::Array list = info[0].As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value value = list.Get(i);
    if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      ThrowType(env, "Copier: every buffer must be a Uint8Array");
      return;
    }
    Napi::Uint8Array array = value.As<Napi::Uint8Array>();
    buffers_.push_back({array.Data(), array.ByteLength()});
    refs_.push_back(Napi::Persistent(array));
  }
}

Napi::Value Copier::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    return ThrowType(env, "run(ops: Int32Array, count)");
  }
  Napi::Int32Array ops = info[0].As<Napi::Int32Array>();
  uint32_t count = info[1].As<Napi::Number>().Uint32Value();
  if (count > ops.ElementLength() / kOpWords) return ThrowType(env, "run: count exceeds the ops");
  // A bound buffer unmapped since (munmap detaches it) must not be written through the pointer
  // taken at construction.
  for (size_t i = 0; i < refs_.size(); i++) {
    if (refs_[i].Value().ByteLength() != buffers_[i].bytes) {
      Napi::Error::New(env, "Copier: a bound buffer was detached").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  const int32_t* op = ops.Data();
  for (uint32_t i = 0; i < count; i++, op += kOpWords) {
    auto bytes = static_cast<uint64_t>(static_cast<uint32_t>(op[6]));
    uint8_t* dst = Range(op, 0, bytes);
    if (dst == nullptr) {
      Napi::RangeError::New(env, "Copier: destination outside its buffer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (op[3] == -1) {
      memset(dst, 0, bytes);
      continue;
    }
    const uint8_t* src = Range(op, 3, bytes);
    if (src == nullptr) {
      Napi::RangeError::New(env, "Copier: source outside its buffer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    memmove(dst, src, bytes);
  }
  return env.Undefined();
}

}  // namespace ublkd
