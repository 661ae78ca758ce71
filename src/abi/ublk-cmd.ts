// The ublk kernel ABI (include/uapi/linux/ublk_cmd.h) as plain numbers: all of Linux 7.3's, of
// which Linux 6.12's is a subset with the same values. What a given kernel accepts is what its
// GET_FEATURES mask says (see ublkFeatures for the release that brought each bit).
// Kernel names are kept verbatim so they can be grepped across the kernel, ublksrv and ublkd.
// A 64-bit value (a u64 field or a ULL macro) is a bigint; everything else is a number.
// test/addon/abi-layout.test.ts checks every UBLK_* / UBLKSRV_* export here against the C header's
// own macro of the same name.

/** _IOC(dir, 'u', nr, size): the ioctl-style encoding the driver requires (CMD_IOCTL_ENCODE). */
function ioc(dir: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (0x75 << 8) | nr) >>> 0
}
const kIocRead = 2
const kIocReadWrite = 3
/** sizeof(struct ublksrv_ctrl_cmd), sizeof(struct ublksrv_io_cmd), sizeof(struct ublk_batch_io). */
const kCtrlCmdBytes = 32
const kIoCmdBytes = 16
const kBatchIoBytes = 16

// Control commands, on /dev/ublk-control. 6.12 has those through DEL_DEV_ASYNC; each later one
// needs the feature flag its comment names.
export const UBLK_U_CMD_GET_QUEUE_AFFINITY = ioc(kIocRead, 0x01, kCtrlCmdBytes)
export const UBLK_U_CMD_GET_DEV_INFO = ioc(kIocRead, 0x02, kCtrlCmdBytes)
export const UBLK_U_CMD_ADD_DEV = ioc(kIocReadWrite, 0x04, kCtrlCmdBytes)
export const UBLK_U_CMD_DEL_DEV = ioc(kIocReadWrite, 0x05, kCtrlCmdBytes)
export const UBLK_U_CMD_START_DEV = ioc(kIocReadWrite, 0x06, kCtrlCmdBytes)
export const UBLK_U_CMD_STOP_DEV = ioc(kIocReadWrite, 0x07, kCtrlCmdBytes)
export const UBLK_U_CMD_SET_PARAMS = ioc(kIocReadWrite, 0x08, kCtrlCmdBytes)
export const UBLK_U_CMD_GET_PARAMS = ioc(kIocRead, 0x09, kCtrlCmdBytes)
export const UBLK_U_CMD_START_USER_RECOVERY = ioc(kIocReadWrite, 0x10, kCtrlCmdBytes)
export const UBLK_U_CMD_END_USER_RECOVERY = ioc(kIocReadWrite, 0x11, kCtrlCmdBytes)
/** GET_DEV_INFO carrying the char-dev path (dev_path_len), for UNPRIVILEGED_DEV devices. */
export const UBLK_U_CMD_GET_DEV_INFO2 = ioc(kIocRead, 0x12, kCtrlCmdBytes)
/** addr, len = UBLK_FEATURES_LEN: the u64 feature mask out. */
export const UBLK_U_CMD_GET_FEATURES = ioc(kIocRead, 0x13, kCtrlCmdBytes)
/** DEL_DEV without waiting for the id to be free. (The header encodes it _IOR, unlike DEL_DEV.) */
export const UBLK_U_CMD_DEL_DEV_ASYNC = ioc(kIocRead, 0x14, kCtrlCmdBytes)
/** data[0] = new size in sectors. Needs UBLK_F_UPDATE_SIZE. */
export const UBLK_U_CMD_UPDATE_SIZE = ioc(kIocReadWrite, 0x15, kCtrlCmdBytes)
/** data[0] = timeout in ms (0: forever). Needs UBLK_F_QUIESCE (and USER_RECOVERY). */
export const UBLK_U_CMD_QUIESCE_DEV = ioc(kIocReadWrite, 0x16, kCtrlCmdBytes)
/** STOP_DEV only if the disk has no openers (-EBUSY otherwise). Needs UBLK_F_SAFE_STOP_DEV. */
export const UBLK_U_CMD_TRY_STOP_DEV = ioc(kIocReadWrite, 0x17, kCtrlCmdBytes)
/** addr/len: a struct ublk_shmem_buf_reg in; result: the buffer index. Needs UBLK_F_SHMEM_ZC. */
export const UBLK_U_CMD_REG_BUF = ioc(kIocReadWrite, 0x18, kCtrlCmdBytes)
/** data[0] = the buffer index REG_BUF returned. */
export const UBLK_U_CMD_UNREG_BUF = ioc(kIocReadWrite, 0x19, kCtrlCmdBytes)

