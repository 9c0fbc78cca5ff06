import {
  type BreakerOptions,
  checkBoolean,
  checkFunction,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkString,
  configError,
  isPlainObject,
  optional,
} from '@resilient/core'
import type { Cluster, ClusterOptions, Redis, RedisOptions } from 'ioredis'
import { jsonSerializer, type Serializer } from './serializer.js'

/** Options for a Redis client the cache creates and owns: ioredis options, minus the ones the cache sets. */
export type CacheRedisOptions = Omit<
  RedisOptions,
  | 'commandTimeout'
  | 'enableOfflineQueue'
  | 'autoResendUnfulfilledCommands'
  | 'maxRetriesPerRequest'
  | 'lazyConnect'
  | 'keyPrefix'
>

/**
 * A Redis Cluster the cache creates and owns: its startup nodes, and ioredis ClusterOptions
 * minus the ones the cache sets (no offline queue, no resending, bounded connects).
 */
export interface CacheClusterOptions {
  /** Startup nodes; the cache discovers the rest. */
  cluster: Array<{ host: string; port: number }>
  /** ioredis ClusterOptions (e.g. `redisOptions: { password }`, `natMap`). */
  clusterOptions?: Omit<
    ClusterOptions,
    | 'enableOfflineQueue'
    | 'retryDelayOnFailover'
    | 'retryDelayOnClusterDown'
    | 'retryDelayOnTryAgain'
    | 'lazyConnect'
    | 'keyPrefix'
  > & { redisOptions?: CacheRedisOptions }
}

export interface L1Options {
  /** Most entries kept in process memory (least recently used go first). @default 10_000 */
  maxItems?: number
  /** Most bytes of serialized values kept in process memory (UTF-16 length); 0 for no byte bound. @default 67_108_864 (64 MiB) */
  maxBytes?: number
}

export interface LeaseOptions {
  /** How long a lease (SET NX PX) is held at most, if its holder dies mid-load. @default 10_000 */
  ttlMs?: number
  /** How long a process that did not get the lease waits for the holder's value before loading itself. @default 2_000 */
  waitMs?: number
  /** How often a waiting process looks for the holder's value. @default 25 */
  pollMs?: number
}

export interface LoaderTimeoutOptions {
  /** With a stale value at hand, serve it after this many ms and let the load finish in the background; 0 for off. @default 0 */
  soft?: number
  /** The loader's signal aborts and the call fails (E_TIMEOUT, or stale if there is one) after this many ms. @default 30_000 */
  hard?: number
}

export interface CacheOptions {
  /**
   * Where L2 lives: ioredis options for a client the cache creates (`{ host, port }`, or
   * `{ sentinels, name }` for Sentinel, or `{ cluster: [{ host, port }] }` for a Redis Cluster),
   * your own ioredis `Redis` or `Cluster` instance (checked: `commandTimeout` set, offline queue
   * off, no resending), or `false` for an L1-only cache.
   */
  redis: CacheRedisOptions | CacheClusterOptions | Redis | Cluster | false
  /** Prefix of every Redis key and of the invalidation channel. @default 'cache' */
  namespace?: string
  /** How long a value is fresh, in ms. @default 60_000 */
  ttlMs?: number
  /** How long after `ttlMs` a value is kept to be served if the loader fails or is slow (stale-if-error), in ms. @default 0 */
  graceMs?: number
  /** The in-process layer, or `false` for none. @default { maxItems: 10_000, maxBytes: 67_108_864 } */
  l1?: L1Options | false
  /** The most time any Redis operation may add to a call, in ms. @default 100 */
  redisTimeoutMs?: number
  /** The breaker in front of Redis (name, thresholds, reset time); timeouts come from `redisTimeoutMs`. @default { errorThresholdPercentage: 50, volumeThreshold: 5, resetTimeoutMs: 2_000, rollingWindowMs: 10_000, consecutiveFailures: 3 } (three Redis failures or timeouts in a row open it at once, however busy and healthy the window was) */
  breaker?: Omit<BreakerOptions, 'timeoutMs' | 'isFailure'>
  /** Encodes values for L2 (and for the size limit). @default jsonSerializer (strict JSON) */
  serializer?: Serializer
  /** A Redis lease so that one process in the fleet loads a key at a time; `true` for the defaults. @default false */
  lease?: LeaseOptions | boolean
  /** Longest key, in UTF-8 bytes. @default 1024 */
  maxKeyLength?: number
  /** Largest serialized value, in UTF-8 bytes. @default 1_048_576 */
  maxValueBytes?: number
  /** Loader time limits. @default { soft: 0, hard: 30_000 } */
  loaderTimeoutMs?: LoaderTimeoutOptions
  /**
   * Drop and remake the Redis connection after this many timeouts in a row (a black-holed
   * connection stays "ready" for minutes otherwise); 0 for never. @default 3
   */
  reconnectAfterTimeouts?: number
  /**
   * How often the pub/sub connection is PINGed (bounded by `redisTimeoutMs`); one that does not
   * answer is remade, and L1 resynced. A half-open connection is found within about this long.
   * @default 1_000
   */
  heartbeatMs?: number
  /**
   * How long the `floor` of a `delete`/`deleteByTag` is handed to the loaders of the fills
   * that follow it (`ctx.floor`). Keep it above the longest replica lag your reads accept.
   * @default 300_000
   */
  floorTtlMs?: number
}

