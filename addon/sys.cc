#include "sys.h"

#include <sched.h>
#include <fcntl.h>
#include <linux/stat.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "native.h"

namespace ublkd {

namespace {

void FinalizeMapping(Napi::Env /*env*/, void* /*data*/, Mapping* mapping) {
  if (mapping->owner != nullptr) mapping->owner->Untrack(mapping);
  if (mapping->mapped) munmap(mapping->address, mapping->bytes);
  delete mapping;
}

Napi::Value ExposeMapping(Napi::Env env, void* address, size_t bytes, bool anonymous) {
  auto* mapping = new Mapping{address, bytes, true, anonymous, Native::From(env)};
  mapping->owner->Track(mapping);
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, address, bytes, FinalizeMapping, mapping);
  // munmap() finds the record again through this non-enumerable, read-only property.
  buffer.DefineProperty(Napi::PropertyDescriptor::Value(
      "__ublkdMapping", Napi::External<Mapping>::New(env, mapping), napi_default));
  return buffer;
}

}  // namespace

// allocBuffer(bytes, hugePages = false, lock = false): page-aligned, zeroed anonymous memory for
// I/O buffers; its address is stable for its lifetime, so the kernel may be handed it (FETCH_REQ
// addr). `lock`: mlock2(MLOCK_ONFAULT), each page locked in RAM once first touched, so it is never
// swapped out, and untouched pages still cost nothing.
// A queue's buffers are one mapping of depth x 512 KiB: with 4 KiB pages only what requests
// touch becomes resident; with transparent huge pages (hugePages: MADV_HUGEPAGE) the first
// 4 KiB request on a tag makes 2 MiB resident, and the kernel's copies to and from it are cheaper.
Napi::Value AllocBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !(info[1].IsUndefined() || info[1].IsBoolean()) ||
      !(info[2].IsUndefined() || info[2].IsBoolean())) {
    return ThrowType(env, "allocBuffer(bytes, hugePages?, lock?)");
  }
  bool huge_pages = info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  bool lock = info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  int64_t bytes = info[0].As<Napi::Number>().Int64Value();
  if (bytes <= 0) return ThrowType(env, "allocBuffer: bytes must be > 0");
  void* address = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (address == MAP_FAILED) return ThrowErrno(env, "mmap(anonymous)", errno);
  if (madvise(address, static_cast<size_t>(bytes), huge_pages ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) != 0) {
    int err = errno;
    munmap(address, static_cast<size_t>(bytes));
    return ThrowErrno(env, huge_pages ? "madvise(MADV_HUGEPAGE)" : "madvise(MADV_NOHUGEPAGE)", err);
  }
  if (lock && mlock2(address, static_cast<size_t>(bytes), MLOCK_ONFAULT) != 0) {
    int err = errno;
    munmap(address, static_cast<size_t>(bytes));
    return ThrowErrno(env, "mlock2(MLOCK_ONFAULT)", err);
  }
  return ExposeMapping(env, address, static_cast<size_t>(bytes), true);
}

// noHugePages(array: Uint8Array): MADV_NOHUGEPAGE on the whole pages of the array's memory (a
// SharedArrayBuffer's, say), so that only the 4 KiB pages it touches become resident and a
// released range (Copier's release) is given back whole. With transparent huge pages "always",
// a 4 KiB write would make 2 MiB resident and MADV_DONTNEED would free little of it.
Napi::Value NoHugePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    return ThrowType(env, "noHugePages(array: Uint8Array)");
  }
  Napi::Uint8Array array = info[0].As<Napi::Uint8Array>();
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t start = reinterpret_cast<uintptr_t>(array.Data());
  uintptr_t first = (start + page - 1) & ~(page - 1);
  uintptr_t last = (start + array.ByteLength()) & ~(page - 1);
  if (first < last && madvise(reinterpret_cast<void*>(first), last - first, MADV_NOHUGEPAGE) != 0) {
    return ThrowErrno(env, "madvise(MADV_NOHUGEPAGE)", errno);
  }
  return env.Undefined();
}

