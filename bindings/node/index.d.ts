// Public types of service-fleet-control. Option bags are camelCase; everything that comes
// from the fleet (instances, events, commands, results) keeps the registry's JSON field names,
// the same in every language and on the command line (`sfc status --json`).
// `make test` checks this file against a fresh build (tests/types.test.js).

/// <reference types="node" />
import { EventEmitter } from 'node:events'
import type { NativeRegistryOptions } from './native-registry.js'

/**
 * Every error the package makes has a stable `code`: `ERR_SFC_` and the name of the C status
 * (`SFC_STATUS_<NAME>` in sfc.h), or of the protocol error code the registry sent (PROTOCOL.md
 * §11: `not-online` is `ERR_SFC_NOT_ONLINE`, kept as `protocolCode`). A cancelled wait is
 * Node.js's `AbortError` (`ABORT_ERR`, or the signal's own reason). See README.md, "Errors".
 */
export type ErrorCode =
  | 'ERR_SFC_INVALID_ARGUMENT'
  | 'ERR_SFC_INVALID_JSON'
  | 'ERR_SFC_FILE'
  | 'ERR_SFC_TLS'
  | 'ERR_SFC_IO'
  | 'ERR_SFC_REMOTE'
  | 'ERR_SFC_PROTOCOL'
  | 'ERR_SFC_UNREACHABLE'
  | 'ERR_SFC_TIMEOUT'
  | 'ERR_SFC_STOPPED'
  | 'ERR_SFC_NATIVE_BINDING'
  | 'ERR_SFC_LAGGED'
  // From the protocol's error codes (PROTOCOL.md §11), the ones a client or Registry sees:
  | 'ERR_SFC_SUPERSEDED'
  | 'ERR_SFC_NOT_AUTHORIZED'
  | 'ERR_SFC_INVALID_FIELD'
  | 'ERR_SFC_TOO_MANY_CONNECTIONS'
  | 'ERR_SFC_SHUTTING_DOWN'
  | 'ERR_SFC_UNSUPPORTED_VERSION'
  | 'ERR_SFC_UNSUPPORTED_CODEC'
  | 'ERR_SFC_HANDSHAKE_TIMEOUT'
  | 'ERR_SFC_RATE_LIMITED'
  | 'ERR_SFC_NOT_ONLINE'
  | 'ERR_SFC_UNKNOWN_INSTANCE'
  | 'ERR_SFC_COMMAND_TIMEOUT'
  | 'ERR_SFC_TOO_MANY_INSTANCES'
  | 'ERR_SFC_SLOW_CONSUMER'
  | (string & {})

/** An error of this package. */
export interface SfcError extends Error {
  code: ErrorCode
  /** The protocol error code (`not-online`, `superseded`...) when the registry sent one. */
  protocolCode?: string
}

/** A wrong option or argument: `code` `ERR_SFC_INVALID_ARGUMENT` (or `ERR_SFC_FILE` / `ERR_SFC_TLS` for unusable TLS material). */
export interface SfcOptionError extends TypeError {
  code: ErrorCode
  /** The option's path: `interval`, `endpoints[0].port`, `api.kind`. */
  option: string
}

export type Health = 'passing' | 'warning' | 'critical'
export type InstanceStatus = 'online' | 'offline' | 'left'

export interface Endpoint {
  name: string
  host: string
  port: number
  /** Default `tcp`. */
  protocol?: string
}

export interface ApiDescription {
  kind: 'openapi' | 'graphql' | 'other'
  url: string
}

export interface ClientOptions {
  /** Registry address(es), `host:port`; several for failover. Default `SFC_REGISTRY` or 127.0.0.1:7480. */
  registry?: string | string[]
  /** Display name; defaults to the group. */
  service?: string
  /** Group that instances of one service share; defaults to the service. */
  group?: string
  /** Unique within the group; default `<hostname>-<pid>`. */
  instanceId?: string
  /** Overrides the reported hostname. */
  hostname?: string
  /** Milliseconds between reports (100 ..= 3 600 000); default 1000. */
  interval?: number
  endpoints?: Endpoint[]
  tags?: string[]
  metadata?: Record<string, string>
  version?: string
  api?: ApiDescription
  /** CA to trust besides the system roots: a PEM file path, PEM text or a Buffer. */
  ca?: string | Buffer
  /** Client certificate for mutual TLS: a PEM file path, PEM text or a Buffer. */
  cert?: string | Buffer
  key?: string | Buffer
  /** Talk to a registry started with `--insecure-plaintext`. */
  insecurePlaintext?: boolean
  /** Milliseconds to wait for a registry; default 5000. */
  connectTimeout?: number
  /** Milliseconds stop() may take; default 5000. */
  stopTimeout?: number
  /** Sample host and process metrics into reports; default true. */
  sampleMetrics?: boolean
  /** Send Node.js heap, event-loop delay and utilisation with reports; default true. */
  runtimeMetrics?: boolean
  /**
   * Legacy fallback; default false. Against a registry that predates protocol v1 (the original
   * `service_fleet_control` registry: it selects no ALPN `sfc/1`), report in the original wire
   * format, one TLS connection per report, and move to protocol v1 by itself once the registry
   * is upgraded. Without it such a registry is refused (an `error` event saying the registry
   * predates protocol v1) and sent nothing. Needs TLS. Lookups and watches wait for a v1 registry.
   */
  legacy?: boolean
}

