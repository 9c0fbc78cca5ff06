import {
  checkArray,
  checkBoolean,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkOneOf,
  checkString,
  configError,
  hideSecret,
  optional,
} from '@resilient/core'
import type { ClientConfig } from 'pg'
import type { PatroniDiscoveryOptions } from './discovery/patroni.js'
import type { Discovery } from './discovery/types.js'

/** pg client options shared by every member's pool: everything but where to connect. */
export type ConnectionOptions = Omit<ClientConfig, 'host' | 'port' | 'connectionString' | 'stream'>

export interface HostAddress {
  host: string
  port: number
}

/** Patroni discovery options: see docs/discovery-and-middleware.md. */
export type PatroniOptions = PatroniDiscoveryOptions

export interface PoolOptions {
  /** Connections per member. @default 10 */
  max?: number
  /** An idle connection is closed after this many ms. @default 10_000 */
  idleTimeoutMs?: number
  /** Bound on opening a connection (and on waiting for a free one), in ms. @default 2_000 */
  connectTimeoutMs?: number
  /**
   * Bound on one statement, in ms; the connection is destroyed when it passes (checked by one
   * sweep for all statements, ticking at a twentieth of the shortest timeout in flight,
   * 5 ms to 1 s: it fires at most 5% late). 0 = none. @default 30_000
   */
  queryTimeoutMs?: number
  /**
   * TCP keepalive on every connection (pooled, and the monitor's own), first probe after this
   * many ms of silence (Node rounds it to seconds; 0: the OS default, two hours on Linux).
   * Keeps NAT/firewall state, and lets the OS notice a host that vanished. @default 1_000
   */
  keepAliveInitialDelayMs?: number
}

export interface ReplicaOptions {
  /** A replica further behind the primary than this many bytes of WAL gets no reads. @default 1_048_576 */
  maxLagBytes?: number
  /** Reads go to the primary when no replica qualifies. @default true */
  fallbackToPrimary?: boolean
  /** How reads spread over qualifying replicas. @default 'round-robin' */
  strategy?: 'round-robin' | 'least-busy'
}

export interface FailoverOptions {
  /** A write waits at most this long, in all, for a confirmed primary. @default 30_000 */
  timeoutMs?: number
  /** Writes waiting for a primary at once; more fail at once with E_FAILOVER_TIMEOUT. @default 1_000 */
  maxQueue?: number
}

export interface MonitorOptions {
  /** Steady discovery + replay-position polling period, in ms (jittered by ±10 %). @default 1_000 */
  intervalMs?: number
  /** Polling period while a failover is suspected, in ms. @default 100 */
  fastIntervalMs?: number
  /** SQL re-check period of a discovered leader that still reports `pg_is_in_recovery() = true`, in ms; discovery itself stays at `fastIntervalMs`. @default 20 */
  confirmRetryMs?: number
  /**
   * Bound on one probe query (role check, replay position, liveness), in ms. A member whose
   * liveness probe gets no answer within it is suspected like a dead one. @default 1_000
   */
  probeTimeoutMs?: number
  /**
   * Liveness: every member gets `SELECT 1` on a connection of the monitor's own this often
   * (each bounded by `probeTimeoutMs`), so a member that stops answering (a frozen VM, a black
   * hole) is suspected within `livenessIntervalMs + probeTimeoutMs` of its last answer,
   * whatever the statement timeouts are. 0: no liveness probes. @default 250
   */
  livenessIntervalMs?: number
}

export interface SessionOptions {
  /** A session read waits at most this long for a replica to replay the session's last write, then goes to the primary. @default 100 */
  maxWaitMs?: number
  /**
   * Signs session tokens (HMAC-SHA256), at least 16 characters. A list rotates keys: the first
   * signs, any verifies. Set, a token without a valid signature is ignored (counted in
   * `stats().tokens.badSignature`). Never shown in errors, inspect, stats or channels.
   * @default none: tokens are unsigned, and checked against the cluster before use
   */
  secret?: string | string[]
}

export interface PgRouterOptions {
  /** Discover members from Patroni's REST API (`GET /cluster`). Exactly one of patroni, hosts, discovery. */
  patroni?: PatroniOptions
  /** Discover roles by probing each host with `SELECT pg_is_in_recovery()`. */
  hosts?: HostAddress[]
  /** Bring your own discovery (tests, other orchestrators). */
  discovery?: Discovery
  /** pg client options for every member: user, password, database, ssl, application_name... */
  connection?: ConnectionOptions
  pool?: PoolOptions
  replicas?: ReplicaOptions
  failover?: FailoverOptions
  monitor?: MonitorOptions
  session?: SessionOptions
}

