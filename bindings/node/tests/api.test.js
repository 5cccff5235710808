// The API a Node.js developer expects: `await client.ready()`, AbortSignals, `for await` over a
// watch, `Symbol.asyncDispose`, `ref()`/`unref()` (a script that only watches stays alive),
// and an ES module entry. Against a real registry embedded in this process.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { spawn } = require('node:child_process')
const { Client, Registry } = require('..')
const { until } = require('./support/until.js')
const { tempDir } = require('./support/sfc-binary.js')
const { embeddedRegistry } = require('./support/embedded-registry.js')

const pkg = path.resolve(__dirname, '..')
const fleet = embeddedRegistry('sfc-node-api-')
let registry
let address
let ca
test.before(async () => ({ registry, address, ca } = await fleet.ready))
const { client, record } = fleet

test('ready() resolves once connected, at once when connected, and rejects on stop, abort or not running', async () => {
  const c = client({ group: 'ready', instanceId: 'r1' })
  await assert.rejects(c.ready(), (e) => e.code === 'ERR_SFC_STOPPED')
  c.start()
  const info = await c.ready({ timeout: 15000 })
  assert.equal(info.registry, address)
  assert.equal(typeof info.session, 'number')
  assert.deepEqual(await c.ready(), info, 'already connected: the same connection at once')
  assert.equal(c.connected, true)

  const ac = new AbortController()
  ac.abort()
  await assert.rejects(c.ready({ signal: ac.signal }), { name: 'AbortError' })
  await c.stop()

  // Waiting while no registry answers: an abort, and a stop, end the wait.
  const lonely = new Client({ registry: '127.0.0.1:1', ca, group: 'ready', instanceId: 'r2' })
  lonely.on('error', () => {})
  lonely.start()
  const ac2 = new AbortController()
  const aborted = assert.rejects(lonely.ready({ signal: ac2.signal }), { name: 'AbortError' })
  ac2.abort()
  await aborted
  const waiting = assert.rejects(lonely.ready(), (e) => e.code === 'ERR_SFC_STOPPED')
  await lonely.stop()
  await waiting
  await assert.rejects(c.ready({ signal: 'soon' }), (e) => e instanceof TypeError && e.option === 'signal')
})

test('lookup takes an AbortSignal', async () => {
  const c = client({ group: 'abort', instanceId: 'a1' }).start()
  await c.ready()
  const ac = new AbortController()
  ac.abort(new Error('gave up'))
  await assert.rejects(c.lookup('abort', { signal: ac.signal }), /gave up/)
  assert.deepEqual((await c.lookup('abort', { signal: new AbortController().signal })).map((i) => i.id), ['abort/a1'])
  await assert.rejects(c.lookup('abort', { signal: {} }), (e) => e.option === 'signal')
  await c.stop()
})

test('watch without a callback is an async iterator; break, close() and an AbortSignal end it', async () => {
  const observer = client({ group: 'observer', instanceId: 'o' }).start()
  await observer.ready()
  const events = observer.watch({ group: 'iterated' })
  // A lookup is answered after every request sent before it, the watch included.
  await observer.lookup('iterated')
  const target = client({ group: 'iterated', instanceId: 't' }).start()
  const seen = []
  for await (const e of events) {
    seen.push(`${e.kind}:${e.id}`)
    if (e.kind === 'joined') target.setHealth('warning', 'iterated')
    if (e.kind === 'health-changed') break
  }
  assert.deepEqual(seen, ['joined:iterated/t', 'health-changed:iterated/t'])
  assert.deepEqual(await events.next(), { value: undefined, done: true }, 'break ended the watch')

  const ac = new AbortController()
  const aborted = observer.watch({ group: 'iterated', signal: ac.signal })
  const pending = aborted.next()
  ac.abort()
  await assert.rejects(pending, { name: 'AbortError' })

  // The callback form stops on abort too; its unsubscribe function is disposable.
  const ac2 = new AbortController()
  const calls = []
  const unsubscribe = observer.watch({ group: 'iterated', signal: ac2.signal }, (e) => calls.push(e.kind))
  assert.equal(typeof unsubscribe[Symbol.dispose], 'function')
  ac2.abort()
  unsubscribe()
  await target.stop()
  await observer.stop()
})