// bufferAddress(arrayBuffer, offset): the user-space address of byte `offset`, as a bigint.
Napi::Value BufferAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer() || !info[1].IsNumber()) {
    return ThrowType(env, "bufferAddress(arrayBuffer, offset)");
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  int64_t offset = info[1].As<Napi::Number>().Int64Value();
  if (offset < 0 || static_cast<size_t>(offset) > buffer.ByteLength()) {
    return ThrowType(env, "bufferAddress: offset outside the buffer");
  }
  auto address = reinterpret_cast<uintptr_t>(buffer.Data()) + static_cast<uintptr_t>(offset);
  return Napi::BigInt::New(env, static_cast<uint64_t>(address));
}

// mmapReadOnly(fd, offset, bytes): a shared read-only mapping (the ublk io descriptor array).
Napi::Value MmapReadOnly(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    return ThrowType(env, "mmapReadOnly(fd, offset, bytes)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t offset = info[1].As<Napi::Number>().Int64Value();
  int64_t bytes = info[2].As<Napi::Number>().Int64Value();
  if (offset < 0 || bytes <= 0) return ThrowType(env, "mmapReadOnly: bad offset or length");
  void* address = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ, MAP_SHARED | MAP_POPULATE,
                       fd, static_cast<off_t>(offset));
  if (address == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  return ExposeMapping(env, address, static_cast<size_t>(bytes), false);
}

// Ends a buffer's mapping (unmapping it, or abandoning it mapped for good) and detaches the
// buffer; a buffer already ended is left as it is.
static Napi::Value EndMapping(const Napi::CallbackInfo& info, const char* name, bool unmap) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) return ThrowType(env, (std::string(name) + "(arrayBuffer)").c_str());
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  Napi::Value record = buffer.Get("__ublkdMapping");
  if (!record.IsExternal()) return ThrowType(env, (std::string(name) + ": not a buffer mapped by this addon").c_str());
  Mapping* mapping = record.As<Napi::External<Mapping>>().Data();
  if (mapping->mapped) {
    if (unmap && munmap(mapping->address, mapping->bytes) != 0) return ThrowErrno(env, "munmap", errno);
    mapping->mapped = false;
    buffer.Detach();
  }
  return env.Undefined();
}

// munmap(arrayBuffer): unmap a buffer from allocBuffer/mmapReadOnly now and detach it.
Napi::Value Munmap(const Napi::CallbackInfo& info) { return EndMapping(info, "munmap", true); }

// abandonMapping(arrayBuffer): detach a buffer from allocBuffer and never unmap it (not on GC,
// not at teardown): the kernel may still write into it, and unmapped memory would be reused.
Napi::Value AbandonMapping(const Napi::CallbackInfo& info) { return EndMapping(info, "abandonMapping", false); }

// unshareMountNamespace(): the calling thread gets a mount namespace of its own (a copy of the
// current one) whose mounts are slaves: mounts made outside still appear in it, but nothing done
// in it reaches the outside. Only the calling thread moves: exec() right after takes the process.
Napi::Value UnshareMountNamespace(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (unshare(CLONE_NEWNS) != 0) return ThrowErrno(env, "unshare(CLONE_NEWNS)", errno);
  if (mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) != 0) return ThrowErrno(env, "mount(MS_REC|MS_SLAVE)", errno);
  return env.Undefined();
}

// exec(path, argv): execve with the current environment and standard streams; returns only on
// failure. Replaces the whole process (every thread) and keeps its pid.
Napi::Value Exec(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsArray()) return ThrowType(env, "exec(path, argv: string[])");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Array list = info[1].As<Napi::Array>();
  std::vector<std::string> args(list.Length());
  for (uint32_t i = 0; i < args.size(); i++) {
    Napi::Value arg = list.Get(i);
    if (!arg.IsString()) return ThrowType(env, "exec: argv must be strings");
    args[i] = arg.As<Napi::String>().Utf8Value();
  }
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  // Node marks the standard streams close-on-exec; the new image must keep them.
  for (int fd = 0; fd <= 2; fd++) {
    int flags = fcntl(fd, F_GETFD);
    if (flags >= 0) fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
  }
  execve(path.c_str(), argv.data(), environ);
  return ThrowErrno(env, "execve", errno);
}