export const DEFAULT_PG_ROUTER_OPTIONS = Object.freeze({
  pool: Object.freeze({
    max: 10,
    idleTimeoutMs: 10_000,
    connectTimeoutMs: 2_000,
    queryTimeoutMs: 30_000,
    keepAliveInitialDelayMs: 1_000,
  }),
  replicas: Object.freeze({
    maxLagBytes: 1_048_576,
    fallbackToPrimary: true,
    strategy: 'round-robin' as 'round-robin' | 'least-busy',
  }),
  failover: Object.freeze({ timeoutMs: 30_000, maxQueue: 1_000 }),
  monitor: Object.freeze({
    intervalMs: 1_000,
    fastIntervalMs: 100,
    confirmRetryMs: 20,
    probeTimeoutMs: 1_000,
    livenessIntervalMs: 250,
  }),
  session: Object.freeze({ maxWaitMs: 100 }),
})

export interface ResolvedOptions {
  source:
    | { kind: 'patroni'; patroni: PatroniOptions }
    | { kind: 'hosts'; hosts: HostAddress[] }
    | { kind: 'custom'; discovery: Discovery }
  connection: ConnectionOptions
  pool: Required<PoolOptions>
  replicas: Required<ReplicaOptions>
  failover: Required<FailoverOptions>
  monitor: Required<MonitorOptions>
  /** `secret` is non-enumerable (out of inspect, JSON and spreads). */
  session: { maxWaitMs: number; secret?: readonly string[] }
}

function section(options: Record<string, unknown>, key: string, allowed: readonly string[]) {
  const v = options[key]
  if (v === undefined) return {}
  const obj = checkObject(v, key)
  checkKnownKeys(obj, key, allowed)
  return obj
}

