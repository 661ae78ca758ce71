// The transport of a TLS connection: Node's TLS socket encrypts what it is given and decrypts
// what arrives, on the worker's event loop. Writes of one loop turn are corked into one.
import type net from 'node:net'

import type { NbdBuffers, NbdTransport, TransportEvents } from './transport.js'

export class StreamTransport implements NbdTransport {
  private corked = false
  private dead = false

  constructor(private readonly socket: net.Socket, private readonly buffers: NbdBuffers, events: TransportEvents) {
    socket.on('data', (chunk: Buffer) => {
      if (!this.dead) events.received(chunk, 0, chunk.length)
    })
    socket.on('error', () => { /* 'close' follows and says it */ })
    socket.on('close', () => {
      if (!this.dead) events.lost('the connection closed')
    })
    socket.resume()
  }

  get released(): boolean {
    return this.dead
  }

  send(slot: number, tag: number, payloadOffset: number, payloadBytes: number): void {
    if (!this.corked) {
      this.socket.cork()
      this.corked = true
    }
    this.socket.write(this.buffers.headerViews[slot]!)
    if (payloadBytes > 0) {
      const at = this.buffers.tagOffset[tag]! + payloadOffset
      this.socket.write(this.buffers.data.subarray(at, at + payloadBytes))
    }
  }

  flush(): void {
    if (!this.corked) return
    this.corked = false
    this.socket.uncork()
  }

  onCompletion(): void {
    throw new Error('a TLS connection has no SQEs')
  }

  destroy(): void {
    this.dead = true
    this.socket.destroy()
  }

  close(disc: Buffer): void {
    if (this.dead) return
    this.dead = true
    this.socket.end(disc)
  }
}
