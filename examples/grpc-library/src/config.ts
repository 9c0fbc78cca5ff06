// Configuration from environment variables: the names a twelve-factor deployment (and the
// Kubernetes manifests in k8s/) set. Anything not set keeps the SDK's default.

export interface LibraryConfig {
  /** gRPC port (0: any free port). */
  port: number
  host: string
  patroni?: { endpoints: string[] } | undefined
  hosts?: { host: string; port: number }[] | undefined
  connection: { user: string; password: string; database: string }
  poolMax?: number | undefined
  redis: { host: string; port: number }
  drainDelayMs?: number | undefined
  /** The admin listener (verbose health, /metrics, breakers); undefined: none. */
  adminPort?: number | undefined
  adminHost?: string | undefined
}

export function configFromEnv(env: Record<string, string | undefined> = process.env): LibraryConfig {
  const patroni = list(env.PATRONI_ENDPOINTS)
  const hosts = list(env.PG_HOSTS).map((h) => hostPort(h, 5432, 'PG_HOSTS'))
  if (patroni.length === 0 && hosts.length === 0) {
    throw new Error('set PATRONI_ENDPOINTS (http://host:8008,...) or PG_HOSTS (host:5432,...)')
  }
  return {
    port: int(env.PORT, 50051, 'PORT'),
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
    adminPort: int(env.ADMIN_PORT, 9464, 'ADMIN_PORT'),
    adminHost: env.ADMIN_HOST || undefined,
  }
}

function list(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
}

function hostPort(value: string, defaultPort: number, name: string): { host: string; port: number } {
  const i = value.lastIndexOf(':')
  if (i === -1) return { host: value, port: defaultPort }
  return { host: value.slice(0, i), port: int(value.slice(i + 1), defaultPort, name) }
}

function int(value: string | undefined, fallback: number, name: string): number {
  return optionalInt(value, name) ?? fallback
}

function optionalInt(value: string | undefined, name: string): number | undefined {
  if (value === undefined || value === '') return undefined
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer`)
  return n
}