// I/O commands, on /dev/ublkcN. The per-tag ones carry a struct ublksrv_io_cmd.
export const UBLK_U_IO_FETCH_REQ = ioc(kIocReadWrite, 0x20, kIoCmdBytes)
export const UBLK_U_IO_COMMIT_AND_FETCH_REQ = ioc(kIocReadWrite, 0x21, kIoCmdBytes)
export const UBLK_U_IO_NEED_GET_DATA = ioc(kIocReadWrite, 0x22, kIoCmdBytes)
/** Zero copy (UBLK_F_SUPPORT_ZERO_COPY): addr = the index in the ring's sparse buffer table. */
export const UBLK_U_IO_REGISTER_IO_BUF = ioc(kIocReadWrite, 0x23, kIoCmdBytes)
export const UBLK_U_IO_UNREGISTER_IO_BUF = ioc(kIocReadWrite, 0x24, kIoCmdBytes)
// UBLK_F_BATCH_IO: per-queue commands carrying a struct ublk_batch_io. COMMIT_IO_CMDS may be
// partial: its result is the number of bytes of elements handled. FETCH_IO_CMDS is multishot
// (IORING_URING_CMD_MULTISHOT) into a provided buffer of u16 tags.
export const UBLK_U_IO_PREP_IO_CMDS = ioc(kIocReadWrite, 0x25, kBatchIoBytes)
export const UBLK_U_IO_COMMIT_IO_CMDS = ioc(kIocReadWrite, 0x26, kBatchIoBytes)
export const UBLK_U_IO_FETCH_IO_CMDS = ioc(kIocReadWrite, 0x27, kBatchIoBytes)

/** Result of a fetch/commit command: the device is going away, do not re-arm the tag. */
export const UBLK_IO_RES_ABORT = -19 // -ENODEV
export const UBLK_IO_RES_OK = 0
/** UBLK_F_NEED_GET_DATA: a WRITE arrived without its data; answer with UBLK_U_IO_NEED_GET_DATA. */
export const UBLK_IO_RES_NEED_GET_DATA = 1

/** mmap offset of queue 0's descriptor array on /dev/ublkcN. */
export const UBLKSRV_CMD_BUF_OFFSET = 0
export const UBLK_MAX_QUEUE_DEPTH = 4096
/** Device ids are < UBLK_MAX_UBLKS (UBLK_MINORS = 1 << MINORBITS in the driver, not the header). */
export const UBLK_MAX_UBLKS = 1 << 20
/** dev_id on ADD_DEV meaning "pick a free id" (driver convention, not a header macro). */
export const UBLK_DEV_ID_ANY = 0xffffffff
/** queue_id in a control command that is not about a queue (driver convention, not a header macro). */
export const UBLK_QUEUE_ID_NONE = 0xffff
/** Largest dev_info.io_desc_size under UBLK_F_IO_DESC_SIZE (ublk_drv.c, not the header). */
export const UBLK_MAX_IO_DESC_SIZE = 256
/** GET_FEATURES returns this many bytes. */
export const UBLK_FEATURES_LEN = 8

