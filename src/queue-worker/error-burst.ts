// Logs failed requests once per burst, never once per I/O: the first error is logged at once,
// later ones are counted and summarised at most once per interval.
import type { Logger } from '../common/log.js'
import { errnoName } from '../common/errors.js'
import { ioOps } from '../common/stats-layout.js'

const kIntervalMs = 1000

export class ErrorBurst {
  private suppressed = 0
  private lastLogMs = 0
  private lastOp = 0
  private lastErrno = 0

  constructor(private readonly log: Logger) {}

  /** A request of op index `op` (stats-layout ioOps) failed with `errno` (negative). */
  note(op: number, errno: number): void {
    this.lastOp = op
    this.lastErrno = errno
    const now = Date.now()
    if (now - this.lastLogMs < kIntervalMs) {
      this.suppressed++
      return
    }
    this.flush(now, 1)
  }

  /** Called once per loop turn: reports what the interval held back. */
  tick(): void {
    if (this.suppressed > 0 && Date.now() - this.lastLogMs >= kIntervalMs) this.flush(Date.now(), 0)
  }

  private flush(now: number, current: number): void {
    this.log.error({ errors: this.suppressed + current, op: ioOps[this.lastOp], errno: errnoName(this.lastErrno) },
      'requests failed')
    this.suppressed = 0
    this.lastLogMs = now
  }
}
