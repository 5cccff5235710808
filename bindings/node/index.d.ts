// Public types of service-fleet-control. Option bags are camelCase; everything that comes
// from the fleet (instances, events, commands, results) keeps the registry's JSON field names,
// the same in every language and on the command line (`sfc status --json`).
// `make test` checks this file against a fresh build (tests/types.test.js).

import { EventEmitter } from 'node:events'

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
  /** Runtime figures, for Node.js: heap_used_bytes, event_loop_delay_p99_ms, event_loop_utilization... */
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

export interface ClientEvents {
  connected: [info: { registry: string; session: number }]
  disconnected: [info: { registry: string; reason: string }]
  /** Return a value or a Promise: the first defined value goes back; a throw goes back as the error. */
  command: [command: Command]
  /** The registry asks the application to stop (also delivered to 'command' listeners). */
  shutdown: [command: Command]
  /** A problem the client recovers from by itself (refused TLS, bad certificate...). */
  error: [error: Error & { code?: string }]
}

/**
 * One service instance in the fleet. Reporting runs on a native thread; the client never
 * keeps the process alive by itself (like an unref'd socket).
 */
export declare class Client extends EventEmitter {
  /** Throws a TypeError naming the option when one is wrong. */
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
  /** Sends leave and closes. Resolves to whether the registry confirmed the leave. */
  stop(): Promise<boolean>
  setHealth(status: Health, note?: string | null): this
  setGauge(name: string, value: number): this
  /** Instances of a group, from a cache a watch keeps current. */
  lookup(group: string, options?: LookupOptions): Promise<Lookup>
  /** Calls `callback` for every matching transition; returns the unsubscribe function. */
  watch(filter: WatchFilter, callback: (event: FleetEvent) => void): () => void
  watch(callback: (event: FleetEvent) => void): () => void

  on<K extends keyof ClientEvents>(event: K, listener: (...args: ClientEvents[K]) => unknown): this
  once<K extends keyof ClientEvents>(event: K, listener: (...args: ClientEvents[K]) => unknown): this
  off<K extends keyof ClientEvents>(event: K, listener: (...args: ClientEvents[K]) => unknown): this
  emit<K extends keyof ClientEvents>(event: K, ...args: ClientEvents[K]): boolean
}

export interface RegistryOptions {
  /** `host:port`; port 0 picks a free one. Default 127.0.0.1:7480. */
  listen?: string
  /** Development certificates are created in `<dataDir>/tls/` when no tlsCert is given. Default ./sfc-data. */
  dataDir?: string
  tlsCert?: string | Buffer
  tlsKey?: string | Buffer
  /** Ask clients for certificates. Default off. */
  mtls?: 'off' | 'optional' | 'required'
  clientCa?: string | Buffer
  insecurePlaintext?: boolean
  /** Intervals without a frame before an instance goes offline (1 ..= 100); default 3. */
  missedReports?: number
  /** Milliseconds offline and left records are kept; default 24 h. */
  retention?: number
  handshakeTimeout?: number
  maxConnections?: number
  maxFrame?: number
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
