// Drop-in replacement for the original `service_fleet_control` module:
//
//   const Control = require('service-fleet-control/compat')
//   const control = new Control(config)   // the original config keys
//   control.init()
//
// `role: 'tlsService'` runs the native client, `role: 'tlsRegistry'` an embedded registry.
// `registryService.getServiceFleetStatus()` answers in the original shape, and legacy-format
// clients that were not migrated keep reporting to the registry (it reads the old wire format).
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

// One record of the fleet in the original shape: the last payload plus `online`.
function legacyRecord(r) {
  const host = r.metrics.host ?? {}
  const proc = r.metrics.process ?? {}
  const rt = r.metrics.runtime ?? {}
  // `time` was the client's clock; the registry knows its skew.
  const at = r.last_report_at ?? r.status_since
  const time = new Date(at + (r.clock_skew_ms ?? 0)).toISOString()
  return {
    serviceName: r.service,
    groupingKey: r.group,
    time,
    online: r.status === 'online',
    metrics: {
      rss: proc.resident_bytes ?? rt.rss_bytes,
      heapTotal: rt.heap_total_bytes,
      heapUsed: rt.heap_used_bytes,
      external: rt.external_bytes,
      hostname: host.hostname ?? r.hostname,
      numCpus: host.cpu_count,
      freemem: host.memory_available_bytes,
      loadadv: host.load_average,
      user: proc.user,
      uptime: host.uptime_seconds,
      updateIntervalSeconds: r.interval_ms / 1000,
    },
  }
}

// `{ [groupingKey]: [record, ...] }`, as the original getServiceFleetStatus() answered.
function legacyFleet(fleet) {
  const out = {}
  for (const [group, records] of Object.entries(fleet)) out[group] = records.map(legacyRecord)
  return out
}

class Control {
  constructor(config) {
    if (typeof config !== 'object' || config === null) throw configError('config', 'expected an object')
    this.config = { ...config }
    /** The native client (role tlsService), once init() ran. */
    this.client = null
    /** The embedded registry (role tlsRegistry), once init() ran. */
    this.registry = null
    this.registryService = null
    this._keepAlive = null
  }

  /** Starts the client or the registry, by `config.role`. Returns a Promise (ignorable). */
  init() {
    switch (this.config.role) {
      case 'tlsService':
        return this._initClient()
      case 'tlsRegistry':
        return this._initRegistry()
      default: {
        const msg = `misconfiguration: role must be 'tlsService' or 'tlsRegistry', got ${JSON.stringify(this.config.role)}`
        log(msg)
        console.error(`service-fleet-control: ${msg}`)
        return Promise.resolve()
      }
    }
  }

  /** Stops the client: it leaves the fleet at once. init() starts it again. */
  stopTLSClient() {
    if (this._keepAlive) clearInterval(this._keepAlive)
    this._keepAlive = null
    if (!this.client) return Promise.resolve(false)
    logClient('stopping client %s', this.client.id)
    return this.client.stop()
  }

  /** Stops an embedded registry (not in the original API, which never stopped one). */
  stopTLSRegistry() {
    return this.registry ? this.registry.stop() : Promise.resolve()
  }

  _initClient() {
    const c = this.config
    if (!this.client) {
      const hostname = c.hostName || os.hostname()
      const options = {
        registry: address(c),
        service: c.serviceName,
        group: c.groupingKey,
        // The original keyed records by (groupingKey, hostname).
        instanceId: hostname,
        hostname,
        interval: (c.updateIntervalSeconds ?? 1) * 1000,
      }
      if (c.useSelfSignedCerts && c.ca) options.ca = c.ca
      if (c.clientShouldUseCerts) {
        options.cert = c.clientCert
        options.key = c.clientKey
      }
      this.client = new Client(options)
      this.client.on('connected', (e) => logClient('connected to %s (session %d)', e.registry, e.session))
      this.client.on('disconnected', (e) => logClient('disconnected from %s: %s', e.registry, e.reason))
      this.client.on('error', (err) => {
        if (c.makeClientThrow) {
          process.nextTick(() => {
            throw err
          })
        } else {
          logClient('error: %s', err.message)
        }
      })
    }
    if (!this._keepAlive) this._keepAlive = setInterval(() => {}, KEEP_ALIVE_MS)
    this.client.start()
    logClient('reporting as %s every %d s', this.client.id, c.updateIntervalSeconds ?? 1)
    return Promise.resolve()
  }

  _initRegistry() {
    const c = this.config
    const options = { listen: address(c) }
    if (c.dataDir) options.dataDir = c.dataDir
    if (c.certFile || c.certKeyFile) {
      options.tlsCert = c.certFile
      options.tlsKey = c.certKeyFile
    }
    if (c.shouldServerRequestClientCerts) {
      options.mtls = 'required'
      if (c.useSelfSignedCerts && c.ca) options.clientCa = c.ca
    }
    this.registry = new Registry(options)
    this.registry.on('event', (e) => logRegistry('%s %s', e.kind, e.id))
    const registry = this.registry
    this.registryService = {
      getServiceFleetStatus: () => (registry.address ? legacyFleet(registry.fleet()) : {}),
    }
    return registry.start().then(
      (addr) => {
        logRegistry('listening on %s', addr)
      },
      (err) => {
        if (c.makeServerThrow) throw err
        logRegistry('cannot start: %s', err.message)
        console.error(`service-fleet-control: registry cannot start: ${err.message}`)
      },
    )
  }
}

module.exports = Control
module.exports.Control = Control
module.exports.legacyFleet = legacyFleet
