// A registry embedded in this process (real TLS on loopback, its development CA) for a test
// file: `embeddedRegistry(prefix)` registers the file's before/after hooks and returns the
// registry's handles, filled in once `before` has run (`await fleet.ready`).
'use strict'

const test = require('node:test')
const path = require('node:path')
const { Client, Registry } = require('../..')
const { tempDir } = require('./sfc-binary.js')

function embeddedRegistry(prefix) {
  const fleet = {
    registry: undefined,
    address: undefined,
    ca: undefined,
    // A client of this registry, reporting every 200 ms, with `options` on top.
    client: (options) => new Client({ registry: fleet.address, ca: fleet.ca, interval: 200, ...options }),
    // The registry's record of instance `id` (`group/instance`), if any.
    record: (id) => fleet.registry.instances().find((r) => r.id === id),
  }
  let started
  // Resolves to `fleet` once the registry is up: a test file's own before hook awaits it.
  fleet.ready = new Promise((resolve) => { started = resolve })
  test.before(async () => {
    const dataDir = tempDir(prefix)
    fleet.registry = new Registry({ listen: '127.0.0.1:0', dataDir })
    fleet.address = await fleet.registry.start()
    fleet.ca = path.join(dataDir, 'tls', 'ca.pem')
    started(fleet)
  })
  test.after(async () => {
    await fleet.registry.stop()
  })
  return fleet
}

module.exports = { embeddedRegistry }
