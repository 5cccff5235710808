// How the package finds its addons once published (scripts/pack.js): next to the loaders in a
// checkout, else in the platform package `service-fleet-control-<platform>`, whose `main` is
// the client addon; the registry addon is a file of that same package. With no addon at all,
// `require` says which platform this is and how to build from source. tests/dist/node.sh
// checks the same from the packed tarballs.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const pkg = path.resolve(__dirname, '..')

test('with no addon to load, require names the platform and says how to build from source', () => {
  // NAPI_RS_NATIVE_LIBRARY_PATH makes the napi-rs loader try that file only: as on a platform
  // with no prebuilt package.
  const script = `
try { require('.') } catch (e) {
  console.log(JSON.stringify({ code: e.code, platform: e.platform, message: e.message, cause: String(e.cause && e.cause.message) }))
  process.exit(0)
}
console.log('{}')`
  const r = spawnSync(process.execPath, ['-e', script], {
    cwd: pkg,
    env: { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: path.join(pkg, 'no-such-addon.node') },
    encoding: 'utf8',
  })
  assert.equal(r.status, 0, r.stderr)
  const e = JSON.parse(r.stdout.trim())
  assert.equal(e.code, 'ERR_SFC_NATIVE_BINDING')
  assert.match(e.platform, new RegExp(`^${process.platform}-${process.arch}`))
  assert.ok(e.message.includes(`for this platform, ${e.platform}`), e.message)
  assert.match(e.message, /build from source/)
  assert.match(e.message, /cd bindings\/node && npm ci && npm run build/)
  assert.match(e.cause, /Cannot find native binding/)
})

test('the registry loader takes its addon from the platform package by file, the client loader by main', () => {
  const registryLoader = fs.readFileSync(path.join(pkg, 'native-registry.js'), 'utf8')
  const clientLoader = fs.readFileSync(path.join(pkg, 'native.js'), 'utf8')
  assert.ok(registryLoader.includes("const binding = require('service-fleet-control-linux-x64-gnu/sfc-registry.linux-x64-gnu.node')"))
  assert.ok(!/const binding = require\('service-fleet-control-[a-z0-9-]+'\)/.test(registryLoader))
  assert.ok(clientLoader.includes("const binding = require('service-fleet-control-linux-x64-gnu')"))
})
