// Helpers for driving ublkd inside the test VM (see vm.ts): the CLI as a user runs it, and the
// facts tests assert on (devices in /dev, sysfs attributes, thread affinity).
import type { Test } from 'tap'

import type { DeviceSummary } from '../../src/main/device.js'
import { repoRoot, type ExecResult, type Vm } from './vm.js'

export const ublkdCli = `node ${repoRoot}/dist/main/cli.js`

export function ublkd(vm: Vm, args: string, timeoutMs = 120_000): Promise<ExecResult> {
  return vm.exec(`${ublkdCli} ${args}`, { timeoutMs })
}

/** `ublkd add ... --json`, failing loudly with the CLI's stderr when it does not succeed. */
export async function addDevice(vm: Vm, args: string): Promise<DeviceSummary> {
  const result = await ublkd(vm, `add ${args} --json`)
  if (result.code !== 0) {
    throw new Error(`ublkd add ${args} exited ${result.code}: ${result.stderr}${result.stdout}`)
  }
  return JSON.parse(result.stdout) as DeviceSummary
}

/** `ublkd list --json` (`args`: e.g. --state-dir DIR). */
export async function listDevices(vm: Vm, args = ''): Promise<DeviceSummary[]> {
  return JSON.parse(await vm.run(`${ublkdCli} list --json ${args}`)) as DeviceSummary[]
}

/** Every ublk char and block device node present in the VM. */
export async function ublkNodes(vm: Vm): Promise<string[]> {
  const out = await vm.run('ls -1 /dev | grep -E "^ublk[bc][0-9]+$" || true')
  return out.split('\n').filter((line) => line.length > 0)
}

let daemonRuns = 0

/** Start `ublkd daemon FLAGS` in the background and wait until it serves; returns its log path. */
export async function startDaemon(vm: Vm, flags = ''): Promise<string> {
  const log = `/tmp/daemon-${++daemonRuns}.log`
  await vm.run(`setsid sh -c '${ublkdCli} daemon ${flags} > ${log} 2>&1' < /dev/null > /dev/null 2>&1 &`)
  await waitInVm(vm, `grep -q '"msg":"daemon ready"' ${log}`, 60_000).catch(async (error: unknown) => {
    throw new Error(`${(error as Error).message}; the daemon's log:\n${(await vm.exec(`tail -n 30 ${log}`)).stdout}`)
  })
  return log
}

/** Wait until `cmd` exits 0 (polling inside the VM), or fail after `timeoutMs`. The polls start
 *  0.1 s apart and spread out to 1 s: each costs a few processes, and the emulated CPUs they take
 *  are those of whatever the test waits for. */
export async function waitInVm(vm: Vm, cmd: string, timeoutMs: number): Promise<void> {
  const pauses: number[] = []
  for (let total = 0, pause = 0.1; total < timeoutMs / 1000; total += pause, pause = Math.min(1, Math.round(pause * 15) / 10)) pauses.push(pause)
  const result = await vm.exec(`for pause in ${pauses.join(' ')}; do (${cmd}) >/dev/null 2>&1 && exit 0; sleep $pause; done; ` +
    `(${cmd}) >/dev/null 2>&1`, { timeoutMs: timeoutMs + 30_000 })
  if (result.code !== 0) throw new Error(`timed out waiting for: ${cmd}`)
}

/** Wait until device `id` has completed more than `count` reads or writes, as the block layer
 *  counts them (/sys/block/ublkbN/stat: field 1 reads, field 5 writes): a client's I/O really
 *  flows (on a device that served nothing before: these are totals since it was added). fio
 *  starts slowly under emulation, so "fio is running" is not enough. Read from sysfs,
 *  each poll costs a few milliseconds instead of two node starts (`ublkd stats` and a parser). */
export async function waitForIo(vm: Vm, id: number, stat: 'read_ops' | 'write_ops', count: number, timeoutMs = 60_000): Promise<void> {
  const field = stat === 'read_ops' ? 1 : 5
  await waitInVm(vm, `test "$(awk '{print $${field}}' /sys/block/ublkb${id}/stat)" -gt ${count}`, timeoutMs)
}

/** The open descriptors of process `pid` by kind (a path, `socket`, `anon_inode:[io_uring]`, ...),
 *  sorted. Link targets only: a descriptor closed while listed has none, and the daemon's reads
 *  of /proc (the stall watch's thread stats, disk users) are open for an instant. */
