// UblkControl: the device-control channel, an io_uring of its own on /dev/ublk-control.
//
// Commands are asynchronous: each is one IORING_OP_URING_CMD whose completion wakes the event
// loop through the ring's eventfd, so a command the kernel holds for long (START_DEV waits for
// every queue to fetch, DEL_DEV for the device to be released) never blocks the daemon.
//
// Every command has a deadline. Some kernels hang a command forever (ADD_DEV on 6.17-azure and
// 6.18.4-5), and START_DEV waits as long as a queue does not fetch. Past the deadline the caller
// gets UBLKD_ERR_KERNEL_TIMEOUT and the kernel is asked to cancel the command (an interruptible
// wait in the driver then returns); its buffer stays referenced until its CQE arrives, if ever,
// so a late completion never writes into reused memory, and it is logged.
import fs from 'node:fs'

import {
  IORING_SETUP_SQE128, encodeAsyncCancel, encodeUringCmd, kCqeWords, kSqeCmdWord,
} from '../abi/io-uring.js'
import {
  decodeCpuMask, decodeDevInfo, decodeParams, encodeCtrlCmd, encodeDevInfo, encodeParams,
  ublkParams, ublksrvCtrlDevInfo, type DevInfo, type Params,
} from '../abi/structs.js'
import {
  UBLK_QUEUE_ID_NONE, UBLK_U_CMD_ADD_DEV, UBLK_U_CMD_DEL_DEV, UBLK_U_CMD_GET_DEV_INFO, UBLK_U_CMD_TRY_STOP_DEV,
  UBLK_U_CMD_GET_FEATURES, UBLK_U_CMD_GET_PARAMS, UBLK_U_CMD_GET_QUEUE_AFFINITY,
  UBLK_U_CMD_END_USER_RECOVERY, UBLK_U_CMD_SET_PARAMS, UBLK_U_CMD_START_DEV,
  UBLK_U_CMD_QUIESCE_DEV, UBLK_U_CMD_START_USER_RECOVERY, UBLK_U_CMD_STOP_DEV, UBLK_U_CMD_UPDATE_SIZE,
} from '../abi/ublk-cmd.js'
import { KernelError, UblkdError, errnoName } from '../common/errors.js'
import type { Logger } from '../common/log.js'
import { native, type NativeRing } from '../native/addon.js'

export const kControlPath = '/dev/ublk-control'
/** The default deadline of a control command (`ublkd daemon --kernel-timeout`). */
export const kDefaultKernelTimeoutMs = 30_000
// user_data of the cancel requests themselves: above every command's (those stay <= 0x7fffffff).
const kCancelUserData = 0x80000000

/**
 * The bytes of a CPU mask GET_QUEUE_AFFINITY accepts on this machine: at least nr_cpu_ids bits
 * (the possible CPUs, as sysfs lists them: "0-127" or "0,2-5"), in whole 64-bit words.
 */
export function affinityMaskBytes(possible: string): number {
  const ids = possible.trim().split(',').map((range) => Number(range.split('-').pop()))
  const cpus = Math.max(0, ...ids.filter(Number.isInteger)) + 1
  return Math.ceil(cpus / 64) * 8
}

const kAffinityMaskBytes = (() => {
  try {
    return affinityMaskBytes(fs.readFileSync('/sys/devices/system/cpu/possible', 'utf8'))
  } catch {
    return 128
  }
})()

interface PendingCommand {
  name: string
  devId: number
  buffer: ArrayBuffer | null
  startedMs: number
  timer: NodeJS.Timeout | null
  /** Past its deadline: the caller was told; the CQE, if it comes, is only logged. */
  expired: boolean
  resolve(result: number): void
  reject(error: Error): void
}

export interface ControlOptions {
  path?: string
  /** Deadline of every command, ms. */
  timeoutMs?: number
  /** Where late completions of expired commands are reported. */
  log?: Logger
}

interface CommandArgs {
  devId: number
  queueId?: number
  data0?: bigint
  buffer?: ArrayBuffer
  len?: number
}

export class UblkControl {
  private readonly pending = new Map<number, PendingCommand>()
  private nextUserData = 1
  private readonly sqes: Uint32Array
  private readonly sqeView: DataView
  private readonly cqes: Uint32Array
  private readonly cqeResults: Int32Array
  private readonly clock: Int32Array
  /** SQEs staged for the next enter: normally the one just encoded; more if the SQ was full
   *  (ring.clock[2]: the ring kept them). */
  private staged = 0

