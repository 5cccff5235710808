// examples/node/service.js, run as a user would: it joins, reports its endpoint and a health
// from its real check, and leaves gracefully when the registry sends `shutdown`.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { Registry } = require('..')
const { until } = require('./support/until.js')
const { tempDir } = require('./support/sfc-binary.js')

test('the example service joins, is healthy, serves its peers and closes on shutdown', async (t) => {
  const dataDir = tempDir('sfc-node-example-')
  const registry = new Registry({ listen: '127.0.0.1:0', dataDir })
  const address = await registry.start()
  t.after(() => registry.stop())
  // Resolve `require('service-fleet-control')` to this package, as `npm install` would.
  const modules = tempDir('sfc-node-modules-')
  fs.symlinkSync(path.resolve(__dirname, '..'), path.join(modules, 'service-fleet-control'), 'dir')
  const example = path.resolve(__dirname, '..', '..', '..', 'examples', 'node', 'service.js')
  const child = spawn(process.execPath, [example], {
    env: { ...process.env, NODE_PATH: modules, SFC_REGISTRY: address, SFC_CA: path.join(dataDir, 'tls', 'ca.pem'), GROUP: 'catalog' },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  const exited = new Promise((resolve) => child.on('exit', resolve))
  t.after(() => child.exitCode === null && child.kill('SIGKILL'))

  const rec = await until('example online and passing', () =>
    registry.instances({ group: 'catalog' }).find((r) => r.status === 'online' && r.health === 'passing' && 'healthy_peers' in (r.metrics.custom ?? {})),
  )
  const http = rec.endpoints.find((e) => e.name === 'http')
  assert.equal(http.protocol, 'http')
  const peers = await (await fetch(`http://${http.host}:${http.port}/peers`)).json()
  assert.deepEqual(peers.map((p) => p.id), [rec.id])

  const r = await registry.sendCommand(rec.id, 'shutdown', null, { reason: 'test' })
  assert.deepEqual([r.ok, r.result], [true, { closing: true }])
  const code = await Promise.race([exited, new Promise((resolve) => setTimeout(() => resolve('still running 15 s after shutdown'), 15000))])
  assert.equal(code, 0)
  assert.match(out, /left the fleet/)
  assert.equal(registry.instances({ group: 'catalog' })[0].status, 'left')
})
