import {
  abortError,
  type Breaker,
  type BreakerStateChange,
  checkArray,
  checkKnownKeys,
  checkObject,
  configError,
  createBreaker,
  type Disposable,
  ResilientError,
} from '@resilient/core'
import { InvalidationBus } from './bus.js'
import { isNodeFailure, RedisConnection } from './connection.js'
import { CacheContext, type CallOptions, type Outcome } from './context.js'
import type { Entry } from './entry.js'
import { Fills, type Flight } from './fill.js'
import { LocalFloors } from './floors.js'
import { Invalidator } from './invalidation.js'
import { LocalCache } from './l1.js'
import { LoaderRunner } from './loader.js'
import { type CacheOptions, checkGrace, checkTtl, type ResolvedOptions, resolveOptions } from './options.js'
import { ReadPath } from './read-path.js'
import { TagIndex } from './tags.js'
import { Telemetry } from './telemetry.js'
import type {
  Cache,
  CacheStats,
  CheckResult,
  FillDiscardedEvent,
  GetOrLoadOptions,
  InvalidateOptions,
  InvalidationEvent,
  Loader,
  LoaderErrorEvent,
  RedisErrorEvent,
  SetOptions,
  StaleEvent,
} from './types.js'

const MAX_TAGS = 64

export function createCache(options: CacheOptions): Cache {
  return new CacheImpl(resolveOptions(options))
}

/**
 * The public face: checks arguments, answers L1 hits, and hands everything else to the parts
 * it wires together:
 * - read-path.ts: the L2 lookup and the fresh-hit answer, stale within grace;
 * - fill.ts: misses (single-flight, lease, loader timeouts, the generation-guarded write-back);
 * - invalidation.ts + tags.ts + bus.ts: set, delete, deleteByTag, and pub/sub between instances;
 * - connection.ts: the Redis client, its breaker and its deadlines.
 */
class CacheImpl implements Cache {
  readonly namespace: string
  readonly #o: ResolvedOptions
  readonly #c: CacheContext
  readonly #l1: LocalCache | undefined
  readonly #redis: RedisConnection | undefined
  readonly #reads: ReadPath
  readonly #fills: Fills
  readonly #loaders: LoaderRunner
  readonly #writes: Invalidator
  readonly #bus: InvalidationBus | undefined
  readonly #t: Telemetry
  readonly #breaker: Breaker
  readonly #defaultCall: CallOptions
  #closing: Promise<void> | undefined

