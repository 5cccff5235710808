// The client against a real registry embedded in this process (real TLS on loopback, the
// registry's development CA): lifecycle, lookup, watch, commands, runtime metrics, options.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { Client, Registry } = require('..')
const { until, once } = require('./support/until.js')
const { embeddedRegistry } = require('./support/embedded-registry.js')

const fleet = embeddedRegistry('sfc-node-embedded-')
let registry
let address
let ca
test.before(async () => ({ registry, address, ca } = await fleet.ready))
const { client, record } = fleet

test('a client joins, reports health and leaves on stop, and can start again', async () => {
  const events = []
  registry.on('event', (e) => events.push(e))
  const c = client({ group: 'life', service: 'life-api', instanceId: 'one', version: '1.2.3', tags: ['eu'] })
  assert.equal(c.id, 'life/one')
  const connected = once(c, 'connected')
  c.start()
  const info = await connected
  assert.equal(info.registry, address)
  assert.equal(c.connected, true)
  await until('online record', () => record('life/one')?.status === 'online')
  assert.equal(record('life/one').version, '1.2.3')
  assert.deepEqual(record('life/one').tags, ['eu'])

  c.setHealth('critical', 'database unreachable')
  c.setGauge('queue_depth', 42)
  await until('health and gauge reported', () => {
    const r = record('life/one')
    return r.health === 'critical' && r.metrics.custom?.queue_depth === 42 && r
  })
  assert.equal(record('life/one').health_note, 'database unreachable')

  assert.equal(await c.stop(), true, 'the registry confirms the leave')
  assert.equal(c.running, false)
  await until('left', () => record('life/one')?.status === 'left')

  c.start()
  await until('online again', () => record('life/one')?.status === 'online')
  // Health set before the restart carries over.
  assert.equal(record('life/one').health, 'critical')
  await c.stop()
  const kinds = events.filter((e) => e.id === 'life/one').map((e) => e.kind)
  assert.deepEqual(kinds.slice(0, 2), ['joined', 'health-changed'])
  assert.ok(kinds.includes('left') && kinds.includes('online'), `events: ${kinds}`)
})

test('every report carries the Node.js runtime figures', async () => {
  const c = client({ group: 'runtime', instanceId: 'r1' }).start()
  const r = await until('runtime metrics', () => {
    const rt = record('runtime/r1')?.metrics.runtime
    return rt && 'event_loop_utilization' in rt && 'event_loop_delay_ms' in rt && rt
  })
  for (const k of ['rss_bytes', 'heap_total_bytes', 'heap_used_bytes', 'external_bytes', 'array_buffers_bytes']) {
    assert.ok(r[k] > 0, `${k} = ${r[k]}`)
  }
  assert.ok(r.heap_used_bytes <= r.heap_total_bytes)
  assert.ok(r.event_loop_utilization >= 0 && r.event_loop_utilization <= 1)
  assert.ok(r.event_loop_delay_ms >= 0 && r.event_loop_delay_ms <= r.event_loop_delay_max_ms)
  await c.stop()
})

test('lookup finds a peer group, and healthyOnly leaves out unhealthy instances', async () => {
  const a = client({ group: 'peers', instanceId: 'a', endpoints: [{ name: 'http', host: '127.0.0.1', port: 8080 }] })
  const b = client({ group: 'peers', instanceId: 'b' })
  const me = client({ group: 'caller', instanceId: 'me' })
  a.start()
  b.start()
  me.start()
  b.setHealth('warning')
  await until('both peers known', () => registry.instances({ group: 'peers', status: 'online' }).length === 2)
  await until('b warning', () => record('peers/b')?.health === 'warning')
  const all = await me.lookup('peers')
  assert.deepEqual(all.map((i) => i.instance_id).sort(), ['a', 'b'])
  assert.equal(all.stale, false)
  assert.deepEqual(all.find((i) => i.instance_id === 'a').endpoints, [
    { name: 'http', host: '127.0.0.1', port: 8080, protocol: 'tcp' },
  ])
  const healthy = await until('cache sees b warning', async () => {
    const h = await me.lookup('peers', { healthyOnly: true })
    return h.length === 1 && h
  })
  assert.equal(healthy[0].instance_id, 'a')
  await Promise.all([a.stop(), b.stop(), me.stop()])
  await assert.rejects(me.lookup('peers'), /not running/)
})

test('watch delivers transitions until unsubscribed, and survives a restart', async () => {
  const observer = client({ group: 'watcher', instanceId: 'w' })
  const seen = []
  const unsubscribe = observer.watch({ group: 'watched' }, (e) => seen.push(`${e.kind}:${e.id}`))
  // A lookup is answered after every request sent before it, the watch included: once it
  // resolves, the registry has the watch.
  const established = async (c) => {
    await once(c, 'connected')
    await c.lookup('watched')
  }
  observer.start()
  await established(observer)
  const target = client({ group: 'watched', instanceId: 't' }).start()
  await until('joined seen', () => seen.includes('joined:watched/t'))
  target.setHealth('warning')
  await until('health change seen', () => seen.includes('health-changed:watched/t'))

  await observer.stop()
  observer.start()
  await established(observer)
  await target.stop()
  await until('left seen after the observer restarted', () => seen.includes('left:watched/t'))

  unsubscribe()
  const count = seen.length
  target.start()
  await until('target online', () => record('watched/t')?.status === 'online')
  // A second client watching the same group sees the transition, the unsubscribed one not.
  const control = []
  const other = client({ group: 'watcher', instanceId: 'w2' })
  other.watch({ group: 'watched', status: 'left' }, (e) => control.push(e.kind))
  other.start()
  await established(other)
  await target.stop()
  await until('control watcher sees left', () => control.includes('left'))
  assert.equal(seen.length, count, `no events after unsubscribe: ${seen.slice(count)}`)
  await Promise.all([observer.stop(), other.stop()])
})

