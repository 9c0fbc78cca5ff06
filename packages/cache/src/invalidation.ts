import { randomUUID } from 'node:crypto'
import type { CacheContext, CallOptions } from './context.js'
import { encodeL2, makeEntry, serializeValue } from './entry.js'
import type { Fills } from './fill.js'
import { entryKeys, invalidationChannel } from './keys.js'
import { GENERATION_TTL_MS } from './options.js'
import type { TagIndex } from './tags.js'
import type { InvalidationEvent } from './types.js'

const TAG_CHUNK = 100

/**
 * Writes and invalidations: `set`, `delete`, `deleteByTag`. Each one acts here first (L1,
 * and in-flight loads of the key, whose results are then stored nowhere), then in Redis (the
 * key's generation is bumped, so fills that read the old one lose), then tells the other
 * instances over pub/sub (see bus.ts).
 */
export class Invalidator {
  readonly #c: CacheContext
  readonly #fills: Fills
  readonly #tags: TagIndex | undefined
  /** This instance, in its messages: it ignores its own. */
  readonly id = randomUUID()
  readonly channel: string

  constructor(c: CacheContext, fills: Fills, tags: TagIndex | undefined) {
    this.#c = c
    this.#fills = fills
    this.#tags = tags
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
    const tags = opts.tags?.length
      ? this.#tags!.register(key, opts.tags, px, performance.now() + c.o.redisTimeoutMs)
      : undefined
    const k = entryKeys(c.namespace, key)
    const r = await redis.script(
      'set',
      'write',
      [k.value, k.generation],
      [encodeL2(entry, payload), px, GENERATION_TTL_MS, this.channel, this.message([key])],
    )
    const tagsOk = tags ? await tags : true
    if (!r.ok || !tagsOk) throw redis.unavailable('set', r.ok ? undefined : r.error)
  }

  async delete(key: string): Promise<void> {
    const c = this.#c
    this.invalidateLocal([key], 'local')
    const redis = c.redis
    if (!redis) return
    const k = entryKeys(c.namespace, key)
    const r = await redis.script(
      'delete',
      'invalidate',
      [k.value, k.generation],
      [GENERATION_TTL_MS, this.channel, this.message([key])],
    )
    if (!r.ok) throw redis.unavailable('delete', r.error)
  }

  async deleteByTag(tag: string): Promise<number> {
    const c = this.#c
    const local = new Set(c.guard.invalidateTag(tag))
    for (const key of this.#fills.invalidateTag(tag)) local.add(key)
    if (c.l1) for (const key of c.l1.keysTagged(tag)) local.add(key)
    if (local.size > 0) this.invalidateLocal([...local], 'local')
    const redis = c.redis
    if (!redis) return local.size
    const members = await this.#tags!.members(tag)
    if (!members.ok) throw redis.unavailable('deleteByTag', members.error)
    const keys = members.value
    for (let i = 0; i < keys.length; i += TAG_CHUNK) {
      const chunk = keys.slice(i, i + TAG_CHUNK)
      this.invalidateLocal(chunk, 'local')
      const results = await Promise.all(
        chunk.map((key) => {
          const k = entryKeys(c.namespace, key)
          return redis.script('delete', 'invalidate', [k.value, k.generation], [GENERATION_TTL_MS, '', ''])
        }),
      )
      const failed = results.find((r) => !r.ok)
      if (failed) throw redis.unavailable('deleteByTag', failed.ok ? undefined : failed.error)
      // Published even without an L1 here: other instances of the namespace may have one.
      const msg = this.message(chunk)
      await redis.op('publish', redis.timeoutMs, () => redis.client.publish(this.channel, msg))
      await this.#tags!.forget(tag, chunk)
    }
    return keys.length
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

  message(keys: readonly string[]): string {
    return JSON.stringify({ i: this.id, k: keys })
  }
}
