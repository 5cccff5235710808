// Drop-in compatibility with the original `service_fleet_control` module: its README's usage,
// rewritten as tests against real registries, and an unmodified legacy-format client.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const http = require('node:http')
const path = require('node:path')
const tls = require('node:tls')
const fs = require('node:fs')
const Control = require('../compat')
const { until } = require('./support/until.js')
const { startRegistry, status, tempDir } = require('./support/sfc-binary.js')

// A registry process in the original style: Control with role tlsRegistry, and a small HTTP
// endpoint that serves getServiceFleetStatus().
test('registry behind an HTTP endpoint: two services in a group, one stopped and started again', async (t) => {
  const dataDir = tempDir('sfc-node-compat-')
  const registry = new Control({ role: 'tlsRegistry', registryHost: '127.0.0.1', registryPort: 0, dataDir })
  await registry.init()
  t.after(() => Control.stopTLSRegistry(registry))
  const port = Number(registry.registryService.registry.address.split(':')[1])

  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(registry.registryService.getServiceFleetStatus()))
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => server.close())
  const fleet = async () => {
    const res = await fetch(`http://127.0.0.1:${server.address().port}/`)
    return res.json()
  }

  const service = (hostName) =>
    new Control({
      role: 'tlsService',
      serviceName: 'billing-api',
      groupingKey: 'billing',
      hostName,
      registryHost: 'localhost',
      registryPort: port,
      useSelfSignedCerts: true,
      ca: path.join(dataDir, 'tls', 'ca.pem'),
      updateIntervalSeconds: 1,
    })
  const a = service('billing-1')
  const b = service('billing-2')
  a.init()
  b.init()
  t.after(() => Promise.all([a.stopTLSClient(), b.stopTLSClient()]))

  const online = (f) => Object.fromEntries((f.billing ?? []).map((r) => [r.metrics.hostname, r.online]))
  let status = await until('both online', async () => {
    const f = await fleet()
    const o = online(f)
    return o['billing-1'] === true && o['billing-2'] === true && f
  })
  assert.deepEqual(Object.keys(status), ['billing'])
  for (const r of status.billing) {
    assert.deepEqual(Object.keys(r).sort(), ['groupingKey', 'metrics', 'online', 'serviceName', 'time'])
    assert.equal(r.serviceName, 'billing-api')
    assert.equal(r.groupingKey, 'billing')
    assert.ok(!Number.isNaN(Date.parse(r.time)) && r.time.endsWith('Z'), `time ${r.time}`)
    const m = r.metrics
    // Every key of process.memoryUsage() passes through, as in the original's record.
    assert.deepEqual(Object.keys(m).sort(), [
      ...Object.keys(process.memoryUsage()),
      'freemem', 'hostname', 'loadadv', 'numCpus', 'updateIntervalSeconds', 'uptime', 'user',
    ].sort())
    for (const k of ['rss', 'heapTotal', 'heapUsed', 'external', 'freemem', 'numCpus']) assert.ok(m[k] > 0, `${k} = ${m[k]}`)
    assert.ok(m.arrayBuffers >= 0, `arrayBuffers = ${m.arrayBuffers}`)
    assert.equal(m.loadadv.length, 3)
    assert.equal(typeof m.user, 'string')
    assert.ok(m.uptime > 0)
    assert.equal(m.updateIntervalSeconds, 1)
  }

  await b.stopTLSClient()
  status = await until('billing-2 offline', async () => {
    const f = await fleet()
    const o = online(f)
    return o['billing-1'] === true && o['billing-2'] === false && f
  })
  assert.equal(status.billing.length, 2, 'a stopped service stays listed, offline')

  b.init()
  await until('billing-2 online again', async () => {
    const o = online(await fleet())
    return o['billing-1'] === true && o['billing-2'] === true
  })
})

test('an unknown role only logs a misconfiguration', async () => {
  const errors = []
  const orig = console.error
  console.error = (m) => errors.push(m)
  try {
    await new Control({ role: 'netService' }).init()
  } finally {
    console.error = orig
  }
  assert.match(errors.join('\n'), /misconfiguration.*netService/)
})

test('makeServerThrow makes a registry that cannot start reject; without it the error is logged', async (t) => {
  const taken = await startRegistry()
  t.after(() => taken.stop())
  const port = taken.address.split(':')[1]
  const dataDir = tempDir('sfc-node-compat-')
  const throwing = new Control({ role: 'tlsRegistry', registryHost: '127.0.0.1', registryPort: port, dataDir, makeServerThrow: true })
  await assert.rejects(throwing.init(), /cannot listen/)
  const errors = []
  const orig = console.error
  console.error = (m) => errors.push(m)
  try {
    await new Control({ role: 'tlsRegistry', registryHost: '127.0.0.1', registryPort: port, dataDir }).init()
  } finally {
    console.error = orig
  }
  assert.match(errors.join('\n'), /cannot listen/)
})

// One report the way the original client sent it: a new TLS connection, one JSON document, end.
function legacyReport(registry, payload) {
  const [host, port] = registry.address.split(':')
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host, port: Number(port), ca: fs.readFileSync(registry.ca), servername: 'localhost' }, () => {
      socket.end(JSON.stringify({ action: 'HEALTH', payload }))
    })
    socket.on('error', reject)
    socket.on('close', resolve)
    socket.resume()
  })
}

test('an unmodified legacy-format client appears in a real sfc registry', async (t) => {
  const registry = await startRegistry()
  t.after(() => registry.stop())
  const m = process.memoryUsage()
  const payload = {
    serviceName: 'legacy-billing',
    groupingKey: 'legacy',
    time: new Date().toISOString(),
    metrics: {
      rss: m.rss,
      heapTotal: m.heapTotal,
      heapUsed: m.heapUsed,
      external: m.external,
      arrayBuffers: m.arrayBuffers,
      hostname: 'old-host-1',
      numCpus: 2,
      freemem: 1024 ** 3,
      loadadv: [0.5, 0.25, 0.125],
      user: 'node',
      uptime: 12345,
      updateIntervalSeconds: 1,
    },
  }
  await legacyReport(registry, payload)
  const rec = await until('legacy record listed by sfc status', () => status(registry).find((r) => r.id === 'legacy/old-host-1'))
  assert.equal(rec.service, 'legacy-billing')
  assert.equal(rec.status, 'online')
  assert.equal(rec.wire, 'legacy')
  assert.equal(rec.metrics.process.resident_bytes, m.rss)
  assert.equal(rec.metrics.runtime.array_buffers_bytes, m.arrayBuffers)
  assert.deepEqual(rec.metrics.host.load_average, [0.5, 0.25, 0.125])
  assert.equal(rec.interval_ms, 1000)
})
