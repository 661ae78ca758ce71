// A device's identity: a UUID (given with --uuid or generated at add), kept in its record, and
// its first 64 bits given to the kernel at ADD_DEV as dev_info.ublksrv_flags, which the driver
// stores and reports but never reads. Re-attach compares the kernel device's value and geometry
// with the record, so a daemon never serves a kernel device that merely has the recorded id
// (another server's, or one created after the record went stale).
import { randomUUID } from 'node:crypto'

import type { DevInfo } from '../abi/structs.js'
import { UblkdError, UsageError } from '../common/errors.js'
import type { DeviceRequest } from './device-request.js'

const kUuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** --uuid as given (any case, canonical form), or a new random one. */
export function deviceUuid(given: unknown): string {
  if (given === undefined) return randomUUID()
  const uuid = typeof given === 'string' ? given.toLowerCase() : ''
  if (!kUuid.test(uuid)) {
    throw new UsageError(`--uuid must be a UUID such as 5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6b, got '${String(given)}'`)
  }
  return uuid
}

/** The ublksrv_flags value of a device; 0 for a record written before devices had a UUID. */
export function identityCookie(uuid: string | undefined): bigint {
  return uuid === undefined ? 0n : BigInt(`0x${uuid.replace(/-/g, '').slice(0, 16)}`)
}

/** Throws UBLKD_ERR_IDENTITY unless the kernel's device `id` is the one the record describes. */
export function checkIdentity(id: number, request: DeviceRequest, info: DevInfo): void {
  const expected = identityCookie(request.uuid)
  const differences: string[] = []
  if (info.ublksrvFlags !== expected) {
    differences.push(`identity 0x${info.ublksrvFlags.toString(16)}, recorded 0x${expected.toString(16)}`)
  }
  if (info.nrHwQueues !== request.queues || info.queueDepth !== request.depth) {
    differences.push(`${info.nrHwQueues} queues of depth ${info.queueDepth}, recorded ${request.queues} x ${request.depth}`)
  }
  if (differences.length > 0) {
    throw new UblkdError('UBLKD_ERR_IDENTITY',
      `kernel device ${id} is not the device recorded as ${id}${request.uuid ? ` (${request.uuid})` : ''}: ${differences.join('; ')}`)
  }
}
