// The package ships two addons: a client that holds no registry code, and the embedded registry,
// loaded only by the first `Registry`. Checked in a fresh Node.js process against the real
// `sfc registry` binary, by reading which shared objects the process has mapped.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const { execFileSync } = require('node:child_process')
const path = require('node:path')
const { startRegistry } = require('./support/sfc-binary.js')

const pkg = path.resolve(__dirname, '..')

// Runs `body` in a new Node.js process; it prints one JSON line, returned parsed.
function inFreshProcess(body, env) {
  const script = `
const fs = require('node:fs')
const mapped = () => [...new Set(fs.readFileSync('/proc/self/maps', 'utf8').split('\\n')
  .map((l) => l.split(/\\s+/)[5]).filter((f) => f && f.endsWith('.node')).map((f) => require('node:path').basename(f)))].sort()
;// The client holds no reference on the event loop: a timer keeps the process up meanwhile.
const keep = setInterval(() => {}, 1000)
;(async () => { ${body} })().catch((e) => { console.error(e); process.exit(1) }).finally(() => clearInterval(keep))`
  const out = execFileSync(process.execPath, ['-e', script], { cwd: pkg, env: { ...process.env, ...env }, encoding: 'utf8' })
  return JSON.parse(out.trim().split('\n').pop())
}

test('a service that runs a Client maps the client addon only', { skip: process.platform !== 'linux' && 'reads /proc/self/maps' }, async (t) => {
  const registry = await startRegistry()
  t.after(() => registry.stop())
  const seen = inFreshProcess(
    `
const { Client } = require('.')
const c = new Client({ registry: process.env.REG, ca: process.env.CA, service: 's', group: 'addons', instanceId: 'a1', interval: 200 })
c.start()
await new Promise((r) => c.once('connected', r))
const withClient = mapped()
await c.stop()
const { Registry } = require('.')
const r = new Registry({ listen: '127.0.0.1:0', insecurePlaintext: true })
console.log(JSON.stringify({ withClient, afterRegistry: mapped() }))`,
    { REG: registry.address, CA: registry.ca },
  )
  assert.deepEqual(seen.withClient.filter((f) => f.startsWith('sfc')), ['sfc.linux-x64-gnu.node'])
  assert.deepEqual(seen.afterRegistry.filter((f) => f.startsWith('sfc')), ['sfc-registry.linux-x64-gnu.node', 'sfc.linux-x64-gnu.node'])
})
