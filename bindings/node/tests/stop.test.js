// stop() says whether the registry confirmed the leave, and a `shutdown` listener that awaits
// stop() answers the command first, then leaves: against the real `sfc registry` binary, with
// `sfc shutdown` as an operator runs it and `sfc status --json` reading the record.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const net = require('node:net')
const { Client } = require('..')
const { until, once } = require('./support/until.js')
const { startRegistry, status, sfc } = require('./support/sfc-binary.js')

const record = (registry, id) => status(registry).find((r) => r.id === id)

// A loopback port nothing listens on: bound by the OS, then closed.
async function closedPort() {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return `127.0.0.1:${port}`
}

test('stop() resolves false when no leave was confirmed: before start(), registry unreachable, registry killed', async (t) => {
  const registry = await startRegistry()
  t.after(() => registry.stop())
  const options = { ca: registry.ca, group: 'stopping', interval: 200 }

  const never = new Client({ ...options, registry: registry.address, instanceId: 'never-started' })
  assert.equal(await never.stop(), false, 'never started: nothing to leave')

  const lonely = new Client({ ...options, registry: await closedPort(), instanceId: 'unreachable' })
  const failed = once(lonely, 'error')
  lonely.start()
  assert.equal((await failed).code, 'ERR_SFC_UNREACHABLE')
  assert.equal(await lonely.stop(), false, 'no registry ever answered')

  const orphan = new Client({ ...options, registry: registry.address, instanceId: 'orphan' })
  orphan.on('error', () => {})
  orphan.start()
  await orphan.ready()
  await until('orphan online', () => record(registry, 'stopping/orphan')?.status === 'online')
  const lost = once(orphan, 'disconnected')
  await registry.kill()
  await lost
  assert.equal(await orphan.stop(), false, 'the registry is gone: nobody confirmed the leave')
  assert.equal(await orphan.stop(), false, 'a second stop has nothing to leave either')
})

test('stop() resolves true when the registry confirmed the leave, and the record is left', async (t) => {
  const registry = await startRegistry()
  t.after(() => registry.stop())
  const c = new Client({ registry: registry.address, ca: registry.ca, group: 'stopping', instanceId: 'clean', interval: 200 })
  c.start()
  await c.ready()
  assert.equal(await c.stop(), true)
  assert.equal(record(registry, 'stopping/clean').status, 'left')
})

test('a shutdown listener that awaits stop() answers `sfc shutdown`, then leaves: the record ends left', async (t) => {
  const registry = await startRegistry([], { adminToken: 'node-test-token' })
  t.after(() => registry.stop())
  const c = new Client({ registry: registry.address, ca: registry.ca, group: 'shutdown', instanceId: 'svc', interval: 200 })
  let left
  const handled = new Promise((resolve) => {
    // The documented pattern (README.md, "Shutdown"): close what the service serves, then stop.
    c.on('shutdown', async (cmd) => {
      assert.equal(cmd.reason, 'deploy')
      left = await c.stop()
      resolve()
    })
  })
  c.start()
  await c.ready()
  await until('online', () => record(registry, 'shutdown/svc')?.status === 'online')

  const r = await sfc(registry, ['shutdown', 'shutdown/svc', '--reason', 'deploy'])
  assert.equal(r.code, 0, `sfc shutdown failed: ${r.stderr}`)
  assert.match(r.stdout, /^shutdown -> shutdown\/svc: ok/)
  await handled
  assert.equal(left, true, 'the leave was confirmed')
  const rec = record(registry, 'shutdown/svc')
  assert.equal(rec.status, 'left')
  assert.equal(rec.offline_reason, null)
})
