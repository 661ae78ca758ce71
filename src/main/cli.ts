#!/usr/bin/env node
// ublkd command line: argv -> one command. Exit codes: 0 success, 1 failure, 2 bad usage.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs, type ParseArgsConfig } from 'node:util'

import { UblkdError, UsageError, isUblkdError, messageOf } from '../common/errors.js'
import { isLogLevel, resolveLogLevel } from '../common/log-level.js'
import { waitForExit } from '../common/process-exit.js'
import { formatSize, parseSize } from '../common/size.js'
import { kDefaultStatsPublishMicros } from '../common/stats-layout.js'
import type { Target } from '../targets/target.js'
import { callDaemon, isNoDaemon } from './api-client.js'
import type { ApiReply, ApiRequest } from './api-protocol.js'
import type { DeviceSummary } from './device.js'
import type { OrphanSummary } from './orphans.js'
import type { deviceDefaults } from './device-request.js'
import { withRecoveryModes } from './recovery-mode.js'
import { kDefaultMetricsAddress, parseListenAddress } from './listen-address.js'
import { daemonLogPath, kDefaultStateDir, socketPath, stateDirFrom } from './paths.js'

// Each command loads only the modules it uses (the target registry, the addon, ...): a CLI call
// is a process start, and tests and scripts make hundreds of them.
const kRequestTimeoutMs = 120_000
// Under emulation a cold daemon start takes seconds, an upgrade's re-attach of many devices more.
const kDaemonStartTimeoutMs = 180_000

const mainHelp = `Usage: ublkd <command> [options]

Serve Linux ublk block devices (/dev/ublkbN) from a userspace daemon.

Commands:
  add        create a device (starts a daemon in the background if none runs)
  del        delete a device, or all of them
  recover    re-attach a device a dead daemon left behind (created with --recovery)
  resize     change a device's size while it is in use (Linux 6.16+)
  upgrade    hand every device over to a newly started daemon, without an I/O error
  reload     apply the daemon's configuration file again (as SIGHUP)
  config     check a configuration file, or dump the running configuration
  list       list the devices of the running daemon
  stats      per-queue I/O counters of a device
  features   show the ublk features of the running kernel
  daemon     run the daemon in the foreground
  udev-id    udev properties of a device (for examples/udev/60-ublkd.rules)

Common options:
  --state-dir DIR   daemon socket and log directory (default ${kDefaultStateDir}, env UBLKD_STATE_DIR)
  -h, --help        help for a command: ublkd <command> --help
`

function addHelp(allTargets: readonly Target[], defaults: typeof deviceDefaults): string {
  const targets = allTargets.map((target) =>
    `  ${target.name.padEnd(8)} ${target.summary} (I/O modes: ${target.ioModes.join(', ')})\n${target.optionHelp.map((line) => `             ${line}`).join('\n')}`)
  return `Usage: ublkd add -t TARGET [options]

Create a device and print it. The device is served until 'ublkd del' or daemon shutdown.

Options:
  -t, --target NAME             target type (below)
  -q, --queues N                hardware queues, one pinned worker thread each (default ${defaults.queues})
  -d, --depth N                 queue depth, 1..4096 (default ${defaults.depth})
  -n, --number ID               device id, giving /dev/ublkbID (default: the kernel picks)
      --logical-block-size N    512, 1024, 2048 or 4096 (default 512, loop: the backing device's)
      --recovery [reissue|fail-io]
                                survive a queue thread or daemon death; what the device's I/O
                                does meanwhile: reissue (the default mode) holds it and sends
                                again what the dead server had taken, so nothing fails
                                (UBLK_F_USER_RECOVERY + REISSUE); fail-io fails it at once until
                                a daemon serves the device again (USER_RECOVERY_FAIL_IO, Linux
                                6.13+). Without --recovery the device goes with its daemon.
                                See docs/operations.md
      --queue-mode ring|event-loop
                                ring (default): each queue thread blocks in io_uring_enter, the
                                fastest; event-loop: it is woken through the worker's event loop,
                                so targets may complete requests from timers and promises
      --io-mode auto|copy|user-copy|zero-copy
                                how request data travels: copy through per-tag buffers of the
                                daemon (depth x 512 KiB per queue); user-copy (UBLK_F_USER_COPY)
                                straight between the request's pages and the target, with no
                                buffers; zero-copy (UBLK_F_AUTO_BUF_REG, Linux 6.16+): the
                                target's own I/O reads and writes the request's pages, which never
                                enter the daemon; auto (default): the target's fastest mode the
                                kernel offers (copy with the buffer options below; zero-copy only
                                when asked). Which target serves which: below, docs/performance.md
      --io-scheduler NAME       the block layer's I/O scheduler of the device: none, mq-deadline,
                                kyber, bfq (default ${defaults.ioScheduler}, as the kernel loop driver)
      --huge-page-buffers       back the I/O buffers (depth x 512 KiB per queue) with transparent
                                huge pages: the kernel's copies get cheaper, but every buffer a
                                request touches costs 2 MiB resident (default: 4 KiB pages, only
                                what requests touch is resident)
      --mlock-buffers           lock the I/O buffers' pages in RAM once touched, so that I/O
                                never waits on swap (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK room
                                for depth x 512 KiB per queue; systemd: LimitMEMLOCK=)
      --name NAME               a name for the device, unique in the daemon (letters, digits,
                                '.', '_', '-'); a configuration file's devices have one each
      --uuid UUID               the device's identity (default: a new random UUID); shown by
                                list, checked on re-attach
      --no-partition-scan       do not scan the device for partitions when it starts
                                (UBLK_F_NO_AUTO_PART_SCAN, Linux 7.0+; refused on older kernels)
      --json                    print the device as JSON
      --state-dir DIR           see 'ublkd --help'

Targets:
${targets.join('\n')}
`
}

