// Kernel struct layouts are checked twice: here at compile time against the vendored 7.3
// header, and in test/addon/abi-layout.test.ts against the TypeScript encoders in src/abi.
#include "abi_layout.h"

#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/io_uring.h>
#include <sys/socket.h>

#include <cstddef>

#include "uapi/linux/ublk_cmd.h"

namespace ublkd {

static_assert(sizeof(io_uring_sqe) == 64, "base SQE; SQE128 doubles it");
static_assert(offsetof(io_uring_sqe, cmd) == 48, "uring_cmd payload starts at byte 48");
static_assert(offsetof(io_uring_sqe, user_data) == 32);
static_assert(sizeof(io_uring_cqe) == 16);

// Every ublk struct src/abi/structs.ts has a layout for, with its size in the 7.3 header.
#define UBLK_STRUCTS(X)                                               \
  X(ublksrv_ctrl_cmd, 32)                                             \
  X(ublksrv_ctrl_dev_info, 64)                                        \
  X(ublk_params, 152) /* 6.12's was 112 */                            \
  X(ublk_param_basic, 32)                                             \
  X(ublk_param_discard, 20)                                           \
  X(ublk_param_devt, 16)                                              \
  X(ublk_param_zoned, 32)                                             \
  X(ublk_param_dma_align, 8)                                          \
  X(ublk_param_segment, 16)                                           \
  X(ublk_param_integrity, 16)                                         \
  X(ublksrv_io_desc, 24) /* the stride, unless UBLK_F_IO_DESC_SIZE */ \
  X(ublksrv_io_cmd, 16)                                               \
  X(ublk_auto_buf_reg, 8) /* packed into sqe->addr */                 \
  X(ublk_elem_header, 8)                                              \
  X(ublk_batch_io, 16)                                                \
  X(ublk_shmem_buf_reg, 24)

// Every field of those structs that src/abi/structs.ts names, with its offset in the 7.3 header.
#define UBLK_FIELDS(X)                                                \
  X(ublksrv_ctrl_cmd, dev_id, 0)                                      \
  X(ublksrv_ctrl_cmd, queue_id, 4)                                    \
  X(ublksrv_ctrl_cmd, len, 6)                                         \
  X(ublksrv_ctrl_cmd, addr, 8)                                        \
  X(ublksrv_ctrl_cmd, data, 16)                                       \
  X(ublksrv_ctrl_cmd, dev_path_len, 24)                               \
  X(ublksrv_ctrl_dev_info, nr_hw_queues, 0)                           \
  X(ublksrv_ctrl_dev_info, queue_depth, 2)                            \
  X(ublksrv_ctrl_dev_info, state, 4)                                  \
  X(ublksrv_ctrl_dev_info, io_desc_size, 6) /* 6.12's pad0 */         \
  X(ublksrv_ctrl_dev_info, max_io_buf_bytes, 8)                       \
  X(ublksrv_ctrl_dev_info, dev_id, 12)                                \
  X(ublksrv_ctrl_dev_info, ublksrv_pid, 16)                           \
  X(ublksrv_ctrl_dev_info, flags, 24)                                 \
  X(ublksrv_ctrl_dev_info, ublksrv_flags, 32)                         \
  X(ublksrv_ctrl_dev_info, owner_uid, 40)                             \
  X(ublksrv_ctrl_dev_info, owner_gid, 44)                             \
  X(ublk_params, len, 0)                                              \
  X(ublk_params, types, 4)                                            \
  X(ublk_params, basic, 8)                                            \
  X(ublk_params, discard, 40)                                         \
  X(ublk_params, devt, 60)                                            \
  X(ublk_params, zoned, 76)                                           \
  X(ublk_params, dma, 108) /* 6.12's struct ended at 108 */           \
  X(ublk_params, seg, 120) /* 8-aligned: 4 bytes of padding before */ \
  X(ublk_params, integrity, 136)                                      \
  X(ublk_param_basic, attrs, 0)                                       \
  X(ublk_param_basic, logical_bs_shift, 4)                            \
  X(ublk_param_basic, physical_bs_shift, 5)                           \
  X(ublk_param_basic, io_opt_shift, 6)                                \
  X(ublk_param_basic, io_min_shift, 7)                                \
  X(ublk_param_basic, max_sectors, 8)                                 \
  X(ublk_param_basic, chunk_sectors, 12)                              \
  X(ublk_param_basic, dev_sectors, 16)                                \
  X(ublk_param_basic, virt_boundary_mask, 24)                         \
  X(ublk_param_discard, discard_alignment, 0)                         \
  X(ublk_param_discard, discard_granularity, 4)                       \
  X(ublk_param_discard, max_discard_sectors, 8)                       \
  X(ublk_param_discard, max_write_zeroes_sectors, 12)                 \
  X(ublk_param_discard, max_discard_segments, 16)                     \
  X(ublk_param_devt, char_major, 0)                                   \
  X(ublk_param_devt, char_minor, 4)                                   \
  X(ublk_param_devt, disk_major, 8)                                   \
  X(ublk_param_devt, disk_minor, 12)                                  \
  X(ublk_param_zoned, max_open_zones, 0)                              \
  X(ublk_param_zoned, max_active_zones, 4)                            \
  X(ublk_param_zoned, max_zone_append_sectors, 8)                     \
  X(ublk_param_dma_align, alignment, 0)                               \
  X(ublk_param_segment, seg_boundary_mask, 0)                         \
  X(ublk_param_segment, max_segment_size, 8)                          \
  X(ublk_param_segment, max_segments, 12)                             \
  X(ublk_param_integrity, flags, 0)                                   \
  X(ublk_param_integrity, max_integrity_segments, 4)                  \
  X(ublk_param_integrity, interval_exp, 6)                            \
  X(ublk_param_integrity, metadata_size, 7)                           \
  X(ublk_param_integrity, pi_offset, 8)                               \
  X(ublk_param_integrity, csum_type, 9)                               \
  X(ublk_param_integrity, tag_size, 10)                               \
  X(ublksrv_io_desc, op_flags, 0)                                     \
  X(ublksrv_io_desc, nr_sectors, 4)                                   \
  X(ublksrv_io_desc, nr_zones, 4) /* a union with nr_sectors */       \
  X(ublksrv_io_desc, start_sector, 8)                                 \
  X(ublksrv_io_desc, addr, 16)                                        \
  X(ublksrv_io_cmd, q_id, 0)                                          \
  X(ublksrv_io_cmd, tag, 2)                                           \
  X(ublksrv_io_cmd, result, 4)                                        \
  X(ublksrv_io_cmd, addr, 8)                                          \
  X(ublksrv_io_cmd, zone_append_lba, 8) /* a union with addr */       \
  X(ublk_auto_buf_reg, index, 0)                                      \
  X(ublk_auto_buf_reg, flags, 2)                                      \
  X(ublk_auto_buf_reg, reserved0, 3)                                  \
  X(ublk_auto_buf_reg, reserved1, 4)                                  \
  X(ublk_elem_header, tag, 0)                                         \
  X(ublk_elem_header, buf_index, 2)                                   \
  X(ublk_elem_header, result, 4)                                      \
  X(ublk_batch_io, q_id, 0)                                           \
  X(ublk_batch_io, flags, 2)                                          \
  X(ublk_batch_io, nr_elem, 4)                                        \
  X(ublk_batch_io, elem_bytes, 6)                                     \
  X(ublk_batch_io, reserved, 7)                                       \
  X(ublk_batch_io, reserved2, 8)                                      \
  X(ublk_shmem_buf_reg, addr, 0)                                      \
  X(ublk_shmem_buf_reg, len, 8)                                       \
  X(ublk_shmem_buf_reg, flags, 16)                                    \
  X(ublk_shmem_buf_reg, reserved, 20)

#define ASSERT_SIZE(type, bytes) static_assert(sizeof(type) == (bytes), "sizeof(struct " #type ")");
#define ASSERT_OFFSET(type, field, offset) \
  static_assert(offsetof(type, field) == (offset), "offset of " #type "." #field);
UBLK_STRUCTS(ASSERT_SIZE)
UBLK_FIELDS(ASSERT_OFFSET)
#undef ASSERT_SIZE
#undef ASSERT_OFFSET

namespace {

void Put(Napi::Object target, const char* name, double value) {
  target.Set(name, Napi::Number::New(target.Env(), value));
}

}  // namespace

// A JS number holds an integer exactly only up to 2^53 (and powers of two beyond): every constant
// is checked to survive the conversion, so the pair test compares the header's exact value.
template <typename T>
constexpr bool ExactAsDouble(T value) {
  return static_cast<T>(static_cast<double>(value)) == value;
}

#define PUT_SIZE(obj, type) Put(obj, "sizeof", sizeof(type))
#define PUT_OFFSET(obj, type, field) Put(obj, #field, offsetof(type, field))
#define PUT_VALUE(obj, label, value)                                            \
  static_assert(ExactAsDouble(+(value)), label " is not exact as a JS number"); \
  Put(obj, label, static_cast<double>(value))
#define PUT_CONST(obj, name) PUT_VALUE(obj, #name, name)

// Every UBLK_* / UBLKSRV_* macro of the header that src/abi/ublk-cmd.ts mirrors (all but the legacy
// plain-number opcodes UBLK_CMD_* / UBLK_IO_FETCH_REQ..., which ublkd never sends).
#define UBLK_CONSTANTS(X) \
  X(UBLK_U_CMD_GET_QUEUE_AFFINITY) \
  X(UBLK_U_CMD_GET_DEV_INFO) \
  X(UBLK_U_CMD_ADD_DEV) \
  X(UBLK_U_CMD_DEL_DEV) \
  X(UBLK_U_CMD_START_DEV) \
  X(UBLK_U_CMD_STOP_DEV) \
  X(UBLK_U_CMD_SET_PARAMS) \
  X(UBLK_U_CMD_GET_PARAMS) \
  X(UBLK_U_CMD_START_USER_RECOVERY) \
  X(UBLK_U_CMD_END_USER_RECOVERY) \
  X(UBLK_U_CMD_GET_DEV_INFO2) \
  X(UBLK_U_CMD_GET_FEATURES) \
  X(UBLK_U_CMD_DEL_DEV_ASYNC) \
  X(UBLK_U_CMD_UPDATE_SIZE) \
  X(UBLK_U_CMD_QUIESCE_DEV) \
  X(UBLK_U_CMD_TRY_STOP_DEV) \
  X(UBLK_U_CMD_REG_BUF) \
  X(UBLK_U_CMD_UNREG_BUF) \
  X(UBLK_U_IO_FETCH_REQ) \
  X(UBLK_U_IO_COMMIT_AND_FETCH_REQ) \
  X(UBLK_U_IO_NEED_GET_DATA) \
  X(UBLK_U_IO_REGISTER_IO_BUF) \
  X(UBLK_U_IO_UNREGISTER_IO_BUF) \
  X(UBLK_U_IO_PREP_IO_CMDS) \
  X(UBLK_U_IO_COMMIT_IO_CMDS) \
  X(UBLK_U_IO_FETCH_IO_CMDS) \
  X(UBLK_IO_RES_ABORT) \
  X(UBLK_IO_RES_OK) \
  X(UBLK_IO_RES_NEED_GET_DATA) \
  X(UBLKSRV_CMD_BUF_OFFSET) \
  X(UBLK_MAX_QUEUE_DEPTH) \
  X(UBLK_FEATURES_LEN) \
  X(UBLKSRV_IO_BUF_OFFSET) \
  X(UBLK_IO_BUF_OFF) \
  X(UBLK_IO_BUF_BITS) \
  X(UBLK_IO_BUF_BITS_MASK) \
  X(UBLK_TAG_OFF) \
  X(UBLK_TAG_BITS) \
  X(UBLK_TAG_BITS_MASK) \
  X(UBLK_QID_OFF) \
  X(UBLK_QID_BITS) \
  X(UBLK_QID_BITS_MASK) \
  X(UBLK_MAX_NR_QUEUES) \
  X(UBLKSRV_IO_BUF_TOTAL_BITS) \
  X(UBLKSRV_IO_BUF_TOTAL_SIZE) \
  X(UBLK_INTEGRITY_FLAG_OFF) \
  X(UBLKSRV_IO_INTEGRITY_FLAG) \
  X(UBLK_F_SUPPORT_ZERO_COPY) \
  X(UBLK_F_URING_CMD_COMP_IN_TASK) \
  X(UBLK_F_NEED_GET_DATA) \
  X(UBLK_F_USER_RECOVERY) \
  X(UBLK_F_USER_RECOVERY_REISSUE) \
  X(UBLK_F_UNPRIVILEGED_DEV) \
  X(UBLK_F_CMD_IOCTL_ENCODE) \
  X(UBLK_F_USER_COPY) \
  X(UBLK_F_ZONED) \
  X(UBLK_F_USER_RECOVERY_FAIL_IO) \
  X(UBLK_F_UPDATE_SIZE) \
  X(UBLK_F_AUTO_BUF_REG) \
  X(UBLK_F_QUIESCE) \
  X(UBLK_F_PER_IO_DAEMON) \
  X(UBLK_F_BUF_REG_OFF_DAEMON) \
  X(UBLK_F_BATCH_IO) \
  X(UBLK_F_INTEGRITY) \
  X(UBLK_F_SAFE_STOP_DEV) \
  X(UBLK_F_NO_AUTO_PART_SCAN) \
  X(UBLK_F_SHMEM_ZC) \
  X(UBLK_F_IO_DESC_SIZE) \
  X(UBLK_S_DEV_DEAD) \
  X(UBLK_S_DEV_LIVE) \
  X(UBLK_S_DEV_QUIESCED) \
  X(UBLK_S_DEV_FAIL_IO) \
  X(UBLK_ATTR_READ_ONLY) \
  X(UBLK_ATTR_ROTATIONAL) \
  X(UBLK_ATTR_VOLATILE_CACHE) \
  X(UBLK_ATTR_FUA) \
  X(UBLK_PARAM_TYPE_BASIC) \
  X(UBLK_PARAM_TYPE_DISCARD) \
  X(UBLK_PARAM_TYPE_DEVT) \
  X(UBLK_PARAM_TYPE_ZONED) \
  X(UBLK_PARAM_TYPE_DMA_ALIGN) \
  X(UBLK_PARAM_TYPE_SEGMENT) \
  X(UBLK_PARAM_TYPE_INTEGRITY) \
  X(UBLK_MIN_SEGMENT_SIZE) \
  X(UBLK_IO_OP_READ) \
  X(UBLK_IO_OP_WRITE) \
  X(UBLK_IO_OP_FLUSH) \
  X(UBLK_IO_OP_DISCARD) \
  X(UBLK_IO_OP_WRITE_SAME) \
  X(UBLK_IO_OP_WRITE_ZEROES) \
  X(UBLK_IO_OP_ZONE_OPEN) \
  X(UBLK_IO_OP_ZONE_CLOSE) \
  X(UBLK_IO_OP_ZONE_FINISH) \
  X(UBLK_IO_OP_ZONE_APPEND) \
  X(UBLK_IO_OP_ZONE_RESET_ALL) \
  X(UBLK_IO_OP_ZONE_RESET) \
  X(UBLK_IO_OP_REPORT_ZONES) \
  X(UBLK_IO_F_FAILFAST_DEV) \
  X(UBLK_IO_F_FAILFAST_TRANSPORT) \
  X(UBLK_IO_F_FAILFAST_DRIVER) \
  X(UBLK_IO_F_META) \
  X(UBLK_IO_F_FUA) \
  X(UBLK_IO_F_NOUNMAP) \
  X(UBLK_IO_F_SWAP) \
  X(UBLK_IO_F_NEED_REG_BUF) \
  X(UBLK_IO_F_INTEGRITY) \
  X(UBLK_IO_F_SHMEM_ZC) \
  X(UBLK_AUTO_BUF_REG_FALLBACK) \
  X(UBLK_AUTO_BUF_REG_F_MASK) \
  X(UBLK_BATCH_F_HAS_ZONE_LBA) \
  X(UBLK_BATCH_F_HAS_BUF_ADDR) \
  X(UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK) \
  X(UBLK_SHMEM_BUF_READ_ONLY) \
  X(UBLK_SHMEM_ZC_OFF_MASK) \
  X(UBLK_SHMEM_ZC_IDX_OFF) \
  X(UBLK_SHMEM_ZC_IDX_MASK)


Napi::Object AbiLayout(Napi::Env env) {
  Napi::Object layout = Napi::Object::New(env);

  // One object per struct: "sizeof" and each field's offset, under the header's names.
#define PUT_STRUCT(type, bytes)                   \
  {                                               \
    Napi::Object object = Napi::Object::New(env); \
    PUT_SIZE(object, type);                       \
    layout.Set(#type, object);                    \
  }
#define PUT_FIELD(type, field, offset) PUT_OFFSET(layout.Get(#type).As<Napi::Object>(), type, field);
  UBLK_STRUCTS(PUT_STRUCT)
  UBLK_FIELDS(PUT_FIELD)
#undef PUT_STRUCT
#undef PUT_FIELD

  // The header's own packing of struct ublk_auto_buf_reg into sqe->addr, for one sample, so the
  // pair test can hold ublkAutoBufRegToSqeAddr to it.
  const ublk_auto_buf_reg sample = {
      .index = 0xbeef, .flags = UBLK_AUTO_BUF_REG_FALLBACK, .reserved0 = 0, .reserved1 = 0};
  Napi::Object helpers = Napi::Object::New(env);
  Put(helpers, "auto_buf_reg_sqe_addr_0xbeef_fallback",
      static_cast<double>(ublk_auto_buf_reg_to_sqe_addr(&sample)));
  layout.Set("header_helpers", helpers);

  Napi::Object sqe = Napi::Object::New(env);
  PUT_SIZE(sqe, io_uring_sqe);
  PUT_OFFSET(sqe, io_uring_sqe, opcode);
  PUT_OFFSET(sqe, io_uring_sqe, flags);
  PUT_OFFSET(sqe, io_uring_sqe, fd);
  PUT_OFFSET(sqe, io_uring_sqe, off);
  PUT_OFFSET(sqe, io_uring_sqe, addr);
  PUT_OFFSET(sqe, io_uring_sqe, len);
  PUT_OFFSET(sqe, io_uring_sqe, rw_flags);
  PUT_OFFSET(sqe, io_uring_sqe, user_data);
  PUT_OFFSET(sqe, io_uring_sqe, cmd);
  layout.Set("io_uring_sqe", sqe);

  Napi::Object constants = Napi::Object::New(env);
#define PUT_UBLK_CONSTANT(name) PUT_VALUE(constants, #name, name);  // #name before expansion
  UBLK_CONSTANTS(PUT_UBLK_CONSTANT)
#undef PUT_UBLK_CONSTANT
  PUT_CONST(constants, IORING_OP_URING_CMD);
  PUT_CONST(constants, IORING_OP_READ);
  PUT_CONST(constants, IORING_OP_WRITE);
  PUT_CONST(constants, IORING_OP_FSYNC);
  PUT_CONST(constants, IORING_OP_FALLOCATE);
  PUT_CONST(constants, IORING_OP_ASYNC_CANCEL);
  PUT_CONST(constants, IORING_OP_SENDMSG);
  PUT_CONST(constants, IORING_OP_READ_FIXED);
  PUT_CONST(constants, IORING_OP_WRITE_FIXED);
  PUT_CONST(constants, IORING_OP_RECV);
  PUT_CONST(constants, IORING_OP_SHUTDOWN);
  PUT_CONST(constants, MSG_NOSIGNAL);
  PUT_CONST(constants, SHUT_RDWR);
  PUT_CONST(constants, IORING_FSYNC_DATASYNC);
  PUT_CONST(constants, IORING_ASYNC_CANCEL_ANY);
  PUT_CONST(constants, RWF_DSYNC);
  PUT_CONST(constants, FALLOC_FL_KEEP_SIZE);
  PUT_CONST(constants, FALLOC_FL_PUNCH_HOLE);
  PUT_CONST(constants, FALLOC_FL_ZERO_RANGE);
  PUT_CONST(constants, IORING_OP_NOP);
  PUT_CONST(constants, IORING_SETUP_SQE128);
  PUT_CONST(constants, IORING_SETUP_SUBMIT_ALL);
  PUT_CONST(constants, IORING_SETUP_COOP_TASKRUN);
  PUT_CONST(constants, IORING_SETUP_SINGLE_ISSUER);
  PUT_CONST(constants, IOSQE_FIXED_FILE);
  layout.Set("constants", constants);
  return layout;
}

}  // namespace ublkd
