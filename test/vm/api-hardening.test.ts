// The daemon's control API takes anything a client sends: malformed JSON, wrong types, huge
// numbers, unknown ops and ids, oversized requests. Each gets a clear error with a stable code;
// the daemon lives and nothing is left behind. The socket is root-only.
import t from 'tap'

import { addDevice, commentLogsIfFailed, listDevices, ublkdCli, ublkNodes, waitInVm } from '../lib/ublkd-in-vm.js'
import { bootVm } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))

await vm.run(`setsid sh -c '${ublkdCli} daemon > /tmp/daemon.log 2>&1' < /dev/null > /dev/null 2>&1 &`)
await waitInVm(vm, `grep -q '"msg":"daemon ready"' /tmp/daemon.log`, 60_000)

/** Send raw bytes (given on stdin, never ending the connection first) and return the reply. */
async function raw(bytes: string): Promise<string> {
  const script = `const c=require('net').createConnection('/run/ublkd/ublkd.sock');let r='';` +
    `c.on('data',d=>r+=d);c.on('end',()=>process.stdout.write(r));c.on('error',e=>process.stdout.write('ERROR '+e.code));` +
    `process.stdin.on('data',d=>c.write(d))`
  return vm.run(`node -e "${script}"`, { stdin: bytes, timeoutMs: 30_000 })
}

const cases: [string, string, RegExp][] = [
  ['not JSON', '{"op": "add", \n', /request is not valid JSON/],
  ['a JSON array', '[1,2]\n', /request must be a JSON object/],
  ['a JSON string', '"add"\n', /request must be a JSON object/],
  ['an unknown op', '{"op":"format"}\n', /unknown op "format"/],
  ['no op', '{}\n', /unknown op undefined/],
  ['add without a device', '{"op":"add"}\n', /add needs a "device" object/],
  ['add with a device that is not an object', '{"op":"add","device":[]}\n', /add needs a "device" object/],
  ['a target that is a number', '{"op":"add","device":{"target":5}}\n', /a target is required/],
  ['an unknown target', '{"op":"add","device":{"target":"tape","size":"1G"}}\n', /unknown target 'tape'/],
  ['a negative size', '{"op":"add","device":{"target":"memory","size":-1}}\n', /--size must be greater than 0/],
  ['a size of the wrong type', '{"op":"add","device":{"target":"memory","size":true}}\n', /--size must be a size/],
  ['a huge size', '{"op":"add","device":{"target":"memory","size":"99999999999999P"}}\n', /too large/],
  ['a huge queue count', '{"op":"add","device":{"target":"null","queues":1000000000}}\n', /--queues must be between 1 and 4096/],
  ['a string depth', '{"op":"add","device":{"target":"null","depth":"deep"}}\n', /--depth must be an integer/],
  ['a negative id', '{"op":"add","device":{"target":"null","id":-3}}\n', /--number must be between 0/],
  ['an id beyond the driver', '{"op":"add","device":{"target":"null","id":1099511627776}}\n', /--number must be between 0/],
  ['a block size that is not a power of two', '{"op":"add","device":{"target":"null","logicalBlockSize":3000}}\n', /--logical-block-size must be one of/],
  ['recovery that is not a mode', '{"op":"add","device":{"target":"null","recovery":"yes"}}\n', /--recovery must be off, reissue, fail-io, got 'yes'/],
  ['a name with a space', '{"op":"add","device":{"target":"null","name":"a b"}}\n', /--name must be 1-64 letters/],
  ['an option the target does not take', '{"op":"add","device":{"target":"null","file":"/tmp/x"}}\n', /target null does not take --file/],
  ['a loop backing that is missing', '{"op":"add","device":{"target":"loop","file":"/nope"}}\n', /backing file \/nope does not exist/],
  ['a loop backing that is a directory', '{"op":"add","device":{"target":"loop","file":"/tmp"}}\n', /backing file \/tmp is a directory/],
  ['del with an id of the wrong type', '{"op":"del","id":"x"}\n', /del needs a device id/],
  ['del of an unknown id', '{"op":"del","id":99}\n', /no device 99/],
  ['recover of an unknown id', '{"op":"recover","id":99}\n', /no record of device 99/],
  ['recover without an id', '{"op":"recover"}\n', /recover needs a device id/],
  ['resize without an id', '{"op":"resize","size":"1G"}\n', /resize needs a device id/],
  ['resize without a size', '{"op":"resize","id":0}\n', /resize needs a size/],
  ['resize with a size that is not one', '{"op":"resize","id":0,"size":"big"}\n', /--size: 'big' is not a size/],
  ['resize of an unknown id', '{"op":"resize","id":99,"size":"1G"}\n', /no device 99 in this daemon/],
  ['reload without a configuration', '{"op":"reload"}\n', /the daemon runs without --config: nothing to reload/],
]