const delHelp = `Usage: ublkd del -n ID | --all [--force]
       ublkd del --orphan -n ID [--force]

Stop and delete a device: in-flight I/O completes, new I/O fails, /dev/ublkbID goes away.
A device in use (mounted, held by dm or md, open by a process) is refused, naming its users.

Options:
  -n, --number ID   the device to delete
  -a, --all         delete every device of the daemon (those in use are refused)
  -f, --force       delete even a device in use: its users get I/O errors
      --orphan      delete a kernel device this daemon does not serve (see list --all), once
                    no process holds its char device (its server is gone); in-use rules as above
      --state-dir DIR
`

const recoverHelp = `Usage: ublkd recover -n ID

Re-attach a device created with --recovery whose daemon died (the kernel holds it QUIESCED,
with its I/O queued). A daemon does this for every such device when it starts; this command
is for a device whose automatic re-attach failed.

Options:
  -n, --number ID   the device
      --state-dir DIR
`

const resizeHelp = `Usage: ublkd resize -n ID --size SIZE [--force]

Change the size of a live device (UBLK_U_CMD_UPDATE_SIZE, Linux 6.16 or later; refused on
older kernels). The target makes room first: loop grows its backing file (sparsely; a block
device backing must be large enough already; a smaller size leaves the file as it is), null
takes any size, memory grows up to the --max-size it was created with (a shrink gives the
memory back); fault devices keep their size. The kernel announces the new
capacity (a uevent); grow the filesystem on it yourself (resize2fs, xfs_growfs). The size is
kept in the device's record, so a re-attached device keeps it.

Shrinking a device in use (mounted, held by dm or md, open by a process) is refused: shrink
its filesystem first, then resize with --force.

Options:
  -n, --number ID   the device
  -s, --size SIZE   the new size: bytes or K, M, G, T (a multiple of the logical block size)
  -f, --force       shrink even a device in use
      --json        print the device as JSON
      --state-dir DIR
`

const upgradeHelp = `Usage: ublkd upgrade [--no-start]

Replace the running daemon, possibly by a newer ublkd, without an I/O error. A new daemon (this
command's ublkd, with the old one's arguments and 'daemon --take-over') starts while the old
one serves; once it is up it has the old daemon hand every device over and exit, and takes
them. Each device's I/O waits only for the hand-over and the re-attach; the new daemon logs
the pause and 'list' shows it (lastPauseMs in JSON).

With UBLK_F_QUIESCE (Linux 6.16+) the kernel holds new I/O and the old daemon finishes what it
holds before it lets the device go; on older kernels the old daemon's queues stop at once and
the kernel sends what they held to the new daemon again (--recovery reissue). Devices created
without --recovery, with --recovery fail-io, or of the memory and fault targets (their data
lives in the daemon) cannot be handed over: the upgrade is refused, naming them, before
anything is touched.

The new daemon logs to <state-dir>/daemon.log. Under a service manager use --no-start and let
it start the new daemon (docs/operations.md has a systemd unit).

Options:
      --no-start    only hand over and let the old daemon exit; start the new one yourself
                    (the devices wait for it; its start is then part of their pause)
      --state-dir DIR
`

const listHelp = `Usage: ublkd list [--all] [--json]

List the devices of the running daemon (nothing when no daemon runs).

Options:
  -a, --all         also the kernel's ublk devices this daemon does not serve (orphans:
                    another server's, or a dead daemon's), with who holds them
  --json            one JSON array of devices; with --all, {"devices": [...], "orphans": [...]}
  --state-dir DIR
`

const statsHelp = `Usage: ublkd stats -n ID [--watch] [--json]

Per-queue counters of a device, as its queue workers last published them (at most one loop
turn old): operations, bytes and errors per request type, requests in flight, loop turns and
the mean number of completions handled per turn. With --watch: IOPS, MiB/s and p99 service
time per queue, refreshed every second until interrupted.

Options:
  -n, --number ID   the device
  -w, --watch       live rates, every second
      --json        the raw counters
      --state-dir DIR
`

