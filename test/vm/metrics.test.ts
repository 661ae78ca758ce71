// Observability against the real driver: exact byte counts in the Prometheus scrape, a real
// Prometheus server scraping the daemon during fio, the shipped config, rules and dashboard
// checked against a live scrape, and the status page rendered by headless Chromium.
import { execFile, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

import t from 'tap'

import { addDevice, commentLogsIfFailed, fio, ublkdCli, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm, repoRoot, vmKernel } from '../lib/vm.js'

const run = promisify(execFile)
const vm = await bootVm({ forwardPorts: [9568] })
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublkd-metrics-'))
t.teardown(async () => {
  await vm.shutdown()
  fs.rmSync(workDir, { recursive: true, force: true })
})
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))

const metricsUrl = `http://127.0.0.1:${vm.hostPort(9568)}`
await vm.run(`setsid sh -c '${ublkdCli} daemon --metrics 0.0.0.0:9568 > /tmp/daemon.log 2>&1' < /dev/null > /dev/null 2>&1 &`)
await waitInVm(vm, 'test -S /run/ublkd/ublkd.sock', 60_000)
const device = await addDevice(vm, '-t memory --size 256M -q 2')
const deviceName = `ublkb${device.id}`

async function scrape(): Promise<string> {
  const response = await fetch(`${metricsUrl}/metrics`)
  if (!response.ok) throw new Error(`scrape: HTTP ${response.status}`)
  return response.text()
}

/** Sum of every sample of `metric` whose labels include all of `labels`. */
function total(text: string, metric: string, labels: Record<string, string>): number {
  let sum = 0
  for (const line of text.split('\n')) {
    const match = new RegExp(`^${metric}\\{([^}]*)\\} (\\S+)$`).exec(line)
    if (!match) continue
    const has = Object.entries(labels).every(([key, value]) => match[1]!.includes(`${key}="${value}"`))
    if (has) sum += Number(match[2])
  }
  return sum
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })
}

t.test('scraped byte and op counters equal what fio moved, exactly', async (t) => {
  const before = await scrape()
  const { result } = await fio(vm, `--name=exact --filename=${device.blockDevice} --ioengine=io_uring --direct=1 ` +
    '--rw=randwrite --bs=4k --iodepth=16 --size=16M --verify=crc32c --verify_fatal=1')
  t.equal(result.code, 0, result.stderr)
  const after = await scrape()
  const delta = (metric: string, op: string) => total(after, metric, { device: deviceName, op }) - total(before, metric, { device: deviceName, op })
  t.equal(delta('ublkd_io_bytes_total', 'write'), 16 * 2 ** 20, 'write bytes')
  t.equal(delta('ublkd_io_ops_total', 'write'), 4096, 'write requests')
  t.equal(delta('ublkd_io_bytes_total', 'read'), 16 * 2 ** 20, 'verify read bytes')
  t.equal(delta('ublkd_io_errors_total', 'write') + delta('ublkd_io_errors_total', 'read'), 0, 'no errors')
  t.equal(total(after, 'ublkd_io_inflight', { device: deviceName }), 0, 'in flight back to 0')
  const served = total(after, 'ublkd_io_service_seconds_count', { device: deviceName })
  t.equal(served, total(after, 'ublkd_io_ops_total', { device: deviceName }), 'every request is in the latency histogram')
  t.match(after, `ublkd_device_live{device="${deviceName}"} 1`)
})

