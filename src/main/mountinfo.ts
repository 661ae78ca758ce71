// /proc/PID/mountinfo, parsed: "id parent major:minor root mount-point options [optional...] -
// fstype source super-options". Mount points are named from the reading process's root, with
// space, tab, newline and backslash escaped as \ooo.
export interface MountEntry {
  /** "major:minor" of the mounted filesystem's device. */
  device: string
  mountPoint: string
  /** The optional fields: "shared:N", "master:N", ... */
  optional: string[]
  fsType: string
}

function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))
}

export function parseMountinfo(text: string): MountEntry[] {
  const entries: MountEntry[] = []
  for (const line of text.split('\n')) {
    const fields = line.split(' ')
    const separator = fields.indexOf('-')
    if (fields.length < 5 || separator < 6) continue
    entries.push({
      device: fields[2]!, mountPoint: unescape(fields[4]!), optional: fields.slice(6, separator), fsType: fields[separator + 1] ?? '?',
    })
  }
  return entries
}