for (const [what, line, message] of cases) {
  t.test(`API: ${what}`, async (t) => {
    const reply = JSON.parse(await raw(line)) as { ok: boolean; error?: { code: string; message: string } }
    t.equal(reply.ok, false)
    t.match(reply.error?.code, /^UBLKD_ERR_/)
    t.match(reply.error?.message, message)
  })
}

t.test('an oversized request is refused', async (t) => {
  t.match(await raw('x'.repeat(200_000)), /request larger than 65536 bytes/)
})

t.test('after all that the daemon is alive, serves, and left nothing behind', async (t) => {
  t.same(await ublkNodes(vm), [])
  const device = await addDevice(vm, '-t null --size 1G')
  t.equal(device.state, 'LIVE')
  t.equal((await listDevices(vm)).length, 1)
  await vm.run(`${ublkdCli} del --all --force`)
})

t.test('the socket is root-only: another user gets a clear refusal', async (t) => {
  t.equal((await vm.run('stat -c %a /run/ublkd/ublkd.sock')).trim(), '600')
  t.equal((await vm.run('stat -c %a /run/ublkd')).trim(), '700')
  const result = await vm.exec(`setpriv --reuid=65534 --regid=65534 --clear-groups ${ublkdCli} list`)
  t.equal(result.code, 1)
  t.match(result.stderr, /permission denied.*run ublkd as root/i)
})

t.test('running out of file descriptors refuses clients, never kills the daemon', async (t) => {
  const pid = (await vm.run("pgrep -f '^node .*[c]li.js daemon'")).trim()
  const open = Number((await vm.run(`ls /proc/${pid}/fd | wc -l`)).trim())
  await vm.run(`prlimit --pid ${pid} --nofile=${open + 4}:${open + 4}`)
  // 40 clients at once: accepts past the limit fail with EMFILE. (libuv absorbs EMFILE itself,
  // accepting and closing the excess connection; the server's 'error' listener is for the
  // accept errors it does pass on.)
  const flood = `const net = require('net'); let answered = 0
for (let i = 0; i < 40; i++) {
  const c = net.createConnection('/run/ublkd/ublkd.sock')
  c.on('connect', () => c.write(JSON.stringify({ op: 'list' }) + '\\n'))
  c.on('data', () => answered++)
  c.on('error', () => {})
}
setTimeout(() => { console.log(answered); process.exit(0) }, 5000)
`
  await vm.run('cat > /tmp/flood.js', { stdin: flood })
  const answered = Number((await vm.run('node /tmp/flood.js', { timeoutMs: 60_000 })).trim())
  await vm.run(`prlimit --pid ${pid} --nofile=65536:65536`)
  t.comment(`${answered} of 40 clients were answered while descriptors ran out`)
  t.equal((await vm.run("pgrep -f '^node .*[c]li.js daemon'")).trim(), pid, 'the same daemon runs')
  t.same(await listDevices(vm), [], 'and answers')
})

t.test('SIGHUP without --config is logged and ignored', async (t) => {
  const pid = (await vm.run("pgrep -f '^node .*[c]li.js daemon'")).trim()
  await vm.run(`kill -HUP ${pid}`)
  await waitInVm(vm, `grep -q 'SIGHUP: no configuration file (--config), nothing to reload' /tmp/daemon.log`, 10_000)
  t.equal((await vm.run("pgrep -f '^node .*[c]li.js daemon'")).trim(), pid, 'the daemon still runs')
  t.same(await listDevices(vm), [], 'and answers')
})
