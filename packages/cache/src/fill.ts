import { randomUUID } from 'node:crypto'
import { ResilientError, sleep } from '@resilient/core'
import { type OpResult, SKIPPED } from './connection.js'
import type { CacheContext, CallOptions, Lookup, Outcome } from './context.js'
import { noop } from './context.js'
import { type Entry, encodeL2, makeEntry, serializeValue } from './entry.js'
import { floorOf, type LocalFloors } from './floors.js'
import type { Ticket } from './guard.js'
import { KeyedMap } from './keyed.js'
import { entryKeys } from './keys.js'
import { type LoaderRunner, sleepResult, TIMED_OUT } from './loader.js'
import { GENERATION_TTL_MS } from './options.js'
import type { ReadPath } from './read-path.js'
import { newGeneration } from './scripts.js'
import type { TagIndex } from './tags.js'
import type { Loader } from './types.js'

/** A load (or L2 read) in progress for a key: its callers share it; it is its own race ticket. */
export class Flight implements Ticket {
  invalidated = false
  promise!: Promise<Outcome>
  /** Once its fill was sent: whether Redis stored it (false: an invalidation came first). */
  verdict: Promise<boolean> | undefined
  #done = false
  constructor(
    readonly key: string,
    readonly tags: readonly string[] | undefined,
    readonly registry: KeyedMap<Flight>,
  ) {}

  /**
   * Whether a caller that joined this flight may take its loaded value: not if the key was
   * invalidated while it loaded (here, or in Redis before the fill). The caller that started
   * it may (its read began before the invalidation); one that joined may have begun after it.
   */
  valid(): boolean | Promise<boolean> {
    if (this.invalidated) return false
    return this.verdict ?? true
  }

  /** The key is no longer in flight: the next caller starts afresh. Idempotent. */
  finish(): void {
    if (this.#done) return
    this.#done = true
    if (this.registry.get(this.key) === this) this.registry.delete(this.key)
  }
}

/** #run does its own lookup. */
const NOT_READ = Symbol('not read')

/**
 * Fills: what happens on a miss. One flight per key in this process (single-flight), an
 * optional Redis lease for one loader per key across processes, the loader under its soft
 * and hard timeouts, and the write-back under the race rule: a fill is stored in Redis only
 * if the key's generation is still the one read before the loader started, and in L1 only
 * if no invalidation marked the flight meanwhile.
 */
export class Fills {
  readonly #c: CacheContext
  readonly #reads: ReadPath
  readonly #loaders: LoaderRunner
  readonly #tags: TagIndex | undefined
  readonly #floors: LocalFloors
  readonly flights = new KeyedMap<Flight>()

  constructor(
    c: CacheContext,
    reads: ReadPath,
    loaders: LoaderRunner,
    tags: TagIndex | undefined,
    floors: LocalFloors,
  ) {
    this.#c = c
    this.#reads = reads
    this.#loaders = loaders
    this.#tags = tags
    this.#floors = floors
  }

  start(key: string, loader: Loader<unknown>, opts: CallOptions, staleL1: Entry | undefined): Flight {
    const flight = new Flight(key, opts.tags, this.flights)
    this.flights.set(key, flight)
    flight.promise =
      this.#c.redis !== undefined && opts.tags === undefined && !this.#c.o.lease
        ? this.#reads.readThenLoad(key, loader, opts, staleL1, flight)
        : this.run(key, loader, opts, staleL1, flight, NOT_READ)
    return flight
  }

