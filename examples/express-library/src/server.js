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
 * @param {import('./config.js').LibraryConfig} config
 */
export async function start(config) {
  const db = createPgRouter({
    ...(config.patroni ? { patroni: config.patroni } : { hosts: config.hosts }),
    connection: config.connection,
    ...(config.poolMax === undefined ? {} : { pool: { max: config.poolMax } }),
  })
  const cache = createCache({ redis: config.redis, namespace: 'library' })
  const health = createHealth({
    checks: {
      // Without Postgres nothing works: not ready. Without Redis the cache serves from L1
      // and from Postgres: still ready, reported as degraded.
      postgres: { check: db.check, critical: true },
      redis: { check: cache.check, critical: false },
    },
    ...(config.drainDelayMs === undefined ? {} : { drainDelayMs: config.drainDelayMs }),
  })

  const app = createApp({ db, cache, health, exposeDebug: config.exposeDebug })
  const server = app.listen(config.port, config.host)
  await once(server, 'listening')
  // A client's idle keep-alive connection must not outlive a load balancer's idle timeout
  // in the wrong direction: the server closes idle sockets first.
  server.keepAliveTimeout = 65_000
  const address = /** @type {import('node:net').AddressInfo} */ (server.address())

  let closing
  /** Readiness fails at once, requests drain for drainDelayMs, then everything closes. */
  const close = () => {
    closing ??= (async () => {
      await health.shutdown()
      server.closeIdleConnections()
      await new Promise((resolve) => server.close(() => resolve(undefined)))
      await Promise.allSettled([db.close(), cache.close()])
    })()
    return closing
  }

  return { url: `http://127.0.0.1:${address.port}`, server, db, cache, health, close }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const service = await start(configFromEnv())
  console.log(`library listening on ${service.url}`)
  for (const signal of /** @type {const} */ (['SIGTERM', 'SIGINT'])) {
    process.once(signal, () => {
      console.log(`${signal}: draining`)
      service.close().then(
        () => process.exit(0),
        (err) => {
          console.error('shutdown failed', err)
          process.exit(1)
        },
      )
    })
  }
}
