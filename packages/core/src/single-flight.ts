/**
 * Concurrent calls for the same key share one execution of `fn`. The key is released as
 * soon as that execution settles, so the next call after that runs `fn` again.
 */
export class SingleFlight<K, V> {
  readonly #inflight = new Map<K, Promise<V>>()

  do(key: K, fn: () => Promise<V>): Promise<V> {
    const existing = this.#inflight.get(key)
    if (existing) return existing
    let p: Promise<V>
    try {
      p = Promise.resolve(fn())
    } catch (err) {
      return Promise.reject(err)
    }
    const shared = p.finally(() => {
      if (this.#inflight.get(key) === shared) this.#inflight.delete(key)
    })
    this.#inflight.set(key, shared)
    return shared
  }

  has(key: K): boolean {
    return this.#inflight.has(key)
  }

  /** Forget the in-flight call for `key`: the next caller starts a new one. */
  forget(key: K): void {
    this.#inflight.delete(key)
  }

  get size(): number {
    return this.#inflight.size
  }
}
