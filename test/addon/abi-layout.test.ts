// Pair test: the kernel struct layouts and opcodes as the C++ compiler sees them (from the
// vendored 7.3 header) must equal what the TypeScript encoders use.
import t from 'tap'

import * as io from '../../src/abi/io-uring.js'
import {
  ublkParams, ublksrvCtrlCmd, ublksrvCtrlDevInfo, ublksrvIoCmd, ublksrvIoDesc,
} from '../../src/abi/structs.js'
import * as ublk from '../../src/abi/ublk-cmd.js'
import { native } from '../../src/native/addon.js'

const layout = native.abiLayout
const c = layout.constants

t.test('control command and device info layouts match the header', async (t) => {
  t.equal(layout['ublksrv_ctrl_cmd']!['sizeof'], ublksrvCtrlCmd.bytes)
  t.equal(layout['ublksrv_ctrl_cmd']!['dev_id'], ublksrvCtrlCmd.devId)
  t.equal(layout['ublksrv_ctrl_cmd']!['queue_id'], ublksrvCtrlCmd.queueId)
  t.equal(layout['ublksrv_ctrl_cmd']!['len'], ublksrvCtrlCmd.len)
  t.equal(layout['ublksrv_ctrl_cmd']!['addr'], ublksrvCtrlCmd.addr)
  t.equal(layout['ublksrv_ctrl_cmd']!['data'], ublksrvCtrlCmd.data)
  const info = layout['ublksrv_ctrl_dev_info']!
  t.equal(info['sizeof'], ublksrvCtrlDevInfo.bytes)
  t.equal(info['nr_hw_queues'], ublksrvCtrlDevInfo.nrHwQueues)
  t.equal(info['queue_depth'], ublksrvCtrlDevInfo.queueDepth)
  t.equal(info['state'], ublksrvCtrlDevInfo.state)
  t.equal(info['max_io_buf_bytes'], ublksrvCtrlDevInfo.maxIoBufBytes)
  t.equal(info['dev_id'], ublksrvCtrlDevInfo.devId)
  t.equal(info['ublksrv_pid'], ublksrvCtrlDevInfo.ublksrvPid)
  t.equal(info['flags'], ublksrvCtrlDevInfo.flags)
  t.equal(info['ublksrv_flags'], ublksrvCtrlDevInfo.ublksrvFlags)
  t.equal(info['owner_uid'], ublksrvCtrlDevInfo.ownerUid)
  t.equal(info['owner_gid'], ublksrvCtrlDevInfo.ownerGid)
})

t.test('params layouts match the header', async (t) => {
  const params = layout['ublk_params']!
  t.equal(params['sizeof'], ublkParams.bytes)
  t.equal(params['len'], ublkParams.len)
  t.equal(params['types'], ublkParams.types)
  t.equal(params['basic'], ublkParams.basic.offset)
  t.equal(params['discard'], ublkParams.discard.offset)
  t.equal(params['devt'], ublkParams.devt.offset)
  const basic = layout['ublk_param_basic']!
  const b = ublkParams.basic
  t.equal(basic['sizeof'], b.bytes)
  t.equal(basic['attrs'], b.attrs)
  t.equal(basic['logical_bs_shift'], b.logicalBsShift)
  t.equal(basic['physical_bs_shift'], b.physicalBsShift)
  t.equal(basic['io_opt_shift'], b.ioOptShift)
  t.equal(basic['io_min_shift'], b.ioMinShift)
  t.equal(basic['max_sectors'], b.maxSectors)
  t.equal(basic['chunk_sectors'], b.chunkSectors)
  t.equal(basic['dev_sectors'], b.devSectors)
  t.equal(basic['virt_boundary_mask'], b.virtBoundaryMask)
  const discard = layout['ublk_param_discard']!
  const d = ublkParams.discard
  t.equal(discard['sizeof'], d.bytes)
  t.equal(discard['discard_alignment'], d.discardAlignment)
  t.equal(discard['discard_granularity'], d.discardGranularity)
  t.equal(discard['max_discard_sectors'], d.maxDiscardSectors)
  t.equal(discard['max_write_zeroes_sectors'], d.maxWriteZeroesSectors)
  t.equal(discard['max_discard_segments'], d.maxDiscardSegments)
  const devt = layout['ublk_param_devt']!
  t.equal(devt['sizeof'], ublkParams.devt.bytes)
  t.equal(devt['disk_major'], ublkParams.devt.diskMajor)
  t.equal(devt['disk_minor'], ublkParams.devt.diskMinor)
})

