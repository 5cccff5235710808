#!/usr/bin/env node
// Footprint of the client in a Node.js process (a benchmark, not a test): a process whose
// client reports once a second against a bare Node.js process, both idle otherwise and run
// side by side for the same window, against a real `sfc registry` in its own process.
// Prints CPU milliseconds per second (utime+stime from /proc) and the resident memory
// difference. Linux only.
//
//   node bench/footprint.js [--seconds 60] [--sfc ../../target/release/sfc]
//                           [--options '{"runtimeMetrics":false}'] [--load-only]
// --options adds client options (to see what each part costs); --load-only loads the package
// without starting a client.
'use strict'

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')
const { setTimeout: sleep } = require('node:timers/promises')

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1] : dflt
}
const seconds = Number(arg('seconds', 60))
const repoRoot = path.resolve(__dirname, '..', '..', '..')
const sfc = arg('sfc', path.join(repoRoot, 'target', 'release', 'sfc'))
const warmup = 5
const ticks = 100 // USER_HZ: clock ticks per second on Linux

function cpuMs(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticks
}

function rssBytes(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  return Number(m[1]) * 1024
}

async function main() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sfc-footprint-'))
  const registry = spawn(sfc, ['registry', '--listen', '127.0.0.1:0', '--data-dir', dataDir], { stdio: ['ignore', 'pipe', 'ignore'] })
  const address = await new Promise((resolve) =>
    readline.createInterface({ input: registry.stdout }).on('line', (l) => {
      const m = /^sfc registry listening on (\S+)/.exec(l)
      if (m) resolve(m[1])
    }),
  )
  const pkg = path.resolve(__dirname, '..')
  const bare = `setInterval(() => {}, 1000)`
  const options = {
    registry: address,
    ca: path.join(dataDir, 'tls', 'ca.pem'),
    group: 'footprint',
    instanceId: 'node',
    interval: 1000,
    ...JSON.parse(arg('options', '{}')),
  }
  const withClient = `
    const { Client } = require(${JSON.stringify(pkg)})
    ${process.argv.includes('--load-only') ? '' : `new Client(${JSON.stringify(options)}).start()`}
    setInterval(() => {}, 1000)`
  const procs = {
    bare: spawn(process.execPath, ['-e', bare], { stdio: 'ignore' }),
    client: spawn(process.execPath, ['-e', withClient], { stdio: 'inherit' }),
  }
  await sleep(warmup * 1000)
  const start = { t: performance.now() }
  for (const [k, p] of Object.entries(procs)) start[k] = cpuMs(p.pid)
  const rss = { bare: [], client: [] }
  for (let i = 0; i < seconds; i++) {
    await sleep(1000)
    for (const [k, p] of Object.entries(procs)) rss[k].push(rssBytes(p.pid))
  }
  const elapsed = (performance.now() - start.t) / 1000
  const result = {}
  for (const [k, p] of Object.entries(procs)) {
    const mean = rss[k].reduce((a, b) => a + b, 0) / rss[k].length
    result[k] = { cpu_ms_per_s: (cpuMs(p.pid) - start[k]) / elapsed, rss_mb_mean: mean / 2 ** 20, rss_mb_last: rss[k].at(-1) / 2 ** 20 }
    p.kill()
  }
  registry.kill('SIGTERM')
  const added = {
    cpu_ms_per_s: result.client.cpu_ms_per_s - result.bare.cpu_ms_per_s,
    rss_mb: result.client.rss_mb_mean - result.bare.rss_mb_mean,
  }
  console.log(JSON.stringify({ seconds: Math.round(elapsed), node: process.version, options: arg('options', '{}'), loadOnly: process.argv.includes('--load-only'), ...result, added }, null, 2))
  fs.rmSync(dataDir, { recursive: true, force: true })
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