  /**
   * `pre` is what the read path already read (undefined: Redis unusable); NOT_READ makes this
   * do the lookup itself (tags and lease need the slower, scripted one).
   */
  async run(
    key: string,
    loader: Loader<unknown>,
    opts: CallOptions,
    staleL1: Entry | undefined,
    flight: Flight,
    pre: Lookup | undefined | typeof NOT_READ,
  ): Promise<Outcome> {
    const c = this.#c
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
      if (c.redis) {
        const token = pre === NOT_READ && c.o.lease ? randomUUID() : ''
        const tagsDone =
          pre === NOT_READ && opts.tags?.length
            ? this.#tags!.register(key, opts.tags, opts.ttlMs + opts.graceMs)
            : undefined
        const r = pre === NOT_READ ? await this.#reads.lookup(key, token) : pre
        const tagsOk = tagsDone ? await tagsDone : true
        if (r) {
          if (r.entry) {
            if (r.entry.exp > Date.now()) {
              c.l1?.put(key, r.entry, ticket)
              if (r.lease) c.background(this.#releaseLease(key, token))
              c.t.hit(key, 'l2')
              flight.finish()
              return { value: r.entry.value, source: 'l2' }
            }
            if (!stale || r.entry.exp > stale.exp) stale = r.entry
          }
          if (tagsOk) generation = r.generation
          else tagsFailed = true
          if (r.lease) leaseToken = token
          else if (c.o.lease) waitForLease = true
        }
      }
      c.t.miss(key)
      // A key without a generation gets one before its loader runs: an invalidation that comes
      // after changes it, and if an eviction removes it, the fill does not match either.
      let created: Promise<string | null | undefined> | undefined
      if (generation === '') {
        created = this.#createGeneration(key)
        generation = undefined
      }

      if (waitForLease) {
        if (stale && stale.hardExp > Date.now()) {
          // Another process is loading it: serve what we have now instead of waiting for it.
          flight.finish()
          return this.#reads.serveStale(key, stale, 'lease-held', undefined)
        }
        const w = await this.#waitForLease(key, ticket)
        if (w.entry) {
          c.l1?.put(key, w.entry, ticket)
          flight.finish()
          return { value: w.entry.value, source: 'l2' }
        }
        if (w.token) {
          // The holder gave the lease up (its load failed) or it expired: this process loads.
          leaseToken = w.token
          if (generation !== undefined && w.generation !== undefined) generation = w.generation
        }
      }

      const { soft } = c.o.loaderTimeoutMs
      // The floor of the invalidation this fill follows: from Redis (with the generation), else
      // what this process heard of.
      const floor =
        (generation !== undefined ? floorOf(generation, Date.now()) : undefined) ??
        this.#floors.forFill(key, opts.tags)
      c.t.counts.loads++
      const started = performance.now()
      const load = this.#loaders.run(loader, key, floor)
      const settle = async (background: boolean): Promise<Outcome> => {
        let value: unknown
        try {
          value = await load
        } catch (err) {
          c.t.loadFailed(key, err, started, ResilientError.is(err, 'E_TIMEOUT'))
          if (leaseToken) c.background(this.#releaseLease(key, leaseToken))
          flight.finish()
          if (background) throw err
          if (stale && stale.hardExp > Date.now() && !ResilientError.is(err, 'E_SHUTTING_DOWN')) {
            return this.#reads.serveStale(
              key,
              stale,
              ResilientError.is(err, 'E_TIMEOUT') ? 'hard-timeout' : 'loader-error',
              err,
            )
          }
          throw this.#loaderError(err)
        }
        c.t.load(key, started, true)
        try {
          this.#store(key, value, opts, flight, created ?? generation, leaseToken, tagsFailed)
          return { value, source: 'load' }
        } catch (err) {
          if (leaseToken) c.background(this.#releaseLease(key, leaseToken))
          flight.finish()
          throw err
        }
      }
      if (stale && soft > 0) {
        const softTimer = sleepResult(soft)
        const first = await Promise.race([load.then(noop, noop), softTimer.promise])
        if (first === TIMED_OUT) {
          // Serve stale now; the load goes on and is stored when it finishes.
          c.background(settle(true))
          return this.#reads.serveStale(key, stale, 'soft-timeout', undefined)
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

  #loaderError(err: unknown): unknown {
    if (ResilientError.is(err, 'E_TIMEOUT')) return err
    const closing = this.#c.closing
    if (closing.aborted && closing.reason === err) return err
    return new ResilientError('E_LOADER', 'the cache loader failed', { cause: err })
  }

  /** Stores a loaded value: L1 now (unless invalidated), L2 in the background (unless raced). */
  #store(
    key: string,
    value: unknown,
    opts: CallOptions,
    flight: Flight,
    generation: string | Promise<string | null | undefined> | undefined,
    leaseToken: string,
    tagsFailed: boolean,
  ): Entry {
    const c = this.#c
    const ticket: Ticket = flight
    const payload = serializeValue(value, c.o.serializer, c.o.maxValueBytes)
    const entry = makeEntry(value, payload, opts)
    if (ticket.invalidated || tagsFailed) {
      c.t.discarded(key, tagsFailed ? 'tag-registration-failed' : 'invalidated')
      if (leaseToken) c.background(this.#releaseLease(key, leaseToken))
      flight.finish()
      return entry
    }
    c.l1?.put(key, entry, ticket)
    const redis = c.redis
    if (!redis || generation === undefined) {
      if (leaseToken) c.background(this.#releaseLease(key, leaseToken))
      flight.finish()
      return entry
    }
    const data = encodeL2(entry, payload)
    const k = entryKeys(c.namespace, key)
    const px = opts.ttlMs + opts.graceMs
    const fill = (g: string | null | undefined) =>
      g == null
        ? this.#noFill(key, leaseToken, g === null)
        : redis.script('fill', 'fill', [k.value, k.generation, k.lease], [g, data, px, leaseToken])
    const write = (typeof generation === 'string' ? fill(generation) : generation.then(fill)).then((r) => {
      if (r.ok && r.value === 0) {
        // Another instance invalidated the key while we loaded: drop what we put in L1.
        c.l1?.deleteIf(key, entry)
        c.t.discarded(key, 'generation-changed')
        return false
      }
      return true
    })
    flight.verdict = write
    c.background(write)
    // Callers from now on read L1, or L2 after the fill (one connection answers in order).
    flight.finish()
    return entry
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
    const lease = this.#c.o.lease
    if (!lease) return {}
    const token = randomUUID()
    const until = performance.now() + lease.waitMs
    while (performance.now() < until && !ticket.invalidated && !this.#c.closing.aborted) {
      await sleep(Math.min(lease.pollMs, Math.max(1, until - performance.now()))).catch(noop)
      const r = await this.#reads.lookup(key, token)
      if (r === undefined) return {} // Redis unusable: load ourselves now
      if (r.entry && r.entry.exp > Date.now()) return { entry: r.entry }
      if (r.lease) return { token, generation: r.generation }
    }
    return {}
  }

  #releaseLease(key: string, token: string): Promise<unknown> {
    return this.#c.redis!.script('release', 'release', [entryKeys(this.#c.namespace, key).lease], [token])
  }

  /**
   * Gives a key that has no generation one, before its loader runs (not awaited: commands on
   * one connection are answered in order, so the answer is in before the fill needs it).
   * Resolves to the generation the fill must find: the one made here, or one another instance
   * made first (`c...`: no invalidation came since). A number means an invalidation came after
   * the lookup: the fill lost its race (null). undefined: Redis did not say (no L2 fill).
   */
  #createGeneration(key: string): Promise<string | null | undefined> | undefined {
    const redis = this.#c.redis
    if (!redis?.usable()) return undefined
    const token = newGeneration()
    const g = entryKeys(this.#c.namespace, key).generation
    return redis.script('generation', 'generation', [g], [token, GENERATION_TTL_MS]).then((r) => {
      if (!r.ok || typeof r.value !== 'string') return undefined
      return r.value === token || r.value.startsWith('c') ? r.value : null
    })
  }

  /**
   * A fill not sent to Redis: it lost its race (an invalidation came: answered as a fill Redis
   * refused), or its generation is unknown (answered as a failed fill: L1 keeps it). The lease is released.
   */
  #noFill(key: string, leaseToken: string, raced: boolean): Promise<OpResult<unknown>> {
    if (leaseToken) this.#c.background(this.#releaseLease(key, leaseToken))
    return Promise.resolve(raced ? { ok: true, value: 0 } : SKIPPED)
  }

  /** Marks the in-flight load of `key` so that its result is not stored; new callers start afresh. */
  invalidateKey(key: string): void {
    const flight = this.flights.get(key)
    if (flight) {
      flight.invalidated = true
      this.flights.delete(key)
    }
  }

  /** Marks in-flight loads carrying `tag`; returns their keys. */
  invalidateTag(tag: string): string[] {
    const keys: string[] = []
    for (const [key, flight] of this.flights) {
      if (flight.tags?.includes(tag)) {
        flight.invalidated = true
        keys.push(key)
      }
    }
    return keys
  }

  invalidateAll(): void {
    for (const flight of this.flights.values()) flight.invalidated = true
    this.flights.clear()
  }
}
