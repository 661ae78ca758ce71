// The live status page served at `/` of the metrics listener: one self-contained HTML file (no
// external assets) that polls /status.json every second and shows every device and queue with
// IOPS, bandwidth and p99 service time computed from the deltas against the sample 1-2 s old
// that /status.json carries.

export const statusPageHtml = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ublkd status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; background: #f6f7f9; }
 h1 { font-size: 20px; margin: 0 0 4px; } .sub { color: #667; margin-bottom: 18px; }
 .dev { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 14px 18px; margin-bottom: 16px; }
 .dev h2 { font-size: 16px; margin: 0 0 8px; } .state { font-size: 12px; padding: 2px 8px; border-radius: 10px; margin-left: 8px; }
 .LIVE { background: #d9f5df; color: #12632a; } .other { background: #fde2e1; color: #8a1c17; }
 table { border-collapse: collapse; width: 100%; } th, td { text-align: right; padding: 4px 10px; font-variant-numeric: tabular-nums; }
 th { color: #667; font-weight: 600; border-bottom: 1px solid #e5e8ec; } td:first-child, th:first-child { text-align: left; }
 tr.total td { font-weight: 700; border-top: 1px solid #e5e8ec; } .big { font-size: 26px; font-weight: 700; margin-right: 24px; }
 .kpi { display: flex; gap: 8px; margin: 4px 0 10px; align-items: baseline; } .kpi span.l { color: #667; margin-right: 18px; }
</style></head>
<body><h1>ublkd</h1><div class="sub" id="sub">connecting...</div><div id="devices"></div>
<script>
let lastPoll = null
const fmt = (n, d = 0) => n.toLocaleString(undefined, { maximumFractionDigits: d, minimumFractionDigits: d })
const sum = (q, field) => ['read', 'write', 'flush', 'discard', 'write_zeroes', 'other'].reduce((a, op) => a + q[op + '_' + field], 0)
function p99(now, before, bounds) {
  const counts = bounds.map((_, i) => now['latency_bucket_' + i] - (before ? before['latency_bucket_' + i] : 0))
  const inf = now['latency_bucket_' + bounds.length] - (before ? before['latency_bucket_' + bounds.length] : 0)
  const total = counts.reduce((a, b) => a + b, 0) + inf
  if (total === 0) return null
  let seen = 0
  for (let i = 0; i < counts.length; i++) { seen += counts[i]; if (seen >= 0.99 * total) return bounds[i] / 1000 }
  return Infinity
}
function rates(now, before, seconds) {
  const ops = sum(now, 'ops') - (before ? sum(before, 'ops') : 0)
  const bytes = now.read_bytes + now.write_bytes - (before ? before.read_bytes + before.write_bytes : 0)
  return { iops: ops / seconds, mibs: bytes / seconds / 1048576 }
}
async function poll() {
  try {
    const status = await (await fetch('status.json', { cache: 'no-store' })).json()
    // Rates against the daemon's own sample 1-2 s old (or, just after start, the last poll).
    const last = status.previous ?? lastPoll
    const seconds = last ? (status.time - last.time) / 1000 : 1
    document.getElementById('sub').textContent = status.devices.length + ' device(s), daemon pid ' + status.pid + ', updated ' + new Date(status.time).toLocaleTimeString()
    const html = status.devices.map((d) => {
      const prev = last && last.devices.find((p) => p.name === d.name)
      let totalIops = 0, totalMibs = 0
      const rows = d.queues.map((q, i) => {
        const before = prev && prev.queues[i]
        const r = before ? rates(q, before, seconds) : { iops: 0, mibs: 0 }
        totalIops += r.iops; totalMibs += r.mibs
        const lat = before ? p99(q, before, status.latencyBoundsNs) : null
        return '<tr><td>queue ' + i + '</td><td>' + fmt(r.iops) + '</td><td>' + fmt(r.mibs, 1) + '</td><td>' + (lat === null ? '-' : lat === Infinity ? '&gt;1 s' : fmt(lat, 0) + ' µs') +
          '</td><td>' + q.inflight + '</td><td>' + fmt(sum(q, 'errors')) + '</td><td>' + fmt(sum(q, 'ops')) + '</td></tr>'
      }).join('')
      return '<div class="dev"><h2>/dev/' + d.name + ' <small>' + d.target + ', ' + fmt(d.sizeBytes / 1073741824, 2) + ' GiB</small><span class="state ' + (d.state === 'LIVE' ? 'LIVE' : 'other') + '">' + d.state + '</span></h2>' +
        '<div class="kpi"><span class="big" id="iops-' + d.name + '">' + fmt(totalIops) + '</span><span class="l">IOPS</span><span class="big">' + fmt(totalMibs, 1) + '</span><span class="l">MiB/s</span></div>' +
        '<table><tr><th></th><th>IOPS</th><th>MiB/s</th><th>p99 service</th><th>in flight</th><th>errors</th><th>requests</th></tr>' + rows + '</table></div>'
    }).join('')
    document.getElementById('devices').innerHTML = html || '<div class="dev">no devices</div>'
    lastPoll = status
  } catch (error) {
    document.getElementById('sub').textContent = 'cannot reach the daemon: ' + error
  }
}
poll(); setInterval(poll, 1000)
</script></body></html>
`
