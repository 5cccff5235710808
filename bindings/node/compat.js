// Drop-in replacement for the original `service_fleet_control` module:
//
//   const Control = require('service-fleet-control/compat')
//   const control = new Control(config)   // the original config keys
//   control.init()
//
// `role: 'tlsService'` runs the native client, `role: 'tlsRegistry'` an embedded registry.
// `registryService.getServiceFleetStatus()` answers in the original shape, and legacy-format
// clients that were not migrated keep reporting to the registry (it reads the old wire format).
// The client has the legacy fallback on: while the registry is still the original one (it
// selects no ALPN `sfc/1`), it reports in the original wire format, and it moves to protocol
// v1 by itself once the registry is replaced. So either side may be migrated first.
//
// A `Control` has exactly the original's public surface (instance keys `config`, `store`,
// `configIsGood`, `registryService`, `registryClient`; the original's eight prototype
// methods). What this module adds lives on the objects it makes: `registryClient.client` (the
// native `Client`), `registryService.registry` (the native `Registry`) and
// `registryService.stop()`, and the static `Control.stopTLSRegistry(control)`.
'use strict'

const os = require('node:os')
const createDebug = require('debug')
const { Client } = require('./lib/client.js')
const { Registry } = require('./lib/registry.js')

const log = createDebug('SFC')
const logClient = createDebug('SFC_client')
const logRegistry = createDebug('SFC_registry')

// Long enough never to fire: the original client's report timer kept the process alive until
// stopTLSClient(); this does the same for the native client, whose own timers are unref'd.
const KEEP_ALIVE_MS = 2 ** 31 - 1

function configError(key, why) {
  const e = new TypeError(`invalid ${key}: ${why}`)
  e.option = key
  return e
}

function address(config) {
  const host = config.registryHost || 'localhost'
  const port = config.registryPort
  if (port === undefined || port === null || port === '' || !Number.isInteger(Number(port))) {
    throw configError('registryPort', `expected a port number, got ${JSON.stringify(port)}`)
  }
  return `${host}:${Number(port)}`
}

// `process.memoryUsage()` keys as the original sent them, from our runtime figures.
const MEMORY_USAGE = [
  ['rss', 'rss_bytes'],
  ['heapTotal', 'heap_total_bytes'],
  ['heapUsed', 'heap_used_bytes'],
  ['external', 'external_bytes'],
  ['arrayBuffers', 'array_buffers_bytes'],
]

// One record of the fleet in the original shape: the last payload plus `online`. Keys the
// instance never sent are left out, as the original's record had only what was sent.
function legacyRecord(r) {
  const host = r.metrics.host ?? {}
  const proc = r.metrics.process ?? {}
  const rt = r.metrics.runtime ?? {}
  // `time` was the client's clock; the registry knows its skew.
  const at = r.last_report_at ?? r.status_since
  const time = new Date(at + (r.clock_skew_ms ?? 0)).toISOString()
  const metrics = {}
  for (const [key, ours] of MEMORY_USAGE) metrics[key] = rt[ours]
  // A legacy client's rss arrives as the process's resident size.
  if (proc.resident_bytes !== undefined && proc.resident_bytes !== null && metrics.rss === undefined) metrics.rss = proc.resident_bytes
  Object.assign(metrics, {
    hostname: host.hostname ?? r.hostname,
    numCpus: host.cpu_count,
    freemem: host.memory_available_bytes,
    loadadv: host.load_average,
    user: proc.user,
    uptime: host.uptime_seconds,
    updateIntervalSeconds: r.interval_ms / 1000,
  })
  for (const k of Object.keys(metrics)) if (metrics[k] === undefined || metrics[k] === null) delete metrics[k]
  return { serviceName: r.service, groupingKey: r.group, time, online: r.status === 'online', metrics }
}

// `{ [groupingKey]: [record, ...] }`, as the original getServiceFleetStatus() answered.
function legacyFleet(fleet) {
  const out = {}
  for (const [group, records] of Object.entries(fleet)) out[group] = records.map(legacyRecord)
  return out
}

// `control.store` (role tlsRegistry): the fleet the embedded registry holds, read as the
// original's store was: every record, or grouped by groupingKey.
class RegistryStore {
  #registry = null

  attach(registry) {
    this.#registry = registry
  }

  /** Every record, in the original shape. */
  getAll() {
    return Object.values(this.aggregate()).flat()
  }

  /** `{ [groupingKey]: [record, ...] }`. */
  aggregate() {
    const r = this.#registry
    return r && r.address ? legacyFleet(r.fleet()) : {}
  }
}

// `control.registryService` (role tlsRegistry): the embedded registry.
class RegistryService {
  constructor(config, store) {
    const options = { listen: address(config) }
    if (config.dataDir) options.dataDir = config.dataDir
    if (config.certFile || config.certKeyFile) {
      options.tlsCert = config.certFile
      options.tlsKey = config.certKeyFile
    }
    if (config.shouldServerRequestClientCerts) {
      options.mtls = 'required'
      if (config.useSelfSignedCerts && config.ca) options.clientCa = config.ca
    }
    this.config = config
    this.store = store
    /** The native `Registry`. */
    this.registry = new Registry(options)
    this.registry.on('event', (e) => logRegistry('%s %s', e.kind, e.id))
    store.attach(this.registry)
  }