export async function descriptorKinds(vm: Vm, pid: number): Promise<string[]> {
  const out = await vm.run(`find /proc/${pid}/fd -mindepth 1 -printf '%l\\n' 2>/dev/null | grep -v -e '^$' -e '^/proc/' | ` +
    `sed 's/:\\[[0-9]*\\]$//' | sort`)
  return out.split('\n').filter((line) => line.length > 0)
}

/** For t.afterEach: when `subtest` failed, print the last lines of the newest daemon log and of
 *  the kernel's log as comments of `parent`, so that a failure seen only in CI leaves its cause. */
export async function commentLogsIfFailed(vm: Vm, parent: Test, subtest: Test): Promise<void> {
  if (subtest.passing()) return
  const logs = await vm.exec('log=$(ls -t /run/ublkd/daemon.log /tmp/daemon-*.log 2>/dev/null | head -n 1); ' +
    '[ -n "$log" ] && echo "--- $log" && tail -n 40 "$log" | cut -c1-400; echo "--- dmesg"; dmesg | tail -n 25')
  parent.comment(`after the failure of "${subtest.name}":\n${logs.stdout}${logs.stderr}`)
}

/** For t.afterEach: delete whatever devices a subtest left (a failed one, mostly). The check is a
 *  directory listing; the CLI call it saves costs seconds of emulated CPU. */
export async function deleteDevicesLeft(vm: Vm): Promise<void> {
  if ((await vm.exec('ls /dev | grep -qE "^ublkc[0-9]+$"')).code === 0) await ublkd(vm, 'del --all --force')
}

/** Run fio with JSON output; returns the parsed report and the raw result. fio may not create
 *  files: its targets are devices, and one that is gone (deleted under it, or not there yet)
 *  must be an error rather than a regular file fio lays out in /dev in its place. */
export async function fio(vm: Vm, args: string, timeoutMs = 300_000): Promise<{ result: ExecResult; report: FioReport | null }> {
  const result = await vm.exec(`fio --output-format=json --allow_file_create=0 ${args}`, { timeoutMs })
  const start = result.stdout.indexOf('{')
  let report: FioReport | null = null
  if (start >= 0) {
    try {
      report = JSON.parse(result.stdout.slice(start)) as FioReport
    } catch {
      report = null
    }
  }
  return { result, report }
}

export interface FioJobSide {
  io_bytes: number
  iops: number
  total_ios: number
  lat_ns?: { mean: number }
  clat_ns?: { mean: number; percentile?: Record<string, number> }
}

export interface FioReport {
  jobs: { jobname: string; error: number; read: FioJobSide; write: FioJobSide }[]
}

/** An MBR with one Linux partition (1 MiB to 5 MiB) written at the start of `path`, a file or
 *  a disk (the VM has no sfdisk). */
export async function writePartitionTable(vm: Vm, path: string): Promise<void> {
  await vm.run(`node -e "
    const fs = require('fs'); const fd = fs.openSync('${path}', 'r+'); const mbr = Buffer.alloc(512)
    mbr[446 + 4] = 0x83; mbr.writeUInt32LE(2048, 446 + 8); mbr.writeUInt32LE(8192, 446 + 12)
    mbr[510] = 0x55; mbr[511] = 0xaa; fs.writeSync(fd, mbr, 0, 512, 0); fs.fsyncSync(fd)"`)
}

/** Wait until every device of the serving daemon (of `target`, if given; at least `devices` of
 *  them) completed more than `writes` writes: I/O flows through that daemon, whose counters
 *  start at zero. */
export async function waitForWrites(vm: Vm, opts: { writes: number; target?: string; devices?: number }): Promise<void> {
  const pick = opts.target === undefined ? 'd' : `d.filter((x) => x.target === '${opts.target}')`
  await waitInVm(vm, `${ublkdCli} list --json | node -e "const d = JSON.parse(require('fs').readFileSync(0, 'utf8')); ` +
    `const p = ${pick}; process.exit(p.length >= ${opts.devices ?? 1} && ` +
    `p.every((x) => x.queueStats.reduce((s, q) => s + q.write_ops, 0) > ${opts.writes}) ? 0 : 1)"`, 120_000)
}