  private constructor(
    private readonly fd: number,
    private readonly ring: NativeRing,
    private readonly timeoutMs: number,
    private readonly log: Logger | undefined,
  ) {
    this.sqes = new Uint32Array(ring.sqes)
    this.sqeView = new DataView(ring.sqes)
    this.cqes = new Uint32Array(ring.cqes)
    this.cqeResults = new Int32Array(ring.cqes)
    this.clock = new Int32Array(ring.clock)
    ring.watchCompletions(() => this.reap())
  }

  /** Open /dev/ublk-control; a clear error when the driver is not loaded. */
  static open(options: ControlOptions = {}): UblkControl {
    const path = options.path ?? kControlPath
    let fd: number
    try {
      fd = fs.openSync(path, fs.constants.O_RDWR)
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      if (code === 'ENOENT' || code === 'ENODEV' || code === 'ENXIO') {
        throw new UblkdError('UBLKD_ERR_NO_DRIVER',
          `${path} does not exist: load the ublk driver first (modprobe ublk_drv)`)
      }
      throw new UblkdError('UBLKD_ERR_NO_DRIVER', `cannot open ${path}: ${(error as Error).message}`)
    }
    try {
      return new UblkControl(fd, new native.Ring(32, 64, IORING_SETUP_SQE128),
        options.timeoutMs ?? kDefaultKernelTimeoutMs, options.log)
    } catch (error) {
      fs.closeSync(fd)
      throw error
    }
  }

  close(): void {
    this.ring.close()
    fs.closeSync(this.fd)
    for (const [, command] of this.pending) {
      if (command.timer) clearTimeout(command.timer)
      if (!command.expired) command.reject(new UblkdError('UBLKD_ERR_DAEMON', `${command.name} abandoned: control closed`))
    }
    this.pending.clear()
  }

  async addDev(info: DevInfo): Promise<DevInfo> {
    const buffer = native.allocBuffer(native.pageSize)
    encodeDevInfo(new DataView(buffer, 0, ublksrvCtrlDevInfo.bytes), info)
    await this.command('ADD_DEV', UBLK_U_CMD_ADD_DEV, {
      devId: info.devId, buffer, len: ublksrvCtrlDevInfo.bytes,
    })
    return decodeDevInfo(new DataView(buffer, 0, ublksrvCtrlDevInfo.bytes))
  }

  async delDev(devId: number): Promise<void> {
    await this.command('DEL_DEV', UBLK_U_CMD_DEL_DEV, { devId })
  }

  async setParams(devId: number, params: Params): Promise<void> {
    const buffer = native.allocBuffer(native.pageSize)
    encodeParams(new DataView(buffer, 0, ublkParams.bytes), params, params.types)
    await this.command('SET_PARAMS', UBLK_U_CMD_SET_PARAMS, { devId, buffer, len: ublkParams.bytes })
  }

  async getParams(devId: number): Promise<Params> {
    const buffer = native.allocBuffer(native.pageSize)
    const view = new DataView(buffer, 0, ublkParams.bytes)
    view.setUint32(ublkParams.len, ublkParams.bytes, true)
    await this.command('GET_PARAMS', UBLK_U_CMD_GET_PARAMS, { devId, buffer, len: ublkParams.bytes })
    return decodeParams(view)
  }

  /** Resolves once the kernel has added the disk, which it does only after every tag of every
   *  queue has a FETCH_REQ outstanding. */
  async startDev(devId: number, serverPid: number): Promise<void> {
    await this.command('START_DEV', UBLK_U_CMD_START_DEV, { devId, data0: BigInt(serverPid) })
  }

  /** Only when the device is QUIESCED and its char device released (else EBUSY). */
  async startUserRecovery(devId: number): Promise<void> {
    await this.command('START_USER_RECOVERY', UBLK_U_CMD_START_USER_RECOVERY, { devId })
  }

  /** Resolves once every queue re-fetched; then the kernel replays the queued I/O. */
  async endUserRecovery(devId: number, serverPid: number): Promise<void> {
    await this.command('END_USER_RECOVERY', UBLK_U_CMD_END_USER_RECOVERY, { devId, data0: BigInt(serverPid) })
  }

  async stopDev(devId: number): Promise<void> {
    await this.command('STOP_DEV', UBLK_U_CMD_STOP_DEV, { devId })
  }

  /** STOP_DEV unless the disk has openers (EBUSY); needs UBLK_F_SAFE_STOP_DEV. */
  async tryStopDev(devId: number): Promise<void> {
    await this.command('TRY_STOP_DEV', UBLK_U_CMD_TRY_STOP_DEV, { devId })
  }

  /** The disk's new capacity, in 512-byte sectors; the kernel announces it (a uevent). Needs
   *  UBLK_F_UPDATE_SIZE in GET_FEATURES. */
  async updateSize(devId: number, sectors: bigint): Promise<void> {
    await this.command('UPDATE_SIZE', UBLK_U_CMD_UPDATE_SIZE, { devId, data0: sectors })
  }

