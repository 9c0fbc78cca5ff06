import { LRUCache } from 'lru-cache'
import type { Entry } from './entry.js'
import type { Ticket } from './guard.js'

/**
 * L1: the in-process layer (lru-cache), bounded by entries and by serialized bytes. An entry
 * lives until the end of its grace (`hardExp`); whether it is fresh is the reader's call.
 */
export class LocalCache {
  readonly #lru: LRUCache<string, Entry>

  constructor(o: { maxItems: number; maxBytes: number }) {
    this.#lru = new LRUCache<string, Entry>({
      max: o.maxItems,
      ...(o.maxBytes > 0 ? { maxSize: o.maxBytes, sizeCalculation: (e: Entry) => Math.max(1, e.size) } : {}),
    })
  }

  get(key: string): Entry | undefined {
    return this.#lru.get(key)
  }

  peek(key: string): Entry | undefined {
    return this.#lru.peek(key)
  }

  /** Stores `entry` until its grace ends, unless the read or load that produced it was invalidated. */
  put(key: string, entry: Entry, ticket: Ticket | undefined): void {
    if (ticket?.invalidated) return
    const ttl = Math.floor(entry.hardExp - Date.now())
    if (ttl < 1) return
    this.#lru.set(key, entry, { ttl })
  }

  delete(key: string): void {
    this.#lru.delete(key)
  }

  /** Drops `key` only if it still holds `entry` (a fill that lost its race in Redis). */
  deleteIf(key: string, entry: Entry): void {
    if (this.#lru.peek(key) === entry) this.#lru.delete(key)
  }

  /** Keys of the entries carrying `tag`. */
  keysTagged(tag: string): string[] {
    const keys: string[] = []
    for (const [k, e] of this.#lru.entries()) if (e.tags?.includes(tag)) keys.push(k)
    return keys
  }

  keys(): string[] {
    return [...this.#lru.keys()]
  }

  clear(): void {
    this.#lru.clear()
  }

  get size(): number {
    return this.#lru.size
  }
}
