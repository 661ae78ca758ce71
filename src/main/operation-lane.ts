// One operation at a time: an operation starts once the one before it has settled, whatever its
// outcome. A device's lifecycle operations (heal, delete, detach, hand-over, resize) go through
// one lane, so that none of them starts or stops queues under another.
export class OperationLane {
  private last: Promise<unknown> = Promise.resolve()

  run<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.last.then(operation)
    this.last = result.catch(() => {})
    return result
  }
}
