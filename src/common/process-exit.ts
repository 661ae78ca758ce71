// Waiting for another process to end (an upgraded daemon's predecessor), by polling kill(pid, 0):
// there is no pidfd in Node.

/** `pid` exists (EPERM: it exists, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

// A daemon's exit after its hand-over takes milliseconds to seconds; this adds at most 20 ms.
const kPollMs = 20

/** Resolves true once `pid` is gone, false if it still runs after `timeoutMs`. */
export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (processAlive(pid)) {
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, kPollMs))
  }
  return true
}
