// Node.js runtime figures sent with the reports, from one unref'd timer (it never keeps the
// process alive) that wakes the event loop once every PERIOD_MS (10 s; or every report interval
// when that is longer), plus once one report interval after start:
// - memory from process.memoryUsage();
// - event_loop_utilization over the last period (performance.eventLoopUtilization(): the
//   loop's own busy/idle accounting, read, not sampled: it wakes nothing);
// - event_loop_delay_ms: how late this timer ran, i.e. how long a callback due at that moment
//   waited for the loop; event_loop_delay_max_ms: the largest of those over the last minute.
// Every report carries the latest figures. Why not per report, and why not
// perf_hooks.monitorEventLoopDelay (which woke the process ~14 times a second): a wake-up of an
// idle Node.js process costs ~0.3 ms of CPU on the 2-core VM we measure on, as much as the whole
// report; see the README's runtime metrics section and BENCHMARKS.md "Client footprint (Node, C)".
'use strict'

const { performance } = require('node:perf_hooks')

// How often the figures are refreshed, at most (ms). Like the host figures the core re-reads
// every 10 s (crates/sfc-client/src/metrics.rs), they feed a fleet view, not an alert.
const PERIOD_MS = 10_000
// event_loop_delay_max_ms covers this much time (ms).
const MAX_WINDOW_MS = 60_000

class RuntimeMetrics {
  #elu = null
  #timer = null
  #due = 0
  #period = 0
  #delays = []

  // Calls `publish(figures)` now, once `intervalMs` later (the first report interval has an
  // event-loop delay figure), then every `periodMs` (default: PERIOD_MS, or `intervalMs` when
  // longer) until stop().
  start(intervalMs, publish, periodMs = Math.max(intervalMs, PERIOD_MS)) {
    this.stop()
    this.#period = periodMs
    this.#elu = performance.eventLoopUtilization()
    publish(this.sample())
    this.#schedule(performance.now() + Math.min(intervalMs, periodMs), publish)
  }

  // A chain of timeouts aimed at fixed instants, so that lateness is measured against when the
  // tick was due, not against when the previous one happened to run.
  #schedule(due, publish) {
    this.#due = due
    this.#timer = setTimeout(() => {
      const now = performance.now()
      // libuv timers have millisecond granularity and fire on the loop's cached clock, so a
      // tick may run up to ~1 ms early: that is no delay.
      this.#record(Math.max(0, now - this.#due))
      publish(this.sample())
      // After a stall longer than a period, aim at one period from now.
      let next = this.#due + this.#period
      if (next <= now) next = now + this.#period
      this.#schedule(next, publish)
    }, Math.max(1, due - performance.now()))
    this.#timer.unref()
  }

  #record(ms) {
    this.#delays.push(Math.round(ms * 1000) / 1000)
    const keep = Math.max(1, Math.ceil(MAX_WINDOW_MS / this.#period))
    if (this.#delays.length > keep) this.#delays.splice(0, this.#delays.length - keep)
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
    if (this.#delays.length > 0) {
      figures.event_loop_delay_ms = this.#delays.at(-1)
      figures.event_loop_delay_max_ms = Math.max(...this.#delays)
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
    if (this.#timer) clearTimeout(this.#timer)
    this.#timer = null
    this.#elu = null
    this.#delays = []
  }
}

module.exports = { RuntimeMetrics, PERIOD_MS, MAX_WINDOW_MS }
