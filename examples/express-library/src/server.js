// Wires the SDK together and serves the app. `node src/server.js` runs it from environment
// variables (see config.js); tests and the demo call start() with a config of their own.
import { once } from 'node:events'
import { pathToFileURL } from 'node:url'
import { createCache } from '@resilient/cache'
import { createHealth } from '@resilient/health'
import { createPgRouter } from '@resilient/pg-router'
import { createApp } from './app.js'
import { configFromEnv } from './config.js'

/**
 * Builds the router, the cache and the health state, and listens.
 * @param {import('./config.js').LibraryConfig} config
 */
export async function start(config) {
  const db = createPgRouter({
    ...(config.patroni ? { patroni: config.patroni } : { hosts: config.hosts }),
    connection: config.connection,
    ...(config.poolMax === undefined ? {} : { pool: { max: config.poolMax } }),
  })
  const cache = createCache({
    redis: config.redis,
    namespace: 'library',
    // Stale-while-slow: an expired book stays servable for an hour. When its reload takes
    // more than 200 ms (a failover, a slow replica) the stale value answers and the load
    // finishes in the background; when the reload fails, the stale value answers too.
    graceMs: 3_600_000,
    loaderTimeoutMs: { soft: 200 },
  })
  const health = createHealth({
    checks: {
      // Without Postgres nothing works: not ready. Without Redis the cache serves from its
      // in-process L1 and from Postgres: still ready, reported as `warn`.
      postgres: { check: db.check, critical: true },
      redis: { check: cache.check, critical: false },
    },
    ...(config.drainDelayMs === undefined ? {} : { drainDelayMs: config.drainDelayMs }),
    // Closed on shutdown, after the HTTP server has drained.
    resources: { postgres: () => db.close(), redis: () => cache.close() },
  })

  const app = createApp({ db, cache, health, exposeDebug: config.exposeDebug })
  const server = app.listen(config.port, config.host)
  await once(server, 'listening')
  // Shutdown: readiness fails at once; after drainDelayMs the server stops accepting and
  // finishes in-flight requests; then the pools and the Redis client close.
  health.attachServer(server)
  const admin = await listenAdmin(health, config)
  const address = /** @type {import('node:net').AddressInfo} */ (server.address())
  return {
    url: `http://127.0.0.1:${address.port}`,
    admin,
    server,
    db,
    cache,
    health,
    /** @param {{ drainDelayMs?: number }} [options] */
    close: (options) => health.shutdown(options),
  }
}

/**
 * Verbose /ready and /healthz (member names, outputs, breakers), /metrics and
 * /health/circuit-breakers on a port of their own, for operators and Prometheus only; the
 * public port answers statuses only. Closed when health's shutdown ends.
 * @param {any} health @param {import('./config.js').LibraryConfig} config
 */
function listenAdmin(health, config) {
  if (config.adminPort === undefined) return Promise.resolve(undefined)
  return health.listenAdmin({
    port: config.adminPort,
    ...(config.adminHost ? { host: config.adminHost } : {}),
  })
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const service = await start(configFromEnv())
  // SIGTERM (Kubernetes) and SIGINT (Ctrl-C): drain, close, exit 0 (1 if something did not close).
  service.health.handleSignals()
  console.log(`library listening on ${service.url}, admin on ${service.admin?.url ?? 'none'}`)
}
