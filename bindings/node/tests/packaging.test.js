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

// What the main package carries is package.json's `files` (scripts/pack.js packs exactly those):
// every entry point (`main`, `types`, each `exports` target, the ES module entry included) and
// every file they load must be in it.
test('every entry point and every file it loads is in the package files', () => {
  const meta = JSON.parse(fs.readFileSync(path.join(pkg, 'package.json'), 'utf8'))
  const covered = (file) =>
    meta.files.some((f) =>
      f.endsWith('/') ? file.startsWith(f) : f.startsWith('*.') ? !file.includes('/') && file.endsWith(f.slice(1)) : file === f,
    )
  const targets = new Set([meta.main, meta.types])
  const walk = (v) => (typeof v === 'string' ? targets.add(v.replace(/^\.\//, '')) : Object.values(v).forEach(walk))
  walk(meta.exports)
  assert.ok(targets.has('index.mjs') && targets.has('index.d.mts'), `the ES module entry is exported: ${[...targets]}`)
  // Follow relative requires and imports (JavaScript and declarations) from each entry point.
  const queue = [...targets].filter((t) => t !== 'package.json')
  const seen = new Set()
  while (queue.length > 0) {
    const file = queue.pop()
    if (seen.has(file)) continue
    seen.add(file)
    assert.ok(fs.existsSync(path.join(pkg, file)), `${file} does not exist`)
    assert.ok(covered(file), `${file} is not in package.json "files"`)
    const text = fs.readFileSync(path.join(pkg, file), 'utf8')
    for (const m of text.matchAll(/(?:require\(|from |import\()\s*'(\.{1,2}\/[^']+)'/g)) {
      let dep = path.relative(pkg, path.resolve(path.dirname(path.join(pkg, file)), m[1]))
      if (dep === 'package.json' || dep.startsWith('..')) continue
      if (file.endsWith('.d.ts') || file.endsWith('.d.mts')) dep = dep.replace(/\.js$/, '.d.ts').replace(/\.mjs$/, '.d.mts')
      if (!path.extname(dep)) dep += '.js'
      queue.push(dep)
    }
  }
  for (const f of ['index.mjs', 'index.d.mts', 'lib/errors.js', 'lib/watch.js']) assert.ok(seen.has(f), `${f} was not reached`)
})