const featuresHelp = `Usage: ublkd features [--json]

Ask the kernel (UBLK_U_CMD_GET_FEATURES) which ublk features it supports: the mask, then each
set bit by its UBLK_F_* name (as of Linux 7.3), or as 'bit N' when this build has no name for it.

Options:
  --json            {"mask": "0x...", "names": [...], "unknownBits": [N, ...]}
`

const daemonHelp = (kernelTimeoutMs: number) => `Usage: ublkd daemon [--config FILE] [--metrics HOST:PORT|off] [--keep-devices-on-exit] [--log-level LEVEL] [--state-dir DIR]

Run the daemon in the foreground. It hosts every device, listens for commands on
<state-dir>/ublkd.sock (root only) and logs JSON lines to stdout (readable lines on a
terminal). At start it re-attaches the devices a previous daemon left (created with
--recovery), then creates the devices its configuration file declares. SIGHUP (or 'ublkd
reload') applies the file again. SIGTERM or SIGINT stops and deletes every device, then exits 0.

Options:
  --take-over          start, then have the daemon of the state dir hand its devices over
                       and take them (what 'ublkd upgrade' runs; see 'ublkd upgrade --help')
  -c, --config FILE    the configuration file (docs/config.md; e.g. /etc/ublkd/ublkd.json): daemon
                       options and declared devices. A flag given here wins over the file's value
  --stats-publish-us N  a busy queue publishes its counters (ublkd stats, metrics) at most
                       every N µs, an idle one within N µs of its last request (default
                       ${kDefaultStatsPublishMicros}); 0 publishes every loop turn: a knob to measure what stats cost
  --keep-devices-on-exit  on SIGTERM/SIGINT leave devices created with --recovery (and not
                       memory-backed) to the next daemon instead of deleting them
  --metrics HOST:PORT  serve Prometheus metrics at /metrics and a live status page at /
                       (default ${kDefaultMetricsAddress}; 'off' for none)
  --kernel-timeout SECONDS
                       the deadline of every ublk control command (default ${kernelTimeoutMs / 1000}): a
                       command the kernel has not completed by then fails with
                       UBLKD_ERR_KERNEL_TIMEOUT, and the daemon undoes what it can
  --log-level LEVEL    fatal, error, warn, info, debug, trace (default info, env LOG_LEVEL)
  --shared-mount-namespace
                       stay in the mount namespace the daemon was started in. By default it
                       re-executes itself in one of its own (a slave: later mounts still
                       appear in it) and keeps mounts of ublk devices out of it, so that
                       its exit can never wait on writeback to its own devices (docs/operations.md)
  --state-dir DIR
`

type Options = NonNullable<ParseArgsConfig['options']>

const commonOptions: Options = {
  help: { type: 'boolean', short: 'h' },
  'state-dir': { type: 'string' },
}

/** Parse a command's flags; positional arguments are refused unless `positionals`. */
function parse(args: string[], options: Options, positionals = false):
  { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const parsed = parseArgs({ args, options: { ...commonOptions, ...options }, allowPositionals: true, strict: true })
    if (!positionals && parsed.positionals.length > 0) throw new UsageError(`unexpected argument '${parsed.positionals[0]}'`)
    return { values: parsed.values as Record<string, string | boolean | undefined>, positionals: parsed.positionals }
  } catch (error) {
    if (error instanceof UsageError) throw error
    // node:util's messages span lines; the CLI prints one.
    throw new UsageError(messageOf(error).replace(/\. To specify a positional argument.*$/s, '').replace(/\s*\n\s*/g, ' '))
  }
}

