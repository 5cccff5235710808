// Checks option bags before they reach the native side, so that a wrong type is a TypeError
// that names the option, not a conversion error from inside the addon.
'use strict'

const { optionError } = require('./errors.js')

// A TypeError naming the option (`err.option`), with `code` `ERR_SFC_INVALID_ARGUMENT`.
function fail(name, why) {
  return optionError(name, why)
}

function describe(v) {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  return typeof v === 'string' ? JSON.stringify(v) : `${typeof v} ${String(v)}`
}

const check = {
  string(name, v) {
    if (typeof v !== 'string') throw fail(name, `expected a string, got ${describe(v)}`)
    return v
  },
  boolean(name, v) {
    if (typeof v !== 'boolean') throw fail(name, `expected true or false, got ${describe(v)}`)
    return v
  },
  // Milliseconds, or any positive number.
  positive(name, v) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw fail(name, `expected a positive number, got ${describe(v)}`)
    }
    return v
  },
  integer(name, v) {
    if (!Number.isInteger(v) || v < 0) throw fail(name, `expected a non-negative integer, got ${describe(v)}`)
    return v
  },
  // A group, instance id or service name (PROTOCOL.md §12): what the registry would refuse is
  // refused here, with the reason.
  identifier(name, v) {
    check.string(name, v)
    if (v.length === 0) throw fail(name, 'must not be empty')
    if (Buffer.byteLength(v) > 128) throw fail(name, `is ${Buffer.byteLength(v)} bytes long; the limit is 128`)
    if (v.includes('/')) {
      throw fail(name, `${JSON.stringify(v)} contains "/": it is one name (an instance id is <group>/<instanceId>)`)
    }
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f-\u009f]/.test(v)) throw fail(name, `${JSON.stringify(v)} contains a control character`)
    if (v === '.' || v === '..') throw fail(name, `${JSON.stringify(v)} is not a valid name`)
    return v
  },
  stringArray(name, v) {
    if (!Array.isArray(v)) throw fail(name, `expected an array of strings, got ${describe(v)}`)
    return v.map((x, i) => check.string(`${name}[${i}]`, x))
  },
  // PEM material: a file path, PEM text, or a Buffer holding PEM text. Text is PEM when it
  // holds a `-----BEGIN` line; anything else that could not be a path (a Buffer, several lines,
  // DER bytes) is refused here instead of being read as a file name.
  pem(name, v) {
    const BEGIN = /-----BEGIN [A-Z0-9 ]+-----/
    const isPem = (t) => BEGIN.test(t)
    // Text before the first block (openssl's `Bag Attributes`, a comment) is not PEM: the
    // native side takes text as PEM only when it starts with a block.
    const fromFirstBlock = (t) => t.slice(t.search(BEGIN))
    if (Buffer.isBuffer(v) || v instanceof Uint8Array) {
      const text = Buffer.from(v).toString('utf8')
      if (!isPem(text)) {
        throw fail(name, `the ${v.length}-byte buffer holds no PEM block (-----BEGIN ...-----); DER must be converted to PEM`)
      }
      return fromFirstBlock(text)
    }
    if (typeof v !== 'string' || v.length === 0) {
      throw fail(name, `expected a file path or PEM text, got ${describe(v)}`)
    }
    if (!isPem(v)) {
      if (/^[A-Za-z0-9+/=\s]{64,}$/.test(v)) {
        throw fail(name, 'looks like base64 without its PEM armour: give the whole PEM text, -----BEGIN ...----- line included')
      }
      if (/[\n\r\0]/.test(v) || v.length > 4096) {
        throw fail(name, 'neither PEM text (no -----BEGIN ...----- line) nor a file path')
      }
      return v
    }
    return fromFirstBlock(v)
  },
  object(name, v) {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw fail(name, `expected an object, got ${describe(v)}`)
    }
    return v
  },
}

// Copies the known keys of `options` through their checkers; an unknown key is a TypeError
// (a misspelt option would otherwise be silently ignored). `prefix` is the path of a nested
// object (`endpoints[0].`), so that errors name `endpoints[0].port`, not `port`.
function pick(what, options, spec, prefix = '') {
  if (options === undefined) options = {}
  check.object(prefix ? prefix.slice(0, -1) : what, options)
  const out = {}
  for (const [key, value] of Object.entries(options)) {
    if (!Object.hasOwn(spec, key)) throw fail(prefix + key, `unknown ${what} key (known: ${Object.keys(spec).join(', ')})`)
    if (value === undefined) continue
    out[key] = spec[key](prefix + key, value)
  }
  return out
}

const STATUSES = ['online', 'offline', 'left']
const HEALTHS = ['passing', 'warning', 'critical']

function oneOf(allowed) {
  return (name, v) => {
    if (!allowed.includes(v)) throw fail(name, `expected one of ${allowed.join(', ')}, got ${describe(v)}`)
    return v
  }
}

const filterSpec = {
  group: check.string,
  service: check.string,
  status: oneOf(STATUSES),
  health: oneOf(HEALTHS),
  tag: check.string,
}

function filter(name, f) {
  return pick(name, f, filterSpec)
}

module.exports = { check, pick, fail, describe, filter, oneOf, HEALTHS, STATUSES, filterSpec }