test('commands reach the handler and its value, promise or error goes back', async () => {
  const c = client({ group: 'cmd', instanceId: 'c1' })
  c.on('command', (cmd) => {
    if (cmd.name === 'echo') return { echoed: cmd.payload }
    if (cmd.name === 'slow') return new Promise((resolve) => setTimeout(() => resolve(cmd.payload.n * 2), 100))
    if (cmd.name === 'fail') throw new Error('cannot do that')
    return undefined
  })
  const shutdown = once(c, 'shutdown')
  c.start()
  await until('online', () => record('cmd/c1')?.status === 'online')

  const echo = await registry.sendCommand('cmd/c1', 'echo', { x: [1, 2] })
  assert.equal(echo.ok, true)
  assert.deepEqual(echo.result, { echoed: { x: [1, 2] } })
  const slow = await registry.sendCommand('cmd/c1', 'slow', { n: 21 })
  assert.deepEqual([slow.ok, slow.result], [true, 42])
  const fail = await registry.sendCommand('cmd/c1', 'fail')
  assert.deepEqual([fail.ok, fail.error], [false, 'cannot do that'])

  const stop = await registry.sendCommand('cmd/c1', 'shutdown', null, { reason: 'deploy' })
  assert.equal(stop.ok, true)
  const cmd = await shutdown
  assert.equal(cmd.reason, 'deploy')
  await c.stop()
  await assert.rejects(registry.sendCommand('cmd/c1', 'echo'), /not online/)
})

test('a command nobody handles is answered with an error', async () => {
  const c = client({ group: 'cmd', instanceId: 'c2' }).start()
  await until('online', () => record('cmd/c2')?.status === 'online')
  const r = await registry.sendCommand('cmd/c2', 'reindex')
  assert.deepEqual([r.ok, r.error], [false, 'no handler for command "reindex"'])
  await c.stop()
})

test('bad options throw a TypeError naming the option', () => {
  const cases = [
    [{ group: 'g', interval: 'fast' }, 'interval'],
    [{ group: 'g', interval: 10 }, 'interval'],
    [{ group: 'a/b' }, 'group'],
    [{ group: 'g', instanceId: '' }, 'instanceId'],
    [{ group: 'g', registry: 'no-port' }, 'registry'],
    [{ group: 'g', registry: 42 }, 'registry'],
    [{ group: 'g', ca: '/does/not/exist.pem' }, 'ca'],
    [{ group: 'g', endpoints: [{ name: 'http', host: 'h', port: 70000 }] }, 'endpoints[0].port'],
    [{ group: 'g', tags: 'eu' }, 'tags'],
    [{ group: 'g', insecurePlaintext: 'yes' }, 'insecurePlaintext'],
    [{ group: 'g', api: { kind: 'soap', url: 'x' } }, 'api.kind'],
    [{ group: 'g', registr: 'x:1' }, 'registr'],
  ]
  for (const [options, option] of cases) {
    assert.throws(
      () => new Client({ ca, ...options }),
      (e) => e instanceof TypeError && e.option === option && e.message.includes(option),
      `option ${option}`,
    )
  }
  assert.throws(() => new Registry({ listen: 'nowhere' }), (e) => e instanceof TypeError && e.option === 'listen')
  assert.throws(() => new Registry({ tlsCert: '/x.pem' }), (e) => e instanceof TypeError && e.option === 'tlsKey')
  const c = client({ group: 'g' })
  assert.throws(() => c.setHealth('fine'), (e) => e instanceof TypeError && e.option === 'status')
  assert.throws(() => c.setGauge('g', Number.NaN), TypeError)
})

test('after stop() nothing keeps the process alive', async () => {
  const script = `
    const { Client } = require(${JSON.stringify(path.resolve(__dirname, '..'))})
    const c = new Client({ registry: process.env.REG, ca: process.env.CA, group: 'exit', instanceId: 'x' })
    c.on('connected', async () => { await c.lookup('exit'); await c.stop(); console.log('stopped') })
    c.start()
    // Hold the loop open until connected; after that only the client could keep it alive.
    const hold = setInterval(() => {}, 1000)
    c.once('connected', () => clearInterval(hold))
  `
  const child = spawn(process.execPath, ['-e', script], { env: { ...process.env, REG: address, CA: ca }, stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  const code = await new Promise((resolve) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL')
      resolve('killed: still alive 20 s after starting')
    }, 20000)
    child.on('exit', (c) => {
      clearTimeout(t)
      resolve(c)
    })
  })
  assert.equal(code, 0)
  assert.equal(out.trim(), 'stopped')
})
