// Processes for the migration tests: the legacy-style registry (legacy-registry.js), and
// `sfc registry` on a given port with given certificates (the one that replaces it).
'use strict'

const { spawn, execFileSync } = require('node:child_process')
const path = require('node:path')
const readline = require('node:readline')
const { sfcPath, tempDir } = require('./sfc-binary.js')

// `sfc certs init`: a development CA and a server certificate for localhost and 127.0.0.1.
function certs() {
  const dir = tempDir('sfc-node-legacy-certs-')
  execFileSync(sfcPath(), ['certs', 'init', '--dir', dir, '--hosts', 'localhost,127.0.0.1'], { stdio: 'ignore' })
  return { dir, ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server-key.pem') }
}

// A child process whose stdout lines are kept and can be waited for.
function watchLines(child, name) {
  const lines = []
  const waiters = new Set()
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    lines.push(line)
    for (const w of waiters) w.check()
  })
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  exited.then(() => {
    for (const w of waiters) w.check()
  })
  return {
    child,
    lines,
    get stderr() {
      return stderr
    },
    exited,
    // Resolves to what `pick(lines)` returns once it is truthy; rejects if the process exits
    // first or after `timeout` ms (a bound on the test, never what it asserts).
    waitFor(what, pick, timeout = 20000) {
      return new Promise((resolve, reject) => {
        const w = {
          check: () => {
            const v = pick(lines)
            if (v) {
              done()
              resolve(v)
            } else if (child.exitCode !== null || child.signalCode !== null) {
              done()
              reject(new Error(`${name} exited (${child.exitCode ?? child.signalCode}) before ${what}; stderr:\n${stderr}`))
            }
          },
        }
        const timer = setTimeout(() => {
          done()
          reject(new Error(`timed out waiting for ${what}; ${name} printed:\n${lines.join('\n')}\nstderr:\n${stderr}`))
        }, timeout)
        const done = () => {
          clearTimeout(timer)
          waiters.delete(w)
        }
        waiters.add(w)
        w.check()
      })
    },
    stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exited
      child.kill('SIGTERM')
      return exited
    },
  }
}

// The legacy-style registry; resolves to its handle once it listens, with `port`, `reports()`
// (the recorded documents) and `refusals()` (connections that ended before their TLS handshake).
async function startLegacyRegistry(tls, { port = 0, maxVersion } = {}) {
  const args = [path.join(__dirname, 'legacy-registry.js'), '--cert', tls.cert, '--key', tls.key, '--port', String(port)]
  if (maxVersion) args.push('--max-version', maxVersion)
  const child = spawn(
    process.execPath,
    args,
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  const h = watchLines(child, 'the legacy registry')
  const line = await h.waitFor('the legacy registry to listen', (ls) => ls.find((l) => l.startsWith('listening ')))
  h.port = Number(line.split(' ')[1])
  h.reports = () => h.lines.filter((l) => l.startsWith('report ')).map((l) => JSON.parse(l.slice('report '.length)))
  h.refusals = () => h.lines.filter((l) => l.startsWith('refused '))
  return h
}

// `sfc registry` on 127.0.0.1:`port` with the given certificates; resolves once it listens.
async function startSfcRegistry(tls, port) {
  const dataDir = tempDir('sfc-node-legacy-registry-')
  const child = spawn(
    sfcPath(),
    ['registry', '--listen', `127.0.0.1:${port}`, '--http', 'off', '--data-dir', dataDir, '--tls-cert', tls.cert, '--tls-key', tls.key],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } },
  )
  const h = watchLines(child, 'sfc registry')
  await h.waitFor('sfc registry to listen', (ls) => ls.find((l) => l.startsWith('sfc registry listening on ')))
  h.address = `127.0.0.1:${port}`
  h.ca = tls.ca
  return h
}

module.exports = { certs, startLegacyRegistry, startSfcRegistry }