/** Checks every option once; throws E_CONFIG naming the first bad field. Never echoes a string value. */
export function resolveOptions(input: unknown): ResolvedOptions {
  const options = checkObject(input ?? undefined, 'options')
  checkKnownKeys(options, '', [
    'patroni',
    'hosts',
    'discovery',
    'connection',
    'pool',
    'replicas',
    'failover',
    'monitor',
    'session',
  ])
  const given = (['patroni', 'hosts', 'discovery'] as const).filter((k) => options[k] !== undefined)
  if (given.length !== 1) {
    throw configError(
      given.length === 0 ? 'patroni' : given.join('/'),
      'exactly one of patroni, hosts or discovery',
    )
  }
  let source: ResolvedOptions['source']
  if (options.patroni !== undefined) {
    // The discovery factory checks the fields (E_CONFIG naming `patroni.endpoints[1]`...).
    const p = checkObject(options.patroni, 'patroni')
    source = { kind: 'patroni', patroni: p as unknown as PatroniOptions }
  } else if (options.hosts !== undefined) {
    const hosts = checkArray(options.hosts, 'hosts', { nonEmpty: true }).map((h, i) => {
      const o = checkObject(h, `hosts[${i}]`)
      checkKnownKeys(o, `hosts[${i}]`, ['host', 'port'])
      return {
        host: checkString(o.host, `hosts[${i}].host`, { nonEmpty: true }),
        port: optional(o.port, 5432, (v) =>
          checkNumber(v, `hosts[${i}].port`, { min: 1, max: 65535, integer: true }),
        ),
      }
    })
    source = { kind: 'hosts', hosts }
  } else {
    const d = options.discovery as Partial<Discovery> | null
    if (typeof d !== 'object' || d === null || typeof d.discover !== 'function') {
      throw configError('discovery', 'an object with discover(), onError() and close()', d)
    }
    if (typeof d.onError !== 'function' || typeof d.close !== 'function') {
      throw configError('discovery', 'an object with discover(), onError() and close()')
    }
    source = { kind: 'custom', discovery: d as Discovery }
  }

  const connection = {
    ...(optional(options.connection, {}, (v) => checkObject(v, 'connection')) as ConnectionOptions),
  }
  for (const bad of ['host', 'port', 'connectionString', 'stream']) {
    if (bad in connection) throw configError(`connection.${bad}`, 'no value: members come from discovery')
  }
  if (connection.user !== undefined) checkString(connection.user, 'connection.user')
  if (connection.database !== undefined) checkString(connection.database, 'connection.database')
  if (connection.password !== undefined && typeof connection.password !== 'function') {
    checkString(connection.password, 'connection.password')
  }
  hideSecret(connection, 'password')

  const D = DEFAULT_PG_ROUTER_OPTIONS
  const po = section(options, 'pool', [
    'max',
    'idleTimeoutMs',
    'connectTimeoutMs',
    'queryTimeoutMs',
    'keepAliveInitialDelayMs',
  ])
  const pool = {
    max: optional(po.max, D.pool.max, (v) =>
      checkNumber(v, 'pool.max', { min: 1, max: 10_000, integer: true }),
    ),
    idleTimeoutMs: optional(po.idleTimeoutMs, D.pool.idleTimeoutMs, (v) =>
      checkNumber(v, 'pool.idleTimeoutMs', { min: 0, integer: true }),
    ),
    connectTimeoutMs: optional(po.connectTimeoutMs, D.pool.connectTimeoutMs, (v) =>
      checkNumber(v, 'pool.connectTimeoutMs', { min: 1, max: 600_000, integer: true }),
    ),
    queryTimeoutMs: optional(po.queryTimeoutMs, D.pool.queryTimeoutMs, (v) =>
      checkNumber(v, 'pool.queryTimeoutMs', { min: 0, max: 86_400_000, integer: true }),
    ),
    keepAliveInitialDelayMs: optional(po.keepAliveInitialDelayMs, D.pool.keepAliveInitialDelayMs, (v) =>
      checkNumber(v, 'pool.keepAliveInitialDelayMs', { min: 0, max: 86_400_000, integer: true }),
    ),
  }
  const ro = section(options, 'replicas', ['maxLagBytes', 'fallbackToPrimary', 'strategy'])
  const replicas = {
    maxLagBytes: optional(ro.maxLagBytes, D.replicas.maxLagBytes, (v) =>
      checkNumber(v, 'replicas.maxLagBytes', { min: 0, integer: true }),
    ),
    fallbackToPrimary: optional(ro.fallbackToPrimary, D.replicas.fallbackToPrimary, (v) =>
      checkBoolean(v, 'replicas.fallbackToPrimary'),
    ),
    strategy: optional(ro.strategy, D.replicas.strategy, (v) =>
      checkOneOf(v, 'replicas.strategy', ['round-robin', 'least-busy'] as const),
    ),
  }
  const fo = section(options, 'failover', ['timeoutMs', 'maxQueue'])
  const failover = {
    timeoutMs: optional(fo.timeoutMs, D.failover.timeoutMs, (v) =>
      checkNumber(v, 'failover.timeoutMs', { min: 1, max: 3_600_000, integer: true }),
    ),
    maxQueue: optional(fo.maxQueue, D.failover.maxQueue, (v) =>
      checkNumber(v, 'failover.maxQueue', { min: 0, integer: true }),
    ),
  }
  const mo = section(options, 'monitor', [
    'intervalMs',
    'fastIntervalMs',
    'confirmRetryMs',
    'probeTimeoutMs',
    'livenessIntervalMs',
  ])
  const monitor = {
    intervalMs: optional(mo.intervalMs, D.monitor.intervalMs, (v) =>
      checkNumber(v, 'monitor.intervalMs', { min: 10, max: 3_600_000, integer: true }),
    ),
    fastIntervalMs: optional(mo.fastIntervalMs, D.monitor.fastIntervalMs, (v) =>
      checkNumber(v, 'monitor.fastIntervalMs', { min: 5, max: 60_000, integer: true }),
    ),
    confirmRetryMs: optional(mo.confirmRetryMs, D.monitor.confirmRetryMs, (v) =>
      checkNumber(v, 'monitor.confirmRetryMs', { min: 1, max: 60_000, integer: true }),
    ),
    probeTimeoutMs: optional(mo.probeTimeoutMs, D.monitor.probeTimeoutMs, (v) =>
      checkNumber(v, 'monitor.probeTimeoutMs', { min: 1, max: 600_000, integer: true }),
    ),
    livenessIntervalMs: optional(mo.livenessIntervalMs, D.monitor.livenessIntervalMs, (v) =>
      checkNumber(v, 'monitor.livenessIntervalMs', { min: 0, max: 3_600_000, integer: true }),
    ),
  }
  const so = section(options, 'session', ['maxWaitMs', 'secret'])
  const session: ResolvedOptions['session'] = {
    maxWaitMs: optional(so.maxWaitMs, D.session.maxWaitMs, (v) =>
      checkNumber(v, 'session.maxWaitMs', { min: 0, max: 600_000, integer: true }),
    ),
  }
  if (so.secret !== undefined) {
    const list = Array.isArray(so.secret) ? so.secret : [so.secret]
    if (Array.isArray(so.secret)) checkArray(so.secret, 'session.secret', { nonEmpty: true })
    if (list.length > 16) throw configError('session.secret', 'at most 16 secrets')
    list.forEach((k, i) => {
      const field = Array.isArray(so.secret) ? `session.secret[${i}]` : 'session.secret'
      // the value is never echoed, not even its type's description of it
      if (typeof k !== 'string' || k.length < 16)
        throw configError(field, 'a string of at least 16 characters')
    })
    session.secret = Object.freeze([...(list as string[])])
    hideSecret(session, 'secret')
  }
  return { source, connection, pool, replicas, failover, monitor, session }
}
