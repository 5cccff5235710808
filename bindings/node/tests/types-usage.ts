// Compiled with `tsc --noEmit --strict` by types.test.js: the README's usage must type-check.
import { Client, Registry, Instance, FleetEvent, CommandResult, version } from '..'
import Control = require('../compat')

async function main(): Promise<void> {
  const registry = new Registry({ listen: '127.0.0.1:0', dataDir: './sfc-data', mtls: 'off' })
  const address: string = await registry.start()
  registry.on('event', (e: FleetEvent) => console.log(e.kind, e.id))
  const client = new Client({ registry: [address], group: 'web', interval: 1000, ca: './sfc-data/tls/ca.pem' })
  client.on('command', async (cmd) => ({ handled: cmd.name }))
  client.on('shutdown', () => undefined)
  client.on('connected', ({ registry, session }) => console.log(registry, session))
  client.start().setHealth('passing').setGauge('queue', 1)
  const peers = await client.lookup('api', { healthyOnly: true })
  const stale: boolean = peers.stale
  const first: Instance | undefined = peers[0]
  const stop = client.watch({ group: 'api', status: 'online' }, (e) => console.log(e.instance?.health))
  stop()
  const r: CommandResult = await registry.sendCommand('web/x', 'ping', { a: 1 }, { timeout: 1000 })
  const left: boolean = await client.stop()
  const grouped: Record<string, Instance[]> = registry.fleet({ group: 'web' })
  await registry.stop()
  const control = new Control({ role: 'tlsService', serviceName: 's', groupingKey: 'g', registryPort: 50000 })
  await control.init()
  const status = control.registryService?.getServiceFleetStatus()
  console.log(version, stale, first, r.ok, left, grouped, status?.g?.[0]?.metrics.loadadv)
  await control.stopTLSClient()
}

void main
