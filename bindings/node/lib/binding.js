// Loads the client addon (through the napi-rs loader `native.js`) and, on first use only, the
// registry addon (`native-registry.js`); turns their `InvalidArg` errors into TypeErrors, and
// switches on native log output when DEBUG asks for it.
'use strict'

const { fromNative } = require('./errors.js')

// The napi-rs name of this platform, as in the platform package's name
// (`service-fleet-control-<platform>`) and the addons' file names.
function platformName() {
  const arch = process.arch
  switch (process.platform) {
    case 'linux': {
      let musl
      try {
        musl = !process.report.getReport().header.glibcVersionRuntime
      } catch {
        musl = false
      }
      return `linux-${arch}-${musl ? 'musl' : 'gnu'}`
    }
    case 'win32':
      return `win32-${arch}-msvc`
    default:
      return `${process.platform}-${arch}`
  }
}

// A loader that finds no addon (no prebuilt platform package for this platform, or one that
// does not load) fails with napi-rs's generic "Cannot find native binding": say instead which
// platform this is and how to get an addon for it. The loader's error stays as `cause`.
function loadAddon(loader, what) {
  try {
    return require(loader)
  } catch (e) {
    const platform = platformName()
    const prefix = 'service-fleet-control-'
    const published = Object.keys(require('../package.json').optionalDependencies || {})
      .filter((name) => name.startsWith(prefix))
      .map((name) => name.slice(prefix.length))
    const err = new Error(
      `service-fleet-control: no ${what} for this platform, ${platform} (${process.platform} ${process.arch}, Node.js ${process.version}).\n` +
        `Prebuilt addons are published for: ${published.join(', ') || 'no platform'}, each in the optional dependency ${prefix}<platform>` +
        (published.includes(platform) ? ` (reinstall without --omit=optional to get ${prefix}${platform})` : '') +
        `.\nTo build from source (needs Rust, https://rustup.rs): in a checkout of the sfc repository run\n` +
        `  cd bindings/node && npm ci && npm run build\n` +
        `then install that directory in your app: npm install <checkout>/bindings/node\n` +
        `(what the napi-rs loader tried is in this error's \`cause\`)`,
    )
    err.code = 'ERR_SFC_NATIVE_BINDING'
    err.platform = platform
    err.cause = e
    throw err
  }
}

const native = loadAddon('../native.js', 'native addon (sfc.<platform>.node)')

// Errors from the native side get their stable `code` (lib/errors.js); `invalid <option>:
// <why>` becomes a TypeError naming the option.
function convertError(e) {
  return fromNative(e)
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
  // `debug` costs about 2 MiB resident once loaded: it is read only when DEBUG is set.
  if (!process.env.DEBUG) return ''
  const createDebug = require('debug')
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
    const addon = loadAddon('../native-registry.js', 'registry addon (sfc-registry.<platform>.node)')
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

module.exports = { native, registryNative, call, settle, convertError, guard, platformName }
