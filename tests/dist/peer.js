// The other service that tests/dist/service.js looks up: a Client in group `dist-peer`, kept
// alive until tests/dist/node.sh stops it (SIGTERM: it leaves, then exits).
'use strict'
const { Client } = require('service-fleet-control')

const client = new Client({ service: 'dist-peer', group: 'dist-peer', instanceId: 'peer-1', interval: 200 })
client.on('error', (e) => console.log(`client error: ${e.message}`))
client.on('connected', ({ registry }) => console.log(`connected to ${registry}`))
client.start()
setInterval(() => {}, 1 << 30)
process.on('SIGTERM', async () => {
  await client.stop()
  process.exit(0)
})
