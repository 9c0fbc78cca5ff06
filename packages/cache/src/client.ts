import { checkKnownKeys, configError } from '@resilient/core'
import { Cluster, type ClusterOptions, Command, Redis, type RedisOptions } from 'ioredis'
import type { CacheClusterOptions, CacheRedisOptions } from './options.js'

/** A Redis or Cluster client of ioredis 5. */
export type RedisClient = Redis | Cluster

/** Options the cache always sets on a client it creates: the reasons a Redis call can hang. */
export const FORCED_CLIENT_OPTIONS = [
  'commandTimeout',
  'enableOfflineQueue',
  'autoResendUnfulfilledCommands',
  'maxRetriesPerRequest',
  'lazyConnect',
  'keyPrefix',
] as const

export function isRedisClient(value: unknown): value is RedisClient {
  const v = value as Record<string, unknown> | null
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof v.sendCommand === 'function' &&
    typeof v.duplicate === 'function' &&
    typeof v.isCluster === 'boolean'
  )
}

/** Reconnect quickly, but never in a tight loop: 50, 100, 200 ... capped at 1 s, with jitter. */
export function reconnectDelay(times: number): number {
  const base = Math.min(1000, 50 * 2 ** Math.min(times - 1, 5))
  return Math.round(base / 2 + Math.random() * (base / 2))
}

/** Cluster options under which ioredis resends a command later: the cache needs them at 0. */
export const CLUSTER_RETRY_OPTIONS = [
  'retryDelayOnFailover',
  'retryDelayOnClusterDown',
  'retryDelayOnTryAgain',
] as const

/** Largest `commandTimeout` accepted on a client you pass in. */
export function maxClientCommandTimeout(redisTimeoutMs: number): number {
  return Math.max(1000, redisTimeoutMs * 10)
}

/**
 * Refuses a caller's client whose settings let a command wait without bound, naming the
 * option to change. The cache's own timer would still bound the caller, but commands would
 * pile up inside the client (the offline queue) and be replayed later (SETs after a DEL).
 */
export function checkCallerClient(client: RedisClient, redisTimeoutMs: number): void {
  const max = maxClientCommandTimeout(redisTimeoutMs)
  if (client.isCluster) {
    const opts = (client as Cluster).options
    if (opts.enableOfflineQueue !== false) {
      throw configError('cache.redis (your Cluster) enableOfflineQueue', 'false')
    }
    // ioredis sends a command again after these (ioredis defaults: 100 ms each): possibly after
    // the cache told its caller the command failed, and after a delete that should have won.
    for (const name of CLUSTER_RETRY_OPTIONS) {
      if (opts[name] !== 0) {
        throw configError(
          `cache.redis (your Cluster) ${name}`,
          '0 (a command is never sent again after the cache gave up on it)',
          opts[name],
        )
      }
    }
    checkNodeOptions(
      (opts.redisOptions ?? {}) as Record<string, unknown>,
      'cache.redis (your Cluster) redisOptions',
      max,
    )
    return
  }
  const opts = (client as Redis).options
  if (opts.enableOfflineQueue !== false) {
    throw configError('cache.redis (your client) enableOfflineQueue', 'false')
  }
  checkNodeOptions(opts as Record<string, unknown>, 'cache.redis (your client)', max)
}

function checkNodeOptions(opts: Record<string, unknown>, where: string, max: number): void {
  const t = opts.commandTimeout
  if (typeof t !== 'number' || !(t > 0) || t > max) {
    throw configError(`${where} commandTimeout`, `a number of ms from 1 to ${max}`, t)
  }
  if (opts.autoResendUnfulfilledCommands !== false) {
    throw configError(`${where} autoResendUnfulfilledCommands`, 'false', opts.autoResendUnfulfilledCommands)
  }
  if (opts.maxRetriesPerRequest === null) {
    throw configError(`${where} maxRetriesPerRequest`, 'a number (0 is best), not null', null)
  }
}

/** Options the cache always sets on a Cluster it creates. */
const FORCED_CLUSTER_OPTIONS = [
  'enableOfflineQueue',
  ...CLUSTER_RETRY_OPTIONS,
  'lazyConnect',
  'keyPrefix',
] as const

/** Creates the client the cache owns, with every wait bounded. */
export function createOwnedClient(
  options: CacheRedisOptions | CacheClusterOptions,
  redisTimeoutMs: number,
): RedisClient {
  if (Array.isArray((options as CacheClusterOptions).cluster)) {
    return createOwnedCluster(options as CacheClusterOptions, redisTimeoutMs)
  }
  const o = options as Record<string, unknown>
  for (const key of FORCED_CLIENT_OPTIONS) {
    if (o[key] !== undefined) {
      throw configError(`cache.redis.${key}`, 'not set: the cache controls it (see cache.redisTimeoutMs)')
    }
  }
  const sentinel = Array.isArray(o.sentinels)
  if (sentinel && (typeof o.name !== 'string' || o.name.length === 0)) {
    throw configError('cache.redis.name', 'the Sentinel master name (a non-empty string)', o.name)
  }
  return new Redis({
    connectTimeout: Math.max(1000, redisTimeoutMs * 10),
    retryStrategy: reconnectDelay,
    ...(sentinel
      ? {
          sentinelRetryStrategy: reconnectDelay,
          sentinelCommandTimeout: Math.max(500, redisTimeoutMs * 5),
          failoverDetector: true,
        }
      : {}),
    ...options,
    // No ioredis commandTimeout here: it arms and clears a timer for every command (measured
    // +8 µs wall per MGET on loopback, bench/cache section A). Every command the cache sends on
    // this client is bounded by the cache's DeadlineGuard (one timer per cache) or by bounded().
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    lazyConnect: false,
  })
}

