import { setMaxListeners } from 'node:events'
import type { RedisConnection } from './connection.js'
import type { Entry } from './entry.js'
import { FillGuard } from './guard.js'
import type { LocalCache } from './l1.js'
import type { ResolvedOptions } from './options.js'
import type { Telemetry } from './telemetry.js'

/** A call's options, checked, with the cache's defaults filled in. */
export interface CallOptions {
  ttlMs: number
  graceMs: number
  tags: readonly string[] | undefined
  signal: AbortSignal | undefined
}

/** What one round trip to L2 found for a key. */
export interface Lookup {
  entry: Entry | undefined
  /** The key's generation as read ('' when it has none); a fill is stored only if it is unchanged. */
  generation: string
  /** This process took the lease (option `lease`). */
  lease: boolean
}

/** How a getOrLoad was answered. */
export interface Outcome {
  value: unknown
  source: 'l2' | 'load' | 'stale'
}

/**
 * What the parts of one cache share: its options, its telemetry, its two layers, the
 * in-process race tickets, the close signal and the background work (write-backs) that
 * `flush()` and `close()` wait for.
 */
export class CacheContext {
  readonly o: ResolvedOptions
  readonly namespace: string
  readonly t: Telemetry
  readonly l1: LocalCache | undefined
  readonly redis: RedisConnection | undefined
  readonly guard = new FillGuard()
  readonly #closeController = new AbortController()
  readonly #pending = new Set<Promise<unknown>>()

  constructor(
    o: ResolvedOptions,
    t: Telemetry,
    l1: LocalCache | undefined,
    redis: RedisConnection | undefined,
  ) {
    this.o = o
    this.namespace = o.namespace
    this.t = t
    this.l1 = l1
    this.redis = redis
    // Every running load listens on this signal: many at once is normal, not a leak.
    setMaxListeners(0, this.#closeController.signal)
  }

  /** Aborts on close(): running loads, lease waits. */
  get closing(): AbortSignal {
    return this.#closeController.signal
  }

  close(reason: unknown): void {
    this.#closeController.abort(reason)
  }

  /** Work nobody awaits (a write-back, a lease release): tracked for flush(), never rejects. */
  background(p: Promise<unknown>): void {
    const tracked = p.catch(noop)
    this.#pending.add(tracked)
    tracked.finally(() => this.#pending.delete(tracked))
  }

  async flush(): Promise<void> {
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending])
  }
}

export function noop(): void {}
