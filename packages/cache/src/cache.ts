import { randomUUID } from 'node:crypto'
import { setMaxListeners } from 'node:events'
import {
  abortError,
  type Breaker,
  type BreakerState,
  type BreakerStateChange,
  checkArray,
  checkKnownKeys,
  checkObject,
  configError,
  createBreaker,
  type Disposable,
  Emitter,
  publish,
  ResilientError,
  sleep,
  withTimeout,
} from '@resilient/core'
import { LRUCache } from 'lru-cache'
import { channels } from './channels.js'
import { decodeL2, type Entry, encodeL2, makeEntry, serializeValue } from './entry.js'
import { FillGuard, type Ticket } from './guard.js'
import { KeyedMap } from './keyed.js'
import {
  type CacheOptions,
  checkGrace,
  checkTtl,
  GENERATION_TTL_MS,
  type ResolvedOptions,
  resolveOptions,
} from './options.js'
import {
  bounded,
  checkCallerClient,
  createOwnedClient,
  createSubscriber,
  DeadlineGuard,
  defineScripts,
  isReady,
  isRedisClient,
  mgetCommand,
  type RedisClient,
  runScript,
  type ScriptName,
} from './redis.js'

/** Loads the value on a miss. Its signal aborts at the hard loader timeout and on close(). */
export type Loader<T> = (signal: AbortSignal) => T | Promise<T>

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

export type StaleReason = 'loader-error' | 'soft-timeout' | 'hard-timeout'

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
  /** Values in Redis that could not be decoded (counted as misses). */
  decodeErrors: number
  breaker: BreakerState
  l1Items: number
  /** 'ready', 'connecting', 'reconnecting', 'end'..., or 'none' for an L1-only cache. */
  redisStatus: string
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
  /** Removes the key from this L1, Redis and (by pub/sub) other instances' L1. */
  delete(key: string): Promise<void>
  /** Invalidates every key set or loaded with `tag`; resolves to how many keys Redis knew. */
  deleteByTag(tag: string): Promise<number>
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

interface Outcome {
  value: unknown
  source: 'l2' | 'load' | 'stale'
}

/** A load (or L2 read) in progress for a key: its callers share it; it is its own race ticket. */
class Flight implements Ticket {
  invalidated = false
  promise!: Promise<Outcome>
  #done = false
  constructor(
    readonly key: string,
    readonly tags: readonly string[] | undefined,
    readonly registry: KeyedMap<Flight>,
  ) {}

  /** The key is no longer in flight: the next caller starts afresh. Idempotent. */
  finish(): void {
    if (this.#done) return
    this.#done = true
    if (this.registry.get(this.key) === this) this.registry.delete(this.key)
  }
}

interface Lookup {
  entry: Entry | undefined
  generation: string
  lease: boolean
}

interface CallOptions {
  ttlMs: number
  graceMs: number
  tags: readonly string[] | undefined
  signal: AbortSignal | undefined
}

type OpResult<T> = { ok: true; value: T } | { ok: false; error: unknown }
const SKIPPED: OpResult<never> = { ok: false, error: undefined }
const RESOLVED_UNDEFINED: Promise<undefined> = Promise.resolve(undefined)
/** #runFlight does its own lookup. */
const NOT_READ = Symbol('not read')
const TAG_CHUNK = 100
const MAX_TAGS = 64

export function createCache(options: CacheOptions): Cache {
  return new CacheImpl(resolveOptions(options))
}

class CacheImpl implements Cache {
  readonly namespace: string
  readonly #o: ResolvedOptions
  readonly #l1: LRUCache<string, Entry> | undefined
  readonly #client: RedisClient | undefined
  readonly #owned: boolean
  readonly #sub: RedisClient | undefined
  readonly #breaker: Breaker
  readonly #deadlines: DeadlineGuard
  readonly #defaultCall: CallOptions
  readonly #guard = new FillGuard()
  readonly #flights = new KeyedMap<Flight>()
  readonly #pending = new Set<Promise<unknown>>()
  readonly #closeController = new AbortController()
  /** Rejecters of running loads that took no signal: close() settles them with E_SHUTTING_DOWN. */
  readonly #unsignalled = new Set<(err: unknown) => void>()
  readonly #id = randomUUID()
  readonly #channel: string
  readonly #cleanup: (() => void)[] = []
  #closing: Promise<void> | undefined
  #subscribed = false
  #subscriptionLost = false

  readonly #staleEvents = new Emitter<StaleEvent>()
  readonly #loaderErrorEvents = new Emitter<LoaderErrorEvent>()
  readonly #redisErrorEvents = new Emitter<RedisErrorEvent>()
  readonly #invalidationEvents = new Emitter<InvalidationEvent>()
  readonly #fillDiscardedEvents = new Emitter<FillDiscardedEvent>()

