// Loads the client addon (through the napi-rs loader `native.js`) and, on first use only, the
// registry addon (`native-registry.js`); turns their `InvalidArg` errors into TypeErrors, and
// switches on native log output when DEBUG asks for it.
'use strict'

const createDebug = require('debug')
const native = require('../native.js')

// `invalid <option>: <why>` from the native side becomes a TypeError naming the option.
function convertError(e) {
  if (e && e.code === 'InvalidArg' && !(e instanceof TypeError)) {
    const t = new TypeError(e.message)
    const m = /^invalid ([^:]+):/.exec(e.message)
    if (m) t.option = m[1]
    return t
  }
  return e
}

function call(fn) {
  try {
    return fn()
  } catch (e) {
    throw convertError(e)
  }
}

async function settle(fn) {
  try {
    return await call(fn)
  } catch (e) {
    throw convertError(e)
  }
}

// The original module's namespaces, mapped to the tracing targets of the same parts.
function nativeLogDirectives() {
  if (process.env.RUST_LOG) return process.env.RUST_LOG
  const d = []
  if (createDebug.enabled('SFC')) d.push('sfc=info')
  if (createDebug.enabled('SFC_client')) d.push('sfc::client=debug')
  if (createDebug.enabled('SFC_registry')) d.push('sfc::registry=debug')
  return d.join(',')
}

const directives = nativeLogDirectives()
if (directives) call(() => native.enableNativeLogs(directives))

// The registry addon: loaded by the first `Registry`, so a process that only runs a `Client`
// never maps registry code. Each addon has its own log output switch.
let registryAddon = null
function registryNative() {
  if (registryAddon === null) {
    const addon = require('../native-registry.js')
    if (directives) call(() => addon.enableNativeLogs(directives))
    registryAddon = addon
  }
  return registryAddon
}

// Runs a user callback from a native callback: an exception becomes an uncaught exception, as
// it would from any EventEmitter listener, instead of disappearing inside the addon.
function guard(fn) {
  try {
    fn()
  } catch (e) {
    process.nextTick(() => {
      throw e
    })
  }
}

module.exports = { native, registryNative, call, settle, convertError, guard }
