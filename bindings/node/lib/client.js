// `Client`: one service instance in the fleet, an EventEmitter over the native client.
'use strict'

const { EventEmitter } = require('node:events')
const { native, call, settle, guard } = require('./binding.js')
const { check, pick, fail, filter: checkFilter, oneOf, HEALTHS } = require('./options.js')
const { RuntimeMetrics } = require('./runtime-metrics.js')
const { sfcError, abortError, checkSignal } = require('./errors.js')
const { FleetWatch, asyncDispose } = require('./watch.js')

// `host:port` (IPv6 as `[::1]:7480`): the registry's protocol port, never a URL.
function registryAddress(name, a) {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(a)) {
    throw fail(name, `${JSON.stringify(a)} is a URL: give the registry's protocol address as host:port (such as 127.0.0.1:7480), not its HTTP API`)
  }
  const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+):(\d{1,5})$/.exec(a)
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
    throw fail(name, `${JSON.stringify(a)} is not host:port (port 1..65535)`)
  }
  return a
}

function registries(name, v) {
  const list = typeof v === 'string' ? v.split(',') : check.stringArray(name, v)
  const out = list.map((s) => s.trim()).filter(Boolean)
  if (out.length === 0) throw fail(name, 'expected at least one host:port address')
  return out.map((a, i) => registryAddress(typeof v === 'string' ? name : `${name}[${i}]`, a))
}

function port(name, v) {
  if (!Number.isInteger(v) || v < 1 || v > 65535) throw fail(name, `expected a port number 1..65535, got ${JSON.stringify(v)}`)
  return v
}

function endpoints(name, v) {
  if (!Array.isArray(v)) throw fail(name, 'expected an array of { name, host, port, protocol? }')
  return v.map((e, i) =>
    pick(`${name}[${i}]`, e, { name: check.string, host: check.string, port, protocol: check.string }, `${name}[${i}].`),
  )
}

// The report interval, in milliseconds (PROTOCOL.md §12); the error quotes the value given.
function interval(name, v) {
  check.positive(name, v)
  if (v < 100 || v > 3_600_000) throw fail(name, `${v} ms is outside 100 ms ..= 3600000 ms (the milliseconds between reports)`)
  return v
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
  group: check.identifier,
  instanceId: check.identifier,
  hostname: check.string,
  interval,
  endpoints,
  tags: check.stringArray,
  metadata,
  version: check.string,
  api: (name, v) => pick(name, v, { kind: oneOf(['openapi', 'graphql', 'other']), url: check.string }, `${name}.`),
  ca: check.pem,
  cert: check.pem,
  key: check.pem,
  insecurePlaintext: check.boolean,
  connectTimeout: check.positive,
  stopTimeout: check.positive,
  sampleMetrics: check.boolean,
  runtimeMetrics: check.boolean,
  legacy: check.boolean,
}

// Long enough never to fire; only there to keep the process alive while something waits.
const KEEP_ALIVE_MS = 2 ** 31 - 1

const watchSpec = {
  group: check.string,
  service: check.string,
  status: check.string,
  health: check.string,
  tag: check.string,
  reports: check.boolean,
  signal: checkSignal,
}

