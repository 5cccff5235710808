// Bounded waiting: polls a condition until it holds or the deadline passes (then throws with
// what was last seen). Deadlines bound the test; they are never what a test asserts.
'use strict'

const { setTimeout: sleep } = require('node:timers/promises')

async function until(what, fn, { timeout = 15000, every = 50 } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    last = await fn()
    if (last) return last
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(every)
  }
}

// The next `event` emitted by `emitter`, within `timeout`.
function once(emitter, event, timeout = 15000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      emitter.off(event, on)
      reject(new Error(`timed out waiting for '${event}'`))
    }, timeout)
    const on = (v) => {
      clearTimeout(t)
      resolve(v)
    }
    emitter.once(event, on)
  })
}

module.exports = { until, once, sleep }
