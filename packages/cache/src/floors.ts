import { LRUCache } from 'lru-cache'

/**
 * Floors this process heard of (its own `delete(key, { floor })` and `deleteByTag(tag, { floor })`,
 * and other instances' over pub/sub), kept `floorTtlMs`. A fill reads its key's floor from Redis
 * with the key's generation (see scripts.ts); these are for the fills that could not read Redis
 * (breaker open, not connected) and for an L1-only cache: their loader still gets the floor of
 * the invalidation they follow.
 */
export class LocalFloors {
  readonly #byKey: LRUCache<string, string>
  readonly #byTag: LRUCache<string, string>

  constructor(ttlMs: number) {
    this.#byKey = new LRUCache<string, string>({ max: 10_000, ttl: ttlMs, ttlAutopurge: false })
    this.#byTag = new LRUCache<string, string>({ max: 1_000, ttl: ttlMs, ttlAutopurge: false })
  }

  key(key: string, floor: string): void {
    this.#byKey.set(key, floor)
  }

  tag(tag: string, floor: string): void {
    this.#byTag.set(tag, floor)
  }

  /** The newest floor recorded for `key` or one of `tags`, or undefined. */
  forFill(key: string, tags: readonly string[] | undefined): string | undefined {
    if (this.#byKey.size === 0 && this.#byTag.size === 0) return undefined
    let floor = this.#byKey.get(key)
    let newest = floor === undefined ? -1 : this.#byKey.getRemainingTTL(key)
    if (tags) {
      for (const tag of tags) {
        const f = this.#byTag.get(tag)
        if (f === undefined) continue
        // Recorded with one TTL: the most remaining time is the most recent record.
        const ttl = this.#byTag.getRemainingTTL(tag)
        if (ttl > newest) {
          newest = ttl
          floor = f
        }
      }
    }
    return floor
  }
}

/** A generation as stored: `<n>` or `<n>|<floor expiry, epoch ms>|<floor>` (see scripts.ts). */
export function floorOf(generation: string, now: number): string | undefined {
  const a = generation.indexOf('|')
  if (a < 0) return undefined
  const b = generation.indexOf('|', a + 1)
  if (b < 0) return undefined
  const exp = Number(generation.slice(a + 1, b))
  if (!(exp > now)) return undefined
  return generation.slice(b + 1)
}