function stringValue(values: Record<string, string | boolean | undefined>, name: string): string | undefined {
  const value = values[name]
  return typeof value === 'string' ? value : undefined
}

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`)
}

function printTable(header: string[], rows: string[][], align: 'left' | 'right'): void {
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i]!.length)))
  for (const row of [header, ...rows]) {
    print(row.map((cell, i) => (align === 'left' ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ').trimEnd())
  }
}

function describeDevice(device: DeviceSummary): string {
  return `${device.blockDevice}: ${device.target} ${formatSize(device.sizeBytes)}, ` +
    `${device.queues} queue${device.queues === 1 ? '' : 's'} x ${device.depth}, ${device.state} (daemon pid ${device.daemonPid})`
}

function unwrap(reply: ApiReply): Extract<ApiReply, { ok: true }> {
  if (!reply.ok) {
    const error = new UblkdError(reply.error.code as UblkdError['code'], reply.error.message)
    throw error
  }
  return reply
}

/** -n ID of a command that needs exactly one device. */
function deviceId(values: Record<string, string | boolean | undefined>, command: string): number {
  const number = stringValue(values, 'number')
  if (number === undefined || !/^\d+$/.test(number)) throw new UsageError(`${command} needs a device id: -n ID`)
  return Number(number)
}

function printDevice(device: DeviceSummary, json: boolean): void {
  print(json ? JSON.stringify(device, null, 2) : describeDevice(device))
}

/** Send a request, starting a daemon first when none listens (as ublksrv users expect of add). */
async function callOrStartDaemon(stateDir: string, request: ApiRequest): Promise<ApiReply> {
  try {
    return await callDaemon(socketPath(stateDir), request, kRequestTimeoutMs)
  } catch (error) {
    if (!isNoDaemon(error)) throw error
    await startDaemon(stateDir)
    return callDaemon(socketPath(stateDir), request, kRequestTimeoutMs)
  }
}

/** Start `ublkd daemon` (or `argv` in `cwd`) detached, logging to <state-dir>/daemon.log, and
 *  wait for its socket (answered by another process than `oldPid`). */
async function startDaemon(stateDir: string, argv = ['daemon', '--state-dir', stateDir], cwd?: string, oldPid?: number): Promise<void> {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 })
  const logFd = fs.openSync(daemonLogPath(stateDir), 'a', 0o600)
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), ...argv], {
    detached: true,
    stdio: ['ignore', logFd, logFd],
    ...(cwd === undefined ? {} : { cwd }),
  })
  fs.closeSync(logFd)
  let exitCode: number | null = null
  child.on('exit', (code) => { exitCode = code ?? 1 })
  child.unref()
  const deadline = Date.now() + kDaemonStartTimeoutMs
  for (;;) {
    try {
      const reply = await callDaemon(socketPath(stateDir), { op: 'ping' }, 5000)
      // While a new daemon takes over, the old one may still answer (or refuse: it is stopping).
      if (oldPid === undefined || (reply.ok && reply.pid !== oldPid)) return
    } catch (error) {
      // ...or go away in the middle of an answer.
      if (oldPid === undefined && !isNoDaemon(error)) throw error
    }
    if (exitCode !== null) {
      throw new UblkdError('UBLKD_ERR_DAEMON', `the daemon exited with ${exitCode}; see ${daemonLogPath(stateDir)}`)
    }
    if (Date.now() > deadline) throw new UblkdError('UBLKD_ERR_TIMEOUT', 'the daemon did not start in time')
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

async function commandAdd(args: string[]): Promise<void> {
  const { allTargetFlags, allTargets } = await import('../targets/registry.js')
  const targetFlags = allTargetFlags()
  const { values } = parse(withRecoveryModes(args), {
    ...Object.fromEntries(targetFlags.map((flag) => [flag.name, flag.short ? { type: flag.type, short: flag.short } : { type: flag.type }])),
    target: { type: 'string', short: 't' },
    recovery: { type: 'string' },
    'huge-page-buffers': { type: 'boolean' },
    'mlock-buffers': { type: 'boolean' },
    'no-partition-scan': { type: 'boolean' },
    uuid: { type: 'string' },
    name: { type: 'string' },
    queues: { type: 'string', short: 'q' },
    depth: { type: 'string', short: 'd' },
    number: { type: 'string', short: 'n' },
    'logical-block-size': { type: 'string' },
    'io-scheduler': { type: 'string' },
    'queue-mode': { type: 'string' },
    'io-mode': { type: 'string' },
    json: { type: 'boolean' },
  })
  if (values['help']) return print(addHelp(allTargets(), (await import('./device-request.js')).deviceDefaults))
  const device: Record<string, unknown> = {
    ...Object.fromEntries(targetFlags.map((flag) => [flag.field, values[flag.name]])),
    target: stringValue(values, 'target'),
    recovery: stringValue(values, 'recovery'),
    queues: stringValue(values, 'queues'),
    depth: stringValue(values, 'depth'),
    id: stringValue(values, 'number'),
    logicalBlockSize: stringValue(values, 'logical-block-size'),
    ioScheduler: stringValue(values, 'io-scheduler'),
    queueMode: stringValue(values, 'queue-mode'),
    ioMode: stringValue(values, 'io-mode'),
    hugePageBuffers: values['huge-page-buffers'] === true ? true : undefined,
    mlockBuffers: values['mlock-buffers'] === true ? true : undefined,
    noPartitionScan: values['no-partition-scan'] === true ? true : undefined,
    uuid: stringValue(values, 'uuid'),
    name: stringValue(values, 'name'),
  }
  if (device['target'] === undefined) throw new UsageError('add needs a target: -t null|memory|loop|nbd|fault (see ublkd add --help)')
  // The daemon has its own working directory: send it an absolute path.
  if (typeof device['file'] === 'string') device['file'] = path.resolve(device['file'])
  for (const key of Object.keys(device)) if (device[key] === undefined) delete device[key]
  const reply = await callOrStartDaemon(stateDirFrom(stringValue(values, 'state-dir')), { op: 'add', device })
  printDevice(unwrap(reply).device!, values['json'] === true)
}

async function commandDel(args: string[]): Promise<void> {
  const { values } = parse(args, {
    number: { type: 'string', short: 'n' }, all: { type: 'boolean', short: 'a' }, force: { type: 'boolean', short: 'f' },
    orphan: { type: 'boolean' },
  })
  if (values['help']) return print(delHelp)
  const number = stringValue(values, 'number')
  if ((number === undefined) === !values['all']) throw new UsageError('del needs exactly one of -n ID or --all')
  const force = values['force'] === true
  if (values['orphan'] && number === undefined) throw new UsageError('del --orphan needs -n ID')
  let request: ApiRequest = { op: 'del', all: true, force }
  if (number !== undefined) {
    if (!/^\d+$/.test(number)) throw new UsageError(`-n must be a device id, got '${number}'`)
    request = { op: 'del', id: Number(number), force, orphan: values['orphan'] === true }
  }
  const stateDir = stateDirFrom(stringValue(values, 'state-dir'))
  let reply: ApiReply
  try {
    reply = await callDaemon(socketPath(stateDir), request, kRequestTimeoutMs)
  } catch (error) {
    if (!isNoDaemon(error)) throw error
    if (values['all']) return
    throw new UblkdError('UBLKD_ERR_NO_SUCH_DEVICE', `no daemon runs (state dir ${stateDir}), so no device ${number}`)
  }
  for (const id of unwrap(reply).deleted ?? []) print(`deleted /dev/ublkb${id}`)
}

async function commandRecover(args: string[]): Promise<void> {
  const { values } = parse(args, { number: { type: 'string', short: 'n' }, json: { type: 'boolean' } })
  if (values['help']) return print(recoverHelp)
  const id = deviceId(values, 'recover')
  const reply = await callOrStartDaemon(stateDirFrom(stringValue(values, 'state-dir')), { op: 'recover', id })
  printDevice(unwrap(reply).device!, values['json'] === true)
}

async function commandResize(args: string[]): Promise<void> {
  const { values } = parse(args, {
    number: { type: 'string', short: 'n' }, size: { type: 'string', short: 's' }, force: { type: 'boolean', short: 'f' },
    json: { type: 'boolean' },
  })
  if (values['help']) return print(resizeHelp)
  const id = deviceId(values, 'resize')
  const size = stringValue(values, 'size')
  if (size === undefined) throw new UsageError('resize needs the new size: --size SIZE')
  parseSize(size, '--size')
  const stateDir = stateDirFrom(stringValue(values, 'state-dir'))
  const reply = await callRunningDaemon(stateDir, { op: 'resize', id, size, force: values['force'] === true }, `no device ${id}`)
  printDevice(unwrap(reply).device!, values['json'] === true)
}

/** A request for devices of a daemon that must be running already. */
async function callRunningDaemon(stateDir: string, request: ApiRequest, whatIsMissing: string): Promise<ApiReply> {
  try {
    return await callDaemon(socketPath(stateDir), request, kRequestTimeoutMs)
  } catch (error) {
    if (!isNoDaemon(error)) throw error
    throw new UblkdError('UBLKD_ERR_NO_SUCH_DEVICE', `no daemon runs (state dir ${stateDir}), so ${whatIsMissing}`)
  }
}

async function commandUpgrade(args: string[]): Promise<void> {
  const { values } = parse(args, { 'no-start': { type: 'boolean' } })
  if (values['help']) return print(upgradeHelp)
  const stateDir = stateDirFrom(stringValue(values, 'state-dir'))
  const plural = (ids: number[]) => `${ids.length} device${ids.length === 1 ? '' : 's'}` +
    `${ids.length > 0 ? `: ${ids.map((id) => `/dev/ublkb${id}`).join(', ')}` : ''}`
  if (values['no-start']) {
    const reply = unwrap(await callRunningDaemon(stateDir, { op: 'upgrade' }, 'nothing to upgrade'))
    print(`daemon pid ${reply.pid!} handed over ${plural(reply.handedOver ?? [])}`)
    if (!await waitForExit(reply.pid!, kDaemonStartTimeoutMs)) {
      throw new UblkdError('UBLKD_ERR_TIMEOUT', `daemon pid ${reply.pid!} did not exit after handing over`)
    }
    return print('start the new daemon now: the devices wait for it')
  }
  // Checked first, so that a refusal comes from here; then the new daemon starts while the
  // old one serves, and asks it to hand over once it is ready to take the devices.
  const check = unwrap(await callRunningDaemon(stateDir, { op: 'upgrade', check: true }, 'nothing to upgrade'))
  const oldPid = check.pid!
  const ids = check.handedOver ?? []
  await startDaemon(stateDir, [...check.restart!.argv, '--take-over'], check.restart!.cwd, oldPid)
  const devices = unwrap(await callDaemon(socketPath(stateDir), { op: 'list' }, kRequestTimeoutMs)).devices ?? []
  print(`daemon pid ${oldPid} handed over ${plural(ids)} to pid ${devices[0]?.daemonPid ?? '?'}`)
  for (const id of ids) {
    const device = devices.find((candidate) => candidate.id === id)
    if (!device) throw new UblkdError('UBLKD_ERR_DAEMON', `the new daemon did not take /dev/ublkb${id} over; see ${daemonLogPath(stateDir)}`)
    print(`${describeDevice(device)}, paused ${device.lastPauseMs ?? '?'} ms`)
  }
}

async function commandList(args: string[]): Promise<void> {
  const { values } = parse(args, { json: { type: 'boolean' }, all: { type: 'boolean', short: 'a' } })
  if (values['help']) return print(listHelp)
  const stateDir = stateDirFrom(stringValue(values, 'state-dir'))
  const all = values['all'] === true
  let devices: DeviceSummary[] = []
  let orphans: OrphanSummary[] | null = null
  try {
    const reply = unwrap(await callDaemon(socketPath(stateDir), { op: 'list', all }, kRequestTimeoutMs))
    devices = reply.devices ?? []
    orphans = reply.orphans ?? null
  } catch (error) {
    if (!isNoDaemon(error)) throw error
    // No daemon: every kernel device is someone else's.
    if (all) {
      const { UblkControl } = await import('./control.js')
      const { listOrphans } = await import('./orphans.js')
      const control = UblkControl.open()
      try {
        orphans = await listOrphans(control, () => false)
      } finally {
        control.close()
      }
    }
  }
  if (values['json']) return print(JSON.stringify(all ? { devices, orphans: orphans ?? [] } : devices, null, 2))
  if (devices.length === 0) print('no devices')
  else {
    const rows = devices.map((d) => [String(d.id), d.blockDevice, d.name ?? '-', d.target, formatSize(d.sizeBytes),
      String(d.queues), String(d.depth), d.state, String(d.daemonPid), d.lastPauseMs === null ? '-' : `${d.lastPauseMs} ms`,
      d.uuid ?? '-'])
    printTable(['ID', 'DEVICE', 'NAME', 'TARGET', 'SIZE', 'QUEUES', 'DEPTH', 'STATE', 'PID', 'UPGRADE PAUSE', 'UUID'], rows, 'left')
  }
  if (!all) return
  if (!orphans || orphans.length === 0) return print('no orphaned kernel devices')
  print('\nKernel devices this daemon does not serve (ublkd del --orphan -n ID removes one):')
  printTable(['ID', 'STATE', 'DISK', 'RECOVERY', 'QUEUES', 'DEPTH', 'SERVED BY'], orphans.map((o) => [String(o.id), o.state,
    o.blockDevice ?? '-', o.recovery ? 'yes' : 'no', String(o.queues), String(o.depth), o.servedBy.join('; ') || 'nobody']), 'left')
}

async function fetchDevice(stateDir: string, id: number): Promise<DeviceSummary> {
  let devices: DeviceSummary[] = []
  try {
    devices = unwrap(await callDaemon(socketPath(stateDir), { op: 'list' }, kRequestTimeoutMs)).devices ?? []
  } catch (error) {
    if (!isNoDaemon(error)) throw error
  }
  const device = devices.find((d) => d.id === id)
  if (!device) throw new UblkdError('UBLKD_ERR_NO_SUCH_DEVICE', `no device ${id}`)
  return device
}

async function watchStats(stateDir: string, id: number): Promise<void> {
  const { queueRates, totalErrors } = await import('./stats-view.js')
  let before = await fetchDevice(stateDir, id)
  let beforeMs = Date.now()
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const now = await fetchDevice(stateDir, id)
    const nowMs = Date.now()
    const seconds = (nowMs - beforeMs) / 1000
    const rows = (now.queueStats ?? []).map((q, queue) => {
      const rates = queueRates(q, before.queueStats![queue]!, seconds)
      const p99 = rates.p99Us === null ? '-' : rates.p99Us === Infinity ? '>1s' : `${rates.p99Us.toFixed(0)} us`
      return [String(queue), rates.iops.toFixed(0), rates.mibPerSecond.toFixed(1), p99, String(q.inflight), String(totalErrors(q))]
    })
    if (process.stdout.isTTY) process.stdout.write('\x1b[2J\x1b[H')
    print(`${describeDevice(now)}  ${new Date(nowMs).toLocaleTimeString()}`)
    printTable(['QUEUE', 'IOPS', 'MIB/S', 'P99', 'INFLIGHT', 'ERRORS'], rows, 'right')
    before = now
    beforeMs = nowMs
  }
}

async function commandStats(args: string[]): Promise<void> {
  const { values } = parse(args, { number: { type: 'string', short: 'n' }, json: { type: 'boolean' }, watch: { type: 'boolean', short: 'w' } })
  if (values['help']) return print(statsHelp)
  const id = deviceId(values, 'stats')
  const stateDir = stateDirFrom(stringValue(values, 'state-dir'))
  if (values['watch']) return watchStats(stateDir, id)
  const device = await fetchDevice(stateDir, id)
  const queueStats = device.queueStats ?? []
  if (values['json']) return print(JSON.stringify(queueStats, null, 2))
  print(describeDevice(device))
  const { totalErrors } = await import('./stats-view.js')
  const header = ['QUEUE', 'READS', 'READ BYTES', 'WRITES', 'WRITE BYTES', 'FLUSH', 'DISCARD', 'ERRORS', 'INFLIGHT', 'TURNS', 'CQES/TURN']
  const rows = queueStats.map((q, queue) => {
    const errors = totalErrors(q)
    return [String(queue), String(q.read_ops), String(q.read_bytes), String(q.write_ops), String(q.write_bytes),
      String(q.flush_ops), String(q.discard_ops + q.write_zeroes_ops), String(errors), String(q.inflight),
      String(q.loop_turns), q.loop_turns > 0 ? (q.cqes / q.loop_turns).toFixed(1) : '-']
  })
  printTable(header, rows, 'right')
}

async function commandFeatures(args: string[]): Promise<void> {
  const { values } = parse(args, { json: { type: 'boolean' } })
  if (values['help']) return print(featuresHelp)
  const { UblkControl } = await import('./control.js')
  const { describeFeatureMask } = await import('../abi/feature-names.js')
  const control = UblkControl.open()
  try {
    const { mask, names, unknownBits } = describeFeatureMask(await control.getFeatures())
    const maskHex = `0x${mask.toString(16)}`
    if (values['json']) return print(JSON.stringify({ mask: maskHex, names, unknownBits }))
    print(`features ${maskHex}`)
    for (const name of names) print(`  ${name}`)
    for (const bit of unknownBits) print(`  bit ${bit}`)
  } finally {
    control.close()
  }
}

const udevIdHelp = `Usage: ublkd udev-id ublkbN

