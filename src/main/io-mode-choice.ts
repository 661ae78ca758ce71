// `add --io-mode`: the I/O mode (src/common/io-mode.ts) a new device gets, from the modes its
// target serves and what the kernel offers, refused before anything is created when it cannot
// be had. `auto` takes the target's fastest mode the kernel offers, or copy where the request
// asks for copy mode's buffers (--huge-page-buffers, --mlock-buffers).
import { UsageError } from '../common/errors.js'
import { ioModeFlags, ioModes, type IoMode } from '../common/io-mode.js'
import type { Target } from '../targets/target.js'
import { checkOffered } from './kernel-features.js'

export const ioModeChoices = ['auto', ...ioModes] as const
export type IoModeChoice = (typeof ioModeChoices)[number]

export interface BufferOptions {
  hugePageBuffers: boolean
  mlockBuffers?: boolean
}

function offers(mode: IoMode, offered: bigint): boolean {
  const flags = ioModeFlags(mode)
  return (offered & flags) === flags
}

export function chooseIoMode(choice: IoModeChoice, target: Target, offered: bigint, buffers: BufferOptions): IoMode {
  const wantsBuffers = buffers.hugePageBuffers || buffers.mlockBuffers === true
  if (choice === 'auto') {
    if (wantsBuffers) return 'copy'
    // Every target serves copy, which every kernel offers.
    return target.ioModes.find((mode) => offers(mode, offered)) ?? 'copy'
  }
  if (!target.ioModes.includes(choice)) {
    throw new UsageError(`the ${target.name} target serves --io-mode ${target.ioModes.join(' or ')}, not ${choice}`)
  }
  if (choice === 'copy') return choice
  if (wantsBuffers) {
    throw new UsageError(`--huge-page-buffers and --mlock-buffers are for copy mode's I/O buffers: --io-mode ${choice} has none`)
  }
  checkOffered([{ flag: ioModeFlags(choice), option: `--io-mode ${choice}` }], offered)
  return choice
}

export function ioModeChoiceField(value: unknown): IoModeChoice | undefined {
  if (value === undefined) return undefined
  const choice = ioModeChoices.find((candidate) => candidate === value)
  if (choice === undefined) throw new UsageError(`--io-mode must be ${ioModeChoices.join(', ')}, got '${String(value)}'`)
  return choice
}
