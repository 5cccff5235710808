// Error codes. Every error the package makes carries a stable `code`: `ERR_SFC_` and the name of
// the C status (include/sfc.h, `SFC_STATUS_<NAME>`) or, when the registry or the protocol named
// one, of the protocol error code (PROTOCOL.md §11, `not-online` -> `ERR_SFC_NOT_ONLINE`), which
// is also kept as `err.protocolCode`. Cancelled waits are Node.js's own `AbortError`
// (`code` `ABORT_ERR`). README.md ("Errors") lists them.
'use strict'

// The C statuses that can reach JavaScript, kebab-case as the native side tags them.
const STATUS_CODES = {
  'invalid-argument': 'ERR_SFC_INVALID_ARGUMENT',
  'invalid-json': 'ERR_SFC_INVALID_JSON',
  file: 'ERR_SFC_FILE',
  tls: 'ERR_SFC_TLS',
  io: 'ERR_SFC_IO',
  remote: 'ERR_SFC_REMOTE',
  protocol: 'ERR_SFC_PROTOCOL',
  unreachable: 'ERR_SFC_UNREACHABLE',
  timeout: 'ERR_SFC_TIMEOUT',
  stopped: 'ERR_SFC_STOPPED',
}

// The protocol's error codes (PROTOCOL.md §11, `ErrorCode` in crates/sfc-proto), each with the
// `code` its errors carry here. Any other code the registry sends maps the same way.
const PROTOCOL_CODES = Object.freeze(
  Object.fromEntries(
    [
      'bad-preamble',
      'unsupported-version', // also a registry that predates protocol v1 (no ALPN sfc/1)
      'frame-too-large',
      'empty-frame',
      'bad-json',
      'unknown-message',
      'invalid-message',
      'unexpected-message',
      'unsupported-codec',
      'handshake-timeout',
      'liveness-timeout',
      'superseded',
      'invalid-field',
      'rate-limited',
      'too-many-connections',
      'not-authorized',
      'unknown-instance',
      'not-online',
      'unknown-watch',
      'command-timeout',
      'lagged',
      'shutting-down',
      'internal',
      'unknown-command',
      'slow-consumer', // the registry dropped a session that read too slowly (--max-outbound)
      'too-many-instances', // a new identity would pass --max-instances or a per-group/legacy cap
    ].map((c) => [c, protocolErrorCode(c)]),
  ),
)

// `not-online` -> `ERR_SFC_NOT_ONLINE`.
function protocolErrorCode(protocolCode) {
  return `ERR_SFC_${protocolCode.toUpperCase().replace(/-/g, '_')}`
}

function codeOf(status, protocolCode) {
  if (protocolCode) return protocolErrorCode(protocolCode)
  return STATUS_CODES[status] ?? STATUS_CODES.io
}

// An Error (or `Class`) with `code`, and `protocolCode` when there is one.
function sfcError(status, message, { protocolCode = null, Class = Error, cause } = {}) {
  const e = cause === undefined ? new Class(message) : new Class(message, { cause })
  e.code = codeOf(status, protocolCode)
  if (protocolCode) e.protocolCode = protocolCode
  return e
}

// `[sfc:<status>]` or `[sfc:<status>:<protocol code>]`, which the native side puts first.
const TAG = /^\[sfc:([a-z-]+)(?::([a-z-]+))?\] /

// An error from the native side, with its code; `invalid <option>: <why>` (InvalidArg) becomes a
// TypeError naming the option. Other errors pass through.
function fromNative(e) {
  if (!e || typeof e.message !== 'string') return e
  let message = e.message
  let status = null
  let protocolCode = null
  const tag = TAG.exec(message)
  if (tag) {
    status = tag[1]
    protocolCode = tag[2] ?? null
    message = message.slice(tag[0].length)
  }
  if (e.code === 'InvalidArg') {
    const t = new TypeError(message)
    t.code = status && status !== 'invalid-argument' ? codeOf(status, protocolCode) : STATUS_CODES['invalid-argument']
    const m = /^invalid ([^:]+):/.exec(message)
    if (m) t.option = m[1]
    return t
  }
  if (!tag) return e
  return sfcError(status, message, { protocolCode })
}

// An option error: a TypeError that names the option (`err.option`, a path such as
// `endpoints[0].port`).
function optionError(name, why) {
  const e = new TypeError(`invalid ${name}: ${why}`)
  e.code = STATUS_CODES['invalid-argument']
  e.option = name
  return e
}

// What `signal.throwIfAborted()` throws, on every supported Node.js version: the signal's reason
// when it is an Error, else an AbortError (`code` `ABORT_ERR`) with the reason as `cause`.
function abortError(signal) {
  const reason = signal?.reason
  if (reason instanceof Error) return reason
  const e = new Error('The operation was aborted', reason === undefined ? undefined : { cause: reason })
  e.name = 'AbortError'
  e.code = 'ABORT_ERR'
  return e
}

function checkSignal(name, signal) {
  if (signal === undefined) return undefined
  if (
    signal === null ||
    typeof signal !== 'object' ||
    typeof signal.aborted !== 'boolean' ||
    typeof signal.addEventListener !== 'function'
  ) {
    throw optionError(name, 'expected an AbortSignal')
  }
  return signal
}

module.exports = { STATUS_CODES, PROTOCOL_CODES, codeOf, sfcError, fromNative, optionError, abortError, checkSignal, protocolErrorCode }