// pinThread(cpus): restrict the calling thread (not the process) to the given CPUs.
Napi::Value PinThread(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) return ThrowType(env, "pinThread(cpus: number[])");
  Napi::Array cpus = info[0].As<Napi::Array>();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < cpus.Length(); i++) {
    Napi::Value cpu = cpus.Get(i);
    if (!cpu.IsNumber()) return ThrowType(env, "pinThread: cpus must be numbers");
    int32_t index = cpu.As<Napi::Number>().Int32Value();
    if (index < 0 || index >= CPU_SETSIZE) return ThrowType(env, "pinThread: cpu out of range");
    CPU_SET(index, &set);
  }
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    return ThrowErrno(env, "sched_setaffinity", errno);
  }
  return env.Undefined();
}

// setIoFlusher(): mark the calling thread PR_SET_IO_FLUSHER (PF_MEMALLOC_NOIO |
// PF_LOCAL_THROTTLE), as the kernel's own I/O daemons are: memory reclaim it triggers must not
// wait on I/O to a device it serves itself, nor be throttled by that device's dirty pages.
Napi::Value SetIoFlusher(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) return ThrowErrno(env, "prctl(PR_SET_IO_FLUSHER)", errno);
  return env.Undefined();
}

// directIoAlignment(path): [offset, memory]: the file offset and length alignment, and the
// buffer address alignment, O_DIRECT I/O on the file needs (statx STATX_DIOALIGN, Linux 6.1+);
// [0, 0] when the filesystem does not say (or has no O_DIRECT).
Napi::Value DirectIoAlignment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) return ThrowType(env, "directIoAlignment(path)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  struct statx st {};
  if (statx(AT_FDCWD, path.c_str(), 0, STATX_DIOALIGN, &st) != 0) return ThrowErrno(env, "statx", errno);
  bool reported = (st.stx_mask & STATX_DIOALIGN) != 0;
  Napi::Array alignments = Napi::Array::New(env, 2);
  alignments.Set(0u, Napi::Number::New(env, reported ? st.stx_dio_offset_align : 0));
  alignments.Set(1u, Napi::Number::New(env, reported ? st.stx_dio_mem_align : 0));
  return alignments;
}

// threadAffinity(): the CPUs the calling thread may run on.
Napi::Value ThreadAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {
    return ThrowErrno(env, "sched_getaffinity", errno);
  }
  Napi::Array cpus = Napi::Array::New(env);
  uint32_t count = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (CPU_ISSET(cpu, &set)) cpus.Set(count++, Napi::Number::New(env, cpu));
  }
  return cpus;
}

Napi::Value GetTid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

// eventFd(): a non-blocking eventfd, closed with fs.closeSync. Used to wake a queue thread
// blocked in io_uring_enter: the thread keeps a read of it in flight on its ring.
Napi::Value EventFd(const Napi::CallbackInfo& info) {
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return ThrowErrno(info.Env(), "eventfd", errno);
  return Napi::Number::New(info.Env(), fd);
}

// dupFd(fd): a second descriptor of the same open file (close-on-exec), closed with
// fs.closeSync. A queue worker gets its own, so the descriptor it uses is never closed, and its
// number never reused, while it runs.
Napi::Value DupFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) return ThrowType(env, "dupFd(fd)");
  int fd = fcntl(info[0].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, "fcntl(F_DUPFD_CLOEXEC)", errno);
  return Napi::Number::New(env, fd);
}

// eventFdWrite(fd): add 1 to the eventfd counter.
Napi::Value EventFdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) return ThrowType(env, "eventFdWrite(fd)");
  uint64_t one = 1;
  if (write(info[0].As<Napi::Number>().Int32Value(), &one, sizeof(one)) != sizeof(one)) {
    return ThrowErrno(env, "write(eventfd)", errno);
  }
  return env.Undefined();
}

// sendDatagram(path, message): one datagram to the unix socket at `path` ('@name': the abstract
// socket 'name'), from a socket made for it. Node has no unix datagram sockets; the service
// manager's notification socket (sd_notify's NOTIFY_SOCKET) is one.
Napi::Value SendDatagram(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsString()) return ThrowType(env, "sendDatagram(path, message)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string message = info[1].As<Napi::String>().Utf8Value();
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) return ThrowErrno(env, "sendDatagram", ENAMETOOLONG);
  memcpy(address.sun_path, path.data(), path.size());
  if (path[0] == '@') address.sun_path[0] = '\0';
  socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, "socket", errno);
  ssize_t sent = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&address), length);
  int err = errno;
  close(fd);
  if (sent < 0) return ThrowErrno(env, "sendto", err);
  return env.Undefined();
}

}  // namespace ublkd
