/**
 * The race rule, in process: every read of L2 and every load registers a ticket for its
 * key before it starts; an invalidation of that key (a local delete or set, a message from
 * another instance, a tag deletion, an L1 resync) marks the tickets of that key. A marked
 * ticket's result is returned to its caller but never stored in L1. (In Redis the same
 * rule is kept by a per-key generation compared atomically at fill time.)
 */
export interface Ticket {
  readonly key: string
  readonly tags: readonly string[] | undefined
  invalidated: boolean
}

export class FillGuard {
  readonly #byKey = new Map<string, Set<Ticket>>()

  register(key: string, tags: readonly string[] | undefined): Ticket {
    const ticket: Ticket = { key, tags, invalidated: false }
    let set = this.#byKey.get(key)
    if (!set) {
      set = new Set()
      this.#byKey.set(key, set)
    }
    set.add(ticket)
    return ticket
  }

  release(ticket: Ticket): void {
    const set = this.#byKey.get(ticket.key)
    if (!set) return
    set.delete(ticket)
    if (set.size === 0) this.#byKey.delete(ticket.key)
  }

  invalidateKey(key: string): void {
    const set = this.#byKey.get(key)
    if (set) for (const t of set) t.invalidated = true
  }

  /** Marks the tickets carrying `tag`; returns their keys. */
  invalidateTag(tag: string): string[] {
    const keys: string[] = []
    for (const [key, set] of this.#byKey) {
      for (const t of set) {
        if (t.tags?.includes(tag)) {
          t.invalidated = true
          keys.push(key)
        }
      }
    }
    return keys
  }

  invalidateAll(): void {
    for (const set of this.#byKey.values()) for (const t of set) t.invalidated = true
  }

  get size(): number {
    return this.#byKey.size
  }
}