export const DEFAULT_CACHE_OPTIONS = Object.freeze({
  namespace: 'cache',
  ttlMs: 60_000,
  graceMs: 0,
  l1: Object.freeze({ maxItems: 10_000, maxBytes: 67_108_864 }),
  redisTimeoutMs: 100,
  breaker: Object.freeze({
    errorThresholdPercentage: 50,
    volumeThreshold: 5,
    resetTimeoutMs: 2_000,
    rollingWindowMs: 10_000,
    consecutiveFailures: 3,
  }),
  serializer: jsonSerializer,
  lease: false as const,
  leaseDefaults: Object.freeze({ ttlMs: 10_000, waitMs: 2_000, pollMs: 25 }),
  maxKeyLength: 1024,
  maxValueBytes: 1_048_576,
  loaderTimeoutMs: Object.freeze({ soft: 0, hard: 30_000 }),
  reconnectAfterTimeouts: 3,
  heartbeatMs: 1_000,
  floorTtlMs: 300_000,
})

/** A generation key outlives any load by far: loads are bounded by `loaderTimeoutMs.hard`. */
export const GENERATION_TTL_MS = 86_400_000
const MAX_HARD_TIMEOUT_MS = 3_600_000

export interface ResolvedOptions {
  redis: CacheOptions['redis']
  namespace: string
  ttlMs: number
  graceMs: number
  l1: { maxItems: number; maxBytes: number } | false
  redisTimeoutMs: number
  breaker: Omit<BreakerOptions, 'timeoutMs' | 'isFailure'>
  serializer: Serializer
  lease: { ttlMs: number; waitMs: number; pollMs: number } | false
  maxKeyLength: number
  maxValueBytes: number
  loaderTimeoutMs: { soft: number; hard: number }
  reconnectAfterTimeouts: number
  heartbeatMs: number
  floorTtlMs: number
}

const KEYS = [
  'redis',
  'namespace',
  'ttlMs',
  'graceMs',
  'l1',
  'redisTimeoutMs',
  'breaker',
  'serializer',
  'lease',
  'maxKeyLength',
  'maxValueBytes',
  'loaderTimeoutMs',
  'reconnectAfterTimeouts',
  'heartbeatMs',
  'floorTtlMs',
] as const

export function checkTtl(value: unknown, field: string): number {
  return checkNumber(value, field, { min: 1, max: 2 ** 31, integer: true })
}

export function checkGrace(value: unknown, field: string): number {
  return checkNumber(value, field, { min: 0, max: 2 ** 31, integer: true })
}

