// A device's start gate: whether START_DEV has completed, and how many requests its queues
// failed before that because the target threw. Linux 6.12 scans a new disk for partitions inside
// START_DEV, holding the device's mutex, and a queue that died then would leave that read, and
// the device, hung for good. Until the gate opens a queue fails such a request (EIO) instead of
// dying, and the daemon fails the add once START_DEV has returned.
const kOpen = 0
const kFaults = 1

export function createStartGate(open: boolean): Int32Array {
  const gate = new Int32Array(new SharedArrayBuffer(2 * Int32Array.BYTES_PER_ELEMENT))
  if (open) gate[kOpen] = 1
  return gate
}

export function openStartGate(gate: Int32Array): void {
  Atomics.store(gate, kOpen, 1)
}

export function startGateOpen(gate: Int32Array): boolean {
  return Atomics.load(gate, kOpen) === 1
}

export function noteStartFault(gate: Int32Array): void {
  Atomics.add(gate, kFaults, 1)
}

export function startFaults(gate: Int32Array): number {
  return Atomics.load(gate, kFaults)
}
