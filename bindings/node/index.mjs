// The ES module entry of service-fleet-control (`import { Client } from 'service-fleet-control'`):
// the same objects as the CommonJS entry (index.js), so that a process that both imports and
// requires the package holds one copy of each class.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const sfc = require('./index.js')

export const { Client, Registry, version } = sfc
export default sfc
