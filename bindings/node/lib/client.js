// `Client`: one service instance in the fleet, an EventEmitter over the native client.
'use strict'

const { EventEmitter } = require('node:events')
const { native, call, settle, guard } = require('./binding.js')
const { check, pick, fail, filter: checkFilter, oneOf, HEALTHS } = require('./options.js')
const { RuntimeMetrics } = require('./runtime-metrics.js')

function registries(name, v) {
  const list = typeof v === 'string' ? v.split(',') : check.stringArray(name, v)
  const out = list.map((s) => s.trim()).filter(Boolean)
  if (out.length === 0) throw fail(name, 'expected at least one host:port address')
  return out
}

function endpoints(name, v) {
  if (!Array.isArray(v)) throw fail(name, 'expected an array of { name, host, port, protocol? }')
  return v.map((e, i) =>
    pick(`${name}[${i}]`, e, { name: check.string, host: check.string, port: check.integer, protocol: check.string }),
  )
}

function metadata(name, v) {
  check.object(name, v)
  const out = {}
  for (const [k, val] of Object.entries(v)) out[k] = check.string(`${name}.${k}`, val)
  return out
}

const clientSpec = {
  registry: registries,
  service: check.string,
  group: check.string,
  instanceId: check.string,
  hostname: check.string,
  interval: check.positive,
  endpoints,
  tags: check.stringArray,
  metadata,
  version: check.string,
  api: (name, v) => pick(name, v, { kind: oneOf(['openapi', 'graphql', 'other']), url: check.string }),
  ca: check.pem,
  cert: check.pem,
  key: check.pem,
  insecurePlaintext: check.boolean,
  connectTimeout: check.positive,
  stopTimeout: check.positive,
  sampleMetrics: check.boolean,
  runtimeMetrics: check.boolean,
}

class Client extends EventEmitter {
  #native
  #runtime = null
  #watches = new Set()
  #warnedUnhandledError = false

  constructor(options) {
    super()
    const o = pick('option', options, clientSpec)
    const { runtimeMetrics = true, ...nativeOptions } = o
    this.#native = call(() => new native.NativeClient(nativeOptions))
    if (runtimeMetrics) this.#runtime = new RuntimeMetrics()
  }

  /** `<group>/<instanceId>`. */
  get id() {
    return this.#native.id
  }

  get group() {
    return this.#native.group
  }

  get instanceId() {
    return this.#native.instanceId
  }

  get connected() {
    return this.#native.connected
  }

  get running() {
    return this.#native.running
  }

  start() {
    if (this.#native.running) return this
    call(() => this.#native.start((json) => guard(() => this.#onEvent(JSON.parse(json)))))
    if (this.#runtime) {
      this.#runtime.start(this.#native.interval, (figures) => this.#native.setRuntimeMetrics(figures))
    }
    for (const w of this.#watches) this.#attach(w)
    return this
  }

  /** Sends leave and closes; resolves to whether the registry confirmed the leave. */
  async stop() {
    if (this.#runtime) this.#runtime.stop()
    for (const w of this.#watches) w.id = null
    return settle(() => this.#native.stop())
  }

  setHealth(status, note) {
    oneOf(HEALTHS)('status', status)
    if (note !== undefined && note !== null) check.string('note', note)
    call(() => this.#native.setHealth(status, note ?? undefined))
    return this
  }

  setGauge(name, value) {
    check.string('name', name)
    if (typeof value !== 'number') throw fail('value', `expected a number, got ${typeof value}`)
    call(() => this.#native.setGauge(name, value))
    return this
  }

  /** Instances of `group`; the array has a `stale` property, true when answered from cache. */
  async lookup(group, options) {
    check.string('group', group)
    const o = pick('lookup option', options, { healthyOnly: check.boolean, service: check.string, tag: check.string })
    const { instances, stale } = JSON.parse(await settle(() => this.#native.lookup(group, o)))
    Object.defineProperty(instances, 'stale', { value: stale, enumerable: false })
    return instances
  }

  /**
   * Calls `callback(event)` for every transition of an instance matching `filter` (and with
   * `filter.reports`, every report). Survives stop()/start(). Returns an unsubscribe function.
   */
  watch(filter, callback) {
    if (typeof filter === 'function' && callback === undefined) {
      callback = filter
      filter = {}
    }
    if (typeof callback !== 'function') throw fail('callback', 'expected a function')
    const { reports = false, ...rest } = pick('filter', filter, {
      group: check.string,
      service: check.string,
      status: check.string,
      health: check.string,
      tag: check.string,
      reports: check.boolean,
    })
    const w = { filter: checkFilter('filter', rest), reports, callback, id: null }
    this.#watches.add(w)
    if (this.#native.running) this.#attach(w)
    return () => {
      if (!this.#watches.delete(w)) return
      if (w.id !== null) this.#native.unwatch(w.id)
      w.id = null
    }
  }

  #attach(w) {
    w.id = call(() =>
      this.#native.watch(w.filter, w.reports, (json) => {
        if (this.#watches.has(w)) guard(() => w.callback(JSON.parse(json)))
      }),
    )
  }

  #onEvent(ev) {
    switch (ev.type) {
      case 'connected':
        this.emit('connected', { registry: ev.registry, session: ev.session })
        break
      case 'disconnected':
        this.emit('disconnected', { registry: ev.registry, reason: ev.reason })
        break
      case 'command':
        this.#dispatch(ev.command)
        break
      case 'error': {
        const err = new Error(ev.message)
        if (ev.code) err.code = ev.code
        if (this.listenerCount('error') > 0) {
          this.emit('error', err)
        } else if (!this.#warnedUnhandledError) {
          // The client recovers by itself; an unhandled 'error' must not crash the service.
          this.#warnedUnhandledError = true
          process.emitWarning(`service-fleet-control: ${err.message} (add an 'error' listener to see every one)`)
        }
        break
      }
    }
  }

  // Every 'command' listener (and for `shutdown`, every 'shutdown' listener) runs; the first
  // value they return or resolve to goes back as the result, a throw or rejection as the error.
  async #dispatch(cmd) {
    const listeners = this.rawListeners('command')
    if (cmd.name === 'shutdown') listeners.push(...this.rawListeners('shutdown'))
    const respond = (ok, value, error) => {
      try {
        this.#native.respond(cmd.command_id, ok, value, error)
      } catch (e) {
        // The result cannot be sent (not serializable): say so instead.
        this.#native.respond(cmd.command_id, false, null, `cannot send the result: ${e.message}`)
      }
    }
    if (listeners.length === 0) {
      respond(false, null, `no handler for command ${JSON.stringify(cmd.name)}`)
      return
    }
    try {
      const results = await Promise.all(listeners.map((l) => l.call(this, cmd)))
      const value = results.find((v) => v !== undefined)
      respond(true, value === undefined ? null : JSON.stringify(value), null)
    } catch (e) {
      respond(false, null, e instanceof Error ? e.message : String(e))
    }
  }
}

module.exports = { Client }
