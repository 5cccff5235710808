// Node.js runtime figures sent with every report: memory from process.memoryUsage(),
// event-loop delay from perf_hooks.monitorEventLoopDelay (percentiles over the last interval)
// and event-loop utilisation over the last interval. Sampled by an unref'd timer, so it never
// keeps the process alive.
'use strict'

const { monitorEventLoopDelay, performance } = require('node:perf_hooks')

// The histogram wakes the loop every RESOLUTION_MS; each wakeup costs CPU (see BENCHMARKS.md),
// so it samples at 100 ms rather than Node's default 10 ms.
const RESOLUTION_MS = 100
const NS_PER_MS = 1e6

class RuntimeMetrics {
  #histogram = null
  #elu = null
  #timer = null

  // Calls `publish(figures)` now and then every `intervalMs` until stop().
  start(intervalMs, publish) {
    this.stop()
    this.#histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS })
    this.#histogram.enable()
    this.#elu = performance.eventLoopUtilization()
    const tick = () => publish(this.sample())
    tick()
    this.#timer = setInterval(tick, intervalMs)
    this.#timer.unref()
  }

  sample() {
    const m = process.memoryUsage()
    const figures = {
      rss_bytes: m.rss,
      heap_total_bytes: m.heapTotal,
      heap_used_bytes: m.heapUsed,
      external_bytes: m.external,
      array_buffers_bytes: m.arrayBuffers,
    }
    const h = this.#histogram
    if (h && h.count > 0) {
      // The histogram records the time between its samples, resolution included.
      const delay = (ns) => Math.max(0, ns / NS_PER_MS - RESOLUTION_MS)
      figures.event_loop_delay_p50_ms = delay(h.percentile(50))
      figures.event_loop_delay_p99_ms = delay(h.percentile(99))
      figures.event_loop_delay_max_ms = delay(h.max)
      h.reset()
    }
    if (this.#elu) {
      const now = performance.eventLoopUtilization()
      figures.event_loop_utilization = performance.eventLoopUtilization(now, this.#elu).utilization
      this.#elu = now
    }
    for (const k of Object.keys(figures)) if (!Number.isFinite(figures[k])) delete figures[k]
    return figures
  }

  stop() {
    if (this.#timer) clearInterval(this.#timer)
    if (this.#histogram) this.#histogram.disable()
    this.#timer = null
    this.#histogram = null
    this.#elu = null
  }
}

module.exports = { RuntimeMetrics }
