// The public surface of the compat `Control` is the original module's: what its own unit test
// of the API (tests/unit/libs/index.test.js in the original repository) asserts, restated here
// against our module, and the behaviour behind those names (LEGACY.md): configIsGood,
// registryClient, startTLSClient() after stopTLSClient(), store and registryService.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const os = require('node:os')
const Control = require('../compat')
const { until } = require('./support/until.js')
const { startRegistry, status, tempDir } = require('./support/sfc-binary.js')

const INSTANCE_KEYS = ['config', 'store', 'configIsGood', 'registryService', 'registryClient']
const PROTOTYPE = [
  'constructor',
  'init',
  'isTLSService',
  'isTLSRegistry',
  'setupRegistryStore',
  'startTlSRegistryService',
  'startTLSClient',
  'stopTLSClient',
]

test('the original API test: construction, properties, configuration, and an unmodified prototype', () => {
  const control = new Control({ os, updateIntervalSeconds: 1 })
  assert.ok(control instanceof Control)
  assert.deepEqual(Object.keys(control).sort(), [...INSTANCE_KEYS].sort())
  assert.deepEqual(Object.keys(control.config).sort(), ['os', 'updateIntervalSeconds'])
  assert.deepEqual(Object.getOwnPropertyNames(Control.prototype), PROTOTYPE)
})

test('configIsGood says whether init() understood the role', async () => {
  const errors = []
  const orig = console.error
  console.error = (m) => errors.push(m)
  let control
  try {
    control = new Control({ role: 'tlsSomething' })
    assert.equal(control.configIsGood, false)
    await control.init()
  } finally {
    console.error = orig
  }
  assert.equal(control.configIsGood, false)
  assert.equal(control.isTLSService(), false)
  assert.equal(control.isTLSRegistry(), false)
  assert.equal(control.registryClient, null)
  assert.equal(control.registryService, null)
  assert.match(errors.join('\n'), /misconfiguration/)
})

test('tlsService: registryClient is the running client; startTLSClient() restarts a stopped one', async (t) => {
  const registry = await startRegistry()
  t.after(() => registry.stop())
  const control = new Control({
    role: 'tlsService',
    serviceName: 'api-test',
    groupingKey: 'api-test',
    hostName: 'api-test-1',
    registryHost: '127.0.0.1',
    registryPort: Number(registry.address.split(':')[1]),
    useSelfSignedCerts: true,
    ca: registry.ca,
    updateIntervalSeconds: 0.5,
  })
  assert.equal(control.isTLSService(), true)
  assert.equal(control.isTLSRegistry(), false)
  control.init()
  t.after(() => control.stopTLSClient())
  assert.equal(control.configIsGood, true)
  assert.deepEqual(Object.keys(control).sort(), [...INSTANCE_KEYS].sort())
  const rc = control.registryClient
  assert.equal(typeof rc.start, 'function')
  assert.equal(typeof rc.stop, 'function')
  assert.equal(rc.client.running, true, 'init() started it')
  const record = () => status(registry).find((r) => r.id === 'api-test/api-test-1')
  await until('online', () => record()?.status === 'online')

  assert.equal(await control.stopTLSClient(), true, 'the registry confirmed the leave')
  assert.equal(rc.client.running, false)
  assert.equal(record().status, 'left')

  control.startTLSClient()
  assert.equal(control.registryClient, rc, 'the same client object')
  assert.equal(rc.client.running, true)
  await until('online again', () => record()?.status === 'online')
})

test('tlsRegistry: store and registryService, and stopping it from outside the prototype', async () => {
  const dataDir = tempDir('sfc-node-compat-api-')
  const control = new Control({ role: 'tlsRegistry', registryHost: '127.0.0.1', registryPort: 0, dataDir })
  await control.init()
  try {
    assert.equal(control.configIsGood, true)
    assert.equal(control.isTLSRegistry(), true)
    assert.deepEqual(Object.keys(control).sort(), [...INSTANCE_KEYS].sort())
    assert.equal(control.registryClient, null)
    assert.deepEqual(control.registryService.getServiceFleetStatus(), {})
    assert.deepEqual(control.store.aggregate(), {})
    assert.deepEqual(control.store.getAll(), [])
    assert.match(control.registryService.registry.address, /^127\.0\.0\.1:\d+$/)
  } finally {
    await Control.stopTLSRegistry(control)
  }
  assert.equal(control.registryService.registry.address, null)
})
