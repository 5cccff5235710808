#!/usr/bin/env node
// Footprint of the client in a Node.js process (a benchmark, not a test): Node.js processes
// started side by side and measured over the same window, against a real `sfc registry` in its
// own process (not counted): an idle one (`bare`: a 1 s interval timer and nothing else), one
// with a `Client` with its default options reporting once a second (`client`), and any variants
// asked for. Every process is the same script, so each pays the same for being measured.
//
//   node bench/footprint.js [--seconds 60] [--repeat 2] [--copies 3] [--sfc ../../target/release/sfc]
//                           [--addon ../../target/release/libsfc_node.so]
//                           [--variant 'name={"runtimeMetrics":false}'] ... [--load-only]
//                           [--compat] [--original DIR] [--json]
//
// - CPU: each process's own process.cpuUsage() (getrusage: every thread, microseconds), read at
//   the start and end of the window; ms of CPU per second of wall time. With --copies N, N
//   processes of each kind run together and the row shows their median (the cost of a wake-up
//   on a shared VM varies 2x from process to process; the median steadies the comparison).
// - Memory: VmRSS from /proc, sampled every second by this script (not by the process), mean;
//   and its two parts, RssAnon (heap, stacks) and RssFile (code and other mapped files).
//   `addon rss` is the resident part of the addon's own mappings (code and data, smaps) at the end.
// - Wake-ups: context switches (voluntary + involuntary) per second of each thread, from
//   /proc/<pid>/task/*/status: the main (JavaScript) thread, the client's `sfc-client` thread,
//   and all other threads together.
// - The load average at the start and end of every run: the machine is shared; compare the
//   rows of one run with each other (ratios), not runs with runs.
// --addon: the client addon to load (copied to a scratch directory as a .node file, stripped as
//   the platform package ships it; NAPI_RS_NATIVE_LIBRARY_PATH points the loader at it); default:
//   the addon the package finds (bindings/node/sfc.<platform>.node).
// --variant name=JSON: one more process with a client with these options (several allowed);
// --load-only: one more process that loads the package and starts no client;
// --compat: one more process with the compat `Control` (role tlsService);
// --original DIR: one more process running the original `service_fleet_control` module from
//   DIR (a scratch install outside the repository, see LEGACY.md), with the same config.
// Linux only.
'use strict'

const { spawn, execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')
const { setTimeout: sleep } = require('node:timers/promises')

const argv = process.argv.slice(2)
const arg = (name, dflt) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : dflt
}
const args = (name) => argv.flatMap((a, i) => (a === `--${name}` ? [argv[i + 1]] : []))
const seconds = Number(arg('seconds', 60))
const repeat = Number(arg('repeat', 1))
const copies = Number(arg('copies', 1))
const repoRoot = path.resolve(__dirname, '..', '..', '..')
const sfc = path.resolve(arg('sfc', path.join(repoRoot, 'target', 'release', 'sfc')))
const pkg = path.resolve(__dirname, '..')
const warmup = 5

// The script every measured process runs: a 1 s interval timer (the host's own work), `setup`
// (the part under test), and a reply with its CPU time to every line on stdin.
function script(setup) {
  return `
    ${setup}
    setInterval(() => {}, 1000)
    require('node:readline').createInterface({ input: process.stdin }).on('line', () => {
      const u = process.cpuUsage()
      process.stdout.write(JSON.stringify({ cpu_us: u.user + u.system }) + '\\n')
    })`
}

function loadavg() {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')
}

// VmRSS and its anonymous (heap, stacks) and file-backed (code, mapped files) parts, bytes.
function rssBytes(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)[1]) * 1024
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') }
}

// Context switches by thread: { main, client, other } (and threads by name, for the record).
function switches(pid) {
  const out = { main: 0, client: 0, other: 0 }
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    let status
    try {
      status = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8')
    } catch {
      continue // the thread ended
    }
    const n = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)[1])
    const name = /^Name:\s+(.*)$/m.exec(status)[1]
    const count = n('voluntary_ctxt_switches') + n('nonvoluntary_ctxt_switches')
    const key = tid === String(pid) ? 'main' : name === 'sfc-client' ? 'client' : 'other'
    out[key] += count
  }
  return out
}

// Resident kB of the mappings of `file` in the process (the addon's code and data).
function mappedRss(pid, file) {
  if (!file) return null
  let total = 0
  let inside = false
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inside = line.endsWith(file)
    else if (inside && line.startsWith('Rss:')) total += Number(/(\d+)/.exec(line)[1])
  }
  return total * 1024
}

