// service-fleet-control: a Node.js service joins the fleet with `Client`; `Registry` runs the
// registry inside the process. The native part (Rust, napi-rs) is loaded by `native.js`.
'use strict'

const { Client } = require('./lib/client.js')
const { Registry } = require('./lib/registry.js')
const { native } = require('./lib/binding.js')

module.exports = { Client, Registry, version: native.nativeVersion() }