For udev's IMPORT{program}: print ID_UBLKD_UUID=... and ID_UBLKD_TARGET=... of a device the
daemon of the state dir serves, nothing for any other device. Never starts a daemon; always
exits 0 once its arguments are valid, so that a udev event never fails because of it.

Options:
  --state-dir DIR
`

async function commandUdevId(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, {}, true)
  if (values['help']) return print(udevIdHelp)
  const id = /^ublkb(\d+)$/.exec(positionals[0] ?? '')?.[1]
  if (positionals.length !== 1 || id === undefined) throw new UsageError('udev-id needs one disk name: ublkbN')
  let devices: DeviceSummary[] = []
  try {
    devices = unwrap(await callDaemon(socketPath(stateDirFrom(stringValue(values, 'state-dir'))), { op: 'list' }, kRequestTimeoutMs)).devices ?? []
  } catch {
    return
  }
  const device = devices.find((candidate) => candidate.id === Number(id))
  if (device?.uuid) print(`ID_UBLKD_UUID=${device.uuid}\nID_UBLKD_TARGET=${device.target}`)
}

async function commandDaemon(args: string[]): Promise<void> {
  const { values } = parse(args, {
    'log-level': { type: 'string' }, metrics: { type: 'string' }, 'keep-devices-on-exit': { type: 'boolean' },
    'stats-publish-us': { type: 'string' }, 'kernel-timeout': { type: 'string' }, config: { type: 'string', short: 'c' },
    'take-over': { type: 'boolean' }, 'shared-mount-namespace': { type: 'boolean' },
  })
  const { kDefaultKernelTimeoutMs } = await import('./control.js')
  if (values['help']) return print(daemonHelp(kDefaultKernelTimeoutMs))
  if (values['shared-mount-namespace'] !== true) (await import('./mount-namespace.js')).enterOwnMountNamespace()
  const configFile = stringValue(values, 'config')
  // Loaded only here: the daemon's modules (pino, prom-client, piscina, ajv) are most of the CLI's start.
  const config = configFile === undefined ? null : (await import('./config.js')).loadConfig(configFile)
  // A flag given on the command line wins over the file's value.
  const fromFile = config?.daemon ?? {}
  const kernelTimeout = stringValue(values, 'kernel-timeout') ?? String(fromFile.kernelTimeoutSeconds ?? kDefaultKernelTimeoutMs / 1000)
  if (!/^\d+$/.test(kernelTimeout) || Number(kernelTimeout) < 1 || Number(kernelTimeout) > 3600) {
    throw new UsageError(`--kernel-timeout must be a whole number of seconds from 1 to 3600, got '${kernelTimeout}'`)
  }
  const publish = stringValue(values, 'stats-publish-us') ?? String(fromFile.statsPublishUs ?? kDefaultStatsPublishMicros)
  if (!/^\d+$/.test(publish) || Number(publish) > 1_000_000) {
    throw new UsageError(`--stats-publish-us must be an integer from 0 to 1000000, got '${publish}'`)
  }
  const level = stringValue(values, 'log-level') ?? fromFile.logLevel
  if (level !== undefined && !isLogLevel(level)) throw new UsageError(`--log-level '${level}' is not a pino level`)
  const { runDaemon } = await import('./daemon.js')
  await runDaemon({
    stateDir: stateDirFrom(stringValue(values, 'state-dir') ?? fromFile.stateDir),
    logLevel: resolveLogLevel(level),
    metrics: parseListenAddress(stringValue(values, 'metrics') ?? fromFile.metrics ?? kDefaultMetricsAddress),
    keepDevicesOnExit: values['keep-devices-on-exit'] === true || fromFile.keepDevicesOnExit === true,
    statsPublishMicros: Number(publish),
    kernelTimeoutMs: Number(kernelTimeout) * 1000,
    config,
    takeOver: values['take-over'] === true,
  })
}

const configHelp = `Usage: ublkd config check FILE
       ublkd config dump [--state-dir DIR]

