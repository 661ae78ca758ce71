// Polling for host tests. They run niced beside the VMs in `npm test`, where a process may wait
// seconds for a CPU: a deadline here guards against a hang, it does not measure anything.

/** Poll `check` every 10 ms until it holds; throw naming `what` after `ms`. */
export async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (!check()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}
