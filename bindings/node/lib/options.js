// Checks option bags before they reach the native side, so that a wrong type is a TypeError
// that names the option, not a conversion error from inside the addon.
'use strict'

function fail(name, why) {
  const e = new TypeError(`invalid ${name}: ${why}`)
  e.option = name
  return e
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
  stringArray(name, v) {
    if (!Array.isArray(v)) throw fail(name, `expected an array of strings, got ${describe(v)}`)
    return v.map((x, i) => check.string(`${name}[${i}]`, x))
  },
  // PEM material: a file path, PEM text, or a Buffer holding PEM text.
  pem(name, v) {
    if (Buffer.isBuffer(v)) return v.toString('utf8')
    if (typeof v !== 'string' || v.length === 0) {
      throw fail(name, `expected a file path or PEM text, got ${describe(v)}`)
    }
    return v
  },
  object(name, v) {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw fail(name, `expected an object, got ${describe(v)}`)
    }
    return v
  },
}

// Copies the known keys of `options` through their checkers; an unknown key is a TypeError
// (a misspelt option would otherwise be silently ignored).
function pick(what, options, spec) {
  if (options === undefined) options = {}
  check.object(what, options)
  const out = {}
  for (const [key, value] of Object.entries(options)) {
    if (!(key in spec)) throw fail(key, `unknown ${what} key (known: ${Object.keys(spec).join(', ')})`)
    if (value === undefined) continue
    out[key] = spec[key](key, value)
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

module.exports = { check, pick, fail, filter, oneOf, HEALTHS }
