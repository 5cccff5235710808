// Types of `service-fleet-control/compat`, the drop-in replacement for the original
// `service_fleet_control` module.

import { Client, Registry } from './index'

declare namespace Control {
  interface Config {
    role?: 'tlsService' | 'tlsRegistry' | string
    serviceName?: string
    groupingKey?: string
    hostName?: string
    updateIntervalSeconds?: number
    registryHost?: string
    registryPort?: number | string
    useSelfSignedCerts?: boolean
    ca?: string
    certFile?: string
    certKeyFile?: string
    shouldServerRequestClientCerts?: boolean
    clientShouldUseCerts?: boolean
    clientCert?: string
    clientKey?: string
    makeServerThrow?: boolean
    makeClientThrow?: boolean
    /** Not in the original: where the registry keeps development certificates. */
    dataDir?: string
  }

  /** A record of getServiceFleetStatus(), in the original shape: the last report plus `online`. */
  interface ServiceRecord {
    serviceName: string
    groupingKey: string
    /** ISO-8601, the client's clock. */
    time: string
    online: boolean
    metrics: {
      /** The keys of Node.js `process.memoryUsage()` the instance sent. */
      rss?: number
      heapTotal?: number
      heapUsed?: number
      external?: number
      arrayBuffers?: number
      hostname: string
      numCpus?: number
      freemem?: number
      loadadv?: [number, number, number]
      user?: string
      uptime?: number
      updateIntervalSeconds: number
    }
  }

  /** `control.store` (role tlsRegistry): the embedded registry's fleet in the original shape. */
  interface RegistryStore {
    getAll(): ServiceRecord[]
    aggregate(): Record<string, ServiceRecord[]>
  }

  /** `control.registryService` (role tlsRegistry). */
  interface RegistryService {
    getServiceFleetStatus(): Record<string, ServiceRecord[]>
    /** Binds and serves (init() calls it). */
    listen(): Promise<void>
    /** Not in the original: stops the embedded registry. */
    stop(): Promise<void>
    /** Not in the original: the native registry. */
    registry: Registry
  }

  /** `control.registryClient` (role tlsService): start() and stop() run the reports. */
  interface RegistryClient {
    start(): RegistryClient
    /** Resolves like `Client.stop()`. */
    stop(): Promise<boolean>
    /** Not in the original: the native client (with the `legacy` fallback on). */
    client: Client
  }

  /** Not in the original, which never stopped a registry: stops `control`'s embedded registry. */
  function stopTLSRegistry(control: Control): Promise<void>
}

/**
 * The original's `Control`, with exactly its public surface. Role `tlsService` reports to an
 * `sfc` registry over protocol v1, or in the original wire format to a registry that predates
 * it (and moves to v1 once that registry is replaced); role `tlsRegistry` runs an embedded
 * `sfc` registry, which also reads the original wire format.
 */
declare class Control {
  constructor(config: Control.Config)
  config: Control.Config
  /** The registry's fleet (role tlsRegistry, after init()); null otherwise. */
  store: Control.RegistryStore | null
  /** Whether init() understood `config.role`. */
  configIsGood: boolean
  registryService: Control.RegistryService | null
  /** The running client (role tlsService, after init()); null otherwise. */
  registryClient: Control.RegistryClient | null
  /** Starts the client or the registry, by `config.role`. */
  init(): Promise<void>
  isTLSService(): boolean
  isTLSRegistry(): boolean
  setupRegistryStore(): void
  /** Starts the registry made by init() (the original's spelling). */
  startTlSRegistryService(): Promise<void>
  /** Starts reporting again after stopTLSClient(). */
  startTLSClient(): Promise<void>
  /** Stops the client; it leaves the fleet. */
  stopTLSClient(): Promise<boolean>
}

export = Control
