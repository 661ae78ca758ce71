// Bad input to `ublkd add` and friends: a non-zero exit, a clear message, and nothing left
// behind in the kernel (no /dev/ublkc*, no /dev/ublkb*).
import t from 'tap'

import { addDevice, commentLogsIfFailed, ublkd, ublkNodes } from '../lib/ublkd-in-vm.js'
import { bootVm } from '../lib/vm.js'

const vm = await bootVm()
t.teardown(() => vm.shutdown())
t.afterEach((subtest) => commentLogsIfFailed(vm, t, subtest))

const cases: [args: string, message: RegExp, exitCode: number][] = [
  ['add -t nosuch --size 1G', /unknown target 'nosuch' \(known: null, memory, loop, nbd, fault\)/, 2],
  ['add --size 1G', /needs a target/, 2],
  ['add -t memory', /--size is required/, 2],
  ['add -t memory --size 0', /--size must be greater than 0/, 2],
  ['add -t memory --size 1000', /not a multiple of the logical block size 512/, 2],
  ['add -t memory --size 6K --logical-block-size 4096', /not a multiple of the logical block size 4096/, 2],
  ['add -t memory --size -5', /Option '--size' argument is ambiguous/, 2],
  ['add -t memory --size=-5', /'-5' is not a size/, 2],
  ['add -t memory --size lots', /'lots' is not a size/, 2],
  ['add -t null -d 0', /--depth must be between 1 and 4096, got 0/, 2],
  ['add -t null -d 4097', /--depth must be between 1 and 4096, got 4097/, 2],
  ['add -t null -q 0', /--queues must be between 1/, 2],
  ['add -t null -q 64', /--queues 64 is more than the 2 CPUs/, 2],
  ['add -t null -n abc', /--number must be an integer/, 2],
  ['add -t null --bogus', /Unknown option '--bogus'/, 2],
  ['add -t null extra', /unexpected argument 'extra'/, 2],
  ['add -t null --io-scheduler ../queue', /--io-scheduler must be a scheduler name/, 2],
  // A well-formed name the kernel does not know is only found out once the device exists: the
  // add must undo it all the same.
  ['add -t null --io-scheduler nosuch', /--io-scheduler nosuch: the kernel refused it \(EINVAL\); this kernel offers: .*none/, 2],
  ['del', /exactly one of -n ID or --all/, 2],
  ['del -n 99', /no device 99/, 1],
  ['frobnicate', /unknown command 'frobnicate'/, 2],
]

for (const [args, message, exitCode] of cases) {
  t.test(`ublkd ${args}`, async (t) => {
    const result = await ublkd(vm, args)
    t.equal(result.code, exitCode, `exit code (stderr: ${result.stderr.trim()})`)
    t.match(result.stderr, message)
    t.same(await ublkNodes(vm), [], 'no device left behind')
  })
}

t.test('a duplicate -n is refused and the first device keeps working', async (t) => {
  const first = await addDevice(vm, '-t memory --size 16M -n 3')
  const second = await ublkd(vm, 'add -t memory --size 16M -n 3')
  t.equal(second.code, 1)
  t.match(second.stderr, /device 3 already exists/)
  t.same(await ublkNodes(vm), ['ublkb3', 'ublkc3'])
  const read = await vm.exec(`dd if=${first.blockDevice} of=/dev/null bs=4k count=16 iflag=direct status=none`)
  t.equal(read.code, 0, read.stderr)
  t.equal((await ublkd(vm, 'del -n 3')).code, 0)
  t.same(await ublkNodes(vm), [])
})

t.test('--help is there for every command', async (t) => {
  for (const command of ['', 'add', 'del', 'list', 'features', 'daemon']) {
    const result = await ublkd(vm, `${command} --help`)
    t.equal(result.code, 0, command)
    t.match(result.stdout, /Usage: ublkd/, command)
  }
})
