import { createSubscriber, type RedisClient } from './client.js'
import type { RedisConnection } from './connection.js'
import type { Telemetry } from './telemetry.js'

/** What the bus needs from the invalidation side. */
export interface BusTarget {
  readonly id: string
  readonly channel: string
  invalidateLocal(keys: readonly string[], source: 'remote'): void
  resync(): void
}

/**
 * The invalidation bus: a second connection subscribed to `<namespace>:__invalidate`. Other
 * instances' invalidations drop keys from this L1; when the subscription comes back after a
 * disconnection (messages may have been missed), L1 is resynced (cleared).
 */
export class InvalidationBus {
  readonly sub: RedisClient
  readonly #target: BusTarget
  readonly #t: Telemetry
  readonly #redis: RedisConnection
  #subscribed = false
  #subscriptionLost = false

  constructor(redis: RedisConnection, target: BusTarget, t: Telemetry) {
    this.#target = target
    this.#t = t
    this.#redis = redis
    this.sub = createSubscriber(redis.client, redis.timeoutMs)
    redis.listenErrors(this.sub, 'subscriber')
    const sub = this.sub
    sub.on('ready', this.#onReady)
    sub.on('close', this.#onClose)
    sub.on('message', this.#onMessage)
  }

  #onReady = (): void => {
    this.sub.subscribe(this.#target.channel).then(
      () => {
        this.#subscribed = true
        if (this.#subscriptionLost) {
          // Messages may have been missed while disconnected: L1 cannot be trusted.
          this.#subscriptionLost = false
          this.#target.resync()
        }
      },
      (err: unknown) => this.#redis.failed('subscribe', err),
    )
  }

  #onClose = (): void => {
    if (this.#subscribed) this.#subscriptionLost = true
    this.#subscribed = false
  }

  #onMessage = (channel: string, message: string): void => {
    if (channel !== this.#target.channel) return
    let parsed: { i?: unknown; k?: unknown }
    try {
      parsed = JSON.parse(message) as { i?: unknown; k?: unknown }
    } catch {
      this.#t.counts.decodeErrors++
      return
    }
    if (parsed.i === this.#target.id || !Array.isArray(parsed.k)) return
    this.#t.counts.invalidationsReceived++
    this.#target.invalidateLocal(
      parsed.k.filter((k): k is string => typeof k === 'string'),
      'remote',
    )
  }

  close(): void {
    this.sub.disconnect()
  }
}
