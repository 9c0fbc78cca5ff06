import type { BreakerState, BreakerStateChange, Disposable } from '@resilient/core'

/** What a loader is given. */
export interface LoadContext {
  /** The key being loaded. */
  readonly key: string
  /**
   * The newest `floor` of an invalidation (`delete(key, { floor })`, `deleteByTag(tag, { floor })`)
   * that this fill follows, within `floorTtlMs`; undefined if none. Opaque to the cache: pass it
   * to whatever reads the source, e.g. `db.session(ctx.floor).read(...)` with pg-router, so that
   * the read sees the write that caused the invalidation even on a lagging replica.
   */
  readonly floor: string | undefined
  /** Aborts at the hard loader timeout and on close(). Made on first use (it has a cost). */
  readonly signal: AbortSignal
}

/** Loads the value on a miss. */
export type Loader<T> = (ctx: LoadContext) => T | Promise<T>

export interface InvalidateOptions {
  /**
   * An opaque string from the write this invalidation follows (e.g. a pg-router session token):
   * stored with the key's invalidation and handed to the loaders of the fills that follow it as
   * `ctx.floor`, for `floorTtlMs`. @default undefined
   */
  floor?: string
}

export interface SetOptions {
  /** Fresh for this long, in ms. @default the cache's ttlMs */
  ttlMs?: number
  /** Kept this long after ttlMs, to serve if the loader fails, in ms. @default the cache's graceMs */
  graceMs?: number
  /** deleteByTag(tag) invalidates this key. @default [] */
  tags?: readonly string[]
}

export interface GetOrLoadOptions extends SetOptions {
  /** Stops this caller's wait (E_ABORTED); a load shared with other callers goes on. */
  signal?: AbortSignal
}

/** Why a stale value was served: the loader failed, was slow (soft/hard timeout), or another process holds the lease. */
export type StaleReason = 'loader-error' | 'soft-timeout' | 'hard-timeout' | 'lease-held'

export interface StaleEvent {
  key: string
  reason: StaleReason
  /** How long ago the value stopped being fresh, in ms. */
  ageMs: number
  error?: unknown
}
export interface LoaderErrorEvent {
  key: string
  error: unknown
}
export interface RedisErrorEvent {
  operation: string
  kind: 'timeout' | 'error' | 'connection'
  error: unknown
}
export interface InvalidationEvent {
  keys: readonly string[]
  source: 'local' | 'remote' | 'resync'
}
export interface FillDiscardedEvent {
  key: string
  reason: 'invalidated' | 'generation-changed' | 'tag-registration-failed'
}

export interface CacheStats {
  /** Calls answered with a fresh value from L1 or L2. */
  hits: number
  hitsL1: number
  hitsL2: number
  /** Calls that found no fresh value (they loaded, joined a load, or were served stale). */
  misses: number
  /** Calls served a value past its TTL, within grace. */
  stale: number
  /** Loader calls. */
  loads: number
  /** Loader calls that threw or timed out. */
  loaderErrors: number
  loaderTimeouts: number
  /** Commands sent to Redis (scripts count as one). */
  redisCommands: number
  redisErrors: number
  redisTimeouts: number
  /** 'error' events of the connections (refused, reset...): reported, never thrown. */
  connectionErrors: number
  /** Redis operations not attempted: breaker open, or client not connected. */
  redisSkipped: number
  /** Fills not stored because the key was invalidated while it loaded. */
  fillsDiscarded: number
  /** Invalidation messages received from other instances. */
  invalidationsReceived: number
  /** Messages on the invalidation channel that are not invalidations (garbage): counted and ignored. */
  badMessages: number
  /** Values in Redis that could not be decoded (counted as misses). */
  decodeErrors: number
  /** Connections dropped and made again by the cache (timeouts in a row, a READONLY node). */
  reconnects: number
  breaker: BreakerState
  l1Items: number
  /** 'ready', 'connecting', 'reconnecting', 'end'..., or 'none' for an L1-only cache. */
  redisStatus: string
  /**
   * The invalidation bus (other instances' invalidations, to this L1 and the loads in flight
   * here): 'subscribed', or 'connecting' / 'subscribing' / 'down' while it cannot hear them;
   * 'none' without Redis.
   */
  pubsub: string
}

export interface CheckResult {
  status: 'pass' | 'warn' | 'fail'
  observedValue?: number
  observedUnit?: string
  output?: string
}

export interface Cache {
  readonly namespace: string
  getOrLoad<T>(key: string, loader: Loader<T>, options?: GetOrLoadOptions): Promise<T>
  /** The fresh value, or `undefined`. Never calls a loader. */
  get<T = unknown>(key: string): Promise<T | undefined>
  /** Write-through: L1 now, Redis (bounded); in-flight loads of the key are not stored. */
  set(key: string, value: unknown, options?: SetOptions): Promise<void>
  /** Removes the key from this L1, Redis and (by pub/sub) other instances' L1. Attempted whatever the breaker says. */
  delete(key: string, options?: InvalidateOptions): Promise<void>
  /** Invalidates every key set or loaded with `tag`; resolves to how many keys Redis knew. */
  deleteByTag(tag: string, options?: InvalidateOptions): Promise<number>
  stats(): CacheStats
  /** Health check (works unbound). Redis trouble is 'warn': the cache still serves. */
  check: () => Promise<CheckResult>
  /** Resolves when background write-backs have settled. */
  flush(): Promise<void>
  /** Stops background work, closes the connections the cache created. */
  close(): Promise<void>
  onStale(listener: (e: StaleEvent) => void): Disposable
  onLoaderError(listener: (e: LoaderErrorEvent) => void): Disposable
  onRedisError(listener: (e: RedisErrorEvent) => void): Disposable
  onInvalidation(listener: (e: InvalidationEvent) => void): Disposable
  onFillDiscarded(listener: (e: FillDiscardedEvent) => void): Disposable
  onBreakerStateChange(listener: (e: BreakerStateChange) => void): Disposable
}