  /** Binds and serves; resolves once listening (or, without makeServerThrow, once it failed). */
  listen() {
    return this.registry.start().then(
      (addr) => {
        logRegistry('listening on %s', addr)
      },
      (err) => {
        if (this.config.makeServerThrow) throw err
        logRegistry('cannot start: %s', err.message)
        console.error(`service-fleet-control: registry cannot start: ${err.message}`)
      },
    )
  }

  getServiceFleetStatus() {
    return this.store.aggregate()
  }

  /** Not in the original, which never stopped a registry: closes every session and stops listening. */
  stop() {
    return this.registry.stop()
  }
}

// `control.registryClient` (role tlsService): the reporting client. start() and stop() run
// the reports, as the original's did.
class ServiceClient {
  #keepAlive = null

  constructor(config) {
    const hostname = config.hostName || os.hostname()
    const options = {
      registry: address(config),
      service: config.serviceName,
      group: config.groupingKey,
      // The original keyed records by (groupingKey, hostname).
      instanceId: hostname,
      hostname,
      interval: (config.updateIntervalSeconds ?? 1) * 1000,
      // Reports in the original format while the registry is the original one.
      legacy: true,
    }
    if (config.useSelfSignedCerts && config.ca) options.ca = config.ca
    if (config.clientShouldUseCerts) {
      options.cert = config.clientCert
      options.key = config.clientKey
    }
    this.config = config
    /** The native `Client`. */
    this.client = new Client(options)
    this.client.on('connected', (e) =>
      e.session === 0
        ? logClient('reporting to %s in the original format (the registry predates protocol v1)', e.registry)
        : logClient('connected to %s (session %d)', e.registry, e.session),
    )
    this.client.on('disconnected', (e) => logClient('disconnected from %s: %s', e.registry, e.reason))
    this.client.on('error', (err) => {
      if (config.makeClientThrow) {
        process.nextTick(() => {
          throw err
        })
      } else {
        logClient('error: %s', err.message)
      }
    })
  }

  /** Starts reporting (again, after stop()). */
  start() {
    // The original's report timer kept the process alive until stopTLSClient(); this does the
    // same for the native client, whose own timers are unref'd.
    if (!this.#keepAlive) this.#keepAlive = setInterval(() => {}, KEEP_ALIVE_MS)
    this.client.start()
    logClient('reporting as %s every %d s', this.client.id, this.config.updateIntervalSeconds ?? 1)
    return this
  }

  /** Stops reporting; the instance leaves the fleet. Resolves like Client.stop(). */
  stop() {
    if (this.#keepAlive) clearInterval(this.#keepAlive)
    this.#keepAlive = null
    logClient('stopping client %s', this.client.id)
    return this.client.stop()
  }
}

class Control {
  constructor(config) {
    if (typeof config !== 'object' || config === null) throw configError('config', 'expected an object')
    this.config = config
    this.store = null
    this.registryService = null
    this.registryClient = null
    this.configIsGood = false
  }

  /** Starts the client or the registry, by `config.role`. Returns a Promise (ignorable). */
  init() {
    if (this.isTLSService()) {
      log('running the client')
      if (!this.registryClient) this.registryClient = new ServiceClient(this.config)
      this.configIsGood = true
      return this.startTLSClient()
    }
    if (this.isTLSRegistry()) {
      log('running the registry')
      this.setupRegistryStore()
      this.registryService = new RegistryService(this.config, this.store)
      this.configIsGood = true
      return this.startTlSRegistryService()
    }
    this.configIsGood = false
    const msg = `misconfiguration: role must be 'tlsService' or 'tlsRegistry', got ${JSON.stringify(this.config.role)}`
    log(msg)
    console.error(`service-fleet-control: ${msg}`)
    return Promise.resolve()
  }

  isTLSService() {
    return this.config.role === 'tlsService'
  }

  isTLSRegistry() {
    return this.config.role === 'tlsRegistry'
  }

  /** Makes `store`, the registry's fleet in the original shape (init() calls it). */
  setupRegistryStore() {
    this.store = new RegistryStore()
  }

  /** Starts the registry made by init(); the name is the original's. */
  startTlSRegistryService() {
    return this.registryService.listen()
  }

  /** Starts reporting; after stopTLSClient() it starts again. */
  startTLSClient() {
    if (!this.registryClient) throw new Error('service-fleet-control: startTLSClient() needs init() with role tlsService first')
    this.registryClient.start()
    return Promise.resolve()
  }

  /** Stops the client: it leaves the fleet at once. startTLSClient() starts it again. */
  stopTLSClient() {
    if (!this.registryClient) return Promise.resolve(false)
    return this.registryClient.stop()
  }

  /** Not in the original, which never stopped a registry: stops `control`'s embedded registry. */
  static stopTLSRegistry(control) {
    return control && control.registryService ? control.registryService.stop() : Promise.resolve()
  }
}

module.exports = Control
module.exports.Control = Control
module.exports.legacyFleet = legacyFleet
