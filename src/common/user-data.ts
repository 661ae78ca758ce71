// user_data of a queue ring's SQEs, as two 32-bit halves (no bigints on the hot path). Shared
// by the queue loop and the targets that stage their own SQEs.
//
//   hi word: kind of command     lo word: what it is about
//   kUserDataUblk   (0)          tag of a FETCH_REQ / COMMIT_AND_FETCH_REQ
//   kUserDataStop   (1)          0: the read of the stop eventfd
//   kUserDataTarget (2)          a cookie chosen by the target for its own SQEs
//   kUserDataCancel (3)          0: the cancel of a queue that drains before it goes
export const kUserDataUblk = 0
export const kUserDataStop = 1
export const kUserDataTarget = 2
export const kUserDataCancel = 3
