// Errors with stable codes. Input problems are UsageError (exit 2 in the CLI); kernel command
// failures keep the command and the errno; everything else a user may see has its own code.
// docs/errors.md lists every code.

export type ErrorCode =
  | 'UBLKD_ERR_USAGE'
  | 'UBLKD_ERR_KERNEL'
  | 'UBLKD_ERR_NO_DRIVER'
  | 'UBLKD_ERR_DEVICE_EXISTS'
  | 'UBLKD_ERR_NO_SUCH_DEVICE'
  | 'UBLKD_ERR_QUEUE'
  | 'UBLKD_ERR_DAEMON'
  | 'UBLKD_ERR_TIMEOUT'
  | 'UBLKD_ERR_KERNEL_TIMEOUT'
  | 'UBLKD_ERR_UNSUPPORTED'
  | 'UBLKD_ERR_NOT_RECOVERABLE'
  | 'UBLKD_ERR_IDENTITY'
  | 'UBLKD_ERR_BUSY'
  | 'UBLKD_ERR_CONFIG'
  | 'UBLKD_ERR_BACKEND'

export class UblkdError extends Error {
  readonly code: ErrorCode
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options)
    this.code = code
    this.name = 'UblkdError'
  }
}

export class UsageError extends UblkdError {
  constructor(message: string) {
    super('UBLKD_ERR_USAGE', message)
    this.name = 'UsageError'
  }
}

/** A ublk control or I/O command that the kernel completed with a negative errno. */
export class KernelError extends UblkdError {
  readonly command: string
  readonly errno: number
  constructor(command: string, errno: number, detail?: string) {
    const name = errnoName(errno)
    super('UBLKD_ERR_KERNEL', `${command} failed: ${name}${detail ? ` (${detail})` : ''}`)
    this.command = command
    this.errno = errno
    this.name = 'KernelError'
  }
}

// Only the errnos the ublk driver returns to us get names; anything else keeps its number.
const errnoNames: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 4: 'EINTR', 5: 'EIO', 11: 'EAGAIN', 12: 'ENOMEM', 13: 'EACCES',
  14: 'EFAULT', 16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV', 22: 'EINVAL', 28: 'ENOSPC',
  61: 'ENODATA', 95: 'EOPNOTSUPP', 110: 'ETIMEDOUT',
}

/** 'EINVAL' for -22 or 22; 'errno 123' when unnamed. */
export function errnoName(errno: number): string {
  const n = Math.abs(errno)
  return errnoNames[n] ?? `errno ${n}`
}

export function isUblkdError(error: unknown): error is UblkdError {
  return error instanceof UblkdError
}

/** The message of anything thrown, for logs and API replies. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}