t.test('a real Prometheus scrapes the daemon during fio and sees a non-zero rate', async (t) => {
  const port = await freePort()
  const config = path.join(workDir, 'prometheus.yml')
  fs.writeFileSync(config, `global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ublkd\n    static_configs:\n      - targets: ['127.0.0.1:${vm.hostPort(9568)}']\n`)
  const prometheus = spawn('prometheus', [`--config.file=${config}`, `--storage.tsdb.path=${workDir}/data`,
    `--web.listen-address=127.0.0.1:${port}`], { stdio: 'ignore' })
  t.teardown(() => { prometheus.kill('SIGKILL') })
  // fio runs until Prometheus has seen it (or 150 s): Prometheus and fio both start slowly on a
  // loaded machine, and a fixed overlap of the two would be a timing assumption.
  const load = fio(vm, `--name=load --filename=${device.blockDevice} --ioengine=io_uring --direct=1 --rw=randrw ` +
    '--bs=4k --iodepth=16 --time_based --runtime=150 --size=256M', 300_000)
  const query = encodeURIComponent(`sum(rate(ublkd_io_ops_total{device="${deviceName}"}[15s]))`)
  let rate = 0
  const deadline = Date.now() + 140_000
  while (rate === 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 1000))
    try {
      const reply = await (await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${query}`)).json() as
        { data?: { result?: { value: [number, string] }[] } }
      rate = Number(reply.data?.result?.[0]?.value[1] ?? 0)
    } catch {
      // Prometheus is still starting.
    }
  }
  t.ok(rate > 0, `PromQL rate of ${deviceName} requests: ${rate}/s`)
  await vm.run('pkill -INT -x fio || true')
  const { report } = await load
  t.equal(report?.jobs[0]?.error, 0, 'fio ran without error')
})

t.test('the shipped Prometheus config and rules are valid and only use metrics that exist', async (t) => {
  const checkConfig = await run('promtool', ['check', 'config', path.join(repoRoot, 'metrics/prometheus.yml')])
  t.match(checkConfig.stdout, /SUCCESS/)
  const checkRules = await run('promtool', ['check', 'rules', path.join(repoRoot, 'metrics/rules.yml')])
  t.match(checkRules.stdout, /SUCCESS/)
  const live = await scrape()
  const exported = new Set([...live.matchAll(/^(ublkd_[a-z_]+)/gm)].map((match) => match[1]!))
  const sources = ['metrics/rules.yml', 'metrics/grafana-dashboard.json'].map((file) => fs.readFileSync(path.join(repoRoot, file), 'utf8'))
  const referenced = new Set(sources.flatMap((text) => [...text.matchAll(/(?<![:\w])(ublkd_[a-z_]+)(?![:\w])/g)].map((match) => match[1]!)))
  t.ok(referenced.size >= 8, `${referenced.size} metrics referenced`)
  for (const name of referenced) t.ok(exported.has(name), `${name} is in a live scrape`)
})

t.test('the status page shows the device with non-zero IOPS in headless Chromium', async (t) => {
  // The device's reads as /status.json counts them now, and in the sample 1-2 s older it carries.
  type Sample = { devices: { name: string; queues: Record<string, number>[] }[] }
  const readsOf = (sample: Sample | null | undefined) =>
    (sample?.devices.find((d) => d.name === deviceName)?.queues ?? []).reduce((sum, queue) => sum + queue['read_ops']!, 0)
  const statusReads = async () => {
    const status = await (await fetch(`${metricsUrl}/status.json`)).json() as Sample & { previous: Sample | null }
    return { now: readsOf(status), before: readsOf(status.previous) }
  }
  // The device served the tests above, whose reads may still be in the older sample.
  const { now: baseline } = await statusReads()
  // fio runs until the page was read: Chromium's start takes seconds when the host is busy.
  const load = fio(vm, `--name=page --filename=${device.blockDevice} --ioengine=io_uring --direct=1 --rw=randread ` +
    '--bs=4k --iodepth=16 --time_based --runtime=600 --size=256M')
  // Until fio's reads are counted, and counted between the two samples: what the page shows.
  const deadline = Date.now() + 120_000
  for (;;) {
    const { now, before } = await statusReads()
    if (now > baseline && now > before) break
    if (Date.now() > deadline) throw new Error(`fio's reads were not counted in 120 s (from ${baseline}: ${before} -> ${now})`)
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
  const artifacts = path.join(repoRoot, '.tap', 'artifacts')
  fs.mkdirSync(artifacts, { recursive: true })
  const chromium = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--user-data-dir=${fs.mkdtempSync(path.join(workDir, 'chromium-'))}`, '--window-size=1100,700',
    '--virtual-time-budget=4000']
  const dom = await run('chromium', [...chromium, '--dump-dom', `${metricsUrl}/`], { timeout: 60_000 })
  const iops = new RegExp(`id="iops-${deviceName}">([\\d,.]+)<`).exec(dom.stdout)?.[1]
  t.ok(iops, 'the page lists the device')
  t.ok(Number((iops ?? '0').replace(/,/g, '')) > 0, `IOPS shown: ${iops}`)
  t.match(dom.stdout, /queue 1/, 'per-queue rows')
  const screenshot = path.join(artifacts, `status-page-${vmKernel}.png`)
  await run('chromium', [...chromium, `--screenshot=${screenshot}`, `${metricsUrl}/`], { timeout: 60_000 })
  t.ok(fs.statSync(screenshot).size > 10_000, `screenshot saved: ${screenshot}`)
  await vm.run('pkill -INT -x fio')
  await load
})