class Measured {
  constructor(name, setup, env) {
    this.name = name
    this.proc = spawn(process.execPath, ['-e', script(setup)], { stdio: ['pipe', 'pipe', 'inherit'], env })
    this.lines = readline.createInterface({ input: this.proc.stdout })
    this.rss = []
  }

  cpuUs() {
    return new Promise((resolve, reject) => {
      this.lines.once('line', (l) => resolve(JSON.parse(l).cpu_us))
      this.proc.once('exit', (c) => reject(new Error(`${this.name} exited (${c})`)))
      this.proc.stdin.write('\n')
    })
  }
}

async function startRegistry() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sfc-footprint-'))
  const registry = spawn(sfc, ['registry', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--store', 'memory'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  })
  const address = await new Promise((resolve, reject) => {
    registry.once('exit', (c) => reject(new Error(`${sfc} exited (${c})`)))
    readline.createInterface({ input: registry.stdout }).on('line', (l) => {
      const m = /^sfc registry listening on (\S+)/.exec(l)
      if (m) resolve(m[1])
    })
  })
  return { registry, address, dataDir, ca: path.join(dataDir, 'tls', 'ca.pem') }
}

// The addon to load, stripped as shipped, in a scratch directory (removed at the end).
function prepareAddon() {
  const src = arg('addon')
  if (!src) return { env: process.env, file: null, dir: null }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sfc-footprint-addon-'))
  const file = path.join(dir, 'sfc.linux-x64-gnu.node')
  fs.copyFileSync(path.resolve(src), file)
  try {
    execFileSync('strip', ['--strip-unneeded', file])
  } catch {
    // strip missing: the unstripped addon maps the same code.
  }
  return { env: { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: file }, file, dir }
}

function processes(reg, addon, run, copy) {
  const options = { registry: reg.address, ca: reg.ca, group: 'footprint', interval: 1000 }
  const client = (o) =>
    `const { Client } = require(${JSON.stringify(pkg)}); new Client(${JSON.stringify({ ...options, ...o })}).start()`
  const legacyConfig = (id) => ({
    role: 'tlsService',
    serviceName: 'footprint',
    groupingKey: 'footprint',
    hostName: `${id}-${run}-${copy}`,
    updateIntervalSeconds: 1,
    registryHost: reg.address.split(':')[0],
    registryPort: Number(reg.address.split(':')[1]),
    useSelfSignedCerts: true,
    ca: reg.ca,
  })
  const list = [
    new Measured('bare', '', addon.env),
    new Measured('client', client({ instanceId: `client-${run}-${copy}` }), addon.env),
  ]
  for (const v of args('variant')) {
    const [name, json] = [v.slice(0, v.indexOf('=')), v.slice(v.indexOf('=') + 1)]
    list.push(new Measured(name, client({ instanceId: `${name}-${run}-${copy}`, ...JSON.parse(json) }), addon.env))
  }
  if (argv.includes('--load-only')) list.push(new Measured('load-only', `require(${JSON.stringify(pkg)})`, addon.env))
  if (argv.includes('--compat')) {
    const setup = `const Control = require(${JSON.stringify(path.join(pkg, 'compat.js'))}); new Control(${JSON.stringify(legacyConfig('compat'))}).init()`
    list.push(new Measured('compat', setup, addon.env))
  }
  const original = arg('original')
  if (original) {
    const setup = `const Control = require(${JSON.stringify(path.resolve(original))}); new Control(${JSON.stringify(legacyConfig('original'))}).init()`
    list.push(new Measured('original', setup, process.env))
  }
  return list
}

async function once(reg, addon, run) {
  const procs = []
  for (let copy = 1; copy <= copies; copy++) procs.push(...processes(reg, addon, run, copy))
  const load = { start: loadavg() }
  await sleep(warmup * 1000)
  const t0 = performance.now()
  const start = await Promise.all(procs.map(async (p) => ({ cpu: await p.cpuUs(), sw: switches(p.proc.pid) })))
  for (let i = 0; i < seconds; i++) {
    await sleep(1000)
    for (const p of procs) p.rss.push(rssBytes(p.proc.pid))
  }
  const end = await Promise.all(procs.map(async (p) => ({ cpu: await p.cpuUs(), sw: switches(p.proc.pid) })))
  const elapsed = (performance.now() - t0) / 1000
  load.end = loadavg()
  const rows = procs.map((p, i) => {
    const mean = (k = 'rss') => p.rss.reduce((a, b) => a + b[k], 0) / p.rss.length
    const per = (k) => Math.round(((end[i].sw[k] - start[i].sw[k]) / elapsed) * 10) / 10
    return {
      name: p.name,
      cpu_ms_per_s: (end[i].cpu - start[i].cpu) / 1000 / elapsed,
      rss_mib: mean() / 2 ** 20,
      rss_anon_mib: mean('anon') / 2 ** 20,
      rss_file_mib: mean('file') / 2 ** 20,
      addon_rss_mib: p.name === 'bare' || p.name === 'original' ? null : (mappedRss(p.proc.pid, addon.file) ?? 0) / 2 ** 20,
      wakeups_per_s: { main: per('main'), client: per('client'), other: per('other') },
    }
  })
  for (const p of procs) p.proc.kill()
  // One row per kind of process: the median CPU of its copies, the mean of everything else.
  const median = (v) => [...v].sort((a, b) => a - b)[Math.floor((v.length - 1) / 2)]
  const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length
  const names = [...new Set(rows.map((r) => r.name))]
  const merged = names.map((name) => {
    const rs = rows.filter((r) => r.name === name)
    const w = (k) => Math.round(mean(rs.map((r) => r.wakeups_per_s[k])) * 10) / 10
    return {
      name,
      cpu_ms_per_s: median(rs.map((r) => r.cpu_ms_per_s)),
      cpu_ms_per_s_copies: rs.map((r) => Math.round(r.cpu_ms_per_s * 1000) / 1000),
      rss_mib: mean(rs.map((r) => r.rss_mib)),
      rss_anon_mib: mean(rs.map((r) => r.rss_anon_mib)),
      rss_file_mib: mean(rs.map((r) => r.rss_file_mib)),
      addon_rss_mib: rs[0].addon_rss_mib === null ? null : mean(rs.map((r) => r.addon_rss_mib)),
      wakeups_per_s: { main: w('main'), client: w('client'), other: w('other') },
    }
  })
  rows.length = 0
  rows.push(...merged)
  const bare = rows[0]
  for (const r of rows) {
    r.added_cpu_ms_per_s = r.cpu_ms_per_s - bare.cpu_ms_per_s
    r.added_rss_mib = r.rss_mib - bare.rss_mib
    r.added_anon_mib = r.rss_anon_mib - bare.rss_anon_mib
    r.added_file_mib = r.rss_file_mib - bare.rss_file_mib
  }
  return { run, seconds: Math.round(elapsed), copies, loadavg: load, rows }
}

function print(result) {
  const f = (v, d = 2) => (v === null || v === undefined ? '-' : v.toFixed(d))
  console.log(`run ${result.run}: ${result.seconds} s, ${result.copies} cop${result.copies > 1 ? 'ies' : 'y'} of each (CPU: their median), load average ${result.loadavg.start} (start), ${result.loadavg.end} (end)`)
  console.log('  process       CPU ms/s  added   RSS MiB  added (anon + file)  addon RSS  wake-ups/s main/sfc-client/other')
  for (const r of result.rows) {
    const w = r.wakeups_per_s
    console.log(
      `  ${r.name.padEnd(12)} ${f(r.cpu_ms_per_s, 3).padStart(8)} ${f(r.added_cpu_ms_per_s, 3).padStart(7)} ${f(r.rss_mib).padStart(8)} ${f(r.added_rss_mib).padStart(6)} (${f(r.added_anon_mib)} + ${f(r.added_file_mib)}) ${f(r.addon_rss_mib).padStart(10)}  ${w.main}/${w.client}/${w.other}`,
    )
  }
}

async function main() {
  const reg = await startRegistry()
  const addon = prepareAddon()
  const results = []
  try {
    console.log(`node ${process.version}, ${os.cpus().length} cpus, addon ${arg('addon') ?? '(package default)'}, registry ${sfc}`)
    for (let run = 1; run <= repeat; run++) {
      const r = await once(reg, addon, run)
      results.push(r)
      print(r)
    }
    if (argv.includes('--json')) console.log(JSON.stringify(results, null, 2))
  } finally {
    reg.registry.kill('SIGTERM')
    fs.rmSync(reg.dataDir, { recursive: true, force: true })
    if (addon.dir) fs.rmSync(addon.dir, { recursive: true, force: true })
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