// `promise`, or a rejection with the abort reason as soon as `signal` aborts.
function abortable(promise, signal) {
  if (!signal) return promise
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(abortError(signal))
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

class Client extends EventEmitter {
  #native
  #runtime = null
  #watches = new Set()
  #warnedUnhandledError = false
  // The connection `ready()` resolves to; null while not connected.
  #connection = null
  // Pending `ready()` calls.
  #readyWaiters = new Set()
  // The last error event, and the state it stands for (code and registry): an `error` is emitted
  // when that state changes, not on every retry. Cleared by `connected`.
  #lastError = null
  #lastErrorState = null
  // Commands being handled: command_id -> { cmd, respond }.
  #pending = new Map()
  #refed = true
  #waits = 0
  #keepAlive = null

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
    this.#updateKeepAlive()
    return this
  }

  /**
   * Sends leave and closes; resolves to whether the registry confirmed the leave (false when
   * the client was not running, had no session, or the confirmation did not come). Commands
   * still being handled are answered first (a `shutdown` with success), so that calling it from
   * a `shutdown` listener answers the command and then leaves.
   */
  async stop() {
    if (this.#runtime) this.#runtime.stop()
    for (const w of this.#watches) w.id = null
    for (const { cmd, respond } of [...this.#pending.values()]) {
      if (cmd.name === 'shutdown') respond(true, null, null)
      else respond(false, null, 'the client stopped before it answered')
    }
    const stopped = sfcError('stopped', 'client stopped')
    for (const w of [...this.#readyWaiters]) w.reject(stopped)
    this.#connection = null
    const left = settle(() => this.#native.stop())
    this.#updateKeepAlive()
    return left
  }

  /**
   * Resolves to `{ registry, session }` once the client has a session with a registry (at once
   * when it has one). Rejects with `ERR_SFC_TIMEOUT` after `timeout` ms (its `cause` is the last
   * error, such as a refused certificate), with `ERR_SFC_STOPPED` if the client is not running
   * or stops, and with the abort reason when `signal` aborts.
   */
  async ready(options) {
    const { signal, timeout } = pick('ready option', options, { signal: checkSignal, timeout: check.positive })
    if (signal?.aborted) throw abortError(signal)
    if (!this.#native.running) throw sfcError('stopped', 'client is not running: call start() first')
    if (this.#connection) return this.#connection
    return new Promise((resolve, reject) => {
      let timer = null
      const onAbort = () => waiter.reject(abortError(signal))
      const finish = () => {
        this.#readyWaiters.delete(waiter)
        if (timer) clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        this.#updateKeepAlive()
      }
      const waiter = {
        resolve: (info) => {
          finish()
          resolve(info)
        },
        reject: (e) => {
          finish()
          reject(e)
        },
      }
      if (timeout !== undefined) {
        timer = setTimeout(() => {
          const last = this.#lastError
          const why = last ? `: ${last.message}` : ''
          waiter.reject(sfcError('timeout', `not connected to a registry within ${timeout} ms${why}`, { cause: last ?? undefined }))
        }, timeout)
        timer.unref()
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#readyWaiters.add(waiter)
      this.#updateKeepAlive()
    })
  }

  /** Lets the process exit while watches or waits are open (as `socket.unref()`). */
  unref() {
    this.#refed = false
    this.#updateKeepAlive()
    return this
  }

  /** Undoes unref(): open watches and pending waits keep the process alive again. */
  ref() {
    this.#refed = true
    this.#updateKeepAlive()
    return this
  }

  /** `await using client = new Client(...)`: stop() at the end of the scope. */
  async [asyncDispose]() {
    await this.stop()
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
    check.identifier('group', group)
    const { signal, ...o } = pick('lookup option', options, {
      healthyOnly: check.boolean,
      service: check.string,
      tag: check.string,
      signal: checkSignal,
    })
    if (signal?.aborted) throw abortError(signal)
    const release = this.#hold()
    let text
    try {
      text = await abortable(settle(() => this.#native.lookup(group, o)), signal)
    } finally {
      release()
    }
    const { instances, stale } = JSON.parse(text)
    Object.defineProperty(instances, 'stale', { value: stale, enumerable: false })
    return instances
  }

  /**
   * With a callback: calls `callback(event)` for every transition of an instance matching
   * `filter` (and with `filter.reports`, every report) and returns the unsubscribe function.
   * Without one: returns an async iterator of those events (`for await`). Survives
   * stop()/start(); `filter.signal` ends it. While open on a running client it keeps the
   * process alive, unless unref().
   */
  watch(filter, callback) {
    if (typeof filter === 'function' && callback === undefined) {
      callback = filter
      filter = {}
    }
    if (callback !== undefined && typeof callback !== 'function') throw fail('callback', 'expected a function')
    const { reports = false, signal, ...rest } = pick('watch option', filter, watchSpec)
    const iterator = callback ? null : new FleetWatch(() => unsubscribe())
    const w = { filter: checkFilter('filter', rest), reports, callback: callback ?? ((e) => iterator._push(e)), id: null }
    const onAbort = () => {
      iterator?._end(abortError(signal))
      unsubscribe()
    }
    const unsubscribe = () => {
      signal?.removeEventListener('abort', onAbort)
      if (!this.#watches.delete(w)) return
      if (w.id !== null) this.#native.unwatch(w.id)
      w.id = null
      iterator?._end()
      this.#updateKeepAlive()
    }
    unsubscribe[Symbol.dispose ?? Symbol.for('nodejs.dispose')] = unsubscribe
    if (signal?.aborted) {
      iterator?._end(abortError(signal))
      return iterator ?? unsubscribe
    }
    this.#watches.add(w)
    signal?.addEventListener('abort', onAbort, { once: true })
    if (this.#native.running) this.#attach(w)
    this.#updateKeepAlive()
    return iterator ?? unsubscribe
  }

  #attach(w) {
    w.id = call(() =>
      this.#native.watch(w.filter, w.reports, (json) => {
        if (this.#watches.has(w)) guard(() => w.callback(JSON.parse(json)))
      }),
    )
  }

  // Something waits (a lookup): keep the process alive until `release()`.
  #hold() {
    this.#waits += 1
    this.#updateKeepAlive()
    let released = false
    return () => {
      if (released) return
      released = true
      this.#waits -= 1
      this.#updateKeepAlive()
    }
  }

  // The process stays alive while the running client has an open watch or a pending wait,
  // unless unref(): a ref'd timer, like a socket's handle.
  #updateKeepAlive() {
    const need =
      this.#refed && this.#native.running && (this.#watches.size > 0 || this.#waits > 0 || this.#readyWaiters.size > 0)
    if (need && this.#keepAlive === null) {
      this.#keepAlive = setInterval(() => {}, KEEP_ALIVE_MS)
    } else if (!need && this.#keepAlive !== null) {
      clearInterval(this.#keepAlive)
      this.#keepAlive = null
    }
  }

  #onEvent(ev) {
    switch (ev.type) {
      case 'connected': {
        const info = { registry: ev.registry, session: ev.session }
        this.#connection = info
        this.#lastError = null
        this.#lastErrorState = null
        for (const w of [...this.#readyWaiters]) w.resolve(info)
        this.emit('connected', info)
        break
      }
      case 'disconnected':
        this.#connection = null
        this.emit('disconnected', { registry: ev.registry, reason: ev.reason })
        break
      case 'command':
        this.#dispatch(ev.command)
        break
      case 'error': {
        const err = sfcError(ev.status ?? 'io', ev.message, { protocolCode: ev.code ?? null })
        this.#lastError = err
        // The same failure again (the next retry): not a new state, not a new 'error'.
        const registry = ev.message.split(': ')[0]
        const state = `${err.code} ${registry}`
        if (state === this.#lastErrorState) break
        this.#lastErrorState = state
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
  // stop() answers a command still being handled (see stop()); its listeners' outcome is then
  // not sent.
  async #dispatch(cmd) {
    const listeners = this.rawListeners('command')
    if (cmd.name === 'shutdown') listeners.push(...this.rawListeners('shutdown'))
    let answered = false
    const respond = (ok, value, error) => {
      if (answered) return
      answered = true
      this.#pending.delete(cmd.command_id)
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
    this.#pending.set(cmd.command_id, { cmd, respond })
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
