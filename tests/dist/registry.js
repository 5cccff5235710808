// The embedded registry from the installed packages: native-registry.js must find
// sfc-registry.<platform>.node inside the platform package. Starts one on a free loopback port
// with its data in argv[2], prints its address and the package version, stops it.
'use strict'
const { Registry, version } = require('service-fleet-control')

async function main() {
  const registry = new Registry({ listen: '127.0.0.1:0', dataDir: process.argv[2] })
  const address = await registry.start()
  const groups = Object.keys(registry.fleet())
  await registry.stop()
  console.log(`embedded registry ${version} listened on ${address} (${groups.length} groups)`)
}
main().catch((e) => {
  console.log(`failed: ${e.stack}`)
  process.exit(1)
})
