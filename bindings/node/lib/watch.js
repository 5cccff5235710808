// `FleetWatch`: what `client.watch(filter)` returns without a callback, an async iterator of
// fleet events (`for await (const event of client.watch({ group }))`). Events that arrive while
// nobody awaits are queued in order. Breaking out of the loop, `close()`, an aborted `signal` or
// `using` / `await using` end the watch; an aborted signal makes the pending `next()` reject
// with the abort reason (an `AbortError`), as `events.on` does.
'use strict'

const asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose')
const dispose = Symbol.dispose ?? Symbol.for('nodejs.dispose')

class FleetWatch {
  #queue = []
  #waiters = []
  #done = false
  #error = null
  #unsubscribe

  /** @param {() => void} unsubscribe ends the watch on the client. */
  constructor(unsubscribe) {
    this.#unsubscribe = unsubscribe
  }

  /** Internal: one event from the client. */
  _push(event) {
    if (this.#done) return
    const w = this.#waiters.shift()
    if (w) w.resolve({ value: event, done: false })
    else this.#queue.push(event)
  }

  /** Internal: the watch ended; with `error`, the pending (or next) `next()` rejects with it. */
  _end(error) {
    if (this.#done) return
    this.#done = true
    if (error) {
      this.#error = error
      this.#queue.length = 0
    }
    for (const w of this.#waiters.splice(0)) {
      if (this.#error) {
        w.reject(this.#error)
        this.#error = null
      } else {
        w.resolve({ value: undefined, done: true })
      }
    }
  }

  /** Events queued and not yet read. */
  get pending() {
    return this.#queue.length
  }

  next() {
    if (this.#queue.length > 0) return Promise.resolve({ value: this.#queue.shift(), done: false })
    if (this.#done) {
      const e = this.#error
      this.#error = null
      return e ? Promise.reject(e) : Promise.resolve({ value: undefined, done: true })
    }
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }))
  }

  /** Ends the watch (what `break` in a `for await` loop calls). */
  return() {
    this.close()
    return Promise.resolve({ value: undefined, done: true })
  }

  /** Ends the watch: the loop ends after the events already queued. */
  close() {
    this.#unsubscribe()
    this._end()
  }

  [Symbol.asyncIterator]() {
    return this
  }

  [dispose]() {
    this.close()
  }

  async [asyncDispose]() {
    this.close()
  }
}

module.exports = { FleetWatch, asyncDispose, dispose }