// USER_COPY and INTEGRITY: the pread/pwrite offset on /dev/ublkcN that names a request's buffer.
//
//   bit 63  62         53    41    25            0
//       [0][integrity][0..][qid ][tag ][byte offset]   + UBLKSRV_IO_BUF_OFFSET
//           1 bit            12    16    25 bits (one buffer is at most 32 MiB)
export const UBLKSRV_IO_BUF_OFFSET = 0x80000000
export const UBLK_IO_BUF_OFF = 0
export const UBLK_IO_BUF_BITS = 25
export const UBLK_IO_BUF_BITS_MASK = (1n << BigInt(UBLK_IO_BUF_BITS)) - 1n
export const UBLK_TAG_OFF = UBLK_IO_BUF_BITS
export const UBLK_TAG_BITS = 16
export const UBLK_TAG_BITS_MASK = (1n << BigInt(UBLK_TAG_BITS)) - 1n
export const UBLK_QID_OFF = UBLK_TAG_OFF + UBLK_TAG_BITS
export const UBLK_QID_BITS = 12
export const UBLK_QID_BITS_MASK = (1n << BigInt(UBLK_QID_BITS)) - 1n
export const UBLK_MAX_NR_QUEUES = 1 << UBLK_QID_BITS
export const UBLKSRV_IO_BUF_TOTAL_BITS = UBLK_QID_OFF + UBLK_QID_BITS
export const UBLKSRV_IO_BUF_TOTAL_SIZE = 1n << BigInt(UBLKSRV_IO_BUF_TOTAL_BITS)
/** Set in the offset to copy the request's integrity (PI) buffer instead of its data. */
export const UBLK_INTEGRITY_FLAG_OFF = 62
export const UBLKSRV_IO_INTEGRITY_FLAG = 1n << BigInt(UBLK_INTEGRITY_FLAG_OFF)

// Feature flags: ublksrv_ctrl_dev_info.flags on ADD_DEV, and the GET_FEATURES mask.
export const UBLK_F_SUPPORT_ZERO_COPY = 1n << 0n
export const UBLK_F_URING_CMD_COMP_IN_TASK = 1n << 1n
export const UBLK_F_NEED_GET_DATA = 1n << 2n
export const UBLK_F_USER_RECOVERY = 1n << 3n
export const UBLK_F_USER_RECOVERY_REISSUE = 1n << 4n
export const UBLK_F_UNPRIVILEGED_DEV = 1n << 5n
export const UBLK_F_CMD_IOCTL_ENCODE = 1n << 6n
export const UBLK_F_USER_COPY = 1n << 7n
export const UBLK_F_ZONED = 1n << 8n
export const UBLK_F_USER_RECOVERY_FAIL_IO = 1n << 9n
export const UBLK_F_UPDATE_SIZE = 1n << 10n
export const UBLK_F_AUTO_BUF_REG = 1n << 11n
export const UBLK_F_QUIESCE = 1n << 12n
export const UBLK_F_PER_IO_DAEMON = 1n << 13n
export const UBLK_F_BUF_REG_OFF_DAEMON = 1n << 14n
export const UBLK_F_BATCH_IO = 1n << 15n
export const UBLK_F_INTEGRITY = 1n << 16n
export const UBLK_F_SAFE_STOP_DEV = 1n << 17n
export const UBLK_F_NO_AUTO_PART_SCAN = 1n << 18n
export const UBLK_F_SHMEM_ZC = 1n << 19n
export const UBLK_F_IO_DESC_SIZE = 1n << 20n

/** One feature flag, for naming a mask and for refusing an option: "needs UBLK_F_X (Linux N+)". */
export interface UblkFeature {
  /** The header's name. */
  readonly name: string
  readonly bit: number
  /** The first Linux release whose driver has the feature, as 'major.minor'. '6.12' means "6.12
   *  or earlier": ublkd supports no older kernel. See docs ublk-kernel-features.md §1a. */
  readonly sinceRelease: string
}

