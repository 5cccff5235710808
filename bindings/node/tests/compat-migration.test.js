// Drop-in in either migration order: the compat client against a registry that is still the
// original one (a legacy-style registry that behaves as ../../../../shared/LEGACY.md describes:
// no ALPN, and it exits on a document it cannot parse), then the same client, never restarted,
// once that registry is replaced by `sfc registry` on the same port. And a v1-only client,
// which must refuse the old registry with a clear error without sending it anything.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const Control = require('../compat')
const { Client } = require('..')
const { once, until } = require('./support/until.js')
const { status } = require('./support/sfc-binary.js')
const { certs, startLegacyRegistry, startSfcRegistry } = require('./support/legacy.js')

const ORIGINAL_KEYS = ['hostname', 'numCpus', 'freemem', 'loadadv', 'user', 'uptime', 'updateIntervalSeconds']

test('the compat client reports to the original registry, then moves to v1 when it is replaced', async (t) => {
  const tls = certs()
  const legacy = await startLegacyRegistry(tls)
  t.after(() => legacy.stop())
  const port = legacy.port

  const control = new Control({
    role: 'tlsService',
    serviceName: 'billing-api',
    groupingKey: 'migrate',
    hostName: 'migrate-1',
    registryHost: '127.0.0.1',
    registryPort: port,
    useSelfSignedCerts: true,
    ca: tls.ca,
    updateIntervalSeconds: 0.5,
  })
  control.init()
  t.after(() => control.stopTLSClient())
  const client = control.registryClient.client
  const sessions = []
  client.on('connected', (e) => sessions.push(e.session))

  // Two reports recorded: the registry parsed the first and is still up for the second.
  const reports = await legacy.waitFor('two legacy reports', () => legacy.reports().length >= 2 && legacy.reports())
  assert.equal(legacy.child.exitCode, null, 'the legacy registry is still running')
  assert.deepEqual(legacy.refusals(), [], 'no connection ended before its handshake')
  for (const { action, record } of reports) {
    assert.equal(action, 'HEALTH')
    assert.equal(record.serviceName, 'billing-api')
    assert.equal(record.groupingKey, 'migrate')
    assert.ok(!Number.isNaN(Date.parse(record.time)) && record.time.endsWith('Z'), `time ${record.time}`)
    // Every key of process.memoryUsage(), and the original's other keys.
    assert.deepEqual(Object.keys(record.metrics).sort(), [...Object.keys(process.memoryUsage()), ...ORIGINAL_KEYS].sort())
    assert.equal(record.metrics.hostname, 'migrate-1')
    assert.equal(record.metrics.updateIntervalSeconds, 0.5)
    assert.equal(record.metrics.loadadv.length, 3)
    for (const k of ['rss', 'heapTotal', 'heapUsed', 'external', 'numCpus', 'freemem']) assert.ok(record.metrics[k] > 0, `${k}`)
  }
  assert.ok(sessions.every((s) => s === 0), `legacy reporting counts as session 0: ${sessions}`)

  // The registry is replaced by `sfc registry` on the same port.
  await legacy.stop()
  const sfc = await startSfcRegistry(tls, port)
  t.after(() => sfc.stop())
  await until('a v1 session', () => sessions.some((s) => s > 0), { timeout: 30000 })
  const records = status(sfc)
  const rec = records.find((r) => r.id === 'migrate/migrate-1')
  assert.ok(rec, `migrate/migrate-1 in ${JSON.stringify(records.map((r) => r.id))}`)
  assert.equal(rec.wire, 'v1')
  assert.equal(rec.status, 'online')
  assert.equal(rec.service, 'billing-api')
  assert.equal(control.registryClient.client, client, 'the same client, never restarted')
})

// TLS 1.3 carries the ALPN answer in EncryptedExtensions, TLS 1.2 in the ServerHello: the
// client must decide before its last flight in both.
for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
  test(`a v1-only client refuses a registry that predates protocol v1 and sends it nothing (${maxVersion})`, async (t) => {
    const tls = certs()
    const legacy = await startLegacyRegistry(tls, { maxVersion })
    t.after(() => legacy.stop())

    const client = new Client({ registry: `127.0.0.1:${legacy.port}`, group: 'v1-only', ca: tls.ca, interval: 500 })
    const error = once(client, 'error', 30000)
    client.start()
    t.after(() => client.stop())
    const err = await error
    assert.match(err.message, /registry predates protocol v1/)
    assert.match(err.message, /sent it nothing/)
    // The registry saw the handshake end before it completed, which it ignores.
    await legacy.waitFor('the abandoned handshake', () => legacy.refusals().length >= 1)
    await client.stop()

    // Still up and serving: a report in the original format is recorded after that.
    const control = new Control({
      role: 'tlsService',
      serviceName: 'after',
      groupingKey: 'after',
      hostName: 'after-1',
      registryHost: '127.0.0.1',
      registryPort: legacy.port,
      useSelfSignedCerts: true,
      ca: tls.ca,
      updateIntervalSeconds: 1,
    })
    control.init()
    t.after(() => control.stopTLSClient())
    await legacy.waitFor('a report after the refusal', () => legacy.reports().find((r) => r.record.groupingKey === 'after'))
    assert.equal(legacy.child.exitCode, null)
    assert.deepEqual(
      legacy.reports().filter((r) => r.record.groupingKey !== 'after'),
      [],
      'the v1-only client delivered nothing',
    )
  })
}
