// The JSON Schema of ublkd's configuration file (docs/config.md): daemon options and the
// declared devices, each with every `ublkd add` option and a stable name. Target options come
// from the targets' own flags, so a new target's options are in the schema without an edit here;
// a device accepts only its own target's options. Values a schema cannot judge (a size, a
// backing file) are checked afterwards by the same code as `ublkd add` (src/main/config.ts).
import { UBLK_MAX_QUEUE_DEPTH, UBLK_MAX_UBLKS } from '../abi/ublk-cmd.js'
import { logLevels } from '../common/log-level.js'
import { queueModes } from '../common/messages.js'
import { allTargets } from '../targets/registry.js'
import { kDeviceNamePattern } from './device-request.js'
import { ioModeChoices } from './io-mode-choice.js'
import { recoveryModes } from './recovery-mode.js'

const commonDeviceProperties = {
  name: { type: 'string', pattern: kDeviceNamePattern },
  id: { type: 'integer', minimum: 0, maximum: UBLK_MAX_UBLKS - 1 },
  queues: { type: 'integer', minimum: 1, maximum: 4096 },
  depth: { type: 'integer', minimum: 1, maximum: UBLK_MAX_QUEUE_DEPTH },
  logicalBlockSize: { enum: [512, 1024, 2048, 4096] },
  recovery: { enum: [...recoveryModes] },
  ioScheduler: { type: 'string' },
  queueMode: { enum: [...queueModes] },
  ioMode: { enum: [...ioModeChoices] },
  hugePageBuffers: { type: 'boolean' },
  mlockBuffers: { type: 'boolean' },
  noPartitionScan: { type: 'boolean' },
  uuid: { type: 'string' },
} as const

function deviceSchema(): object {
  return {
    type: 'object',
    required: ['name', 'target'],
    discriminator: { propertyName: 'target' },
    oneOf: allTargets().map((target) => ({
      properties: {
        target: { const: target.name },
        ...commonDeviceProperties,
        // Sizes may be written as numbers (bytes) or strings (1G); on/off options as strings.
        ...Object.fromEntries(target.flags.map((flag) => [flag.field,
          flag.type === 'boolean' ? { type: 'boolean' } : { type: ['string', 'integer'] }])),
      },
      additionalProperties: false,
    })),
  }
}

export function configSchema(): object {
  return {
    type: 'object',
    properties: {
      $schema: { type: 'string' },
      daemon: {
        type: 'object',
        properties: {
          stateDir: { type: 'string', minLength: 1 },
          metrics: { type: 'string' },
          logLevel: { enum: [...logLevels] },
          statsPublishUs: { type: 'integer', minimum: 0, maximum: 1_000_000 },
          kernelTimeoutSeconds: { type: 'integer', minimum: 1, maximum: 3600 },
          keepDevicesOnExit: { type: 'boolean' },
        },
        additionalProperties: false,
      },
      devices: { type: 'array', items: deviceSchema() },
    },
    additionalProperties: false,
  }
}
