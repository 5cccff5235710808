// The embedded Registry's resource budgets (issue 15): the options of `sfc registry`'s
// --max-outbound, --max-instances, --max-group-instances, --max-legacy-instances,
// --max-legacy-group-instances and --legacy, checked by the core's RegistryOptions::check (an
// out-of-range value throws a TypeError naming the option) and in force once started.
// Also `http` and `metricsInstances` (`--http`, `--metrics-instances`): what /metrics serves.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { Client, Registry } = require('..')
const { once, until } = require('./support/until.js')
const { tempDir } = require('./support/sfc-binary.js')

test('an out-of-range budget is refused, naming the option', () => {
  const cases = [
    [{ maxOutbound: 1000 }, 'maxOutbound', /65536/],
    [{ maxHistoryBytes: 10 }, 'maxHistoryBytes', /65536/],
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

test('metricsInstances takes none, all or a count; anything else is a TypeError naming it', () => {
  for (const bad of ['some', '5', -1, 1.5, true, null]) {
    assert.throws(
      () => new Registry({ listen: '127.0.0.1:0', dataDir: tempDir('sfc-node-metrics-'), metricsInstances: bad }),
      (e) =>
        e instanceof TypeError &&
        e.option === 'metricsInstances' &&
        e.code === 'ERR_SFC_INVALID_ARGUMENT' &&
        /expected 'none', 'all' or a non-negative integer/.test(e.message),
      `${JSON.stringify(bad)} is refused`,
    )
  }
  for (const good of ['none', 'all', 0, 3]) {
    new Registry({ listen: '127.0.0.1:0', dataDir: tempDir('sfc-node-metrics-'), metricsInstances: good })
  }
  assert.throws(
    () => new Registry({ listen: '127.0.0.1:0', dataDir: tempDir('sfc-node-metrics-'), http: 7481 }),
    (e) => e instanceof TypeError && e.option === 'http',
  )
})

// The series lines (not comments) of the embedded registry's /metrics, once `group` is in it.
async function scrape(registry, group) {
  const text = await until(`/metrics with group ${group}`, async () => {
    const res = await fetch(`http://${registry.httpAddress}/metrics`)
    assert.equal(res.status, 200)
    const body = await res.text()
    return body.includes(`group="${group}"`) && body
  })
  return text.split('\n').filter((l) => l && !l.startsWith('#'))
}

for (const mode of ['none', 'all']) {
  test(`metricsInstances: '${mode}' is what the embedded registry's /metrics serves`, async (t) => {
    const dataDir = tempDir('sfc-node-metrics-')
    const registry = new Registry({ listen: '127.0.0.1:0', http: '127.0.0.1:0', dataDir, metricsInstances: mode })
    const address = await registry.start()
    t.after(() => registry.stop())
    assert.match(registry.httpAddress, /^127\.0\.0\.1:\d+$/)
    const ca = path.join(dataDir, 'tls', 'ca.pem')
    const client = new Client({ registry: address, ca, group: 'scraped', instanceId: 'a', interval: 200 })
    t.after(() => client.stop())
    client.on('error', () => {}) // `shutting-down` when the registry stops at the end
    client.start()
    await client.ready({ timeout: 15000 })
    const series = await scrape(registry, 'scraped')
    const perInstance = series.filter((l) => l.startsWith('sfc_instance_'))
    if (mode === 'none') {
      assert.deepEqual(perInstance, [])
    } else {
      assert.ok(
        perInstance.some((l) => l.startsWith('sfc_instance_up{') && l.includes('instance="a"')),
        `an sfc_instance_up series for the client in:\n${perInstance.join('\n')}`,
      )
    }
  })
}
