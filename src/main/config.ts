// Reading the configuration file (docs/config.md): JSON, its structure checked against
// config-schema.ts with Ajv, then each device's values by the code `ublkd add` runs, so that a
// file that passes `ublkd config check` is one the daemon can apply. Every error names the file,
// the JSON path inside it and the problem; all of a file's structural errors are reported at once.
import fs from 'node:fs'
import path from 'node:path'

import { Ajv, type ErrorObject } from 'ajv'

import { UblkdError, messageOf } from '../common/errors.js'
import type { LogLevel } from '../common/log-level.js'
import { findTarget } from '../targets/registry.js'
import { configSchema } from './config-schema.js'
import { parseDeviceRequest, type DeviceRequest } from './device-request.js'

export const kDefaultConfigPath = '/etc/ublkd/ublkd.json'

export interface DaemonConfig {
  stateDir?: string
  metrics?: string
  logLevel?: LogLevel
  statsPublishUs?: number
  kernelTimeoutSeconds?: number
  keepDevicesOnExit?: boolean
}

/** One device of the file: its fields as written (an `add` request) and as validated. */
export interface DeclaredDevice {
  name: string
  fields: Record<string, unknown>
  request: DeviceRequest
}

export interface Config {
  file: string
  daemon: DaemonConfig
  devices: DeclaredDevice[]
}

export class ConfigError extends UblkdError {
  constructor(message: string) {
    super('UBLKD_ERR_CONFIG', message)
    this.name = 'ConfigError'
  }
}

let validator: ReturnType<Ajv['compile']> | null = null

function validate(value: unknown): ErrorObject[] {
  validator ??= new Ajv({ allErrors: true, discriminator: true, allowUnionTypes: true }).compile(configSchema())
  return validator(value) ? [] : [...(validator.errors ?? [])]
}

/** One Ajv error as `PATH: problem`, the path in JSON Pointer form ('/' is the whole file). */
function describe(error: ErrorObject): string {
  const at = error.instancePath === '' ? '/' : error.instancePath
  const params = error.params as Record<string, unknown>
  switch (error.keyword) {
    case 'additionalProperty':
    case 'additionalProperties':
      return `${at}: unknown field '${String(params['additionalProperty'])}'`
    case 'enum':
      return `${at}: must be one of ${(params['allowedValues'] as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`
    case 'discriminator':
      return params['error'] === 'mapping'
        ? `${at}/target: must be one of the targets (${String(params['tagValue'] ?? '')} is not)`
        : `${at}/target: must be a target name (a string)`
    default:
      return `${at}: ${error.message ?? error.keyword}`
  }
}

/** Parse and validate configuration `text` (read from `file`); throws ConfigError. */
export function parseConfig(text: string, file: string): Config {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (error) {
    throw new ConfigError(`${file}: not valid JSON: ${messageOf(error)}`)
  }
  const errors = validate(value)
  if (errors.length > 0) {
    // Each problem once; a missing target is said by 'required' already.
    const missing = new Set(errors.filter((error) => error.keyword === 'required').map((error) => error.instancePath))
    const problems = [...new Set(errors
      .filter((error) => !(error.keyword === 'discriminator' && missing.has(error.instancePath)))
      .map(describe))]
    throw new ConfigError(`${file}: ${problems.join('; ')}`)
  }
  const raw = value as { daemon?: DaemonConfig; devices?: Record<string, unknown>[] }
  const devices = (raw.devices ?? []).map((entry, index) => declaredDevice(entry, `${file}: /devices/${index}`))
  checkUnique(devices, file)
  return { file, daemon: raw.daemon ?? {}, devices }
}

/** Read and validate the configuration file at `file`. */
export function loadConfig(file: string): Config {
  const resolved = path.resolve(file)
  let text: string
  try {
    text = fs.readFileSync(resolved, 'utf8')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    throw new ConfigError(`${resolved}: cannot read it (${code ?? messageOf(error)})`)
  }
  return parseConfig(text, resolved)
}

function declaredDevice(entry: Record<string, unknown>, where: string): DeclaredDevice {
  const { name, ...fields } = entry
  try {
    const request = parseDeviceRequest(fields)
    // The target's own checks (a size that is not a block multiple, a missing backing file).
    findTarget(request.target).parseOptions(request.targetOptions, request.logicalBlockSize)
    return { name: name as string, fields, request: { ...request, name: name as string, origin: 'config' } }
  } catch (error) {
    throw new ConfigError(`${where}: ${messageOf(error)}`)
  }
}

function checkUnique(devices: DeclaredDevice[], file: string): void {
  const seen = new Map<string, number>()
  devices.forEach((device, index) => {
    const keys = [`name '${device.name}'`]
    if (device.fields['id'] !== undefined) keys.push(`id ${device.request.id}`)
    if (device.fields['uuid'] !== undefined) keys.push(`uuid ${device.request.uuid}`)
    for (const key of keys) {
      const first = seen.get(key)
      if (first !== undefined) throw new ConfigError(`${file}: /devices/${index}: ${key} is also /devices/${first}'s`)
      seen.set(key, index)
    }
  })
}
