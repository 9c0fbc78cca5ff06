import { KeyedMap } from './keyed.js'

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
  /** One ticket, or several when a get() and a load of the same key overlap. */
  readonly #byKey = new KeyedMap<Ticket | Ticket[]>()

  register(key: string, tags: readonly string[] | undefined): Ticket {
    const ticket: Ticket = { key, tags, invalidated: false }
    const held = this.#byKey.get(key)
    if (held === undefined) this.#byKey.set(key, ticket)
    else if (Array.isArray(held)) held.push(ticket)
    else this.#byKey.set(key, [held, ticket])
    return ticket
  }

  release(ticket: Ticket): void {
    const held = this.#byKey.get(ticket.key)
    if (held === ticket) this.#byKey.delete(ticket.key)
    else if (Array.isArray(held)) {
      const i = held.indexOf(ticket)
      if (i >= 0) held.splice(i, 1)
      if (held.length === 0) this.#byKey.delete(ticket.key)
    }
  }

  invalidateKey(key: string): void {
    const held = this.#byKey.get(key)
    if (held === undefined) return
    if (Array.isArray(held)) for (const t of held) t.invalidated = true
    else held.invalidated = true
  }

  /** Marks the tickets carrying `tag`; returns their keys. */
  invalidateTag(tag: string): string[] {
    const keys: string[] = []
    for (const [key, held] of this.#byKey) {
      for (const t of Array.isArray(held) ? held : [held]) {
        if (t.tags?.includes(tag)) {
          t.invalidated = true
          keys.push(key)
        }
      }
    }
    return keys
  }

  invalidateAll(): void {
    for (const held of this.#byKey.values()) {
      if (Array.isArray(held)) for (const t of held) t.invalidated = true
      else held.invalidated = true
    }
  }

  get size(): number {
    return this.#byKey.size
  }
}
