import type { OpResult } from './connection.js'
import type { CacheContext, CallOptions, Lookup, Outcome } from './context.js'
import { decodeL2, type Entry } from './entry.js'
import type { Fills, Flight } from './fill.js'
import { entryBase } from './keys.js'
import { GENERATION_TTL_MS } from './options.js'
import { newGeneration } from './scripts.js'
import type { Loader, StaleReason } from './types.js'

const RESOLVED_UNDEFINED: Promise<undefined> = Promise.resolve(undefined)

/**
 * The read path below L1: one round trip to L2 (`MGET value generation`, or the lease
 * script), decoding, the fresh-hit answer, and serving stale within grace. `getOrLoad`'s L1
 * check is in cache.ts; what happens on a miss is in fill.ts.
 */
export class ReadPath {
  readonly #c: CacheContext
  /** Set by the cache once both exist: a miss continues there. */
  fills!: Fills

  constructor(c: CacheContext) {
    this.#c = c
  }

  /** Reads value + generation (and takes the lease if `leaseToken` is set and the value is not fresh): one round trip. */
  lookup(key: string, leaseToken: string): Promise<Lookup | undefined> {
    const redis = this.#c.redis!
    const base = entryBase(this.#c.namespace, key)
    if (!leaseToken) {
      const read = redis.readL2([`${base}:v`, `${base}:g`])
      return read === undefined ? RESOLVED_UNDEFINED : read.then(this.#readOk, redis.readFailed)
    }
    return redis
      .script(
        'lookup',
        'lookupLease',
        [`${base}:v`, `${base}:g`, `${base}:l`],
        [
          Date.now(),
          leaseToken,
          (this.#c.o.lease as { ttlMs: number }).ttlMs,
          // the generation to create if the key has none (see fill.ts #createGeneration)
          newGeneration(),
          GENERATION_TTL_MS,
        ],
      )
      .then(this.#decodeLookup)
  }

  /**
   * The L2 hit path: one breaker-guarded MGET (value + generation) under the cache's shared
   * deadline timer, and one reaction that decodes the reply (JSON.parse once) and answers a
   * fresh hit at once. Anything else (a miss, stale, Redis unusable) continues in the fill
   * with what was read. Never rejects for a Redis reason.
   */
  readThenLoad(
    key: string,
    loader: Loader<unknown>,
    opts: CallOptions,
    staleL1: Entry | undefined,
    flight: Flight,
  ): Promise<Outcome> {
    const redis = this.#c.redis!
    const base = entryBase(this.#c.namespace, key)
    const read = redis.readL2([`${base}:v`, `${base}:g`])
    if (read === undefined) return this.fills.run(key, loader, opts, staleL1, flight, undefined)
    return read.then(
      (reply) => {
        redis.timeoutStreak = 0
        return this.#afterRead(this.decodeReply(reply), key, loader, opts, staleL1, flight)
      },
      (err: unknown) => this.#afterRead(redis.readFailed(err), key, loader, opts, staleL1, flight),
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
        this.#c.l1?.put(key, entry, flight)
        this.#c.t.hit(key, 'l2')
      } finally {
        flight.finish()
      }
      return { value: entry.value, source: 'l2' }
    }
    return this.fills.run(key, loader, opts, staleL1, flight, r)
  }

  /** `get()` below L1: the fresh value in L2, or undefined. Never loads. */
  async get(key: string): Promise<unknown> {
    const c = this.#c
    const ticket = c.guard.register(key, undefined)
    try {
      const r = await this.lookup(key, '')
      if (r?.entry && r.entry.exp > Date.now()) {
        c.t.counts.hitsL2++
        c.l1?.put(key, r.entry, ticket)
        return r.entry.value
      }
      c.t.counts.misses++
      return undefined
    } finally {
      c.guard.release(ticket)
    }
  }

  /** Answers with a value past its TTL, within grace, and says so. */
  serveStale(key: string, stale: Entry, reason: StaleReason, error: unknown): Outcome {
    this.#c.t.stale(key, reason, Math.max(0, Date.now() - stale.exp), error)
    return { value: stale.value, source: 'stale' }
  }

  #readOk = (reply: unknown): Lookup => {
    this.#c.redis!.timeoutStreak = 0
    return this.decodeReply(reply)
  }

  decodeReply = (reply: unknown): Lookup => {
    if (!Array.isArray(reply)) {
      this.#c.t.counts.decodeErrors++ // not what MGET answers: read as a miss with no generation
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
        entry = decodeL2(raw, this.#c.o.serializer)
      } catch {
        entry = undefined
      }
      if (!entry) this.#c.t.counts.decodeErrors++
    }
    return { entry, generation: gen ?? '', lease: lease === 1 }
  }
}
