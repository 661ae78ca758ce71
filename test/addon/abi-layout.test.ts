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

t.test('every opcode and flag equals the C macro', async (t) => {
  const pairs: [string, number][] = [
    ['UBLK_U_CMD_GET_QUEUE_AFFINITY', ublk.UBLK_U_CMD_GET_QUEUE_AFFINITY],
    ['UBLK_U_CMD_GET_DEV_INFO', ublk.UBLK_U_CMD_GET_DEV_INFO],
    ['UBLK_U_CMD_ADD_DEV', ublk.UBLK_U_CMD_ADD_DEV],
    ['UBLK_U_CMD_DEL_DEV', ublk.UBLK_U_CMD_DEL_DEV],
    ['UBLK_U_CMD_START_DEV', ublk.UBLK_U_CMD_START_DEV],
    ['UBLK_U_CMD_STOP_DEV', ublk.UBLK_U_CMD_STOP_DEV],
    ['UBLK_U_CMD_SET_PARAMS', ublk.UBLK_U_CMD_SET_PARAMS],
    ['UBLK_U_CMD_GET_PARAMS', ublk.UBLK_U_CMD_GET_PARAMS],
    ['UBLK_U_CMD_START_USER_RECOVERY', ublk.UBLK_U_CMD_START_USER_RECOVERY],
    ['UBLK_U_CMD_END_USER_RECOVERY', ublk.UBLK_U_CMD_END_USER_RECOVERY],
    ['UBLK_U_CMD_GET_FEATURES', ublk.UBLK_U_CMD_GET_FEATURES],
    ['UBLK_U_IO_FETCH_REQ', ublk.UBLK_U_IO_FETCH_REQ],
    ['UBLK_U_IO_COMMIT_AND_FETCH_REQ', ublk.UBLK_U_IO_COMMIT_AND_FETCH_REQ],
    ['UBLK_U_IO_NEED_GET_DATA', ublk.UBLK_U_IO_NEED_GET_DATA],
    ['UBLK_IO_RES_ABORT', ublk.UBLK_IO_RES_ABORT],
    ['UBLKSRV_CMD_BUF_OFFSET', ublk.UBLKSRV_CMD_BUF_OFFSET],
    ['UBLK_MAX_QUEUE_DEPTH', ublk.UBLK_MAX_QUEUE_DEPTH],
    ['IORING_OP_URING_CMD', io.IORING_OP_URING_CMD],
    ['IORING_OP_READ', io.IORING_OP_READ],
    ['IORING_OP_WRITE', io.IORING_OP_WRITE],
    ['IORING_OP_FSYNC', io.IORING_OP_FSYNC],
    ['IORING_OP_FALLOCATE', io.IORING_OP_FALLOCATE],
    ['IORING_FSYNC_DATASYNC', io.IORING_FSYNC_DATASYNC],
    ['RWF_DSYNC', io.RWF_DSYNC],
    ['FALLOC_FL_KEEP_SIZE', io.FALLOC_FL_KEEP_SIZE],
    ['FALLOC_FL_PUNCH_HOLE', io.FALLOC_FL_PUNCH_HOLE],
    ['FALLOC_FL_NO_HIDE_STALE', io.FALLOC_FL_NO_HIDE_STALE],
    ['FALLOC_FL_ZERO_RANGE', io.FALLOC_FL_ZERO_RANGE],
    ['IORING_OP_NOP', io.IORING_OP_NOP],
    ['IORING_SETUP_SQE128', io.IORING_SETUP_SQE128],
    ['IORING_SETUP_SUBMIT_ALL', io.IORING_SETUP_SUBMIT_ALL],
    ['IORING_SETUP_COOP_TASKRUN', io.IORING_SETUP_COOP_TASKRUN],
    ['IORING_SETUP_SINGLE_ISSUER', io.IORING_SETUP_SINGLE_ISSUER],
    ['IOSQE_FIXED_FILE', io.IOSQE_FIXED_FILE],
  ]
  for (const [name, value] of pairs) t.equal(value, c[name], name)
})
