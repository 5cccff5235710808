// Errors: every one has a stable `code` (README.md, "Errors"), a reconnect loop emits one
// `error` per failure rather than one per retry, messages are for people, and option errors
// name the option's full path and quote the value given.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const net = require('node:net')
const { Client, Registry } = require('..')
const { until, once } = require('./support/until.js')
const { tempDir } = require('./support/sfc-binary.js')
const { embeddedRegistry } = require('./support/embedded-registry.js')

const fleet = embeddedRegistry('sfc-node-errors-')
let registry
let address
let ca
test.before(async () => ({ registry, address, ca } = await fleet.ready))

test('a reconnect loop emits one error per failure, not one per retry, with a code', async (t) => {
  // A "registry" that accepts every connection and drops it at once: each retry fails the same way.
  let connections = 0
  const server = net.createServer((s) => {
    connections += 1
    s.destroy()
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => server.close())
  const c = new Client({ registry: `127.0.0.1:${server.address().port}`, ca, group: 'flaky', instanceId: 'f', interval: 200 })
  t.after(() => c.stop())
  const errors = []
  c.on('error', (e) => errors.push(e))
  c.start()
  await until('first error', () => errors.length > 0)
  await until('five attempts', () => connections >= 5)
  // The failures of the first four attempts have been reported by the core by now.
  await until('the client retried past the first failures', () => connections >= 6)
  assert.equal(errors.length, 1, `errors: ${errors.map((e) => e.message).join(' | ')}`)
  assert.match(errors[0].code, /^ERR_SFC_[A-Z_]+$/)
  assert.ok(errors[0] instanceof Error)
})

test('a disconnected reason is a plain message: no documentation URL when the connection ends without a TLS goodbye', async (t) => {
  // A TCP relay in front of the registry that can end the client's connection the way a crashed
  // host or a load balancer does: a FIN, with no TLS close_notify before it.
  const sockets = []
  const relay = net.createServer((downstream) => {
    const upstream = net.connect(Number(address.split(':')[1]), '127.0.0.1')
    downstream.pipe(upstream).pipe(downstream)
    const drop = () => {
      downstream.destroy()
      upstream.destroy()
    }
    downstream.on('error', drop)
    upstream.on('error', drop)
    sockets.push({ downstream, upstream })
  })
  await new Promise((resolve) => relay.listen(0, '127.0.0.1', resolve))
  t.after(() => relay.close())
  const c = new Client({ registry: `127.0.0.1:${relay.address().port}`, ca, group: 'crash', instanceId: 'c', interval: 200 })
  t.after(() => c.stop())
  c.on('error', () => {})
  c.start()
  await c.ready()
  const disconnected = once(c, 'disconnected')
  for (const { downstream, upstream } of sockets.splice(0)) {
    downstream.unpipe(upstream)
    upstream.unpipe(downstream)
    upstream.destroy()
    downstream.end()
  }
  const { reason } = await disconnected
  assert.doesNotMatch(reason, /https?:\/\//, reason)
  assert.match(reason, /closed the connection/)
})

test('errors from calls carry stable codes, the protocol code as protocolCode', async () => {
  const stopped = new Client({ registry: address, ca, group: 'codes', instanceId: 'stopped' })
  await assert.rejects(stopped.lookup('codes'), (e) => e.code === 'ERR_SFC_STOPPED' && /not running/.test(e.message))
  await assert.rejects(stopped.ready(), (e) => e.code === 'ERR_SFC_STOPPED')
  await assert.rejects(
    registry.sendCommand('codes/nobody', 'ping'),
    (e) => e.code === 'ERR_SFC_UNKNOWN_INSTANCE' && e.protocolCode === 'unknown-instance' && !e.message.startsWith('['),
  )
  assert.throws(() => new Client({ group: 'g', ca: '/does/not/exist.pem' }), (e) => e instanceof TypeError && e.option === 'ca' && e.code === 'ERR_SFC_FILE')
  assert.throws(() => new Client({ group: 'g', interval: 'x' }), (e) => e.code === 'ERR_SFC_INVALID_ARGUMENT')

  // ready() gives up after its timeout, naming the last failure (here: nobody listens).
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = server.address().port
  await new Promise((resolve) => server.close(resolve))
  const lonely = new Client({ registry: `127.0.0.1:${port}`, ca, group: 'codes', instanceId: 'lonely' })
  lonely.on('error', () => {})
  const failed = once(lonely, 'error')
  lonely.start()
  await failed
  await assert.rejects(
    lonely.ready({ timeout: 1 }),
    (e) => e.code === 'ERR_SFC_TIMEOUT' && e.cause?.code === 'ERR_SFC_UNREACHABLE' && e.message.includes('Connection refused'),
  )
  await lonely.stop()

  // A registry whose certificate this CA did not sign: a TLS error, said once.
  const other = new Registry({ listen: '127.0.0.1:0', dataDir: tempDir('sfc-node-errors-other-') })
  const otherAddress = await other.start()
  const stranger = new Client({ registry: otherAddress, ca, group: 'codes', instanceId: 'stranger' })
  const refused = once(stranger, 'error')
  stranger.start()
  const tlsError = await refused
  assert.equal(tlsError.code, 'ERR_SFC_TLS', tlsError.message)
  assert.match(tlsError.message, /certificate/)
  await stranger.stop()
  await other.stop()
})

test('option errors name the full path, quote the value, and refuse what would fail later', async () => {
  const cases = [
    [{ endpoints: [{ name: 'http', host: 'h', port: 8080 }, { name: 'x', host: 'h', port: 0 }] }, 'endpoints[1].port'],
    [{ endpoints: [{ name: 'http', host: 'h', prot: 'x' }] }, 'endpoints[0].prot'],
    [{ api: { kind: 'rest', url: 'x' } }, 'api.kind'],
    [{ metadata: { region: 1 } }, 'metadata.region'],
    [{ registry: 'http://127.0.0.1:7480' }, 'registry'],
    [{ registry: ['127.0.0.1:7480', 'https://registry.example:7480'] }, 'registry[1]'],
    [{ registry: '127.0.0.1:99999' }, 'registry'],
  ]
  for (const [options, option] of cases) {
    assert.throws(
      () => new Client({ ca, group: 'g', ...options }),
      (e) => e instanceof TypeError && e.option === option && e.message.startsWith(`invalid ${option}:`) && e.code === 'ERR_SFC_INVALID_ARGUMENT',
      `option ${option}`,
    )
  }
  assert.throws(
    () => new Client({ ca, group: 'g', interval: 1.5 }),
    (e) => e.option === 'interval' && e.message.includes('1.5 ms') && !e.message.includes('2 ms'),
  )
  assert.throws(
    () => new Client({ ca, group: 'g', registry: 'http://127.0.0.1:7480' }),
    (e) => /is a URL/.test(e.message) && /host:port/.test(e.message),
  )

  // A CA that is not PEM is refused as such, never read as a file name.
  const der = Buffer.from(fs.readFileSync(ca, 'utf8').replace(/-----[A-Z ]+-----|\s/g, ''), 'base64')
  assert.throws(() => new Client({ group: 'g', ca: der }), (e) => e.option === 'ca' && /no PEM block/.test(e.message) && !/cannot read/.test(e.message))
  const base64 = fs.readFileSync(ca, 'utf8').replace(/-----[A-Z ]+-----/g, '').trim()
  assert.throws(() => new Client({ group: 'g', ca: base64 }), (e) => e.option === 'ca' && /PEM/.test(e.message) && !/cannot read/.test(e.message))
  // PEM text after other text (openssl's "Bag Attributes", a comment) is PEM.
  const annotated = `Bag Attributes\n    friendlyName: sfc development CA\n${fs.readFileSync(ca, 'utf8')}`
  const fine = new Client({ group: 'g', ca: annotated, registry: address, instanceId: 'annotated' })
  fine.start()
  await fine.ready()
  assert.equal(await fine.stop(), true)

  // A lookup of a name the registry would refuse rejects, instead of answering [].
  const c = new Client({ registry: address, ca, group: 'lookups', instanceId: 'l' }).start()
  await c.ready()
  await assert.rejects(
    c.lookup('a/b'),
    (e) => e instanceof TypeError && e.option === 'group' && e.code === 'ERR_SFC_INVALID_ARGUMENT' && /"\/"/.test(e.message),
  )
  await assert.rejects(c.lookup(''), (e) => e.option === 'group')
  assert.deepEqual(await c.lookup('lookups').then((l) => l.map((i) => i.id)), ['lookups/l'])
  await c.stop()
})