export function resolveOptions(input: unknown): ResolvedOptions {
  const o = checkObject(input, 'cache options')
  checkKnownKeys(o, 'cache', KEYS)
  const d = DEFAULT_CACHE_OPTIONS
  if (o.redis === undefined) {
    throw configError(
      'cache.redis',
      'ioredis options, an ioredis Redis or Cluster instance, or false',
      undefined,
    )
  }
  const redis = o.redis as CacheOptions['redis']
  if (redis !== false && (typeof redis !== 'object' || redis === null)) {
    throw configError('cache.redis', 'ioredis options, an ioredis Redis or Cluster instance, or false', redis)
  }
  const namespace = optional(o.namespace, d.namespace, (v) => {
    const s = checkString(v, 'cache.namespace', { nonEmpty: true })
    if (s.length > 128) throw configError('cache.namespace', 'at most 128 characters')
    return s
  })
  const ttlMs = optional(o.ttlMs, d.ttlMs, (v) => checkTtl(v, 'cache.ttlMs'))
  const graceMs = optional(o.graceMs, d.graceMs, (v) => checkGrace(v, 'cache.graceMs'))
  let l1: ResolvedOptions['l1'] = { ...d.l1 }
  if (o.l1 === false) l1 = false
  else if (o.l1 !== undefined) {
    const l = checkObject(o.l1, 'cache.l1')
    checkKnownKeys(l, 'cache.l1', ['maxItems', 'maxBytes'])
    l1 = {
      maxItems: optional(l.maxItems, d.l1.maxItems, (v) =>
        checkNumber(v, 'cache.l1.maxItems', { min: 1, integer: true }),
      ),
      maxBytes: optional(l.maxBytes, d.l1.maxBytes, (v) =>
        checkNumber(v, 'cache.l1.maxBytes', { min: 0, integer: true }),
      ),
    }
  }
  const redisTimeoutMs = optional(o.redisTimeoutMs, d.redisTimeoutMs, (v) =>
    checkNumber(v, 'cache.redisTimeoutMs', { min: 1, max: 60_000 }),
  )
  let breaker: ResolvedOptions['breaker'] = { ...d.breaker, name: `cache:${namespace}` }
  if (o.breaker !== undefined) {
    const b = checkObject(o.breaker, 'cache.breaker')
    if ('timeoutMs' in b) throw configError('cache.breaker.timeoutMs', 'not set: use cache.redisTimeoutMs')
    if ('isFailure' in b) throw configError('cache.breaker.isFailure', 'not set: every Redis error counts')
    breaker = { ...breaker, ...(b as ResolvedOptions['breaker']) }
  }
  const serializer = optional(o.serializer, d.serializer, (v) => {
    const s = checkObject(v, 'cache.serializer')
    checkFunction(s.serialize, 'cache.serializer.serialize')
    checkFunction(s.deserialize, 'cache.serializer.deserialize')
    return v as Serializer
  })
  let lease: ResolvedOptions['lease'] = false
  if (o.lease === true) lease = { ...d.leaseDefaults }
  else if (o.lease !== undefined && o.lease !== false) {
    if (!isPlainObject(o.lease)) checkBoolean(o.lease, 'cache.lease')
    const l = checkObject(o.lease, 'cache.lease')
    checkKnownKeys(l, 'cache.lease', ['ttlMs', 'waitMs', 'pollMs'])
    lease = {
      ttlMs: optional(l.ttlMs, d.leaseDefaults.ttlMs, (v) =>
        checkNumber(v, 'cache.lease.ttlMs', { min: 10, max: 2 ** 31, integer: true }),
      ),
      waitMs: optional(l.waitMs, d.leaseDefaults.waitMs, (v) =>
        checkNumber(v, 'cache.lease.waitMs', { min: 0, max: 600_000 }),
      ),
      pollMs: optional(l.pollMs, d.leaseDefaults.pollMs, (v) =>
        checkNumber(v, 'cache.lease.pollMs', { min: 1, max: 60_000 }),
      ),
    }
  }
  if (lease && redis === false) throw configError('cache.lease', 'false when cache.redis is false')
  const maxKeyLength = optional(o.maxKeyLength, d.maxKeyLength, (v) =>
    checkNumber(v, 'cache.maxKeyLength', { min: 1, max: 65_536, integer: true }),
  )
  const maxValueBytes = optional(o.maxValueBytes, d.maxValueBytes, (v) =>
    checkNumber(v, 'cache.maxValueBytes', { min: 1, max: 512 * 1024 * 1024, integer: true }),
  )
  let loaderTimeoutMs: { soft: number; hard: number } = { ...d.loaderTimeoutMs }
  if (o.loaderTimeoutMs !== undefined) {
    const t = checkObject(o.loaderTimeoutMs, 'cache.loaderTimeoutMs')
    checkKnownKeys(t, 'cache.loaderTimeoutMs', ['soft', 'hard'])
    loaderTimeoutMs = {
      soft: optional(t.soft, d.loaderTimeoutMs.soft, (v) =>
        checkNumber(v, 'cache.loaderTimeoutMs.soft', { min: 0, max: MAX_HARD_TIMEOUT_MS }),
      ),
      hard: optional(t.hard, d.loaderTimeoutMs.hard, (v) =>
        checkNumber(v, 'cache.loaderTimeoutMs.hard', { min: 1, max: MAX_HARD_TIMEOUT_MS }),
      ),
    }
  }
  if (loaderTimeoutMs.soft > 0 && loaderTimeoutMs.soft >= loaderTimeoutMs.hard) {
    throw configError(
      'cache.loaderTimeoutMs.soft',
      'less than cache.loaderTimeoutMs.hard',
      loaderTimeoutMs.soft,
    )
  }
  const reconnectAfterTimeouts = optional(o.reconnectAfterTimeouts, d.reconnectAfterTimeouts, (v) =>
    checkNumber(v, 'cache.reconnectAfterTimeouts', { min: 0, max: 1_000, integer: true }),
  )
  const heartbeatMs = optional(o.heartbeatMs, d.heartbeatMs, (v) =>
    checkNumber(v, 'cache.heartbeatMs', { min: 10, max: 600_000 }),
  )
  const floorTtlMs = optional(o.floorTtlMs, d.floorTtlMs, (v) =>
    checkNumber(v, 'cache.floorTtlMs', { min: 1, max: GENERATION_TTL_MS, integer: true }),
  )
  return {
    redis,
    namespace,
    ttlMs,
    graceMs,
    l1,
    redisTimeoutMs,
    breaker,
    serializer,
    lease,
    maxKeyLength,
    maxValueBytes,
    loaderTimeoutMs,
    reconnectAfterTimeouts,
    heartbeatMs,
    floorTtlMs,
  }
}