test('Symbol.asyncDispose stops the client with a leave', async () => {
  const c = client({ group: 'dispose', instanceId: 'd' }).start()
  await c.ready()
  await until('online', () => record('dispose/d')?.status === 'online')
  await c[Symbol.asyncDispose]()
  assert.equal(c.running, false)
  assert.equal(record('dispose/d').status, 'left')
})

// Runs `script` in a fresh Node.js process; it prints `watching` once its watch is in place.
// Resolves to { code, out } when it exits (or kills it 20 s after `watching`: still alive).
function runScript(script, onWatching, { esm = false } = {}) {
  const dir = tempDir('sfc-node-script-')
  fs.mkdirSync(path.join(dir, 'node_modules'))
  fs.symlinkSync(pkg, path.join(dir, 'node_modules', 'service-fleet-control'), 'dir')
  const file = path.join(dir, esm ? 'main.mjs' : 'main.js')
  fs.writeFileSync(file, script)
  const child = spawn(process.execPath, [file], {
    cwd: dir,
    env: { ...process.env, REG: address, CA: ca },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  return new Promise((resolve) => {
    let timer = null
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      out += `${line}\n`
      if (line === 'watching') {
        timer = setTimeout(() => child.kill('SIGKILL'), 20000)
        onWatching?.()
      }
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code: signal ? `killed (${signal}): still alive 20 s after its watch was in place` : code, out })
    })
  })
}

// With `unref`, a timer holds the process until the watch is in place; after that only the
// client could keep it alive.
const watcherScript = (unref) => `
const { Client } = require('service-fleet-control')
const c = new Client({ registry: process.env.REG, ca: process.env.CA, group: 'scripts', instanceId: 'watcher-' + process.pid, interval: 200 })
c.start()
${unref ? 'c.unref(); const hold = setInterval(() => {}, 1000)' : 'const hold = null'}
const stop = c.watch({ group: 'watched-by-script' }, async (e) => {
  console.log(e.kind + ' ' + e.id)
  if (e.kind === 'joined') { stop(); await c.stop() }
})
c.ready().then(() => c.lookup('watched-by-script')).then(() => { console.log('watching'); clearInterval(hold) })
`

test('a script that only watches stays alive while its watch is open, and exits after', async () => {
  let target
  const { code, out } = await runScript(watcherScript(false), () => {
    target = client({ group: 'watched-by-script', instanceId: 'w' }).start()
  })
  await target?.stop()
  assert.equal(code, 0)
  assert.match(out, /^joined watched-by-script\/w$/m, out)
})

test('unref() lets a script with an open watch exit', async () => {
  const { code, out } = await runScript(watcherScript(true))
  assert.equal(code, 0)
  assert.equal(out, 'watching\n')
})

test('the ES module entry: import resolves to index.mjs, with the same classes as require', async () => {
  const script = `
import { Client, Registry, version } from 'service-fleet-control'
import sfc from 'service-fleet-control'
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
console.log(JSON.stringify({
  entry: import.meta.resolve('service-fleet-control'),
  same: Client === require('service-fleet-control').Client && sfc.Registry === Registry,
  version,
}))
const c = new Client({ registry: process.env.REG, ca: process.env.CA, group: 'esm', instanceId: 'm' })
c.start()
await c.ready()
console.log('left', await c.stop())
`
  const { code, out } = await runScript(script, null, { esm: true })
  assert.equal(code, 0, out)
  const [first, second] = out.trim().split('\n')
  const r = JSON.parse(first)
  assert.match(r.entry, /\/index\.mjs$/)
  assert.equal(r.same, true)
  assert.equal(r.version, require('..').version)
  assert.equal(second, 'left true')
})
