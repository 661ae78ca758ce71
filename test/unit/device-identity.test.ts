import t from 'tap'

import type { DevInfo } from '../../src/abi/structs.js'
import { checkIdentity, identityCookie } from '../../src/main/device-identity.js'
import { parseDeviceRequest } from '../../src/main/device-request.js'

const request = parseDeviceRequest({ target: 'null', uuid: '5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6b', queues: 2, depth: 64 })

function info(overrides: Partial<DevInfo>): DevInfo {
  return {
    nrHwQueues: 2, queueDepth: 64, state: 2, maxIoBufBytes: 512 * 1024, devId: 4, ublksrvPid: 0,
    flags: 0n, ublksrvFlags: identityCookie(request.uuid), ownerUid: 0, ownerGid: 0, ...overrides,
  }
}

t.test('the kernel keeps the first 64 bits of the UUID; records without a UUID expect 0', async (t) => {
  t.equal(identityCookie('5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6b'), 0x5f0c3d527a1e4b8en)
  t.equal(identityCookie(undefined), 0n)
})

t.test('re-attach accepts only the recorded device', async (t) => {
  t.doesNotThrow(() => checkIdentity(4, request, info({})))
  t.throws(() => checkIdentity(4, request, info({ ublksrvFlags: 0n })), {
    code: 'UBLKD_ERR_IDENTITY',
    message: 'kernel device 4 is not the device recorded as 4 (5f0c3d52-7a1e-4b8e-9a55-1c2d3e4f5a6b): identity 0x0, recorded 0x5f0c3d527a1e4b8e',
  })
  t.throws(() => checkIdentity(4, request, info({ queueDepth: 128 })), {
    code: 'UBLKD_ERR_IDENTITY', message: /2 queues of depth 128, recorded 2 x 64$/,
  })
  const legacy = { ...request }
  delete legacy.uuid
  t.doesNotThrow(() => checkIdentity(4, legacy, info({ ublksrvFlags: 0n })), 'a record older than identities')
})
