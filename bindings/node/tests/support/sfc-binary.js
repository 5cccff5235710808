// The real `sfc` binary: starts `sfc registry` on 127.0.0.1:0 with a fresh data directory and
// reads its address from the one line it prints once bound; runs `sfc status --json`.
'use strict'

const { spawn, execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')

const repoRoot = path.resolve(__dirname, '..', '..', '..', '..')

function sfcPath() {
  if (process.env.SFC_BIN) return process.env.SFC_BIN
  const meta = JSON.parse(execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: repoRoot }))
  const bin = path.join(meta.target_directory, 'debug', process.platform === 'win32' ? 'sfc.exe' : 'sfc')
  if (!fs.existsSync(bin)) execFileSync('cargo', ['build', '-p', 'sfc', '--bin', 'sfc'], { cwd: repoRoot, stdio: 'inherit' })
  return bin
}

// Temporary directories, removed when the test process exits.
const made = []
process.on('exit', () => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true })
})

function tempDir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  made.push(d)
  return d
}

// Starts `sfc registry`; resolves to { address, dataDir, ca, pid, stop(), kill() }. With
// `{ adminToken }`, the HTTP API runs too (on a port the OS picks) and `http` is its URL.
function startRegistry(extraArgs = [], { adminToken } = {}) {
  const dataDir = tempDir('sfc-node-registry-')
  const httpArgs = adminToken ? ['--http', '127.0.0.1:0', '--admin-token', adminToken] : ['--http', 'off']
  const child = spawn(sfcPath(), ['registry', '--listen', '127.0.0.1:0', '--data-dir', dataDir, ...httpArgs, ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
  })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill()
      reject(new Error(`sfc registry did not report its address within 30 s; stderr:\n${stderr}`))
    }, 30000)
    child.on('exit', (code) => reject(new Error(`sfc registry exited with ${code}; stderr:\n${stderr}`)))
    let address = null
    let http = null
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = /^sfc registry listening on (\S+) \((tls|plaintext)\)$/.exec(line)
      const h = /^sfc http listening on (\S+) \((tls|plaintext)\)$/.exec(line)
      if (m) address = m[1]
      if (h) http = `${h[2] === 'tls' ? 'https' : 'http'}://${h[1]}`
      if (!address || (adminToken && !http)) return
      clearTimeout(timer)
      const end = (signal) =>
        new Promise((done) => {
          if (child.exitCode !== null || child.signalCode !== null) return done()
          child.removeAllListeners('exit')
          child.once('exit', () => done())
          child.kill(signal)
        })
      resolve({
        address,
        http,
        adminToken,
        dataDir,
        pid: child.pid,
        ca: path.join(dataDir, 'tls', 'ca.pem'),
        stop: () => end('SIGTERM'),
        // Gone at once, as in a crash: no TLS close_notify, no goodbye.
        kill: () => end('SIGKILL'),
      })
    })
  })
}

// `sfc status --json` against a registry: the records as a parsed array.
function status(registry) {
  const out = execFileSync(sfcPath(), ['status', '--json', '--registry', registry.address, '--ca', registry.ca], {
    encoding: 'utf8',
    timeout: 30000,
  })
  return JSON.parse(out)
}

// Runs `sfc <args>` (an operator command against the registry's HTTP API); resolves to
// { code, stdout, stderr } without throwing.
function sfc(registry, args) {
  return new Promise((resolve) => {
    const child = spawn(sfcPath(), [...args, '--http', registry.http, '--ca', registry.ca], {
      env: { ...process.env, SFC_ADMIN_TOKEN: registry.adminToken ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('exit', (code) => resolve({ code, stdout, stderr }))
  })
}

module.exports = { startRegistry, status, sfc, tempDir, sfcPath }