export interface Metrics {
  host: {
    hostname?: string
    os_name?: string
    os_version?: string
    kernel?: string
    arch?: string
    cpu_count?: number
    cpu_percent?: number
    load_average?: [number, number, number]
    memory_total_bytes?: number
    memory_used_bytes?: number
    memory_available_bytes?: number
    swap_total_bytes?: number
    swap_used_bytes?: number
    uptime_seconds?: number
  }
  process: {
    pid?: number
    resident_bytes?: number
    virtual_bytes?: number
    cpu_percent?: number
    threads?: number
    start_time?: number
    open_fds?: number
    user?: string
  }
  /** Runtime figures, for Node.js: heap_used_bytes, event_loop_delay_ms, event_loop_utilization... */
  runtime?: Record<string, number>
  /** Gauges set with setGauge(). */
  custom?: Record<string, number>
}

/** An instance as the registry knows it. */
export interface Instance {
  /** `<group>/<instance_id>`. */
  id: string
  group: string
  service: string
  instance_id: string
  hostname: string
  pid: number
  status: InstanceStatus
  offline_reason: 'connection-lost' | 'missed-reports' | 'registry-restart' | 'superseded' | null
  health: Health
  health_note: string | null
  endpoints: Required<Endpoint>[]
  tags: string[]
  metadata: Record<string, string>
  version: string | null
  api: ApiDescription | null
  interval_ms: number
  /** Unix milliseconds, registry clock. */
  connected_since: number | null
  last_report_at: number | null
  tls_identity: string | null
  metrics: Metrics
  /** `v1`, or `legacy` for the original module's clients. */
  wire: string
  clock_skew_ms?: number | null
  status_since: number
}

/** A lookup answer; `stale` is true when the registry is unreachable and it comes from cache. */
export type Lookup = Instance[] & { readonly stale: boolean }

export type EventKind =
  | 'joined'
  | 'online'
  | 'offline'
  | 'left'
  | 'evicted'
  | 'health-changed'
  | 'command-sent'
  | 'command-result'
  | 'report'

/** One transition of an instance. */
export interface FleetEvent {
  seq: number
  at: number
  kind: EventKind
  id: string
  group: string
  service: string
  instance?: Instance
  detail?: unknown
}

export interface Filter {
  group?: string
  service?: string
  status?: InstanceStatus
  health?: Health
  tag?: string
}

export interface WatchFilter extends Filter {
  /** Also deliver every report of a matching instance (kind `report`). */
  reports?: boolean
}

export interface LookupOptions {
  /** Only online instances whose health is passing. */
  healthyOnly?: boolean
  service?: string
  tag?: string
  /** Rejects the lookup with the abort reason when aborted. */
  signal?: AbortSignal
}

export interface WatchOptions extends WatchFilter {
  /** Ends the watch when aborted (an iterator's pending `next()` rejects with the reason). */
  signal?: AbortSignal
}

export interface ReadyOptions {
  /** Rejects with the abort reason when aborted. */
  signal?: AbortSignal
  /** Milliseconds to wait; then rejects with `ERR_SFC_TIMEOUT` (its `cause`: the last error). No limit by default. */
  timeout?: number
}

/** The connection `ready()` resolves to, and the `connected` event's argument. */
export interface ConnectionInfo {
  /** The registry's `host:port`. */
  registry: string
  /** The registry's session number. */
  session: number
}

/** The unsubscribe function `watch(filter, callback)` returns (also `using`-disposable). */
export interface Unsubscribe extends Disposable {
  (): void
}

/**
 * What `watch(filter)` returns without a callback: the matching events, in order, for
 * `for await`. Events arriving while nobody awaits are queued. `break`, `close()`, the signal,
 * or `using` end it.
 */
export interface FleetWatch extends AsyncIterableIterator<FleetEvent>, AsyncDisposable, Disposable {
  /** Ends the watch; the loop ends after the events already queued. */
  close(): void
  /** Events queued and not yet read. */
  readonly pending: number
}

/** A command from the registry. */
export interface Command {
  command_id: number
  /** `shutdown`, or an application-defined name. */
  name: string
  reason: string | null
  payload: unknown
  issued_by: string | null
}

export interface CommandResult {
  command_id: number
  ok: boolean
  result: unknown
  error: string | null
}

/**
 * The client's events and their arguments, for listeners and for `events.once`:
 * `const [info] = (await once(client, 'connected')) as ClientEvents['connected']`.
 */
