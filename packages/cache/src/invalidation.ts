import { randomUUID } from 'node:crypto'
import type { BusTarget, InvalidationMessage } from './bus.js'
import type { CacheContext, CallOptions } from './context.js'
import { encodeL2, makeEntry, serializeValue } from './entry.js'
import type { Fills } from './fill.js'
import type { LocalFloors } from './floors.js'
import { entryKeys, invalidationChannel } from './keys.js'
import { GENERATION_TTL_MS } from './options.js'
import type { TagIndex } from './tags.js'
import type { InvalidationEvent } from './types.js'

const TAG_CHUNK = 100

/**
 * Writes and invalidations: `set`, `delete`, `deleteByTag`. Each one acts here first (L1, and
 * in-flight loads of the key, whose results are then stored nowhere), then in Redis (the key's
 * generation is bumped, so fills that read the old one lose; a `floor` is recorded with it),
 * then tells the other instances over pub/sub (bus.ts). The Redis part is attempted whatever
 * the breaker says (one bounded round trip per step): only a client that is not connected
 * skips it, and then the call rejects with E_CACHE_UNAVAILABLE.
 */
export class Invalidator implements BusTarget {
  readonly #c: CacheContext
  readonly #fills: Fills
  readonly #tags: TagIndex | undefined
  readonly #floors: LocalFloors
  /** This instance, in its messages: it ignores its own. */
  readonly id = randomUUID()
  readonly channel: string

  constructor(c: CacheContext, fills: Fills, tags: TagIndex | undefined, floors: LocalFloors) {
    this.#c = c
    this.#fills = fills
    this.#tags = tags
    this.#floors = floors
    this.channel = invalidationChannel(c.namespace)
  }

