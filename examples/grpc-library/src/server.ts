// Wires the SDK together and serves the Library and the gRPC health service. `node
// dist/server.js` runs it from environment variables (see config.ts); tests call start().
import { pathToFileURL } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { type Cache, createCache } from '@resilient/cache'
import { type AdminListener, createHealth, type Health } from '@resilient/health'
import { addHealthService } from '@resilient/health/grpc'
import { createPgRouter, type PgRouter } from '@resilient/pg-router'
import { configFromEnv, type LibraryConfig } from './config.js'
import { LibraryService, libraryHandlers } from './service.js'

export interface Service {
  /** `127.0.0.1:<port>` of the gRPC server. */
  address: string
  port: number
  admin: AdminListener | undefined
  server: grpc.Server
  db: PgRouter
  cache: Cache
  health: Health
  /** Every health service NOT_SERVING at once; after drainDelayMs the server drains; then the pools and Redis close. */
  close(options?: { drainDelayMs?: number }): Promise<unknown>
}

/** Builds the router, the cache, the health state and the gRPC server, and listens. */
export async function start(config: LibraryConfig): Promise<Service> {
  const db = createPgRouter({
    ...(config.patroni ? { patroni: config.patroni } : { hosts: config.hosts ?? [] }),
    connection: config.connection,
    ...(config.poolMax === undefined ? {} : { pool: { max: config.poolMax } }),
  })
  const cache = createCache({
    redis: config.redis,
    namespace: 'library',
    // Stale-while-slow: an expired book stays servable for an hour; a reload slower than
    // 200 ms (a failover) is answered from the stale value while it finishes.
    graceMs: 3_600_000,
    loaderTimeoutMs: { soft: 200 },
  })
  const health = createHealth({
    checks: {
      // Without Postgres nothing works: NOT_SERVING. Without Redis the cache serves from its
      // in-process L1 and from Postgres: '' stays SERVING (warn), 'redis' is NOT_SERVING.
      postgres: { check: db.check, critical: true },
      redis: { check: cache.check, critical: false },
    },
    ...(config.drainDelayMs === undefined ? {} : { drainDelayMs: config.drainDelayMs }),
    // Closed on shutdown, after the gRPC server has drained.
    resources: { postgres: () => db.close(), redis: () => cache.close() },
  })

  const server = new grpc.Server()
  server.addService(LibraryService.service, libraryHandlers({ db, cache }))
  // grpc.health.v1: '' = readiness, 'postgres' and 'redis' by name, 'liveness' for the
  // kubelet's liveness probe. Also drains this server on health.shutdown() / SIGTERM.
  addHealthService(server, health, { livenessService: 'liveness' })
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${config.host}:${config.port}`, grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    )
  })
  // Verbose health (member names, outputs, breakers), /metrics and /health/circuit-breakers
  // on a port of their own, for operators and Prometheus only.
  const admin =
    config.adminPort === undefined
      ? undefined
      : await health.listenAdmin({
          port: config.adminPort,
          ...(config.adminHost ? { host: config.adminHost } : {}),
        })
  return {
    address: `127.0.0.1:${port}`,
    port,
    admin,
    server,
    db,
    cache,
    health,
    close: (options) => health.shutdown(options),
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const service = await start(configFromEnv())
  // SIGTERM (Kubernetes) and SIGINT: NOT_SERVING, drain, close, exit 0 (1 if something did not close).
  service.health.handleSignals()
  console.log(`library (gRPC) listening on ${service.address}, admin on ${service.admin?.url ?? 'none'}`)
}