export interface ClientEvents {
  connected: [info: ConnectionInfo]
  disconnected: [info: { registry: string; reason: string }]
  /** Return a value or a Promise: the first defined value goes back; a throw goes back as the error. */
  command: [command: Command]
  /** The registry asks the application to stop (also delivered to 'command' listeners). */
  shutdown: [command: Command]
  /**
   * A problem the client recovers from by itself (refused TLS, bad certificate, registry
   * unreachable...). Emitted when the state changes, not on every retry: once per failure
   * until the next `connected` (or a different failure).
   */
  error: [error: SfcError]
}

/**
 * One service instance in the fleet. Reporting runs on a native thread; reporting alone never
 * keeps the process alive. An open watch, a pending ready() or lookup() do (like a socket),
 * unless unref().
 */
export declare class Client extends EventEmitter {
  /** Throws a TypeError (`SfcOptionError`) naming the option when one is wrong. */
  constructor(options?: ClientOptions)
  /** `<group>/<instanceId>`. */
  readonly id: string
  readonly group: string
  readonly instanceId: string
  /** Whether a session with a registry is established now. */
  readonly connected: boolean
  /** Between start() and stop(). */
  readonly running: boolean
  /** Starts reporting; never waits on the network. May be called again after stop(). */
  start(): this
  /**
   * Sends leave and closes. Resolves to whether the registry confirmed the leave: false when
   * not running, with no session, or unconfirmed. Commands still being handled are answered
   * first (`shutdown` with success), so `await client.stop()` inside a `shutdown` listener
   * answers the command and then leaves.
   */
  stop(): Promise<boolean>
  /** Resolves once connected to a registry (at once if connected). */
  ready(options?: ReadyOptions): Promise<ConnectionInfo>
  /** Open watches and pending waits no longer keep the process alive. */
  unref(): this
  /** Undoes unref(). */
  ref(): this
  /** `await using client = new Client(...)` stops it at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void>
  setHealth(status: Health, note?: string | null): this
  setGauge(name: string, value: number): this
  /** Instances of a group, from a cache a watch keeps current. Rejects (TypeError) on a group name the registry would refuse. */
  lookup(group: string, options?: LookupOptions): Promise<Lookup>
  /** Calls `callback` for every matching transition; returns the unsubscribe function. */
  watch(filter: WatchOptions, callback: (event: FleetEvent) => void): Unsubscribe
  watch(callback: (event: FleetEvent) => void): Unsubscribe
  /** The matching transitions as an async iterator (`for await`). */
  watch(filter?: WatchOptions): FleetWatch

  on<K extends keyof ClientEvents>(event: K, listener: (...args: ClientEvents[K]) => unknown): this
  once<K extends keyof ClientEvents>(event: K, listener: (...args: ClientEvents[K]) => unknown): this
  off<K extends keyof ClientEvents>(event: K, listener: (...args: ClientEvents[K]) => unknown): this
  emit<K extends keyof ClientEvents>(event: K, ...args: ClientEvents[K]): boolean
}

/**
 * Options of `Registry`: the registry addon's own `NativeRegistryOptions` (generated from its
 * Rust source into native-registry.d.ts, which documents each option and its default), with
 * PEM material also accepted as a Buffer.
 */
export interface RegistryOptions extends Omit<NativeRegistryOptions, 'tlsCert' | 'tlsKey' | 'clientCa'> {
  tlsCert?: string | Buffer
  tlsKey?: string | Buffer
  clientCa?: string | Buffer
}

export interface RegistryEvents {
  event: [event: FleetEvent]
}

/** The registry, running inside this process. While started it keeps the process alive (see unref()). */
export declare class Registry extends EventEmitter {
  /** Throws a TypeError naming the option when one is wrong. */
  constructor(options?: RegistryOptions)
  /** `host:port` it listens on, once started. */
  readonly address: string | null
  /** `host:port` of the HTTP API and `/metrics`, once started with the `http` option. */
  readonly httpAddress: string | null
  /** Binds and serves; resolves to the bound address. */
  start(): Promise<string>
  stop(): Promise<void>
  unref(): this
  ref(): this
  /** Records grouped by group. */
  fleet(filter?: Filter): Record<string, Instance[]>
  /** Records matching the filter, sorted by id. */
  instances(filter?: Filter): Instance[]
  /** Sends a command to an online instance (`<group>/<instanceId>`) and resolves to its result. */
  sendCommand(id: string, name: string, payload?: unknown, options?: { reason?: string; timeout?: number }): Promise<CommandResult>

  on<K extends keyof RegistryEvents>(event: K, listener: (...args: RegistryEvents[K]) => unknown): this
  once<K extends keyof RegistryEvents>(event: K, listener: (...args: RegistryEvents[K]) => unknown): this
  off<K extends keyof RegistryEvents>(event: K, listener: (...args: RegistryEvents[K]) => unknown): this
  emit<K extends keyof RegistryEvents>(event: K, ...args: RegistryEvents[K]): boolean
}

/** Version of the native part. */
export declare const version: string
