// An HTTP service in the fleet: it registers its endpoint, finds its peers through the
// registry, reports health from a real check of its own HTTP endpoint, and closes gracefully
// when the registry sends `shutdown` (or on SIGTERM/SIGINT).
//
//   sfc registry --listen 127.0.0.1:7480 --data-dir ./sfc-data
//   SFC_CA=./sfc-data/tls/ca.pem PEER_GROUP=orders node examples/node/service.js
//
// Environment: SFC_REGISTRY, SFC_CA (read by the client), PORT (default: any free port),
// GROUP (default `catalog`), PEER_GROUP (default: the same group).
'use strict'

const http = require('node:http')
const { Client } = require('service-fleet-control')

const group = process.env.GROUP || 'catalog'
const peerGroup = process.env.PEER_GROUP || group

const server = http.createServer(async (req, res) => {
  if (req.url === '/healthz') {
    res.end('ok')
    return
  }
  if (req.url === '/peers') {
    // Answered from the client's cache: no registry round trip per request.
    const peers = await client.lookup(peerGroup, { healthyOnly: true }).catch(() => [])
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(peers.map((p) => ({ id: p.id, endpoints: p.endpoints }))))
    return
  }
  res.statusCode = 404
  res.end()
})

let client

// The check behind the reported health: can this process answer its own health endpoint?
function checkHttp(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/healthz', timeout: 1000 }, (res) => {
      res.resume()
      resolve(res.statusCode === 200 ? null : `healthz answered ${res.statusCode}`)
    })
    req.on('timeout', () => req.destroy(new Error('healthz timed out')))
    req.on('error', (e) => resolve(`healthz failed: ${e.message}`))
  })
}

server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  const { port } = server.address()
  client = new Client({
    group,
    service: group,
    endpoints: [{ name: 'http', host: '127.0.0.1', port, protocol: 'http' }],
    version: '1.0.0',
  })
  client.on('connected', ({ registry }) => console.log(`in the fleet as ${client.id} via ${registry}`))
  client.on('disconnected', ({ reason }) => console.log(`registry lost: ${reason}`))
  client.on('error', (e) => console.error(`fleet: ${e.message}`))
  client.on('shutdown', (cmd) => {
    console.log(`shutdown asked by ${cmd.issued_by ?? 'the registry'}: ${cmd.reason ?? 'no reason given'}`)
    setImmediate(close)
    return { closing: true }
  })
  client.start()

  const check = async () => {
    const problem = await checkHttp(port)
    const peers = await client.lookup(peerGroup, { healthyOnly: true }).catch(() => [])
    if (problem) client.setHealth('critical', problem)
    else if (peerGroup !== group && peers.length === 0) client.setHealth('warning', `no healthy ${peerGroup} peer`)
    else client.setHealth('passing')
    client.setGauge('healthy_peers', peers.length)
  }
  check()
  setInterval(check, 5000).unref()
  console.log(`listening on http://127.0.0.1:${port}`)
})

let closing = false
async function close() {
  if (closing) return
  closing = true
  server.close()
  server.closeIdleConnections?.()
  const left = client ? await client.stop() : true
  console.log(left ? 'left the fleet' : 'closed without a confirmed leave')
}

process.on('SIGTERM', close)
process.on('SIGINT', close)