  #s = {
    hitsL1: 0,
    hitsL2: 0,
    misses: 0,
    stale: 0,
    loads: 0,
    loaderErrors: 0,
    loaderTimeouts: 0,
    redisCommands: 0,
    redisErrors: 0,
    redisTimeouts: 0,
    connectionErrors: 0,
    redisSkipped: 0,
    fillsDiscarded: 0,
    invalidationsReceived: 0,
    decodeErrors: 0,
  }

  constructor(o: ResolvedOptions) {
    this.#o = o
    this.namespace = o.namespace
    if (/[{}]/.test(o.namespace)) throw configError('cache.namespace', 'no { or } characters')
    this.#channel = `${o.namespace}:__invalidate`
    if (o.l1) {
      const l1 = o.l1
      this.#l1 = new LRUCache<string, Entry>({
        max: l1.maxItems,
        ...(l1.maxBytes > 0
          ? { maxSize: l1.maxBytes, sizeCalculation: (e: Entry) => Math.max(1, e.size) }
          : {}),
      })
    }
    this.#breaker = createBreaker({ ...o.breaker })
    this.#deadlines = new DeadlineGuard(o.redisTimeoutMs)
    // Every running load listens on this signal: many at once is normal, not a leak.
    setMaxListeners(0, this.#closeController.signal)
    this.#defaultCall = Object.freeze({
      ttlMs: o.ttlMs,
      graceMs: o.graceMs,
      tags: undefined,
      signal: undefined,
    })
    if (o.redis === false) {
      this.#owned = false
      return
    }
    if (isRedisClient(o.redis)) {
      checkCallerClient(o.redis, o.redisTimeoutMs)
      this.#client = o.redis
      this.#owned = false
    } else {
      this.#client = createOwnedClient(o.redis, o.redisTimeoutMs)
      this.#owned = true
    }
    defineScripts(this.#client)
    this.#listenErrors(this.#client, 'client')
    if (this.#l1) {
      this.#sub = createSubscriber(this.#client, o.redisTimeoutMs)
      this.#listenErrors(this.#sub, 'subscriber')
      this.#wireSubscriber(this.#sub)
    }
  }

  // ---------------------------------------------------------------- reads

  async getOrLoad<T>(key: string, loader: Loader<T>, options?: GetOrLoadOptions): Promise<T> {
    this.#checkOpen()
    this.#checkKey(key)
    if (typeof loader !== 'function') throw configError('getOrLoad loader', 'a function', loader)
    const l1 = this.#l1
    let staleL1: Entry | undefined
    if (l1) {
      const e = l1.get(key)
      if (e !== undefined) {
        const now = Date.now()
        if (e.exp > now) {
          this.#s.hitsL1++
          if (channels.hit.hasSubscribers)
            channels.hit.publish({ namespace: this.namespace, key, layer: 'l1' })
          return e.value as T
        }
        if (e.hardExp > now) staleL1 = e
      }
    }
    const opts = this.#callOptions(options)
    let flight = this.#flights.get(key)
    if (!flight) flight = this.#startFlight(key, loader as Loader<unknown>, opts, staleL1)
    const outcome = opts.signal ? await raceSignal(flight.promise, opts.signal) : await flight.promise
    if (outcome.source === 'l2') this.#s.hitsL2++
    else {
      this.#s.misses++
      if (outcome.source === 'stale') this.#s.stale++
    }
    return outcome.value as T
  }

  async get<T = unknown>(key: string): Promise<T | undefined> {
    this.#checkOpen()
    this.#checkKey(key)
    const now = Date.now()
    const e = this.#l1?.get(key)
    if (e !== undefined && e.exp > now) {
      this.#s.hitsL1++
      return e.value as T
    }
    if (!this.#client) {
      this.#s.misses++
      return undefined
    }
    const ticket = this.#guard.register(key, undefined)
    try {
      const r = await this.#lookup(key, this.#o.redisTimeoutMs, '')
      if (r?.entry && r.entry.exp > Date.now()) {
        this.#s.hitsL2++
        this.#putL1(key, r.entry, ticket)
        return r.entry.value as T
      }
      this.#s.misses++
      return undefined
    } finally {
      this.#guard.release(ticket)
    }
  }

  #startFlight(key: string, loader: Loader<unknown>, opts: CallOptions, staleL1: Entry | undefined): Flight {
    const flight = new Flight(key, opts.tags, this.#flights)
    this.#flights.set(key, flight)
    flight.promise =
      this.#client !== undefined && opts.tags === undefined && !this.#o.lease
        ? this.#readThenLoad(key, loader, opts, staleL1, flight)
        : this.#runFlight(key, loader, opts, staleL1, flight, NOT_READ)
    return flight
  }

  /**
   * The L2 hit path: one breaker-guarded MGET (value + generation) under the cache's shared
   * deadline timer, and one reaction that decodes the reply (JSON.parse once) and answers a
   * fresh hit at once. Anything else (a miss, stale, Redis unusable) continues in #runFlight
   * with what was read. Never rejects for a Redis reason.
   */
  #readThenLoad(
    key: string,
    loader: Loader<unknown>,
    opts: CallOptions,
    staleL1: Entry | undefined,
    flight: Flight,
  ): Promise<Outcome> {
    const read = this.#readL2(key)
    if (read === undefined) return this.#runFlight(key, loader, opts, staleL1, flight, undefined)
    return read.then(
      (reply) => this.#afterRead(this.#decodeReply(reply), key, loader, opts, staleL1, flight),
      (err: unknown) => this.#afterRead(this.#readFailed(err), key, loader, opts, staleL1, flight),
    )
  }

  #afterRead(
    r: Lookup | undefined,
    key: string,
    loader: Loader<unknown>,
    opts: CallOptions,
    staleL1: Entry | undefined,
    flight: Flight,
  ): Outcome | Promise<Outcome> {
    const entry = r?.entry
    if (entry !== undefined && entry.exp > Date.now()) {
      try {
        this.#putL1(key, entry, flight)
        this.#publishHit(key, 'l2')
      } finally {
        flight.finish()
      }
      return { value: entry.value, source: 'l2' }
    }
    return this.#runFlight(key, loader, opts, staleL1, flight, r)
  }

  /**
   * `pre` is what #readThenLoad already read (undefined: Redis unusable); NOT_READ makes this
   * do the lookup itself (tags and lease need the slower, scripted one).
   */
  async #runFlight(
    key: string,
    loader: Loader<unknown>,
    opts: CallOptions,
    staleL1: Entry | undefined,
    flight: Flight,
    pre: Lookup | undefined | typeof NOT_READ,
  ): Promise<Outcome> {
    const ticket: Ticket = flight
    try {
      let stale = staleL1
      // The generation read before the loader starts: the fill is stored only if it is unchanged.
      let generation: string | undefined
      let leaseToken = ''
      let waitForLease = false
      // Redis answered the lookup but not the tag registration: a deleteByTag elsewhere would
      // miss this key, so the result is stored nowhere (not even in L1).
      let tagsFailed = false
      if (this.#client) {
        const token = pre === NOT_READ && this.#o.lease ? randomUUID() : ''
        const tagsDone =
          pre === NOT_READ && opts.tags?.length
            ? this.#registerTags(
                key,
                opts.tags,
                opts.ttlMs + opts.graceMs,
                performance.now() + this.#o.redisTimeoutMs,
              )
            : undefined
        const r = pre === NOT_READ ? await this.#lookup(key, this.#o.redisTimeoutMs, token) : pre
        const tagsOk = tagsDone ? await tagsDone : true
        if (r) {
          if (r.entry) {
            if (r.entry.exp > Date.now()) {
              this.#putL1(key, r.entry, ticket)
              if (r.lease) this.#background(this.#releaseLease(key, token))
              this.#publishHit(key, 'l2')
              flight.finish()
              return { value: r.entry.value, source: 'l2' }
            }
            if (!stale || r.entry.exp > stale.exp) stale = r.entry
          }
          if (tagsOk) generation = r.generation
          else tagsFailed = true
          if (r.lease) leaseToken = token
          else if (this.#o.lease) waitForLease = true
        }
      }
      if (channels.miss.hasSubscribers) channels.miss.publish({ namespace: this.namespace, key })

      if (waitForLease) {
        const w = await this.#waitForLease(key, ticket)
        if (w.entry) {
          this.#putL1(key, w.entry, ticket)
          flight.finish()
          return { value: w.entry.value, source: 'l2' }
        }
        if (w.token) {
          // The holder gave the lease up (its load failed) or it expired: this process loads.
          leaseToken = w.token
          if (generation !== undefined && w.generation !== undefined) generation = w.generation
        }
      }

      const { soft, hard } = this.#o.loaderTimeoutMs
      this.#s.loads++
      const started = performance.now()
      const load = this.#runLoader(loader, hard)
      const settle = async (background: boolean): Promise<Outcome> => {
        let value: unknown
        try {
          value = await load
        } catch (err) {
          this.#loadFailed(key, err, started)
          if (leaseToken) this.#background(this.#releaseLease(key, leaseToken))
          flight.finish()
          if (background) throw err
          if (stale && stale.hardExp > Date.now() && !ResilientError.is(err, 'E_SHUTTING_DOWN')) {
            return this.#serveStale(
              key,
              stale,
              ResilientError.is(err, 'E_TIMEOUT') ? 'hard-timeout' : 'loader-error',
              err,
            )
          }
          throw this.#loaderError(err)
        }
        this.#publishLoad(key, started, true)
        try {
          const entry = this.#store(key, value, opts, flight, generation, leaseToken, tagsFailed)
          flight.promise = Promise.resolve({ value: entry.value, source: 'load' })
          return { value, source: 'load' }
        } catch (err) {
          if (leaseToken) this.#background(this.#releaseLease(key, leaseToken))
          flight.finish()
          throw err
        }
      }
      if (stale && soft > 0) {
        const softTimer = sleepResult(soft)
        const first = await Promise.race([load.then(noop, noop), softTimer.promise])
        if (first === TIMED_OUT) {
          // Serve stale now; the load goes on and is stored when it finishes.
          this.#background(settle(true))
          return this.#serveStale(key, stale, 'soft-timeout', undefined)
        }
        softTimer.cancel()
      }
      return settle(false)
    } catch (err) {
      // Whatever went wrong, the key must not stay "in flight" for later callers.
      flight.finish()
      throw err
    }
  }

  /**
   * Runs the loader with the hard timeout. A loader that declares a parameter gets an
   * AbortSignal (aborted at the hard timeout and on close()); one that does not is raced
   * against a plain timer, which costs far less than an AbortController per load.
   */
  #runLoader(loader: Loader<unknown>, hard: number): Promise<unknown> {
    if (loader.length > 0) {
      return withTimeout(async (signal) => loader(signal as AbortSignal), hard, {
        signal: this.#closeController.signal,
        operation: 'cache loader',
      })
    }
    const closing = this.#closeController.signal
    if (closing.aborted) return Promise.reject(closing.reason)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#unsignalled.delete(reject)
        reject(
          new ResilientError('E_TIMEOUT', `cache loader timed out after ${hard} ms`, {
            details: { timeoutMs: hard },
          }),
        )
      }, hard)
      this.#unsignalled.add(reject)
      const done = () => {
        clearTimeout(timer)
        this.#unsignalled.delete(reject)
      }
      let work: Promise<unknown>
      try {
        work = Promise.resolve((loader as () => unknown)())
      } catch (err) {
        done()
        reject(err)
        return
      }
      work.then(
        (v) => {
          done()
          resolve(v)
        },
        (err) => {
          done()
          reject(err)
        },
      )
    })
  }

  #serveStale(key: string, stale: Entry, reason: StaleReason, error: unknown): Outcome {
    const event: StaleEvent = { key, reason, ageMs: Math.max(0, Date.now() - stale.exp), error }
    publish(channels.stale, { namespace: this.namespace, key, reason })
    this.#staleEvents.emit(event)
    return { value: stale.value, source: 'stale' }
  }

  #loadFailed(key: string, err: unknown, started: number): void {
    this.#s.loaderErrors++
    if (ResilientError.is(err, 'E_TIMEOUT')) this.#s.loaderTimeouts++
    this.#publishLoad(key, started, false)
    this.#loaderErrorEvents.emit({ key, error: err })
  }

  #loaderError(err: unknown): unknown {
    if (ResilientError.is(err, 'E_TIMEOUT')) return err
    if (this.#closeController.signal.aborted && this.#closeController.signal.reason === err) return err
    return new ResilientError('E_LOADER', 'the cache loader failed', { cause: err })
  }

  /** Stores a loaded value: L1 now (unless invalidated), L2 in the background (unless raced). */
  #store(
    key: string,
    value: unknown,
    opts: CallOptions,
    flight: Flight,
    generation: string | undefined,
    leaseToken: string,
    tagsFailed: boolean,
  ): Entry {
    const ticket: Ticket = flight
    const payload = serializeValue(value, this.#o.serializer, this.#o.maxValueBytes)
    const entry = makeEntry(value, payload, opts)
    if (ticket.invalidated || tagsFailed) {
      this.#discarded(key, tagsFailed ? 'tag-registration-failed' : 'invalidated')
      if (leaseToken) this.#background(this.#releaseLease(key, leaseToken))
      flight.finish()
      return entry
    }
    this.#putL1(key, entry, ticket)
    if (!this.#client || generation === undefined) {
      if (leaseToken) this.#background(this.#releaseLease(key, leaseToken))
      flight.finish()
      return entry
    }
    const data = encodeL2(entry, payload)
    const k = this.#keys(key)
    const px = opts.ttlMs + opts.graceMs
    const write = this.#op('fill', this.#o.redisTimeoutMs, () =>
      runScript(this.#client!, 'fill', [k.value, k.generation, k.lease], [generation, data, px, leaseToken]),
    ).then((r) => {
      if (r.ok && r.value === 0) {
        // Another instance invalidated the key while we loaded: drop what we put in L1.
        if (this.#l1?.peek(key) === entry) this.#l1.delete(key)
        this.#discarded(key, 'generation-changed')
      }
    })
    this.#background(write.finally(() => flight.finish()))
    return entry
  }

  #putL1(key: string, entry: Entry, ticket: Ticket | undefined): void {
    const l1 = this.#l1
    if (!l1 || ticket?.invalidated) return
    const ttl = Math.floor(entry.hardExp - Date.now())
    if (ttl < 1) return
    l1.set(key, entry, { ttl })
  }

  /**
   * Another process holds the lease: poll for its value, taking the lease over if it was given
   * up (the holder's load failed) or expired. Bounded by `lease.waitMs`, then this process
   * loads without the lease. Each poll is one bounded round trip.
   */
  async #waitForLease(
    key: string,
    ticket: Ticket,
  ): Promise<{ entry?: Entry; token?: string; generation?: string }> {
    const lease = this.#o.lease
    if (!lease) return {}
    const token = randomUUID()
    const until = performance.now() + lease.waitMs
    while (performance.now() < until && !ticket.invalidated && !this.#closeController.signal.aborted) {
      await sleep(Math.min(lease.pollMs, Math.max(1, until - performance.now()))).catch(noop)
      const r = await this.#lookup(key, this.#o.redisTimeoutMs, token)
      if (r === undefined) return {} // Redis unusable: load ourselves now
      if (r.entry && r.entry.exp > Date.now()) return { entry: r.entry }
      if (r.lease) return { token, generation: r.generation }
    }
    return {}
  }

  // ---------------------------------------------------------------- writes

  async set(key: string, value: unknown, options?: SetOptions): Promise<void> {
    this.#checkOpen()
    this.#checkKey(key)
    const opts = this.#callOptions(options)
    const payload = serializeValue(value, this.#o.serializer, this.#o.maxValueBytes)
    const entry = makeEntry(value, payload, opts)
    this.#invalidateInFlight(key)
    this.#putL1(key, entry, undefined)
    if (!this.#client) return
    const px = opts.ttlMs + opts.graceMs
    const tags = opts.tags?.length
      ? this.#registerTags(key, opts.tags, px, performance.now() + this.#o.redisTimeoutMs)
      : undefined
    const k = this.#keys(key)
    const r = await this.#op('set', this.#o.redisTimeoutMs, () =>
      runScript(
        this.#client!,
        'write',
        [k.value, k.generation],
        [encodeL2(entry, payload), px, GENERATION_TTL_MS, this.#channel, this.#message([key])],
      ),
    )
    const tagsOk = tags ? await tags : true
    if (!r.ok || !tagsOk) throw this.#unavailable('set', r.ok ? undefined : r.error)
  }

  async delete(key: string): Promise<void> {
    this.#checkOpen()
    this.#checkKey(key)
    this.#invalidateLocal([key], 'local')
    if (!this.#client) return
    const k = this.#keys(key)
    const r = await this.#op('delete', this.#o.redisTimeoutMs, () =>
      runScript(
        this.#client!,
        'invalidate',
        [k.value, k.generation],
        [GENERATION_TTL_MS, this.#channel, this.#message([key])],
      ),
    )
    if (!r.ok) throw this.#unavailable('delete', r.error)
  }

  async deleteByTag(tag: string): Promise<number> {
    this.#checkOpen()
    this.#checkTag(tag, 'deleteByTag tag')
    const local = new Set(this.#guard.invalidateTag(tag))
    for (const [key, flight] of this.#flights) {
      if (flight.tags?.includes(tag)) {
        flight.invalidated = true
        local.add(key)
      }
    }
    if (this.#l1) {
      for (const [k, e] of this.#l1.entries()) if (e.tags?.includes(tag)) local.add(k)
    }
    if (local.size > 0) this.#invalidateLocal([...local], 'local')
    if (!this.#client) return local.size
    const tagKey = this.#tagKey(tag)
    const members = await this.#op('smembers', this.#o.redisTimeoutMs, () => this.#client!.smembers(tagKey))
    if (!members.ok) throw this.#unavailable('deleteByTag', members.error)
    const keys = members.value
    for (let i = 0; i < keys.length; i += TAG_CHUNK) {
      const chunk = keys.slice(i, i + TAG_CHUNK)
      this.#invalidateLocal(chunk, 'local')
      const results = await Promise.all(
        chunk.map((key) => {
          const k = this.#keys(key)
          return this.#op('delete', this.#o.redisTimeoutMs, () =>
            runScript(this.#client!, 'invalidate', [k.value, k.generation], [GENERATION_TTL_MS, '', '']),
          )
        }),
      )
      const failed = results.find((r) => !r.ok)
      if (failed) throw this.#unavailable('deleteByTag', failed.ok ? undefined : failed.error)
      // Published even without an L1 here: other instances of the namespace may have one.
      const msg = this.#message(chunk)
      await this.#op('publish', this.#o.redisTimeoutMs, () => this.#client!.publish(this.#channel, msg))
      await this.#op('srem', this.#o.redisTimeoutMs, () => this.#client!.srem(tagKey, ...chunk))
    }
    return keys.length
  }

  // ---------------------------------------------------------------- invalidation

  #invalidateLocal(keys: readonly string[], source: InvalidationEvent['source']): void {
    for (const key of keys) {
      this.#l1?.delete(key)
      this.#invalidateInFlight(key)
    }
    publish(channels.invalidate, { namespace: this.namespace, keys, source })
    this.#invalidationEvents.emit({ keys, source })
  }

  /** Marks in-flight reads and loads of `key` so that their results are not stored; new callers start afresh. */
  #invalidateInFlight(key: string): void {
    this.#guard.invalidateKey(key)
    const flight = this.#flights.get(key)
    if (flight) {
      flight.invalidated = true
      this.#flights.delete(key)
    }
  }

  #message(keys: readonly string[]): string {
    return JSON.stringify({ i: this.#id, k: keys })
  }

  #onMessage(channel: string, message: string): void {
    if (channel !== this.#channel) return
    let parsed: { i?: unknown; k?: unknown }
    try {
      parsed = JSON.parse(message) as { i?: unknown; k?: unknown }
    } catch {
      this.#s.decodeErrors++
      return
    }
    if (parsed.i === this.#id || !Array.isArray(parsed.k)) return
    this.#s.invalidationsReceived++
    this.#invalidateLocal(
      parsed.k.filter((k): k is string => typeof k === 'string'),
      'remote',
    )
  }

  #wireSubscriber(sub: RedisClient): void {
    const onReady = () => {
      sub.subscribe(this.#channel).then(
        () => {
          this.#subscribed = true
          if (this.#subscriptionLost) {
            // Messages may have been missed while disconnected: L1 cannot be trusted.
            this.#subscriptionLost = false
            this.#resyncL1()
          }
        },
        (err: unknown) => this.#redisError('subscribe', err),
      )
    }
    const onClose = () => {
      if (this.#subscribed) this.#subscriptionLost = true
      this.#subscribed = false
    }
    const onMessage = (channel: string, message: string) => this.#onMessage(channel, message)
    sub.on('ready', onReady)
    sub.on('close', onClose)
    sub.on('message', onMessage)
  }

  #resyncL1(): void {
    const keys = this.#l1 ? [...this.#l1.keys()] : []
    this.#l1?.clear()
    this.#guard.invalidateAll()
    for (const flight of this.#flights.values()) flight.invalidated = true
    this.#flights.clear()
    publish(channels.invalidate, { namespace: this.namespace, keys, source: 'resync' })
    this.#invalidationEvents.emit({ keys, source: 'resync' })
  }

  // ---------------------------------------------------------------- redis

  #keys(key: string): { value: string; generation: string; lease: string } {
    const base = `${this.namespace}:{${key}}`
    return { value: `${base}:v`, generation: `${base}:g`, lease: `${base}:l` }
  }

  #tagKey(tag: string): string {
    return `${this.namespace}:t:{${tag}}`
  }

  /** Reads value + generation (and takes the lease if asked and the value is not fresh): one round trip. */
  #lookup(key: string, timeoutMs: number, leaseToken: string): Promise<Lookup | undefined> {
    const ns = this.namespace
    if (!leaseToken && timeoutMs === this.#o.redisTimeoutMs) {
      const read = this.#readL2(key)
      return read === undefined ? RESOLVED_UNDEFINED : read.then(this.#decodeReply, this.#readFailed)
    }
    const r = leaseToken
      ? this.#op('lookup', timeoutMs, () =>
          runScript(
            this.#client!,
            'lookupLease',
            [`${ns}:{${key}}:v`, `${ns}:{${key}}:g`, `${ns}:{${key}}:l`],
            [Date.now(), leaseToken, (this.#o.lease as { ttlMs: number }).ttlMs],
          ),
        )
      : this.#op('lookup', timeoutMs, () => this.#client!.mget(`${ns}:{${key}}:v`, `${ns}:{${key}}:g`))
    return r.then(this.#decodeLookup)
  }

  /**
   * The plain L2 read (`MGET value generation`), as #op does it but without its result
   * wrapper: undefined when it is skipped (client not ready, breaker open); else a promise of
   * the reply that rejects on a Redis error or timeout (see #readFailed).
   */
  #readL2(key: string): Promise<unknown> | undefined {
    const client = this.#client!
    if (!isReady(client) || this.#breaker.state === 'open') {
      this.#s.redisSkipped++
      return undefined
    }
    const base = `${this.namespace}:{${key}}`
    return this.#breaker.execute(() => {
      this.#s.redisCommands++
      const keys = [`${base}:v`, `${base}:g`]
      const command = mgetCommand(client, keys)
      return command
        ? this.#deadlines.send(client, command, 'lookup')
        : this.#deadlines.run(() => client.mget(keys), 'lookup')
    })
  }

  /** A failed #readL2: a rejection by the breaker is a skip; anything else a Redis error. Never throws. */
  #readFailed = (err: unknown): undefined => {
    if (ResilientError.is(err, 'E_CIRCUIT_OPEN')) this.#s.redisSkipped++
    else this.#redisError('lookup', err)
    return undefined
  }

  #decodeReply = (reply: unknown): Lookup => {
    if (!Array.isArray(reply)) {
      this.#s.decodeErrors++ // not what MGET answers: read as a miss with no generation
      return { entry: undefined, generation: '', lease: false }
    }
    return this.#decodeParts(reply[0] as string | null, reply[1] as string | null, undefined)
  }

  #decodeLookup = (r: OpResult<unknown>): Lookup | undefined => {
    if (!r.ok) return undefined
    const [raw, gen, lease] = r.value as [string | null, string | null, number | undefined]
    return this.#decodeParts(raw, gen, lease)
  }

  #decodeParts(
    raw: string | null | undefined,
    gen: string | null | undefined,
    lease: number | undefined,
  ): Lookup {
    let entry: Entry | undefined
    if (typeof raw === 'string') {
      try {
        entry = decodeL2(raw, this.#o.serializer)
      } catch {
        entry = undefined
      }
      if (!entry) this.#s.decodeErrors++
    }
    return { entry, generation: gen ?? '', lease: lease === 1 }
  }

  #registerTags(key: string, tags: readonly string[], px: number, deadline: number): Promise<boolean> {
    return Promise.all(
      tags.map((tag) =>
        this.#op('tag', Math.max(1, deadline - performance.now()), () =>
          runScript(this.#client!, 'tagAdd', [this.#tagKey(tag)], [key, px]),
        ),
      ),
    ).then((rs) => rs.every((r) => r.ok))
  }

  #releaseLease(key: string, token: string): Promise<unknown> {
    return this.#op('release', this.#o.redisTimeoutMs, () =>
      runScript(this.#client!, 'release' satisfies ScriptName, [this.#keys(key).lease], [token]),
    )
  }

  /** One Redis operation: skipped if Redis is not usable now, else bounded and through the breaker. Never throws. */
  #op<T>(operation: string, timeoutMs: number, fn: () => Promise<T>): Promise<OpResult<T>> {
    const client = this.#client
    if (!client || !isReady(client) || this.#breaker.state === 'open') {
      this.#s.redisSkipped++
      return Promise.resolve(SKIPPED)
    }
    return this.#breaker
      .execute(() => {
        this.#s.redisCommands++
        return timeoutMs === this.#o.redisTimeoutMs
          ? this.#deadlines.run(fn, operation)
          : bounded(fn, timeoutMs, operation)
      })
      .then(
        (value): OpResult<T> => ({ ok: true, value }),
        (err: unknown): OpResult<T> => {
          if (ResilientError.is(err, 'E_CIRCUIT_OPEN')) {
            this.#s.redisSkipped++
            return SKIPPED
          }
          this.#redisError(operation, err)
          return { ok: false, error: err }
        },
      )
  }

  #redisError(operation: string, err: unknown): void {
    const timeout =
      ResilientError.is(err, 'E_TIMEOUT') || (err instanceof Error && err.message === 'Command timed out')
    if (timeout) this.#s.redisTimeouts++
    else this.#s.redisErrors++
    const kind = timeout ? 'timeout' : 'error'
    publish(channels.redisError, { namespace: this.namespace, operation, kind, error: err })
    this.#redisErrorEvents.emit({ operation, kind, error: err })
  }

  #listenErrors(client: RedisClient, role: string): void {
    const onError = (err: unknown) => {
      this.#s.connectionErrors++
      publish(channels.redisError, {
        namespace: this.namespace,
        operation: role,
        kind: 'connection',
        error: err,
      })
      this.#redisErrorEvents.emit({ operation: role, kind: 'connection', error: err })
    }
    client.on('error', onError)
    this.#cleanup.push(() => client.off('error', onError))
  }

  #unavailable(operation: string, cause: unknown): ResilientError {
    const why =
      cause === undefined
        ? this.#breaker.state === 'open'
          ? 'the Redis breaker is open'
          : `redis is ${this.#client?.status ?? 'not configured'}`
        : 'the Redis command failed'
    return new ResilientError(
      'E_CACHE_UNAVAILABLE',
      `cache ${operation} did not reach Redis (${why}); this process's L1 was updated, other instances were not`,
      { cause, details: { operation } },
    )
  }

  #background(p: Promise<unknown>): void {
    const tracked = p.catch(noop)
    this.#pending.add(tracked)
    tracked.finally(() => this.#pending.delete(tracked))
  }

  #discarded(key: string, reason: FillDiscardedEvent['reason']): void {
    this.#s.fillsDiscarded++
    publish(channels.fillDiscarded, { namespace: this.namespace, key, reason })
    this.#fillDiscardedEvents.emit({ key, reason })
  }

  #publishHit(key: string, layer: 'l1' | 'l2'): void {
    if (channels.hit.hasSubscribers) channels.hit.publish({ namespace: this.namespace, key, layer })
  }

  #publishLoad(key: string, started: number, ok: boolean): void {
    if (channels.load.hasSubscribers) {
      channels.load.publish({ namespace: this.namespace, key, durationMs: performance.now() - started, ok })
    }
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
    const s = this.#s
    return {
      hits: s.hitsL1 + s.hitsL2,
      ...s,
      breaker: this.#breaker.state,
      l1Items: this.#l1?.size ?? 0,
      redisStatus: this.#client ? this.#client.status : 'none',
    }
  }

  check = async (): Promise<CheckResult> => {
    if (this.#closing) return { status: 'warn', output: 'cache closed' }
    const client = this.#client
    if (!client) return { status: 'pass', output: 'L1 only (no Redis configured)' }
    if (!isReady(client)) {
      return { status: 'warn', output: `redis ${client.status}: serving from L1 and loaders` }
    }
    if (this.#breaker.state === 'open') {
      return { status: 'warn', output: 'redis breaker open: serving from L1 and loaders' }
    }
    const started = performance.now()
    const r = await this.#op('ping', this.#o.redisTimeoutMs, () => client.ping())
    if (!r.ok) {
      const why = ResilientError.is(r.error, 'E_TIMEOUT')
        ? 'timed out'
        : r.error === undefined
          ? 'skipped'
          : 'failed'
      return { status: 'warn', output: `redis ping ${why}: serving from L1 and loaders` }
    }
    return {
      status: 'pass',
      observedValue: Math.round((performance.now() - started) * 1000) / 1000,
      observedUnit: 'ms',
    }
  }

  async flush(): Promise<void> {
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending])
  }

  close(): Promise<void> {
    if (!this.#closing) this.#closing = this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    const reason = new ResilientError('E_SHUTTING_DOWN', 'the cache was closed')
    this.#closeController.abort(reason)
    for (const reject of this.#unsignalled) reject(reason)
    this.#unsignalled.clear()
    await this.flush()
    this.#breaker.shutdown()
    this.#deadlines.stop()
    for (const fn of this.#cleanup) fn()
    this.#sub?.disconnect()
    if (this.#client && this.#owned) {
      const client = this.#client
      await bounded(() => client.quit(), this.#o.redisTimeoutMs, 'quit').catch(noop)
      client.disconnect()
    }
    this.#l1?.clear()
    this.#flights.clear()
  }

  onStale(listener: (e: StaleEvent) => void): Disposable {
    return this.#staleEvents.on(listener)
  }
  onLoaderError(listener: (e: LoaderErrorEvent) => void): Disposable {
    return this.#loaderErrorEvents.on(listener)
  }
  onRedisError(listener: (e: RedisErrorEvent) => void): Disposable {
    return this.#redisErrorEvents.on(listener)
  }
  onInvalidation(listener: (e: InvalidationEvent) => void): Disposable {
    return this.#invalidationEvents.on(listener)
  }
  onFillDiscarded(listener: (e: FillDiscardedEvent) => void): Disposable {
    return this.#fillDiscardedEvents.on(listener)
  }
  onBreakerStateChange(listener: (e: BreakerStateChange) => void): Disposable {
    return this.#breaker.onStateChange(listener)
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `Cache { namespace: '${this.namespace}', redis: ${this.#client ? this.#client.status : 'none'}, l1Items: ${this.#l1?.size ?? 0} }`
  }
}

function noop(): void {}

const TIMED_OUT = Symbol('timed out')

function sleepResult(ms: number): { promise: Promise<typeof TIMED_OUT>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined
  const promise = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms)
  })
  return { promise, cancel: () => clearTimeout(timer) }
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