check: validate a configuration file (docs/config.md) without starting anything: its JSON, its
structure (a JSON Schema), and each device's values as 'ublkd add' would check them (sizes,
backing files). Prints the devices it declares; a problem is named with the file and its JSON
path, e.g. '/etc/ublkd/ublkd.json: /devices/1/queues: must be >= 1' (exit 1, UBLKD_ERR_CONFIG).

dump: print the running daemon's configuration as JSON: the file it was started with, its
effective daemon options, the declared devices as they run now (sizes after resizes), and the
devices added by hand.
`

async function commandConfig(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, {}, true)
  const [action, file, ...rest] = positionals
  if (values['help'] || action === undefined) return print(configHelp)
  if (rest.length > 0) throw new UsageError(`unexpected argument '${rest[0]}'`)
  if (action === 'check') {
    if (file === undefined) throw new UsageError('config check needs a file: ublkd config check FILE')
    const config = (await import('./config.js')).loadConfig(file)
    print(`${config.file}: valid, ${config.devices.length} device${config.devices.length === 1 ? '' : 's'}` +
      `${config.devices.length > 0 ? `: ${config.devices.map((device) => `${device.name} (${device.request.target})`).join(', ')}` : ''}`)
    return
  }
  if (action === 'dump') {
    if (file !== undefined) throw new UsageError(`unexpected argument '${file}'`)
    const stateDir = stateDirFrom(stringValue(values, 'state-dir'))
    const reply = unwrap(await callRunningDaemon(stateDir, { op: 'config' }, 'no configuration to dump'))
    return print(JSON.stringify(reply.config, null, 2))
  }
  throw new UsageError(`unknown config action '${action}' (check, dump)`)
}

const reloadHelp = `Usage: ublkd reload