  async set(key: string, value: unknown, opts: CallOptions): Promise<void> {
    const c = this.#c
    const payload = serializeValue(value, c.o.serializer, c.o.maxValueBytes)
    const entry = makeEntry(value, payload, opts)
    this.#invalidateInFlight(key)
    c.l1?.put(key, entry, undefined)
    const redis = c.redis
    if (!redis) return
    const px = opts.ttlMs + opts.graceMs
    const k = entryKeys(c.namespace, key)
    if (opts.tags?.length) {
      // Registered before the value is written: a value that a deleteByTag could not find is
      // never stored. If registration fails, nothing is written, and the old value goes.
      const registered = await this.#tags!.register(key, opts.tags, px, true)
      if (!registered) {
        c.l1?.deleteIf(key, entry)
        await redis.script(
          'set',
          'invalidate',
          [k.value, k.generation],
          [GENERATION_TTL_MS, this.channel, this.#message([key], undefined, undefined), '', ''],
          true,
        )
        throw redis.unavailable('set', undefined, 'its tags could not be registered')
      }
    }
    const r = await redis.script(
      'set',
      'write',
      [k.value, k.generation],
      [
        encodeL2(entry, payload),
        px,
        GENERATION_TTL_MS,
        this.channel,
        this.#message([key], undefined, undefined),
      ],
      true,
    )
    if (!r.ok) throw redis.unavailable('set', r.error)
  }

  async delete(key: string, floor: string | undefined): Promise<void> {
    const c = this.#c
    if (floor !== undefined) this.#floors.key(key, floor)
    this.invalidateLocal([key], 'local')
    const redis = c.redis
    if (!redis) return
    const k = entryKeys(c.namespace, key)
    const r = await redis.script(
      'delete',
      'invalidate',
      [k.value, k.generation],
      [
        GENERATION_TTL_MS,
        this.channel,
        this.#message([key], undefined, floor),
        floor ?? '',
        floor === undefined ? '' : Date.now() + c.o.floorTtlMs,
      ],
      true,
    )
    if (!r.ok) throw redis.unavailable('delete', r.error)
  }

  async deleteByTag(tag: string, floor: string | undefined): Promise<number> {
    const c = this.#c
    if (floor !== undefined) this.#floors.tag(tag, floor)
    const local = this.#invalidateTagHere(tag)
    if (local.length > 0) this.invalidateLocal(local, 'local')
    const redis = c.redis
    if (!redis) return local.length
    const members = await this.#tags!.members(tag)
    if (!members.ok) throw redis.unavailable('deleteByTag', members.error)
    const { keys, scores } = members.value
    const floorArgs = floor === undefined ? ['', ''] : [floor, Date.now() + c.o.floorTtlMs]
    for (let i = 0; i === 0 || i < keys.length; i += TAG_CHUNK) {
      const chunk = keys.slice(i, i + TAG_CHUNK)
      this.invalidateLocal(chunk, 'local')
      const results = await Promise.all(
        chunk.map((key) => {
          const k = entryKeys(c.namespace, key)
          return redis.script(
            'deleteByTag',
            'invalidate',
            [k.value, k.generation],
            [GENERATION_TTL_MS, '', '', ...floorArgs],
            true,
          )
        }),
      )
      const failed = results.find((r) => !r.ok)
      if (failed) throw redis.unavailable('deleteByTag', failed.ok ? undefined : failed.error)
      // After the bumps: an instance that rereads Redis on this message sees the new generations.
      // The first message carries the tag too: other instances drop L1 entries with it that
      // Redis never heard of (loaded while Redis was unreachable).
      const msg = this.#message(chunk, i === 0 ? [tag] : undefined, floor)
      const sent = await redis.command('deleteByTag', 'publish', [this.channel, msg], true)
      if (!sent.ok) throw redis.unavailable('deleteByTag', sent.error)
      if (chunk.length > 0) await this.#tags!.forget(tag, chunk, scores.slice(i, i + TAG_CHUNK))
    }
    return keys.length
  }

  /** Marks in-flight reads and loads carrying `tag`; returns their keys and L1's keys with the tag. */
  #invalidateTagHere(tag: string): string[] {
    const c = this.#c
    const keys = new Set(c.guard.invalidateTag(tag))
    for (const key of this.#fills.invalidateTag(tag)) keys.add(key)
    if (c.l1) for (const key of c.l1.keysTagged(tag)) keys.add(key)
    return [...keys]
  }

  /** Another instance's invalidation (bus.ts). */
  received(m: InvalidationMessage): void {
    const f = m.f
    let keys: readonly string[] = m.k
    if (m.t) {
      const all = new Set(keys)
      for (const tag of m.t) {
        if (f !== undefined) this.#floors.tag(tag, f)
        for (const key of this.#invalidateTagHere(tag)) all.add(key)
      }
      keys = [...all]
    }
    if (f !== undefined) for (const key of m.k) this.#floors.key(key, f)
    this.invalidateLocal(keys, 'remote')
  }

  /** Drops `keys` from L1 and marks their in-flight reads and loads. */
  invalidateLocal(keys: readonly string[], source: InvalidationEvent['source']): void {
    const l1 = this.#c.l1
    for (const key of keys) {
      l1?.delete(key)
      this.#invalidateInFlight(key)
    }
    this.#c.t.invalidated(keys, source)
  }

  /** Messages may have been missed: nothing in L1 or in flight can be trusted. */
  resync(): void {
    const c = this.#c
    const keys = c.l1 ? c.l1.keys() : []
    c.l1?.clear()
    c.guard.invalidateAll()
    this.#fills.invalidateAll()
    c.t.invalidated(keys, 'resync')
  }

  /** Marks in-flight reads and loads of `key` so that their results are not stored; new callers start afresh. */
  #invalidateInFlight(key: string): void {
    this.#c.guard.invalidateKey(key)
    this.#fills.invalidateKey(key)
  }

  #message(keys: readonly string[], tags: string[] | undefined, floor: string | undefined): string {
    const m: InvalidationMessage = { i: this.id, k: keys as string[] }
    if (tags) m.t = tags
    if (floor !== undefined) m.f = floor
    return JSON.stringify(m)
  }
}
