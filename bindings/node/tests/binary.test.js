// The client against the real `sfc registry` binary, checked with `sfc status --json`.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const { Client } = require('..')
const { until, once } = require('./support/until.js')
const { startRegistry, status } = require('./support/sfc-binary.js')

test('a Node.js service registers with sfc registry and leaves on stop', async (t) => {
  const registry = await startRegistry()
  t.after(() => registry.stop())
  const c = new Client({
    registry: registry.address,
    ca: registry.ca,
    service: 'orders',
    group: 'orders',
    instanceId: 'node-1',
    interval: 250,
    endpoints: [{ name: 'http', host: '127.0.0.1', port: 3000, protocol: 'http' }],
    metadata: { region: 'eu-1' },
  })
  const connected = once(c, 'connected')
  c.start()
  await connected
  const rec = await until('record with runtime metrics', () => {
    const r = status(registry).find((x) => x.id === 'orders/node-1')
    return r && r.metrics.runtime?.heap_used_bytes > 0 && r
  })
  assert.equal(rec.status, 'online')
  assert.equal(rec.wire, 'v1')
  assert.equal(rec.interval_ms, 250)
  assert.deepEqual(rec.metadata, { region: 'eu-1' })
  assert.equal(rec.endpoints[0].protocol, 'http')
  assert.ok(rec.metrics.process.resident_bytes > 0)
  assert.deepEqual(
    (await c.lookup('orders')).map((i) => i.id),
    ['orders/node-1'],
  )
  assert.equal(await c.stop(), true)
  await until('left', () => status(registry).find((x) => x.id === 'orders/node-1')?.status === 'left')
})

test('when the registry goes away the client says so and lookups answer from the stale cache', async (t) => {
  const first = await startRegistry()
  const c = new Client({ registry: first.address, ca: first.ca, group: 'resilient', instanceId: 'r', interval: 200 })
  t.after(() => c.stop())
  const connected = once(c, 'connected')
  c.start()
  await connected
  assert.equal((await c.lookup('resilient')).stale, false)
  const disconnected = once(c, 'disconnected')
  await first.stop()
  const d = await disconnected
  assert.equal(d.registry, first.address)
  assert.equal(c.connected, false)
  // Nothing listens now: the answer comes from the cache, marked stale.
  const cached = await c.lookup('resilient')
  assert.equal(cached.stale, true)
  assert.deepEqual(cached.map((i) => i.id), ['resilient/r'])
})