/** Every UBLK_F_* of the 7.3 header, by bit. */
export const ublkFeatures: readonly UblkFeature[] = [
  // Defined since 6.0, but masked out of GET_FEATURES and refused until zero copy by buffer
  // registration (6.15).
  { name: 'UBLK_F_SUPPORT_ZERO_COPY', bit: 0, sinceRelease: '6.15' },
  { name: 'UBLK_F_URING_CMD_COMP_IN_TASK', bit: 1, sinceRelease: '6.12' },
  { name: 'UBLK_F_NEED_GET_DATA', bit: 2, sinceRelease: '6.12' },
  { name: 'UBLK_F_USER_RECOVERY', bit: 3, sinceRelease: '6.12' },
  { name: 'UBLK_F_USER_RECOVERY_REISSUE', bit: 4, sinceRelease: '6.12' },
  { name: 'UBLK_F_UNPRIVILEGED_DEV', bit: 5, sinceRelease: '6.12' },
  { name: 'UBLK_F_CMD_IOCTL_ENCODE', bit: 6, sinceRelease: '6.12' },
  { name: 'UBLK_F_USER_COPY', bit: 7, sinceRelease: '6.12' },
  { name: 'UBLK_F_ZONED', bit: 8, sinceRelease: '6.12' },
  { name: 'UBLK_F_USER_RECOVERY_FAIL_IO', bit: 9, sinceRelease: '6.13' }, // est. from the patch date
  { name: 'UBLK_F_UPDATE_SIZE', bit: 10, sinceRelease: '6.16' },
  { name: 'UBLK_F_AUTO_BUF_REG', bit: 11, sinceRelease: '6.16' },
  { name: 'UBLK_F_QUIESCE', bit: 12, sinceRelease: '6.16' },
  { name: 'UBLK_F_PER_IO_DAEMON', bit: 13, sinceRelease: '6.16' },
  { name: 'UBLK_F_BUF_REG_OFF_DAEMON', bit: 14, sinceRelease: '6.17' }, // est. from the patch date
  { name: 'UBLK_F_BATCH_IO', bit: 15, sinceRelease: '7.0' },
  { name: 'UBLK_F_INTEGRITY', bit: 16, sinceRelease: '7.0' }, // and CONFIG_BLK_DEV_INTEGRITY
  { name: 'UBLK_F_SAFE_STOP_DEV', bit: 17, sinceRelease: '7.0' },
  { name: 'UBLK_F_NO_AUTO_PART_SCAN', bit: 18, sinceRelease: '7.0' },
  { name: 'UBLK_F_SHMEM_ZC', bit: 19, sinceRelease: '7.1' }, // est. from the patch date
  { name: 'UBLK_F_IO_DESC_SIZE', bit: 20, sinceRelease: '7.3' }, // after 7.1, at the latest 7.3
]

// Device states (ublksrv_ctrl_dev_info.state).
export const UBLK_S_DEV_DEAD = 0
export const UBLK_S_DEV_LIVE = 1
export const UBLK_S_DEV_QUIESCED = 2
/** USER_RECOVERY_FAIL_IO: no server, and I/O fails until one recovers the device. */
export const UBLK_S_DEV_FAIL_IO = 3

export const UBLK_ATTR_READ_ONLY = 1 << 0
export const UBLK_ATTR_ROTATIONAL = 1 << 1
export const UBLK_ATTR_VOLATILE_CACHE = 1 << 2
export const UBLK_ATTR_FUA = 1 << 3

// ublk_params.types: which parts of struct ublk_params are valid.
export const UBLK_PARAM_TYPE_BASIC = 1 << 0
export const UBLK_PARAM_TYPE_DISCARD = 1 << 1
/** Read-only: filled in by GET_PARAMS; SET_PARAMS with it is -EINVAL. */
export const UBLK_PARAM_TYPE_DEVT = 1 << 2
export const UBLK_PARAM_TYPE_ZONED = 1 << 3
export const UBLK_PARAM_TYPE_DMA_ALIGN = 1 << 4
export const UBLK_PARAM_TYPE_SEGMENT = 1 << 5
/** Needs UBLK_F_INTEGRITY. */
export const UBLK_PARAM_TYPE_INTEGRITY = 1 << 6
/** Smallest seg.max_segment_size and seg.seg_boundary_mask + 1. */
export const UBLK_MIN_SEGMENT_SIZE = 4096

