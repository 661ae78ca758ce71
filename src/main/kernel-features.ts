// What a device asks of the kernel's ublk driver, checked against what the kernel offers
// (GET_FEATURES) before anything is created: an option whose feature the running kernel lacks
// is refused with the feature's name and the first Linux release that has it.
import os from 'node:os'

import {
  UBLK_F_NO_AUTO_PART_SCAN, UBLK_F_QUIESCE, UBLK_F_USER_RECOVERY, UBLK_F_USER_RECOVERY_FAIL_IO, UBLK_F_USER_RECOVERY_REISSUE,
  ublkFeatures, type UblkFeature,
} from '../abi/ublk-cmd.js'
import { UblkdError } from '../common/errors.js'
import type { DeviceRequest } from './device-request.js'

/** A feature flag the device asks for at ADD_DEV, and the option that asks for it. */
export interface FeatureNeed {
  flag: bigint
  option: string
}

function feature(flag: bigint): UblkFeature {
  const found = ublkFeatures.find((candidate) => 1n << BigInt(candidate.bit) === flag)
  if (!found) throw new Error(`no UBLK_F_* has the value 0x${flag.toString(16)}`)
  return found
}

/** The flags `request` asks for at ADD_DEV, each with the option behind it. */
export function featureNeeds(request: DeviceRequest): FeatureNeed[] {
  const needs: FeatureNeed[] = []
  if (request.recovery === 'reissue') {
    needs.push({ flag: UBLK_F_USER_RECOVERY, option: '--recovery' }, { flag: UBLK_F_USER_RECOVERY_REISSUE, option: '--recovery' })
  } else if (request.recovery === 'fail-io') {
    needs.push({ flag: UBLK_F_USER_RECOVERY, option: '--recovery fail-io' },
      { flag: UBLK_F_USER_RECOVERY_FAIL_IO, option: '--recovery fail-io' })
  }
  if (request.noPartitionScan) needs.push({ flag: UBLK_F_NO_AUTO_PART_SCAN, option: '--no-partition-scan' })
  return needs
}

/** The ADD_DEV flags of these needs. */
export function neededFlags(needs: readonly FeatureNeed[]): bigint {
  return needs.reduce((flags, need) => flags | need.flag, 0n)
}

/** Flags worth having when the kernel offers them, never a reason to refuse: QUIESCE lets an
 *  upgrade hand a recovery device over with nothing in flight (the driver allows it only with
 *  USER_RECOVERY). */
export function wantedFlags(request: DeviceRequest, offered: bigint): bigint {
  return request.recovery !== 'off' ? offered & UBLK_F_QUIESCE : 0n
}

/** Refuse the first need the kernel does not offer (`offered`: GET_FEATURES, or ADD_DEV's reply). */
export function checkOffered(needs: readonly FeatureNeed[], offered: bigint): void {
  const missing = needs.find((need) => (offered & need.flag) === 0n)
  if (!missing) return
  const { name, sinceRelease } = feature(missing.flag)
  throw new UblkdError('UBLKD_ERR_UNSUPPORTED',
    `${missing.option} needs ${name} (Linux ${sinceRelease} or later): this kernel (${os.release()}) does not offer it`)
}