function createOwnedCluster(options: CacheClusterOptions, redisTimeoutMs: number): Cluster {
  checkKnownKeys(options as unknown as Record<string, unknown>, 'cache.redis', ['cluster', 'clusterOptions'])
  const nodes = options.cluster
  if (nodes.length === 0) throw configError('cache.redis.cluster', 'at least one { host, port }', nodes)
  const co = (options.clusterOptions ?? {}) as Record<string, unknown>
  for (const key of FORCED_CLUSTER_OPTIONS) {
    if (co[key] !== undefined) {
      throw configError(`cache.redis.clusterOptions.${key}`, 'not set: the cache controls it')
    }
  }
  const ro = (co.redisOptions ?? {}) as Record<string, unknown>
  for (const key of FORCED_CLIENT_OPTIONS) {
    if (ro[key] !== undefined) {
      throw configError(`cache.redis.clusterOptions.redisOptions.${key}`, 'not set: the cache controls it')
    }
  }
  return new Cluster(nodes, {
    clusterRetryStrategy: reconnectDelay,
    slotsRefreshTimeout: Math.max(1000, redisTimeoutMs * 10),
    ...(co as ClusterOptions),
    enableOfflineQueue: false,
    // ioredis would send a command again after these: possibly after the cache gave up on it.
    retryDelayOnFailover: 0,
    retryDelayOnClusterDown: 0,
    retryDelayOnTryAgain: 0,
    lazyConnect: false,
    redisOptions: {
      connectTimeout: Math.max(1000, redisTimeoutMs * 10),
      ...(ro as RedisOptions),
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
    },
  })
}

/**
 * Makes the pub/sub connection, again each time the previous one ended. For a Redis (or
 * Sentinel) client: its duplicate, which reconnects on its own for as long as it lives. For a
 * Cluster: a plain connection to one node (a PUBLISH reaches every node of a Cluster), so that
 * the heartbeat PINGs the very connection the messages come on; it gives up on a node after a
 * few failed reconnects, and the next call picks another one from the Cluster's current view.
 */
export function subscriberSource(client: RedisClient): () => RedisClient {
  if (!client.isCluster) return () => createSubscriber(client)
  const cluster = client as Cluster
  let turn = Math.floor(Math.random() * 1000)
  return () => {
    const live = cluster.nodes('all').map((n) => ({ host: n.options.host, port: n.options.port }))
    const known =
      live.length > 0
        ? live
        : (cluster as unknown as { startupNodes: Array<{ host?: string; port?: number }> }).startupNodes
    const node = known[turn++ % known.length] ?? {}
    const ro = (cluster.options.redisOptions ?? {}) as RedisOptions
    return new Redis({
      ...ro,
      host: node.host ?? '127.0.0.1',
      port: node.port ?? 6379,
      commandTimeout: undefined,
      enableOfflineQueue: false,
      autoResubscribe: false,
      lazyConnect: false,
      maxRetriesPerRequest: 0,
      retryStrategy: (times: number) => (times > 3 ? null : reconnectDelay(times)),
    })
  }
}

/**
 * A second connection for pub/sub, owned by the cache. The cache bounds its commands
 * (SUBSCRIBE, the heartbeat PING) itself, after the poll phase (deadline.ts): no ioredis
 * `commandTimeout`. It never resubscribes on its own: the bus does, and resyncs L1 then.
 */
export function createSubscriber(client: RedisClient): RedisClient {
  if (client.isCluster) {
    return (client as Cluster).duplicate(undefined, { enableOfflineQueue: false, lazyConnect: false })
  }
  return (client as Redis).duplicate({
    commandTimeout: undefined,
    enableOfflineQueue: false,
    autoResubscribe: false,
    lazyConnect: false,
    retryStrategy: reconnectDelay,
  })
}

/**
 * `MGET keys...` as ioredis's generated `client.mget()` builds it (utf8 replies, the client's
 * key prefix and friendly error stacks), for DeadlineGuard#send. undefined when the client
 * auto-pipelines: then `client.mget()` must be used, so that the command joins the pipeline.
 */
export function mgetCommand(client: RedisClient, keys: string[]): Command | undefined {
  const options = client.options as {
    keyPrefix?: string
    showFriendlyErrorStack?: boolean
    enableAutoPipelining?: boolean
  }
  if (options.enableAutoPipelining) return undefined
  return new Command('mget', keys, {
    replyEncoding: 'utf8',
    keyPrefix: options.keyPrefix,
    errorStack: options.showFriendlyErrorStack ? new Error() : undefined,
  })
}

/**
 * Drops a connection at once and lets the client make a new one (its retryStrategy). A
 * graceful end would wait for the other side to close too: a hung or black-holed server never
 * does, and the client would stay "ready" over a socket it can no longer write to.
 */
export function dropConnection(client: RedisClient): void {
  if (client.isCluster) {
    // Every node's socket: the Cluster notices it has none left and reconnects (slots again).
    const nodes = (client as Cluster).nodes('all')
    if (nodes.length === 0) (client as Cluster).disconnect(true)
    for (const node of nodes) destroyStream(node)
    return
  }
  if (!destroyStream(client as Redis)) client.disconnect(true)
}

function destroyStream(node: Redis): boolean {
  const stream = (node as unknown as { stream?: { destroy(): void } }).stream
  if (!stream) return false
  stream.destroy()
  return true
}

/** `true` when commands can be written now (no queueing anywhere). */
export function isReady(client: RedisClient): boolean {
  return client.status === 'ready'
}
