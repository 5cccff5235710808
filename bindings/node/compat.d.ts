// Types of `service-fleet-control/compat`, the drop-in replacement for the original
// `service_fleet_control` module.

import { Client, Registry } from './index'

declare namespace Control {
  interface Config {
    role: 'tlsService' | 'tlsRegistry' | string
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

  /** A record of getServiceFleetStatus(), in the original shape. */
  interface ServiceRecord {
    serviceName: string
    groupingKey: string
    /** ISO-8601, the client's clock. */
    time: string
    online: boolean
    metrics: {
      rss?: number
      heapTotal?: number
      heapUsed?: number
      external?: number
      hostname: string
      numCpus?: number
      freemem?: number
      loadadv?: [number, number, number]
      user?: string
      uptime?: number
      updateIntervalSeconds: number
    }
  }

  interface RegistryService {
    getServiceFleetStatus(): Record<string, ServiceRecord[]>
  }
}

declare class Control {
  constructor(config: Control.Config)
  config: Control.Config
  client: Client | null
  registry: Registry | null
  registryService: Control.RegistryService | null
  /** Starts the client or the registry, by `config.role`. */
  init(): Promise<void>
  /** Stops the client; it leaves the fleet. */
  stopTLSClient(): Promise<boolean>
  /** Not in the original API: stops an embedded registry. */
  stopTLSRegistry(): Promise<void>
}

export = Control
