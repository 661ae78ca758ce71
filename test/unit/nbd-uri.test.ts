import t from 'tap'

import { describeAddress, kNbdDefaultPort, parseNbdUri } from '../../src/targets/nbd/uri.js'

t.test('nbd:// names a TCP server and an export; the port defaults to 10809', async (t) => {
  t.equal(kNbdDefaultPort, 10809)
  t.same(parseNbdUri('nbd://host/export'), { address: { kind: 'tcp', host: 'host', port: 10809 }, exportName: 'export', tls: false })
  t.same(parseNbdUri('nbd://host:1234/export'), { address: { kind: 'tcp', host: 'host', port: 1234 }, exportName: 'export', tls: false })
  t.same(parseNbdUri('nbd://192.0.2.7:10810/disk'), { address: { kind: 'tcp', host: '192.0.2.7', port: 10810 }, exportName: 'disk', tls: false })
})

t.test('an IPv6 literal loses its brackets', async (t) => {
  t.same(parseNbdUri('nbd://[::1]:10810/e'), { address: { kind: 'tcp', host: '::1', port: 10810 }, exportName: 'e', tls: false })
  t.same(parseNbdUri('nbd://[fe80::1]/e').address, { kind: 'tcp', host: 'fe80::1', port: 10809 })
})

t.test('the export is the path without its first slash, percent-decoded; none is the default export', async (t) => {
  t.equal(parseNbdUri('nbd://h/a%20b%2Fc').exportName, 'a b/c')
  t.equal(parseNbdUri('nbd://h/dir/disk').exportName, 'dir/disk', 'later slashes are part of the name')
  t.equal(parseNbdUri('nbd://h/%C3%A9t%C3%A9').exportName, 'été')
  t.equal(parseNbdUri('nbd://h').exportName, '', 'no path')
  t.equal(parseNbdUri('nbd://h/').exportName, '', 'a bare slash')
})

t.test('nbds:// asks for TLS', async (t) => {
  t.same(parseNbdUri('nbds://h/e'), { address: { kind: 'tcp', host: 'h', port: 10809 }, exportName: 'e', tls: true })
})

t.test('nbd+unix:// and nbds+unix:// name a unix socket with ?socket=', async (t) => {
  t.same(parseNbdUri('nbd+unix:///exp?socket=/path'), { address: { kind: 'unix', path: '/path' }, exportName: 'exp', tls: false })
  t.same(parseNbdUri('nbd+unix:///?socket=/run/nbd.sock'), { address: { kind: 'unix', path: '/run/nbd.sock' }, exportName: '', tls: false })
  t.same(parseNbdUri('nbd+unix:///a%20b?socket=/tmp/a%20dir/s'), { address: { kind: 'unix', path: '/tmp/a dir/s' }, exportName: 'a b', tls: false },
    'both the export and the socket path are decoded')
  t.same(parseNbdUri('nbds+unix:///x?socket=/s'), { address: { kind: 'unix', path: '/s' }, exportName: 'x', tls: true })
})

t.test('refusals name the problem', async (t) => {
  const refused = (text: string, message: string | RegExp, what: string): void => {
    t.throws(() => parseNbdUri(text), { name: 'UsageError', code: 'UBLKD_ERR_USAGE', message }, what)
  }
  refused('not a uri', `--url 'not a uri' is not a URI (expected nbd://host[:port]/export, nbds://..., nbd+unix:///export?socket=PATH)`, 'not a URI')
  refused('http://h/e', `--url 'http://h/e': the scheme must be nbd, nbds, nbd+unix or nbds+unix, got 'http'`, 'a foreign scheme')
  refused('nbd+unix:///e', `--url 'nbd+unix:///e': nbd+unix needs ?socket=PATH`, 'unix without a socket')
  refused('nbds+unix:///e', `--url 'nbds+unix:///e': nbd+unix needs ?socket=PATH`, 'nbds+unix without a socket')
  refused('nbd+unix://h/e?socket=/s', `--url 'nbd+unix://h/e?socket=/s': a unix socket URI has no host (nbd+unix:///export?socket=PATH)`, 'unix with a host')
  refused('nbd://h/e?socket=/s', `--url 'nbd://h/e?socket=/s': ?socket= belongs to nbd+unix:// URIs`, 'tcp with a socket')
  refused('nbd://h/e?tls-certificates=/c', `--url 'nbd://h/e?tls-certificates=/c': query parameter 'tls-certificates' is not supported (TLS files: --tls-ca, --tls-cert, --tls-key)`,
    'an unknown query parameter')
  refused('nbd+unix:///e?socket=/s&x=1', /query parameter 'x' is not supported/, 'an unknown parameter next to socket')
  refused('nbd://user:pass@h/e', `--url 'nbd://user:pass@h/e': user names and passwords are not supported`, 'user and password')
  refused('nbd://user@h/e', /user names and passwords are not supported/, 'a user alone')
  refused('nbd://h/e#frag', `--url 'nbd://h/e#frag': a fragment is not allowed`, 'a fragment')
  refused('nbd:///e', `--url 'nbd:///e': no host`, 'tcp without a host')
  refused('nbd://h/%zz', `--url 'nbd://h/%zz': the export name is not valid percent-encoding`, 'bad percent-encoding')
  const long = `nbd://h/${'a'.repeat(4097)}`
  refused(long, `--url '${long}': the export name is longer than 4096 bytes`, 'an export name past the protocol\'s limit')
  t.equal(parseNbdUri(`nbd://h/${'a'.repeat(4096)}`).exportName.length, 4096, '4096 bytes is allowed')
})

t.test('describeAddress shows where the server is', async (t) => {
  t.equal(describeAddress({ kind: 'tcp', host: 'host', port: 10809 }), 'host:10809')
  t.equal(describeAddress({ kind: 'tcp', host: '::1', port: 10810 }), '[::1]:10810', 'IPv6 in brackets')
  t.equal(describeAddress({ kind: 'unix', path: '/run/nbd.sock' }), 'unix:/run/nbd.sock')
  t.equal(describeAddress(parseNbdUri('nbd://[::1]:10810/e').address), '[::1]:10810', 'round trip through the parser')
})
