// Configuration from environment variables: the names a twelve-factor deployment (and the
// Kubernetes manifests in k8s/) set. Anything not set keeps the SDK's default.

/**
 * @typedef {object} LibraryConfig
 * @property {number} port
 * @property {string} host
 * @property {{ endpoints: string[] } | undefined} patroni
 * @property {{ host: string, port: number }[] | undefined} hosts
 * @property {{ user: string, password: string, database: string }} connection
 * @property {number | undefined} poolMax
 * @property {{ host: string, port: number }} redis
 * @property {number | undefined} drainDelayMs
 * @property {boolean} exposeDebug
 * @property {number | undefined} adminPort
 * @property {string | undefined} adminHost
 */

/**
 * @param {Record<string, string | undefined>} [env]
 * @returns {LibraryConfig}
 */
export function configFromEnv(env = process.env) {
  const patroni = list(env.PATRONI_ENDPOINTS)
  const hosts = list(env.PG_HOSTS).map((h) => hostPort(h, 5432, 'PG_HOSTS'))
  if (patroni.length === 0 && hosts.length === 0) {
    throw new Error('set PATRONI_ENDPOINTS (http://host:8008,...) or PG_HOSTS (host:5432,...)')
  }
  return {
    port: int(env.PORT, 3000, 'PORT'),
    host: env.HOST || '0.0.0.0',
    patroni: patroni.length > 0 ? { endpoints: patroni } : undefined,
    hosts: patroni.length > 0 ? undefined : hosts,
    connection: {
      user: env.PGUSER || 'postgres',
      password: env.PGPASSWORD ?? '',
      database: env.PGDATABASE || 'postgres',
    },
    poolMax: optionalInt(env.PG_POOL_MAX, 'PG_POOL_MAX'),
    redis: { host: env.REDIS_HOST || '127.0.0.1', port: int(env.REDIS_PORT, 6379, 'REDIS_PORT') },
    drainDelayMs: optionalInt(env.DRAIN_DELAY_MS, 'DRAIN_DELAY_MS'),
    exposeDebug: env.EXPOSE_DEBUG === '1',
    // The admin listener (verbose /ready, /metrics, breakers): never put it in a Service.
    adminPort: int(env.ADMIN_PORT, 9464, 'ADMIN_PORT'),
    adminHost: env.ADMIN_HOST || undefined,
  }
}

/** @param {string | undefined} value */
function list(value) {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
}

/** @param {string} value @param {number} defaultPort @param {string} name */
function hostPort(value, defaultPort, name) {
  const i = value.lastIndexOf(':')
  if (i === -1) return { host: value, port: defaultPort }
  return { host: value.slice(0, i), port: int(value.slice(i + 1), defaultPort, name) }
}

/** @param {string | undefined} value @param {number} fallback @param {string} name */
function int(value, fallback, name) {
  return optionalInt(value, name) ?? fallback
}

/** @param {string | undefined} value @param {string} name */
function optionalInt(value, name) {
  if (value === undefined || value === '') return undefined
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer`)
  return n
}
