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

// Starts `sfc registry`; resolves to { address, dataDir, ca, stop() }.
function startRegistry(extraArgs = []) {
  const dataDir = tempDir('sfc-node-registry-')
  const child = spawn(sfcPath(), ['registry', '--listen', '127.0.0.1:0', '--data-dir', dataDir, ...extraArgs], {
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
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = /^sfc registry listening on (\S+) \((tls|plaintext)\)$/.exec(line)
      if (!m) return
      clearTimeout(timer)
      resolve({
        address: m[1],
        dataDir,
        ca: path.join(dataDir, 'tls', 'ca.pem'),
        stop: () =>
          new Promise((done) => {
            if (child.exitCode !== null) return done()
            child.removeAllListeners('exit')
            child.once('exit', () => done())
            child.kill('SIGTERM')
          }),
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

module.exports = { startRegistry, status, tempDir, sfcPath }
