// What the daemon must remember across its own death: one JSON record per device under
// <state-dir>/devices/, written atomically (temp file + rename), so a restarted daemon can
// re-attach devices created with recovery enabled.
import fs from 'node:fs'
import path from 'node:path'

import type { DeviceRequest } from './device-request.js'
import { recoveryModeField } from './recovery-mode.js'

export interface DeviceRecord {
  version: 1
  id: number
  request: DeviceRequest
  createdMs: number
  /** Set by a daemon handing the device over (ublkd upgrade): when it stopped serving, epoch ms. */
  handOverMs?: number
  /** How long the device's I/O waited during its last upgrade, ms. */
  lastPauseMs?: number
}

export class StateStore {
  private readonly dir: string

  constructor(stateDir: string) {
    this.dir = path.join(stateDir, 'devices')
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 })
  }

  save(record: DeviceRecord): void {
    const file = this.file(record.id)
    const temp = `${file}.${process.pid}.tmp`
    const fd = fs.openSync(temp, 'w', 0o600)
    try {
      fs.writeSync(fd, `${JSON.stringify(record, null, 2)}\n`)
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
    fs.renameSync(temp, file)
  }

  /** Remove device `id`'s record; with `createdMs`, only if the record is that device's (ids
   *  are reused: a newer device may hold the id by now). */
  remove(id: number, createdMs?: number): void {
    if (createdMs !== undefined) {
      try {
        const record = JSON.parse(fs.readFileSync(this.file(id), 'utf8')) as Partial<DeviceRecord>
        if (record.createdMs !== createdMs) return
      } catch {
        // Missing or unreadable: nothing of ours to keep.
      }
    }
    fs.rmSync(this.file(id), { force: true })
  }

  /** Every readable record; unreadable ones are skipped and named in `broken`. */
  list(): { records: DeviceRecord[]; broken: string[] } {
    const records: DeviceRecord[] = []
    const broken: string[] = []
    for (const name of fs.readdirSync(this.dir).filter((entry) => /^\d+\.json$/.test(entry)).sort()) {
      try {
        const record = JSON.parse(fs.readFileSync(path.join(this.dir, name), 'utf8')) as DeviceRecord
        if (record.version === 1 && Number.isInteger(record.id) && typeof record.request === 'object') {
          // Records from before recovery modes hold a boolean.
          record.request.recovery = recoveryModeField(record.request.recovery)
          records.push(record)
        } else broken.push(name)
      } catch {
        broken.push(name)
      }
    }
    return { records, broken }
  }

  private file(id: number): string {
    return path.join(this.dir, `${id}.json`)
  }
}
