// The service example of README.md ("Usage"), run as a newcomer would copy it, against the real
// `sfc registry` binary: it joins and is healthy, answers `sfc command`, and on `sfc shutdown`
// answers, leaves (the record ends `left`) and exits by itself.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { spawn } = require('node:child_process')
const { until } = require('./support/until.js')
const { startRegistry, status, sfc, tempDir } = require('./support/sfc-binary.js')

const pkg = path.resolve(__dirname, '..')

// The first ```js block of the README's Usage section.
function readmeExample() {
  const readme = fs.readFileSync(path.join(pkg, 'README.md'), 'utf8')
  const usage = readme.slice(readme.indexOf('\n## Usage\n'))
  const m = /```js\n([\s\S]*?)```/.exec(usage)
  assert.ok(m, 'README.md has a js block under ## Usage')
  return m[1]
}

// Replaces `from` (which must be there) with `to`.
function swap(text, from, to) {
  assert.ok(text.includes(from), `the README example no longer contains ${from}`)
  return text.replace(from, to)
}

test('the README service example joins, answers commands, and leaves on sfc shutdown', async (t) => {
  const registry = await startRegistry([], { adminToken: 'readme-token' })
  t.after(() => registry.stop())
  let code = readmeExample()
  // Only where it runs changes: this test's registry and CA, and a port the OS picks.
  code = swap(code, "'127.0.0.1:7480'", JSON.stringify(registry.address))
  code = swap(code, "'./sfc-data/tls/ca.pem'", JSON.stringify(registry.ca))
  code = swap(code, 'server.listen(8080,', 'server.listen(0,')
  const dir = tempDir('sfc-node-readme-')
  fs.mkdirSync(path.join(dir, 'node_modules'))
  fs.symlinkSync(pkg, path.join(dir, 'node_modules', 'service-fleet-control'), 'dir')
  fs.writeFileSync(path.join(dir, 'service.js'), code)
  const child = spawn(process.execPath, ['service.js'], { cwd: dir, stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'))
  const lines = []
  readline.createInterface({ input: child.stdout }).on('line', (l) => lines.push(l))
  // 'close': exited, and its output all read.
  const exited = new Promise((resolve) => child.on('close', (c, s) => resolve(s ?? c)))

  const rec = await until('the example online and passing', () =>
    status(registry).find((r) => r.group === 'billing' && r.status === 'online' && r.health === 'passing'),
  )
  await until('the connected line', () => lines.includes(`in the fleet via ${registry.address}`))
  assert.equal(rec.service, 'billing-api')

  const stats = await sfc(registry, ['command', rec.id, 'stats'])
  assert.equal(stats.code, 0, stats.stderr)
  assert.match(stats.stdout, /^stats -> \S+: ok \{"requests":0\}/)

  const shutdown = await sfc(registry, ['shutdown', rec.id, '--reason', 'readme'])
  assert.equal(shutdown.code, 0, `sfc shutdown: ${shutdown.stderr}`)
  const exit = await Promise.race([exited, until('exit', () => false, { timeout: 15000 }).catch(() => 'still running 15 s after shutdown')])
  assert.equal(exit, 0)
  assert.ok(lines.includes('left the fleet'), lines.join('\n'))
  assert.equal(status(registry).find((r) => r.id === rec.id).status, 'left')
})
