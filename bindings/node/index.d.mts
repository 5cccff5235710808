// Types of the ES module entry (index.mjs): the same declarations as index.d.ts.
import * as sfc from './index.js'

export * from './index.js'
export default sfc
