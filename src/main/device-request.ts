// A validated request to create a device: the common options every target shares.
import { UBLK_MAX_QUEUE_DEPTH, UBLK_MAX_UBLKS } from '../abi/ublk-cmd.js'
import { UsageError } from '../common/errors.js'
import { queueModes, type QueueMode } from '../common/messages.js'
import type { RawTargetOptions } from '../targets/target.js'
import { deviceUuid } from './device-identity.js'
import { ioModeChoiceField, type IoModeChoice } from './io-mode-choice.js'
import { recoveryModeField, type RecoveryMode } from './recovery-mode.js'

export interface DeviceRequest {
  target: string
  targetOptions: RawTargetOptions
  id?: number
  queues: number
  depth: number
  /** --logical-block-size when given; otherwise the target chooses (e.g. the backing's). */
  logicalBlockSize?: number
  maxIoBufBytes: number
  /** What the kernel does with I/O while no server serves the device (src/main/recovery-mode.ts). */
  recovery: RecoveryMode
  /** The block layer's I/O scheduler for /dev/ublkbN, set once the device is started. */
  ioScheduler: string
  /** --queue-mode when given; otherwise ring, or event-loop for a target that needs it. */
  queueMode?: QueueMode
  /** --io-mode (src/main/io-mode-choice.ts); absent: auto (and in records older than modes). */
  ioMode?: IoModeChoice
  /** The queues' I/O buffers may use transparent huge pages (faster copies, all resident). */
  hugePageBuffers: boolean
  /** The queues' I/O buffers are locked in RAM (never swapped); absent in older records. */
  mlockBuffers?: boolean
  /** UBLK_F_NO_AUTO_PART_SCAN: START_DEV does not scan the device for partitions. */
  noPartitionScan: boolean
  /** The device's identity (src/main/device-identity.ts): set at add, absent in records older
   *  than identities. */
  uuid?: string
  /** A stable name (--name, or the configuration file's): unique among the daemon's devices. */
  name?: string
  /** 'config': declared in the configuration file, which reloads reconcile; absent: added by
   *  hand (`ublkd add`, the API), which reloads leave alone. */
  origin?: 'config'
}

/**
 * Defaults as ublksrv's: one queue of depth 128, 512 KiB per I/O. The I/O scheduler is 'none',
 * as the kernel's own loop and null_blk drivers choose: the kernel would give a one-queue ublk
 * device mq-deadline, whose lock and sorting cost more than they save in front of a server
 * that has a scheduler of its own below (the backing's) or needs none.
 */
export const deviceDefaults = {
  queues: 1,
  depth: 128,
  maxIoBufBytes: 512 * 1024,
  ioScheduler: 'none',
} as const

const kLogicalBlockSizes = [512, 1024, 2048, 4096]
const kCommonFields = ['target', 'id', 'queues', 'depth', 'logicalBlockSize', 'recovery', 'ioScheduler', 'queueMode', 'ioMode', 'hugePageBuffers', 'mlockBuffers', 'noPartitionScan', 'uuid', 'name']
/** A device's name: what a config calls it, stable across restarts and reloads. */
export const kDeviceNamePattern = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'
const kDeviceName = new RegExp(kDeviceNamePattern)
// A block-layer elevator name (none, mq-deadline, kyber, bfq): also what may go into sysfs.
const kSchedulerName = /^[a-z][a-z0-9_-]{0,31}$/

function integerField(raw: Record<string, unknown>, name: string, flag: string, min: number, max: number): number | undefined {
  const value = raw[name]
  if (value === undefined) return undefined
  const number = typeof value === 'string' && /^\s*-?\d+\s*$/.test(value) ? Number(value) : value
  if (typeof number !== 'number' || !Number.isInteger(number)) {
    throw new UsageError(`${flag} must be an integer, got '${String(value)}'`)
  }
  if (number < min || number > max) throw new UsageError(`${flag} must be between ${min} and ${max}, got ${number}`)
  return number
}

function schedulerField(raw: Record<string, unknown>): string | undefined {
  const value = raw['ioScheduler']
  if (value === undefined) return undefined
  if (typeof value !== 'string' || !kSchedulerName.test(value)) {
    throw new UsageError(`--io-scheduler must be a scheduler name such as none or mq-deadline, got '${String(value)}'`)
  }
  return value
}

function queueModeField(raw: Record<string, unknown>): QueueMode | undefined {
  const value = raw['queueMode']
  if (value === undefined) return undefined
  const mode = queueModes.find((candidate) => candidate === value)
  if (mode === undefined) throw new UsageError(`--queue-mode must be ${queueModes.join(' or ')}, got '${String(value)}'`)
  return mode
}

function booleanField(raw: Record<string, unknown>, name: string, flag: string): boolean | undefined {
  const value = raw[name]
  if (value === undefined) return undefined
  if (typeof value !== 'boolean') throw new UsageError(`${flag} must be true or false, got '${String(value)}'`)
  return value
}

/**
 * Validate the common fields of an add request (from the CLI or the API). Target options are
 * everything else and are validated by the target itself.
 */
export function parseDeviceRequest(raw: Record<string, unknown>): DeviceRequest {
  const target = raw['target']
  const targetOptions = Object.fromEntries(
    Object.entries(raw).filter(([key]) => !kCommonFields.includes(key)))
  if (typeof target !== 'string' || target.length === 0) throw new UsageError('a target is required (-t null|memory|loop)')
  const logical = integerField(raw, 'logicalBlockSize', '--logical-block-size', 512, 4096)
  if (logical !== undefined && !kLogicalBlockSizes.includes(logical)) {
    throw new UsageError(`--logical-block-size must be one of ${kLogicalBlockSizes.join(', ')}`)
  }
  const request: DeviceRequest = {
    target,
    targetOptions,
    queues: integerField(raw, 'queues', '--queues', 1, 4096) ?? deviceDefaults.queues,
    depth: integerField(raw, 'depth', '--depth', 1, UBLK_MAX_QUEUE_DEPTH) ?? deviceDefaults.depth,
    maxIoBufBytes: deviceDefaults.maxIoBufBytes,
    recovery: recoveryModeField(raw['recovery']),
    ioScheduler: schedulerField(raw) ?? deviceDefaults.ioScheduler,
    hugePageBuffers: booleanField(raw, 'hugePageBuffers', '--huge-page-buffers') ?? false,
    mlockBuffers: booleanField(raw, 'mlockBuffers', '--mlock-buffers') ?? false,
    noPartitionScan: booleanField(raw, 'noPartitionScan', '--no-partition-scan') ?? false,
  }
  if (logical !== undefined) request.logicalBlockSize = logical
  const queueMode = queueModeField(raw)
  if (queueMode !== undefined) request.queueMode = queueMode
  const ioMode = ioModeChoiceField(raw['ioMode'])
  if (ioMode !== undefined) request.ioMode = ioMode
  request.uuid = deviceUuid(raw['uuid'])
  const name = raw['name']
  if (name !== undefined) {
    if (typeof name !== 'string' || !kDeviceName.test(name)) {
      throw new UsageError(`--name must be 1-64 letters, digits, '.', '_' or '-' (not first), got '${String(name)}'`)
    }
    request.name = name
  }
  const devId = integerField(raw, 'id', '--number', 0, UBLK_MAX_UBLKS - 1)
  if (devId !== undefined) request.id = devId
  return request
}