// ublksrv_io_desc.op_flags: the op in bits 0-7, flags above.
export const UBLK_IO_OP_READ = 0
export const UBLK_IO_OP_WRITE = 1
export const UBLK_IO_OP_FLUSH = 2
export const UBLK_IO_OP_DISCARD = 3
export const UBLK_IO_OP_WRITE_SAME = 4
export const UBLK_IO_OP_WRITE_ZEROES = 5
export const UBLK_IO_OP_ZONE_OPEN = 10
export const UBLK_IO_OP_ZONE_CLOSE = 11
export const UBLK_IO_OP_ZONE_FINISH = 12
export const UBLK_IO_OP_ZONE_APPEND = 13
export const UBLK_IO_OP_ZONE_RESET_ALL = 14
export const UBLK_IO_OP_ZONE_RESET = 15
/** The descriptor's nr_zones says how many struct blk_zone to report from start_sector. */
export const UBLK_IO_OP_REPORT_ZONES = 18

export const UBLK_IO_F_FAILFAST_DEV = 1 << 8
export const UBLK_IO_F_FAILFAST_TRANSPORT = 1 << 9
export const UBLK_IO_F_FAILFAST_DRIVER = 1 << 10
export const UBLK_IO_F_META = 1 << 11
export const UBLK_IO_F_FUA = 1 << 13
export const UBLK_IO_F_NOUNMAP = 1 << 15
export const UBLK_IO_F_SWAP = 1 << 16
/** AUTO_BUF_REG with UBLK_AUTO_BUF_REG_FALLBACK: the kernel could not register the buffer, so
 *  the server must (UBLK_U_IO_REGISTER_IO_BUF). */
export const UBLK_IO_F_NEED_REG_BUF = 1 << 17
/** The request has an integrity buffer (UBLKSRV_IO_INTEGRITY_FLAG). */
export const UBLK_IO_F_INTEGRITY = 1 << 18
/** The descriptor's addr is a registered shared-memory buffer's index and offset
 *  (UBLK_SHMEM_ZC_*), not an address. */
export const UBLK_IO_F_SHMEM_ZC = 1 << 19

/** ublk_auto_buf_reg.flags: on a failed registration, deliver the request with
 *  UBLK_IO_F_NEED_REG_BUF instead of failing it silently. */
export const UBLK_AUTO_BUF_REG_FALLBACK = 1 << 0
export const UBLK_AUTO_BUF_REG_F_MASK = UBLK_AUTO_BUF_REG_FALLBACK

// ublk_batch_io.flags: which optional u64 fields follow each ublk_elem_header (buf_addr, then
// zone_lba); elem_bytes must equal 8 plus 8 for each.
export const UBLK_BATCH_F_HAS_ZONE_LBA = 1 << 0
export const UBLK_BATCH_F_HAS_BUF_ADDR = 1 << 1
export const UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK = 1 << 2

/** ublk_shmem_buf_reg.flags: pin without FOLL_WRITE (a write-sealed memfd). */
export const UBLK_SHMEM_BUF_READ_ONLY = 1 << 0

// UBLK_IO_F_SHMEM_ZC: ublksrv_io_desc.addr = buffer index << UBLK_SHMEM_ZC_IDX_OFF | byte offset.
export const UBLK_SHMEM_ZC_OFF_MASK = 0xffffffffn
export const UBLK_SHMEM_ZC_IDX_OFF = 32
export const UBLK_SHMEM_ZC_IDX_MASK = 0xffffn

/** Descriptor sizes and sectors: sizes and offsets in descriptors are in 512-byte sectors. */
export const kSectorShift = 9
