// Compiled with `tsc --noEmit --strict` by types.test.js: the README's usage must type-check.
import { once } from 'node:events'
import { Client, Registry, Instance, FleetEvent, CommandResult, ClientEvents, ConnectionInfo, FleetWatch, SfcError, version } from '..'
import Control = require('../compat')

async function main(): Promise<void> {
  const registry = new Registry({ listen: '127.0.0.1:0', dataDir: './sfc-data', mtls: 'off' })
  const address: string = await registry.start()
  const scraped = new Registry({ listen: '127.0.0.1:0', http: '127.0.0.1:0', metricsInstances: 'all', tlsCert: Buffer.from('') })
  const metricsAt: string | null = scraped.httpAddress
  new Registry({ metricsInstances: 500 })
  // @ts-expect-error metricsInstances is 'none', 'all' or a number
  new Registry({ metricsInstances: 'some' })
  // @ts-expect-error mtls is one of off, optional, required
  new Registry({ mtls: 'on' })
  console.log(metricsAt)
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
  const ac = new AbortController()
  const info: ConnectionInfo = await client.ready({ signal: ac.signal, timeout: 5000 })
  const [again] = (await once(client, 'connected')) as ClientEvents['connected']
  console.log(info.registry, again.session)
  client.on('error', (e) => {
    const code: string = e.code
    const protocolCode: string | undefined = e.protocolCode
    console.log(code, protocolCode)
  })
  client.on('shutdown', async () => {
    const confirmed: boolean = await client.stop()
    console.log(confirmed)
  })
  await client.lookup('api', { signal: AbortSignal.timeout(1000) })
  const events: FleetWatch = client.watch({ group: 'api', signal: ac.signal })
  for await (const e of events) {
    const f: FleetEvent = e
    if (f.kind === 'left') break
  }
  const unsubscribe = client.watch({ group: 'api', reports: true }, (e) => console.log(e.kind))
  unsubscribe[Symbol.dispose]()
  client.unref().ref()
  try {
    await client.lookup('a/b')
  } catch (e) {
    console.log((e as SfcError).code)
  }
  await client[Symbol.asyncDispose]()
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