  constructor(o: ResolvedOptions) {
    this.#o = o
    this.namespace = o.namespace
    if (/[{}]/.test(o.namespace)) throw configError('cache.namespace', 'no { or } characters')
    const t = new Telemetry(o.namespace)
    this.#t = t
    this.#l1 = o.l1 ? new LocalCache(o.l1) : undefined
    // Created (and its options checked) even for an L1-only cache, whose breaker never moves.
    this.#breaker = createBreaker({ ...o.breaker, isFailure: isNodeFailure })
    this.#redis = o.redis === false ? undefined : new RedisConnection(o, o.redis, this.#breaker, t)
    const c = new CacheContext(o, t, this.#l1, this.#redis)
    this.#c = c
    this.#defaultCall = Object.freeze({
      ttlMs: o.ttlMs,
      graceMs: o.graceMs,
      tags: undefined,
      signal: undefined,
    })
    // A fill can still be stored this long after it registered its tags: the lease wait, the
    // loader's hard timeout, its lookup and write-back, and slack for clocks.
    const fillBoundMs = (o.lease ? o.lease.waitMs : 0) + o.loaderTimeoutMs.hard + 4 * o.redisTimeoutMs + 1_000
    const tags = this.#redis ? new TagIndex(this.#redis, o.namespace, fillBoundMs) : undefined
    const floors = new LocalFloors(o.floorTtlMs)
    this.#loaders = new LoaderRunner(o.loaderTimeoutMs.hard)
    this.#reads = new ReadPath(c)
    this.#fills = new Fills(c, this.#reads, this.#loaders, tags, floors)
    this.#reads.fills = this.#fills
    this.#writes = new Invalidator(c, this.#fills, tags, floors)
    // Without an L1 too: other instances' invalidations also cut this process's loads in flight.
    this.#bus = this.#redis ? new InvalidationBus(this.#redis, this.#writes, t, o.heartbeatMs) : undefined
  }

  // ---------------------------------------------------------------- reads

  async getOrLoad<T>(key: string, loader: Loader<T>, options?: GetOrLoadOptions): Promise<T> {
    this.#checkOpen()
    this.#checkKey(key)
    if (typeof loader !== 'function') throw configError('getOrLoad loader', 'a function', loader)
    const l1 = this.#l1
    let staleL1: ReturnType<LocalCache['get']>
    if (l1) {
      const e = l1.get(key)
      if (e !== undefined) {
        const now = Date.now()
        if (e.exp > now) {
          this.#t.counts.hitsL1++
          this.#t.hit(key, 'l1')
          return e.value as T
        }
        if (e.hardExp > now) staleL1 = e
      }
    }
    const opts = this.#callOptions(options)
    let flight = this.#fills.flights.get(key)
    let outcome: Outcome
    if (flight === undefined) {
      flight = this.#fills.start(key, loader as Loader<unknown>, opts, staleL1)
      outcome = opts.signal ? await raceSignal(flight.promise, opts.signal) : await flight.promise
    } else {
      outcome = await this.#join(flight, key, loader as Loader<unknown>, opts, staleL1)
    }
    const counts = this.#t.counts
    if (outcome.source === 'l2') counts.hitsL2++
    else {
      counts.misses++
      if (outcome.source === 'stale') counts.stale++
    }
    return outcome.value as T
  }

  /**
   * A caller that found the key in flight shares that load; but if the key was invalidated
   * before the load's fill (here, or in Redis: the fill lost its race), this caller may have
   * begun after that invalidation, and loads again (twice at most) instead of taking the old value.
   */
  async #join(
    flight: Flight,
    key: string,
    loader: Loader<unknown>,
    opts: CallOptions,
    staleL1: Entry | undefined,
  ): Promise<Outcome> {
    for (let attempt = 0; ; attempt++) {
      const outcome = opts.signal ? await raceSignal(flight.promise, opts.signal) : await flight.promise
      if (outcome.source !== 'load' || attempt === 2 || (await flight.valid())) return outcome
      flight = this.#fills.flights.get(key) ?? this.#fills.start(key, loader, opts, staleL1)
    }
  }

  async get<T = unknown>(key: string): Promise<T | undefined> {
    this.#checkOpen()
    this.#checkKey(key)
    const e = this.#l1?.get(key)
    if (e !== undefined && e.exp > Date.now()) {
      this.#t.counts.hitsL1++
      return e.value as T
    }
    if (!this.#redis) {
      this.#t.counts.misses++
      return undefined
    }
    return (await this.#reads.get(key)) as T | undefined
  }

  // ---------------------------------------------------------------- writes

  async set(key: string, value: unknown, options?: SetOptions): Promise<void> {
    this.#checkOpen()
    this.#checkKey(key)
    await this.#writes.set(key, value, this.#callOptions(options))
  }

  async delete(key: string, options?: InvalidateOptions): Promise<void> {
    this.#checkOpen()
    this.#checkKey(key)
    await this.#writes.delete(key, this.#floorOption(options, 'delete'))
  }

  async deleteByTag(tag: string, options?: InvalidateOptions): Promise<number> {
    this.#checkOpen()
    this.#checkTag(tag, 'deleteByTag tag')
    return this.#writes.deleteByTag(tag, this.#floorOption(options, 'deleteByTag'))
  }

  #floorOption(options: InvalidateOptions | undefined, method: string): string | undefined {
    if (options === undefined) return undefined
    const o = checkObject(options, `${method} options`)
    checkKnownKeys(o, `${method} options`, ['floor'])
    if (o.floor === undefined) return undefined
    if (typeof o.floor !== 'string' || o.floor.length === 0 || o.floor.length > 4096) {
      throw configError(`${method} options.floor`, 'a non-empty string of at most 4096 characters', o.floor)
    }
    return o.floor
  }

  // ---------------------------------------------------------------- checks

  #checkOpen(): void {
    if (this.#closing) throw new ResilientError('E_SHUTTING_DOWN', 'the cache is closed')
  }

  #checkKey(key: unknown): asserts key is string {
    if (typeof key !== 'string' || key.length === 0) throw configError('key', 'a non-empty string', key)
    const max = this.#o.maxKeyLength
    if (key.length > max || key.length * 3 > max) {
      const bytes = Buffer.byteLength(key, 'utf8')
      if (bytes > max) {
        throw new ResilientError('E_LIMIT', `key is ${bytes} bytes, more than maxKeyLength (${max})`, {
          details: { bytes, maxKeyLength: max },
        })
      }
    }
  }

  #checkTag(tag: unknown, field: string): void {
    if (typeof tag !== 'string' || tag.length === 0) throw configError(field, 'a non-empty string', tag)
    if (Buffer.byteLength(tag, 'utf8') > this.#o.maxKeyLength) {
      throw new ResilientError('E_LIMIT', `tag is longer than maxKeyLength (${this.#o.maxKeyLength})`)
    }
  }

  #callOptions(options: GetOrLoadOptions | undefined): CallOptions {
    if (options === undefined) return this.#defaultCall
    const o = checkObject(options, 'options')
    checkKnownKeys(o, 'options', ['ttlMs', 'graceMs', 'tags', 'signal'])
    const ttlMs = o.ttlMs === undefined ? this.#o.ttlMs : checkTtl(o.ttlMs, 'options.ttlMs')
    const graceMs = o.graceMs === undefined ? this.#o.graceMs : checkGrace(o.graceMs, 'options.graceMs')
    let tags: string[] | undefined
    if (o.tags !== undefined) {
      const t = checkArray(o.tags, 'options.tags')
      if (t.length > MAX_TAGS) throw new ResilientError('E_LIMIT', `more than ${MAX_TAGS} tags on one key`)
      for (const tag of t) this.#checkTag(tag, 'options.tags[]')
      tags = t.length ? [...new Set(t as string[])] : undefined
    }
    const signal = options.signal
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw configError('options.signal', 'an AbortSignal', signal)
    }
    return { ttlMs, graceMs, tags, signal }
  }

  // ---------------------------------------------------------------- observability, lifecycle

  stats(): CacheStats {
    const s = this.#t.counts
    return {
      hits: s.hitsL1 + s.hitsL2,
      ...s,
      breaker: this.#breaker.state,
      l1Items: this.#l1?.size ?? 0,
      redisStatus: this.#redis ? this.#redis.status : 'none',
      pubsub: this.#bus ? this.#bus.state : 'none',
    }
  }

  check = async (): Promise<CheckResult> => {
    if (this.#closing) return { status: 'warn', output: 'cache closed' }
    const redis = this.#redis
    if (!redis) return { status: 'pass', output: 'L1 only (no Redis configured)' }
    const r = await redis.ping()
    if (!r.ok) return { status: 'warn', output: `${r.why}: serving from L1 and loaders` }
    const bus = this.#bus
    if (bus && this.#l1 && bus.state !== 'subscribed') {
      return {
        status: 'warn',
        output: `invalidation bus ${bus.state}: this L1 does not hear other instances' invalidations (resynced when it subscribes)`,
      }
    }
    return { status: 'pass', observedValue: Math.round(r.ms * 1000) / 1000, observedUnit: 'ms' }
  }

  flush(): Promise<void> {
    return this.#c.flush()
  }

  close(): Promise<void> {
    if (!this.#closing) this.#closing = this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    const reason = new ResilientError('E_SHUTTING_DOWN', 'the cache was closed')
    this.#c.close(reason)
    this.#loaders.rejectAll(reason) // and stops the hard-timeout timer: nothing keeps the process alive
    await this.#c.flush()
    this.#bus?.close()
    this.#breaker.shutdown()
    await this.#redis?.close()
    this.#l1?.clear()
    this.#fills.flights.clear()
  }

  onStale(listener: (e: StaleEvent) => void): Disposable {
    return this.#t.staleEvents.on(listener)
  }
  onLoaderError(listener: (e: LoaderErrorEvent) => void): Disposable {
    return this.#t.loaderErrorEvents.on(listener)
  }
  onRedisError(listener: (e: RedisErrorEvent) => void): Disposable {
    return this.#t.redisErrorEvents.on(listener)
  }
  onInvalidation(listener: (e: InvalidationEvent) => void): Disposable {
    return this.#t.invalidationEvents.on(listener)
  }
  onFillDiscarded(listener: (e: FillDiscardedEvent) => void): Disposable {
    return this.#t.fillDiscardedEvents.on(listener)
  }
  onBreakerStateChange(listener: (e: BreakerStateChange) => void): Disposable {
    return this.#breaker.onStateChange(listener)
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `Cache { namespace: '${this.namespace}', redis: ${this.#redis ? this.#redis.status : 'none'}, l1Items: ${this.#l1?.size ?? 0} }`
  }
}

function raceSignal<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortError(signal, 'cache getOrLoad'))
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal, 'cache getOrLoad'))
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (err) => {
        signal.removeEventListener('abort', onAbort)
        reject(err)
      },
    )
  })
}