  /** New I/O is held, and once each queue has an idle tag the fetches are aborted: the
   *  server finishes what it holds and lets the queues go; the device then waits QUIESCED
   *  for a server (needs UBLK_F_QUIESCE on the device). `waitMs` bounds the wait (EBUSY). */
  async quiesceDev(devId: number, waitMs: number): Promise<void> {
    await this.command('QUIESCE_DEV', UBLK_U_CMD_QUIESCE_DEV, { devId, data0: BigInt(waitMs) })
  }

  async getDevInfo(devId: number): Promise<DevInfo> {
    const buffer = native.allocBuffer(native.pageSize)
    await this.command('GET_DEV_INFO', UBLK_U_CMD_GET_DEV_INFO, {
      devId, buffer, len: ublksrvCtrlDevInfo.bytes,
    })
    return decodeDevInfo(new DataView(buffer, 0, ublksrvCtrlDevInfo.bytes))
  }

  async getQueueAffinity(devId: number, queueId: number): Promise<number[]> {
    const buffer = native.allocBuffer(Math.max(native.pageSize, kAffinityMaskBytes))
    await this.command('GET_QUEUE_AFFINITY', UBLK_U_CMD_GET_QUEUE_AFFINITY, {
      devId, data0: BigInt(queueId), buffer, len: kAffinityMaskBytes,
    })
    return decodeCpuMask(new Uint8Array(buffer, 0, kAffinityMaskBytes))
  }

  async getFeatures(): Promise<bigint> {
    const buffer = native.allocBuffer(native.pageSize)
    await this.command('GET_FEATURES', UBLK_U_CMD_GET_FEATURES, { devId: 0, buffer, len: 8 })
    return new DataView(buffer).getBigUint64(0, true)
  }

  private command(name: string, cmdOp: number, args: CommandArgs): Promise<number> {
    if (this.ring.closed) {
      return Promise.reject(new UblkdError('UBLKD_ERR_DAEMON', `${name}: control channel is closed`))
    }
    const userData = this.nextUserData
    this.nextUserData = (this.nextUserData % 0x7fffffff) + 1
    const base = encodeUringCmd(this.sqes, this.staged++, this.fd, cmdOp, userData, 0)
    encodeCtrlCmd(this.sqeView, (base + kSqeCmdWord) * 4, {
      devId: args.devId,
      queueId: args.queueId ?? UBLK_QUEUE_ID_NONE,
      len: args.len ?? 0,
      addr: args.buffer ? native.bufferAddress(args.buffer, 0) : 0n,
      data0: args.data0 ?? 0n,
    })
    return new Promise<number>((resolve, reject) => {
      const command: PendingCommand = {
        name, devId: args.devId, buffer: args.buffer ?? null, startedMs: Date.now(), timer: null, expired: false,
        resolve, reject,
      }
      command.timer = setTimeout(() => this.expire(userData, command), this.timeoutMs)
      this.pending.set(userData, command)
      this.reap()
    })
  }

  /** The deadline passed: fail the caller, ask the kernel to cancel, keep the entry for the CQE. */
  private expire(userData: number, command: PendingCommand): void {
    command.timer = null
    command.expired = true
    const seconds = this.timeoutMs / 1000
    command.reject(new UblkdError('UBLKD_ERR_KERNEL_TIMEOUT',
      `${command.name} of device ${command.devId} did not complete within ${seconds} s: the kernel is stuck in it (see dmesg)`))
    this.log?.error({ command: command.name, devId: command.devId, timeoutMs: this.timeoutMs },
      'control command timed out; asking the kernel to cancel it')
    if (this.ring.closed) return
    encodeAsyncCancel(this.sqes, this.staged++, userData, 0, kCancelUserData, 0)
    this.reap()
  }

  /** Submit what is staged and settle every command whose CQE has arrived. */
  private reap(): void {
    const count = this.ring.enter(this.staged, 0, 0)
    this.staged = this.clock[2]!
    for (let i = 0; i < count; i++) {
      const userData = this.cqes[i * kCqeWords]!
      const res = this.cqeResults[i * kCqeWords + 2]!
      const command = this.pending.get(userData)
      if (!command) continue
      this.pending.delete(userData)
      if (command.timer) clearTimeout(command.timer)
      if (command.expired) {
        this.log?.warn({ command: command.name, devId: command.devId, afterMs: Date.now() - command.startedMs,
          result: res < 0 ? errnoName(res) : res }, 'timed-out control command completed late')
      } else if (res < 0) {
        command.reject(new KernelError(command.name, res))
      } else {
        command.resolve(res)
      }
    }
  }
}
