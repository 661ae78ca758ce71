// Names for a ublk feature mask (GET_FEATURES, or dev_info.flags). A newer kernel may set bits
// this build does not know: they are kept, as bit numbers, never dropped.
import assert from 'node:assert/strict'

import { ublkFeatures } from './ublk-cmd.js'

export interface FeatureMaskNames {
  mask: bigint
  /** The header's UBLK_F_* name of every set bit we know, in bit order. */
  names: string[]
  /** Every set bit we have no name for, in order (show them as `bit N`). */
  unknownBits: number[]
}

const kMaskBits = 64
const kNameByBit = new Map(ublkFeatures.map(({ bit, name }) => [bit, name]))

export function describeFeatureMask(mask: bigint): FeatureMaskNames {
  assert(mask >= 0n && mask < 1n << BigInt(kMaskBits), `feature mask ${mask} is not a u64`)
  const names: string[] = []
  const unknownBits: number[] = []
  for (let bit = 0; bit < kMaskBits; bit++) {
    if (((mask >> BigInt(bit)) & 1n) === 0n) continue
    const name = kNameByBit.get(bit)
    if (name === undefined) unknownBits.push(bit)
    else names.push(name)
  }
  return { mask, names, unknownBits }
}
