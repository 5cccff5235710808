// Error codes, table-driven: every protocol error code of the core (crates/sfc-proto, `ErrorCode`)
// is known here and maps to its `ERR_SFC_` name the same way as the others, both from an error
// the native side tags and from the client's `error` event path; the codes a client or Registry
// meets are in index.d.ts's `ErrorCode` and README.md's errors table.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { PROTOCOL_CODES, fromNative, sfcError } = require('../lib/errors.js')

const root = path.join(__dirname, '..')

// The `as_str` names of crates/sfc-proto's ErrorCode: the contract every binding follows.
function coreCodes() {
  const src = fs.readFileSync(path.join(root, '..', '..', 'crates', 'sfc-proto', 'src', 'protocol', 'message.rs'), 'utf8')
  const body = src.slice(src.indexOf('pub fn as_str(self)'))
  return [...body.slice(0, body.indexOf('\n    }\n')).matchAll(/ErrorCode::\w+ => "([a-z-]+)"/g)].map((m) => m[1])
}

test('every protocol error code of the core is known, and maps like the others', () => {
  const core = coreCodes()
  assert.ok(core.includes('slow-consumer') && core.includes('too-many-instances'), `core codes: ${core}`)
  assert.deepEqual(Object.keys(PROTOCOL_CODES).sort(), [...core].sort())
  const table = [
    ['not-online', 'ERR_SFC_NOT_ONLINE'],
    ['unsupported-version', 'ERR_SFC_UNSUPPORTED_VERSION'],
    ['rate-limited', 'ERR_SFC_RATE_LIMITED'],
    ['slow-consumer', 'ERR_SFC_SLOW_CONSUMER'],
    ['too-many-instances', 'ERR_SFC_TOO_MANY_INSTANCES'],
  ]
  for (const [protocolCode, code] of table) {
    assert.equal(PROTOCOL_CODES[protocolCode], code)
  }
  for (const [protocolCode, code] of Object.entries(PROTOCOL_CODES)) {
    // As the native side tags a registry's error (`[sfc:<status>:<code>] message`).
    const e = fromNative(new Error(`[sfc:remote:${protocolCode}] the registry said no`))
    assert.equal(e.code, code, protocolCode)
    assert.equal(e.protocolCode, protocolCode)
    assert.equal(e.message, 'the registry said no')
    // As the client's `error` event builds it.
    const ev = sfcError('protocol', 'closed', { protocolCode })
    assert.equal(ev.code, code, protocolCode)
  }
})

test('the codes a client or Registry meets are typed and documented', () => {
  const dts = fs.readFileSync(path.join(root, 'index.d.ts'), 'utf8')
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8')
  const typed = dts.slice(dts.indexOf('export type ErrorCode'), dts.indexOf('(string & {})'))
  for (const protocolCode of ['unsupported-version', 'too-many-connections', 'rate-limited', 'slow-consumer', 'too-many-instances']) {
    const code = PROTOCOL_CODES[protocolCode]
    assert.ok(typed.includes(`'${code}'`), `${code} in index.d.ts ErrorCode`)
    assert.ok(readme.includes(`\`${code}\``), `${code} in README.md`)
  }
})