Make the running daemon read its configuration file again and apply it (as SIGHUP does): new
devices are added, devices no longer declared are deleted (refused while in use), changed sizes
are resized; any other change to a device, a deletion of a device in use or a resize that cannot
be made refuses the whole reload with every reason, and nothing changes. Devices added by hand
are left alone. Prints what was done.

Options:
      --json        print the result as JSON
      --state-dir DIR
`

async function commandReload(args: string[]): Promise<void> {
  const { values } = parse(args, { json: { type: 'boolean' } })
  if (values['help']) return print(reloadHelp)
  const stateDir = stateDirFrom(stringValue(values, 'state-dir'))
  const result = unwrap(await callRunningDaemon(stateDir, { op: 'reload' }, 'nothing to reload')).reload!
  if (values['json']) return print(JSON.stringify(result, null, 2))
  const line = (what: string, names: string[]) => { if (names.length > 0) print(`${what}: ${names.join(', ')}`) }
  line('added', result.added)
  line('deleted', result.removed)
  line('resized', result.resized)
  line('unchanged', result.unchanged)
  line('failed', result.failed)
  if (result.failed.length > 0) throw new UblkdError('UBLKD_ERR_CONFIG', `${result.failed.length} change(s) failed; see above and the daemon log`)
}

const commands: Record<string, (args: string[]) => Promise<void>> = {
  add: commandAdd,
  del: commandDel,
  recover: commandRecover,
  resize: commandResize,
  upgrade: commandUpgrade,
  reload: commandReload,
  config: commandConfig,
  list: commandList,
  stats: commandStats,
  features: commandFeatures,
  daemon: commandDaemon,
  'udev-id': commandUdevId,
}

async function main(argv: string[]): Promise<void> {
  const [name, ...args] = argv
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') return print(mainHelp)
  const command = commands[name]
  if (!command) throw new UsageError(`unknown command '${name}' (see ublkd --help)`)
  await command(args)
}

main(process.argv.slice(2)).catch((error: unknown) => {
  const code = isUblkdError(error) ? error.code : 'UBLKD_ERR_DAEMON'
  process.stderr.write(`ublkd: ${messageOf(error)} [${code}]\n`)
  process.exitCode = error instanceof UsageError || code === 'UBLKD_ERR_USAGE' ? 2 : 1
})
