// `Registry`: the Rust registry running inside this Node.js process.
'use strict'

const { EventEmitter } = require('node:events')
const { registryNative, call, settle, guard } = require('./binding.js')
const { check, pick, filter, oneOf, fail, describe } = require('./options.js')

// `metricsInstances`: 'none', 'all', or at most this many instances (0 is 'none').
function metricsInstances(name, v) {
  if (v === 'none' || v === 'all' || (Number.isSafeInteger(v) && v >= 0)) return v
  throw fail(name, `expected 'none', 'all' or a non-negative integer, got ${describe(v)}`)
}

const registrySpec = {
  listen: check.string,
  dataDir: check.string,
  tlsCert: check.pem,
  tlsKey: check.pem,
  mtls: oneOf(['off', 'optional', 'required']),
  clientCa: check.pem,
  insecurePlaintext: check.boolean,
  missedReports: check.integer,
  retention: check.positive,
  handshakeTimeout: check.positive,
  maxConnections: check.integer,
  maxFrame: check.integer,
  maxOutbound: check.integer,
  maxHistoryBytes: check.integer,
  maxInstances: check.integer,
  maxGroupInstances: check.integer,
  maxLegacyInstances: check.integer,
  maxLegacyGroupInstances: check.integer,
  legacy: check.boolean,
  http: check.string,
  metricsInstances,
}

// Long enough never to fire; only there to keep the process alive like a listening server.
const KEEP_ALIVE_MS = 2 ** 31 - 1

class Registry extends EventEmitter {
  #native
  #keepAlive = null
  #unref = false

  constructor(options) {
    super()
    this.#native = call(() => new (registryNative().NativeRegistry)(pick('option', options, registrySpec)))
  }

  /** `host:port` it listens on, once started. */
  get address() {
    return this.#native.address ?? null
  }

  /** `host:port` of the HTTP API and `/metrics`, once started with the `http` option. */
  get httpAddress() {
    return this.#native.httpAddress ?? null
  }

  /** Binds and serves; resolves to the bound address. Emits 'event' for every transition. */
  async start() {
    const address = await settle(() =>
      this.#native.start((json) => guard(() => this.emit('event', JSON.parse(json)))),
    )
    this.#keepAlive = setInterval(() => {}, KEEP_ALIVE_MS)
    if (this.#unref) this.#keepAlive.unref()
    return address
  }

  /** Closes every session and stops listening. */
  async stop() {
    if (this.#keepAlive) clearInterval(this.#keepAlive)
    this.#keepAlive = null
    await settle(() => this.#native.stop())
  }

  /** Like a server's unref(): a started registry no longer keeps the process alive. */
  unref() {
    this.#unref = true
    this.#keepAlive?.unref()
    return this
  }

  ref() {
    this.#unref = false
    this.#keepAlive?.ref()
    return this
  }

  /** Records grouped by group: `{ [group]: Instance[] }`. */
  fleet(f) {
    return JSON.parse(call(() => this.#native.fleet(f === undefined ? undefined : filter('filter', f))))
  }

  /** Records matching `filter`, sorted by id. */
  instances(f) {
    return JSON.parse(call(() => this.#native.instances(f === undefined ? undefined : filter('filter', f))))
  }

  /**
   * Sends command `name` to the online instance `id` (`<group>/<instanceId>`) and resolves to
   * its result `{ command_id, ok, result, error }`.
   */
  async sendCommand(id, name, payload, options) {
    check.string('id', id)
    check.string('name', name)
    const o = pick('command option', options, { reason: check.string, timeout: check.positive })
    const text = payload === undefined ? undefined : JSON.stringify(payload)
    return JSON.parse(await settle(() => this.#native.sendCommand(id, name, text, o.reason, o.timeout)))
  }
}

module.exports = { Registry }
