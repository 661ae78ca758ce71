// The ublk kernel ABI (include/uapi/linux/ublk_cmd.h, Linux 6.12) as plain numbers.
// Kernel names are kept verbatim so they can be grepped across the kernel, ublksrv and ublkd.
// test/addon/abi-layout.test.ts checks every opcode here against the C header's own macros.

/** _IOC(dir, 'u', nr, size): the ioctl-style encoding the driver requires (CMD_IOCTL_ENCODE). */
function ioc(dir: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (0x75 << 8) | nr) >>> 0
}
const kIocRead = 2
const kIocReadWrite = 3
const kCtrlCmdBytes = 32
const kIoCmdBytes = 16

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
export const UBLK_U_CMD_GET_FEATURES = ioc(kIocRead, 0x13, kCtrlCmdBytes)

export const UBLK_U_IO_FETCH_REQ = ioc(kIocReadWrite, 0x20, kIoCmdBytes)
export const UBLK_U_IO_COMMIT_AND_FETCH_REQ = ioc(kIocReadWrite, 0x21, kIoCmdBytes)
export const UBLK_U_IO_NEED_GET_DATA = ioc(kIocReadWrite, 0x22, kIoCmdBytes)

/** Result of a fetch/commit command: the device is going away, do not re-arm the tag. */
export const UBLK_IO_RES_ABORT = -19 // -ENODEV
export const UBLK_IO_RES_OK = 0

export const UBLKSRV_CMD_BUF_OFFSET = 0
export const UBLK_MAX_QUEUE_DEPTH = 4096
export const UBLK_MAX_NR_QUEUES = 4096
/** Device ids are < UBLK_MAX_UBLKS (UBLK_MINORS = 1 << MINORBITS in the driver). */
export const UBLK_MAX_UBLKS = 1 << 20
/** dev_id on ADD_DEV meaning "pick a free id". */
export const UBLK_DEV_ID_ANY = 0xffffffff
/** queue_id in a control command that is not about a queue. */
export const UBLK_QUEUE_ID_NONE = 0xffff

export const UBLK_F_SUPPORT_ZERO_COPY = 1n << 0n
export const UBLK_F_URING_CMD_COMP_IN_TASK = 1n << 1n
export const UBLK_F_NEED_GET_DATA = 1n << 2n
export const UBLK_F_USER_RECOVERY = 1n << 3n
export const UBLK_F_USER_RECOVERY_REISSUE = 1n << 4n
export const UBLK_F_UNPRIVILEGED_DEV = 1n << 5n
export const UBLK_F_CMD_IOCTL_ENCODE = 1n << 6n
export const UBLK_F_USER_COPY = 1n << 7n
export const UBLK_F_ZONED = 1n << 8n

/** Feature bits by kernel name, for `ublkd features`. */
export const ublkFeatureNames: ReadonlyArray<readonly [string, bigint]> = [
  ['UBLK_F_SUPPORT_ZERO_COPY', UBLK_F_SUPPORT_ZERO_COPY],
  ['UBLK_F_URING_CMD_COMP_IN_TASK', UBLK_F_URING_CMD_COMP_IN_TASK],
  ['UBLK_F_NEED_GET_DATA', UBLK_F_NEED_GET_DATA],
  ['UBLK_F_USER_RECOVERY', UBLK_F_USER_RECOVERY],
  ['UBLK_F_USER_RECOVERY_REISSUE', UBLK_F_USER_RECOVERY_REISSUE],
  ['UBLK_F_UNPRIVILEGED_DEV', UBLK_F_UNPRIVILEGED_DEV],
  ['UBLK_F_CMD_IOCTL_ENCODE', UBLK_F_CMD_IOCTL_ENCODE],
  ['UBLK_F_USER_COPY', UBLK_F_USER_COPY],
  ['UBLK_F_ZONED', UBLK_F_ZONED],
]

export const UBLK_S_DEV_DEAD = 0
export const UBLK_S_DEV_LIVE = 1
export const UBLK_S_DEV_QUIESCED = 2

export const UBLK_ATTR_READ_ONLY = 1 << 0
export const UBLK_ATTR_ROTATIONAL = 1 << 1
export const UBLK_ATTR_VOLATILE_CACHE = 1 << 2
export const UBLK_ATTR_FUA = 1 << 3

export const UBLK_PARAM_TYPE_BASIC = 1 << 0
export const UBLK_PARAM_TYPE_DISCARD = 1 << 1
export const UBLK_PARAM_TYPE_DEVT = 1 << 2

export const UBLK_IO_OP_READ = 0
export const UBLK_IO_OP_WRITE = 1
export const UBLK_IO_OP_FLUSH = 2
export const UBLK_IO_OP_DISCARD = 3
export const UBLK_IO_OP_WRITE_SAME = 4
export const UBLK_IO_OP_WRITE_ZEROES = 5

export const UBLK_IO_F_FUA = 1 << 13
export const UBLK_IO_F_NOUNMAP = 1 << 15

/** Descriptor sizes and sectors: sizes and offsets in descriptors are in 512-byte sectors. */
export const kSectorShift = 9
