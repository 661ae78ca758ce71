// Pair test: the kernel struct layouts and opcodes as the C++ compiler sees them (from the
// vendored 7.3 header) must equal what the TypeScript encoders use.
import t from 'tap'

import * as io from '../../src/abi/io-uring.js'
import {
  ublkAutoBufReg, ublkAutoBufRegToSqeAddr, ublkBatchIo, ublkElemHeader, ublkParams, ublkShmemBufReg,
  ublksrvCtrlCmd, ublksrvCtrlDevInfo, ublksrvIoCmd, ublksrvIoDesc,
} from '../../src/abi/structs.js'
import * as ublk from '../../src/abi/ublk-cmd.js'
import { native } from '../../src/native/addon.js'

const layout = native.abiLayout
const c = layout.constants

/** Our layout of each kernel struct, by the header's struct name. */
const structs: [string, object][] = [
  ['ublksrv_ctrl_cmd', ublksrvCtrlCmd],
  ['ublksrv_ctrl_dev_info', ublksrvCtrlDevInfo],
  ['ublk_params', ublkParams],
  ['ublk_param_basic', ublkParams.basic],
  ['ublk_param_discard', ublkParams.discard],
  ['ublk_param_devt', ublkParams.devt],
  ['ublk_param_zoned', ublkParams.zoned],
  ['ublk_param_dma_align', ublkParams.dma],
  ['ublk_param_segment', ublkParams.seg],
  ['ublk_param_integrity', ublkParams.integrity],
  ['ublksrv_io_desc', ublksrvIoDesc],
  ['ublksrv_io_cmd', ublksrvIoCmd],
  ['ublk_auto_buf_reg', ublkAutoBufReg],
  ['ublk_elem_header', ublkElemHeader],
  ['ublk_batch_io', ublkBatchIo],
  ['ublk_shmem_buf_reg', ublkShmemBufReg],
]

/** A layout's fields as the header names them (camelCase to snake_case), with their offsets; a
 *  part of a larger struct (ublkParams.basic...) stands for its offset there. */
function fieldOffsets(ours: object): [string, number][] {
  return Object.entries(ours)
    .filter(([name]) => name !== 'bytes' && name !== 'offset')
    .map(([name, value]) => [
      name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`),
      typeof value === 'object' ? (value as { offset: number }).offset : value as number,
    ])
}

t.test('every struct size and field offset matches the header', async (t) => {
  for (const [name, ours] of structs) {
    const theirs = layout[name]!
    const fields = fieldOffsets(ours)
    t.equal(theirs['sizeof'], (ours as { bytes: number }).bytes, `sizeof(struct ${name})`)
    for (const [field, offset] of fields) t.equal(theirs[field], offset, `${name}.${field}`)
    t.equal(Object.keys(theirs).length, fields.length + 1, `every field of ${name} the addon exports is ours`)
  }
  const notPaired = ['constants', 'io_uring_sqe', 'header_helpers']
  const cStructs = Object.keys(layout).filter((name) => !notPaired.includes(name))
  t.same(cStructs.sort(), structs.map(([name]) => name).sort(), 'every struct the addon exports is paired')
})

t.test('ublkAutoBufRegToSqeAddr packs as the header\'s ublk_auto_buf_reg_to_sqe_addr', async (t) => {
  const header = layout['header_helpers']!['auto_buf_reg_sqe_addr_0xbeef_fallback']
  t.equal(ublkAutoBufRegToSqeAddr(0xbeef, ublk.UBLK_AUTO_BUF_REG_FALLBACK), header)
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
