// A small service as a user writes it, run by tests/dist/node.sh from an app directory where
// only the npm tarballs are installed. It reports to the registry SFC_REGISTRY (trusting
// SFC_CA), waits until its own report is visible and until it can look up the service in
// group `dist-peer`, prints `ready`, and exits 0 when the registry sends it `shutdown`.
'use strict'
const { Client } = require('service-fleet-control')

const client = new Client({
  service: 'dist-svc',
  group: 'dist-svc',
  instanceId: 'svc-1',
  interval: 200,
  version: '1.0.0',
})
const fail = (why) => {
  console.log(`failed: ${why}`)
  process.exit(1)
}
const deadline = setTimeout(() => fail('not ready within 30 s'), 30000)
client.on('error', (e) => console.log(`client error: ${e.message}`))
client.on('shutdown', (cmd) => {
  console.log(`shutdown received (${JSON.stringify(cmd.payload ?? null)})`)
  // Answer first (the value goes back to `sfc shutdown`), then leave and exit.
  setTimeout(async () => {
    await client.stop()
    console.log('stopped')
    process.exit(0)
  }, 200)
  return { stopping: 'svc-1' }
})
client.start()

async function poll() {
  for (;;) {
    const own = (await client.lookup('dist-svc')).find((i) => i.instance_id === 'svc-1')
    const peers = (await client.lookup('dist-peer')).filter((i) => i.status === 'online')
    if (own && own.status === 'online' && own.last_report_at !== null && peers.length > 0) {
      console.log(`reported (last_report_at ${own.last_report_at})`)
      console.log(`looked up dist-peer: ${peers.map((p) => p.id).join(', ')}`)
      clearTimeout(deadline)
      // Keep the process alive (the client's timers are unref'd) until the shutdown command.
      setInterval(() => {}, 1 << 30)
      console.log('ready')
      return
    }
    await new Promise((r) => setTimeout(r, 100))
  }
}
poll().catch((e) => fail(e.stack))
