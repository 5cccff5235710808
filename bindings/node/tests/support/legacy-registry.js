// A registry that behaves as the original `service_fleet_control` registry does
// (../../../../../shared/LEGACY.md): a Node.js `tls` server with no ALPN protocols, which collects
// each connection's bytes and parses them with JSON.parse when the connection ends, without
// catching the error, and has no 'error' listener on its sockets: a connection that ends with
// anything but one JSON document (a v1 preamble, nothing at all) or that is reset after the
// handshake makes the process exit, as the original's did. Written from its documented
// behaviour for these tests; none of its code.
//
//   node legacy-registry.js --cert server.pem --key server-key.pem [--port N] [--max-version TLSv1.2]
//
// stdout, one line each:  `listening PORT` once bound; `report {"action":...,"record":...}` for
// every document it recorded (the record is the payload plus `online`, as in its fleet); `refused HANDSHAKE-ERROR` for a
// connection that ended before its TLS handshake completed (which the original ignores).
'use strict'

const fs = require('node:fs')
const tls = require('node:tls')

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? process.argv[i + 1] : fallback
}

const fleet = new Map()
const options = { cert: fs.readFileSync(arg('cert')), key: fs.readFileSync(arg('key')) }
// The original ran on Node.js releases that spoke TLS 1.2 only.
if (arg('max-version')) options.maxVersion = arg('max-version')
const server = tls.createServer(options, (socket) => {
  const chunks = []
  socket.on('data', (d) => chunks.push(d))
  socket.on('end', () => {
    // Uncaught on purpose: the original registry exits here on a document it cannot parse.
    const doc = JSON.parse(Buffer.concat(chunks).toString())
    const record = { ...doc.payload, online: true }
    fleet.set(`${record.groupingKey}/${record.metrics.hostname}`, record)
    process.stdout.write(`report ${JSON.stringify({ action: doc.action, record })}\n`)
  })
})
// The original sets no listener for this either; the event is only reported here.
server.on('tlsClientError', (err) => process.stdout.write(`refused ${err.code || err.message}\n`))
server.listen(Number(arg('port', '0')), '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`)
})