t.test('I/O descriptor and I/O command layouts match the header', async (t) => {
  const desc = layout['ublksrv_io_desc']!
  t.equal(desc['sizeof'], ublksrvIoDesc.bytes)
  t.equal(desc['op_flags'], ublksrvIoDesc.opFlags)
  t.equal(desc['nr_sectors'], ublksrvIoDesc.nrSectors)
  t.equal(desc['start_sector'], ublksrvIoDesc.startSector)
  t.equal(desc['addr'], ublksrvIoDesc.addr)
  const cmd = layout['ublksrv_io_cmd']!
  t.equal(cmd['sizeof'], ublksrvIoCmd.bytes)
  t.equal(cmd['q_id'], ublksrvIoCmd.qId)
  t.equal(cmd['tag'], ublksrvIoCmd.tag)
  t.equal(cmd['result'], ublksrvIoCmd.result)
  t.equal(cmd['addr'], ublksrvIoCmd.addr)
})

t.test('SQE word layout used by src/abi/io-uring.ts matches struct io_uring_sqe', async (t) => {
  const sqe = layout['io_uring_sqe']!
  t.equal(sqe['opcode'], 0)
  t.equal(sqe['fd'], 1 * 4)
  t.equal(sqe['off'], 2 * 4)
  t.equal(sqe['addr'], 4 * 4)
  t.equal(sqe['len'], 6 * 4)
  t.equal(sqe['rw_flags'], 7 * 4)
  t.equal(sqe['user_data'], 8 * 4)
  t.equal(sqe['cmd'], io.kSqeCmdWord * 4)
  t.equal(sqe['sizeof'] * 2, io.kSqeWords * 4, 'SQE128 doubles the 64-byte SQE')
})

/** A module's exports named as the kernel names them (all caps), with their values. */
function kernelNamed(module: object): [string, number | bigint][] {
  return Object.entries(module).filter(([name]) => /^[A-Z][A-Z0-9_]*$/.test(name))
}

/** Kernel-style names in src/abi/ublk-cmd.ts that are driver conventions, not header macros. */
const notInHeader = new Set(['UBLK_MAX_UBLKS', 'UBLK_DEV_ID_ANY', 'UBLK_QUEUE_ID_NONE', 'UBLK_MAX_IO_DESC_SIZE'])

t.test('every opcode, flag, state, param type and bit layout constant equals the C macro', async (t) => {
  const exported = [...kernelNamed(ublk), ...kernelNamed(io)].filter(([name]) => !notInHeader.has(name))
  for (const [name, value] of exported) {
    const header = c[name]
    if (header === undefined) t.fail(`${name} is not exported by the addon`)
    else t.equal(BigInt(value), BigInt(header), name)
  }
  const mirrored = new Set(exported.map(([name]) => name))
  const cOnly = Object.keys(c).filter((name) => /^UBLK/.test(name) && !mirrored.has(name))
  t.same(cOnly, [], 'every UBLK_* the addon exports has its TypeScript twin')
})

t.test('the feature table names every UBLK_F_* bit of the header, in bit order', async (t) => {
  const flags = kernelNamed(ublk).filter(([name]) => name.startsWith('UBLK_F_'))
  t.equal(ublk.ublkFeatures.length, flags.length, 'one row per UBLK_F_* export')
  ublk.ublkFeatures.forEach((feature, index) => {
    t.equal(feature.bit, index, `${feature.name} is row ${index}`)
    t.equal(c[feature.name], 2 ** feature.bit, `${feature.name} is bit ${feature.bit}`)
    t.match(feature.sinceRelease, /^\d+\.\d+$/, `${feature.name} has a release`)
  })
})
