// The event-loop figures without a sampling timer (lib/runtime-metrics.js): a stalled loop
// shows up as the lateness of the report tick, and utilization as the loop's busy share.
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const { RuntimeMetrics, PERIOD_MS } = require('../lib/runtime-metrics.js')

function busy(ms) {
  const until = performance.now() + ms
  while (performance.now() < until);
}

test('a blocked event loop is reported as the delay of the tick, and as utilization', async () => {
  const rm = new RuntimeMetrics()
  const published = []
  rm.start(100, (f) => published.push(f), 100)
  try {
    // The first figures come at once, before any tick: memory and utilization, no delay yet.
    assert.equal(published.length, 1)
    assert.ok(published[0].heap_used_bytes > 0 && published[0].rss_bytes > 0)
    assert.equal('event_loop_delay_ms' in published[0], false)
    // Block the loop across the first tick (due 100 ms after start): it runs ~200 ms late.
    busy(300)
    await new Promise((resolve) => setTimeout(resolve, 50))
    const stalled = published[1]
    assert.ok(stalled, 'a tick after the stall')
    assert.ok(stalled.event_loop_delay_ms >= 150, `delay ${stalled.event_loop_delay_ms} ms after a 300 ms stall`)
    assert.equal(stalled.event_loop_delay_max_ms, stalled.event_loop_delay_ms)
    assert.ok(stalled.event_loop_utilization > 0.5, `utilization ${stalled.event_loop_utilization} while blocked`)
    // An idle loop: the next ticks are on time (a loaded CI machine may add some milliseconds),
    // and the max still remembers the stall.
    await new Promise((resolve) => setTimeout(resolve, 350))
    const idle = published.at(-1)
    assert.ok(published.length >= 4, `${published.length} ticks`)
    assert.ok(idle.event_loop_delay_ms < stalled.event_loop_delay_ms, `idle delay ${idle.event_loop_delay_ms} ms`)
    assert.equal(idle.event_loop_delay_max_ms, stalled.event_loop_delay_max_ms)
    assert.ok(idle.event_loop_utilization < stalled.event_loop_utilization)
  } finally {
    rm.stop()
  }
  const n = published.length
  await new Promise((resolve) => setTimeout(resolve, 250))
  assert.equal(published.length, n, 'no tick after stop()')
})

test('by default the figures are refreshed one interval after start, then every PERIOD_MS', async () => {
  assert.equal(PERIOD_MS, 10_000)
  const rm = new RuntimeMetrics()
  const published = []
  rm.start(100, (f) => published.push(f))
  await new Promise((resolve) => setTimeout(resolve, 400))
  rm.stop()
  // At start, and one interval later (with a delay figure); the next is 10 s away.
  assert.equal(published.length, 2)
  assert.ok(published[1].event_loop_delay_ms >= 0)
})

test('the tick never keeps the process alive', () => {
  const rm = new RuntimeMetrics()
  rm.start(1000, () => {})
  // An unref'd timer: process.getActiveResourcesInfo() lists it as 'Timeout' only if ref'd.
  assert.equal(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length, 0)
  rm.stop()
})
