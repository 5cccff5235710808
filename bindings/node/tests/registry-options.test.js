// The embedded Registry's resource budgets (issue 15): the options of `sfc registry`'s
// --max-outbound, --max-instances, --max-group-instances, --max-legacy-instances,
// --max-legacy-group-instances and --legacy, checked by the core's RegistryOptions::check (an
// out-of-range value throws a TypeError naming the option) and in force once started.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { Client, Registry } = require('..')
const { once } = require('./support/until.js')
const { tempDir } = require('./support/sfc-binary.js')

test('an out-of-range budget is refused, naming the option', () => {
  const cases = [
    [{ maxOutbound: 1000 }, 'maxOutbound', /65536/],
    [{ maxInstances: 0 }, 'maxInstances', /at least 1/],
    [{ maxGroupInstances: 0 }, 'maxGroupInstances', /at least 1/],
    [{ maxLegacyInstances: 0 }, 'maxLegacyInstances', /at least 1/],
    [{ maxLegacyGroupInstances: 0 }, 'maxLegacyGroupInstances', /at least 1/],
    [{ maxInstances: -1 }, 'maxInstances', /non-negative integer/],
    [{ maxInstances: 1.5 }, 'maxInstances', /non-negative integer/],
    [{ legacy: 'off' }, 'legacy', /true or false/],
  ]
  for (const [options, option, why] of cases) {
    assert.throws(
      () => new Registry({ listen: '127.0.0.1:0', dataDir: tempDir('sfc-node-budget-'), ...options }),
      (e) =>
        e instanceof TypeError &&
        e.option === option &&
        e.code === 'ERR_SFC_INVALID_ARGUMENT' &&
        e.message.startsWith(`invalid ${option}:`) &&
        why.test(e.message),
      `${JSON.stringify(options)} names ${option}`,
    )
  }
  // In range, every one is accepted (nothing is bound before start()).
  new Registry({
    listen: '127.0.0.1:0',
    dataDir: tempDir('sfc-node-budget-'),
    maxOutbound: 65536,
    maxInstances: 1,
    maxGroupInstances: 1,
    maxLegacyInstances: 1,
    maxLegacyGroupInstances: 1,
    legacy: false,
  })
})

test('maxGroupInstances is in force: a second identity in a full group gets too-many-instances', async (t) => {
  const dataDir = tempDir('sfc-node-budget-')
  const registry = new Registry({ listen: '127.0.0.1:0', dataDir, maxGroupInstances: 1 })
  const address = await registry.start()
  t.after(() => registry.stop())
  const ca = path.join(dataDir, 'tls', 'ca.pem')
  const first = new Client({ registry: address, ca, group: 'full', instanceId: 'a', interval: 200 })
  t.after(() => first.stop())
  first.on('error', () => {}) // `shutting-down` when the registry stops at the end
  first.start()
  await first.ready({ timeout: 15000 })
  const second = new Client({ registry: address, ca, group: 'full', instanceId: 'b', interval: 200 })
  t.after(() => second.stop())
  const error = once(second, 'error', 15000)
  second.start()
  const e = await error
  second.on('error', () => {})
  assert.equal(e.code, 'ERR_SFC_TOO_MANY_INSTANCES', e.message)
  assert.equal(e.protocolCode, 'too-many-instances')
  assert.deepEqual(
    registry.instances().map((r) => r.id),
    ['full/a'],
  )
})
