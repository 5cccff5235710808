// Compiled by types.test.js as an ES module (NodeNext): the `import` entry's types.
import { Client, Registry, version } from '../index.mjs'
import sfc from '../index.mjs'

async function main(): Promise<void> {
  const client = new Client({ group: 'esm', insecurePlaintext: true })
  client.start()
  const { registry } = await client.ready({ timeout: 1000 })
  const same: typeof Registry = sfc.Registry
  console.log(registry, same, version, await client.stop())
}

void main
