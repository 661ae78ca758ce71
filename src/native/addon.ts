// The typed face of the native addon (addon/): nothing else loads the .node file.
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** One io_uring with 128-byte SQEs. See addon/ring.h for the contract. */
export interface NativeRing {
  /** Staging area: `sqEntries` SQEs of 128 bytes, encoded by src/abi/io-uring.ts. */
  readonly sqes: ArrayBuffer
  /** Reaped CQEs in kernel layout (16 bytes each): user_data u64, res s32, flags u32. */
  readonly cqes: ArrayBuffer
  /**
   * Two int32 stamps of the last enter(), CLOCK_MONOTONIC in µs modulo 2^32: [0] when its SQEs
   * went to the kernel, [1] when its wait ended; then [2]: how many of the staged SQEs found no
   * room in the SQ and were kept staged, moved to the front of `sqes` (normally 0).
   */
  readonly clock: ArrayBuffer
  readonly sqEntries: number
  readonly cqEntries: number
  readonly fd: number
  readonly closed: boolean
  /** Submit `staged` SQEs from `sqes`, wait for `minComplete` CQEs (or `timeoutNs`), reap into `cqes`. */
  enter(staged: number, minComplete: number, timeoutNs: number): number
  /** The fixed-file table: an SQE with IOSQE_FIXED_FILE gives an index into `fds` as its fd. */
  registerFiles(fds: readonly number[]): void
  /** An empty fixed-buffer table of `count` slots (UBLK_F_AUTO_BUF_REG fills slot `tag` with a
   *  request's pages; READ_FIXED/WRITE_FIXED name it by buf_index). */
  registerSparseBuffers(count: number): void
  /** Call `callback` from the event loop whenever CQEs were posted (eventfd + uv_poll). */
  watchCompletions(callback: () => void): void
  close(): void
}

/**
 * Batched copies between endpoints bound at construction (see addon/copier.h): an op is 7 int32,
 * [dst endpoint, dst offset lo, hi, src endpoint (-1: zeros, -2: release), src offset lo, hi, bytes].
 */
export interface NativeCopier {
  /** addon/copier.h: op i's bytes done (or -errno of a failed file op) go to results[i]. */
  run(ops: Int32Array, count: number, results?: Int32Array): void
}

type Layout = Record<string, number>

export interface NativeAddon {
  Ring: new (entries: number, cqEntries: number, setupFlags: number) => NativeRing
  /** Endpoints: Uint8Arrays, or a file descriptor (pread/pwrite at the op's offset). */
  Copier: new (endpoints: readonly (Uint8Array | number)[]) => NativeCopier
  abiLayout: Record<string, Layout> & { constants: Layout }
  pageSize: number
  /** `lock`: mlock2(MLOCK_ONFAULT), pages locked in RAM once touched. */
  allocBuffer(bytes: number, hugePages?: boolean, lock?: boolean): ArrayBuffer
  bufferAddress(buffer: ArrayBuffer, offset: number): bigint
  mmapReadOnly(fd: number, offset: number, bytes: number): ArrayBuffer
  munmap(buffer: ArrayBuffer): void
  /** Detach an allocBuffer buffer and never unmap it: the kernel may still write into it. */
  abandonMapping(buffer: ArrayBuffer): void
  /** MADV_NOHUGEPAGE on the whole pages of the array's memory (see addon/README.md). */
  noHugePages(array: Uint8Array): void
  pinThread(cpus: readonly number[]): void
  /** PR_SET_IO_FLUSHER for the calling thread (needs CAP_SYS_RESOURCE). */
  setIoFlusher(): void
  /** [offset, memory]: the file offset/length and the buffer address alignment O_DIRECT I/O on
   *  the file needs (statx STATX_DIOALIGN); 0: not reported. */
  directIoAlignment(path: string): [number, number]
  threadAffinity(): number[]
  gettid(): number
  eventFd(): number
  eventFdWrite(fd: number): void
  /** A second descriptor of the same open file (close-on-exec). */
  dupFd(fd: number): number
  /** The calling thread into a mount namespace of its own, its mounts slaves of the old one. */
  unshareMountNamespace(): void
  /** execve(path, argv) with the current environment: returns only by throwing. */
  exec(path: string, argv: readonly string[]): never
  /** One datagram to a unix socket (a path, or '@name' for an abstract one). */
  sendDatagram(path: string, message: string): void
  /**
   * Perform SQEs 0..count-1 of `sqes` (128-byte slots) synchronously, in order, with the
   * matching system call (READ, WRITE, FSYNC, FALLOCATE); results[i] gets what the CQE would
   * carry. For backings whose io_uring I/O would go to a kernel worker thread anyway.
   */
  executeSqes(sqes: ArrayBuffer, count: number, results: Int32Array): void
}

const require = createRequire(import.meta.url)

/** build/Release of the package this file belongs to (from dist/ or a tools build alike). */
function addonPath(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const candidate = path.join(dir, 'build', 'Release', 'ublkd_native.node')
    if (fs.existsSync(candidate)) return candidate
    const parent = path.dirname(dir)
    if (parent === dir) throw new Error('ublkd_native.node not found: run npm install (or npm run build)')
    dir = parent
  }
}

export const native = require(addonPath()) as NativeAddon
