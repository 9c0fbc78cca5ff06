import { configError } from '@resilient/core'
import { type Cluster, Command, Redis } from 'ioredis'
import type { CacheRedisOptions } from './options.js'

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

/** Creates the client the cache owns, with every wait bounded. */
export function createOwnedClient(options: CacheRedisOptions, redisTimeoutMs: number): Redis {
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
    ;(client as Cluster).disconnect(true)
    return
  }
  const stream = (client as unknown as { stream?: { destroy(): void } }).stream
  if (stream) stream.destroy()
  else client.disconnect(true)
}

/** `true` when commands can be written now (no queueing anywhere). */
export function isReady(client: RedisClient): boolean {
  return client.status === 'ready'
}
