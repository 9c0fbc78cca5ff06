import { Emitter, publish } from '@resilient/core'
import { channels } from './channels.js'
import type {
  FillDiscardedEvent,
  InvalidationEvent,
  LoaderErrorEvent,
  RedisErrorEvent,
  StaleEvent,
  StaleReason,
} from './types.js'

/** The counters behind `stats()`; every part of the cache increments its own. */
export interface Counters {
  hitsL1: number
  hitsL2: number
  misses: number
  stale: number
  loads: number
  loaderErrors: number
  loaderTimeouts: number
  redisCommands: number
  redisErrors: number
  redisTimeouts: number
  connectionErrors: number
  redisSkipped: number
  fillsDiscarded: number
  invalidationsReceived: number
  badMessages: number
  decodeErrors: number
  reconnects: number
}

/**
 * What the cache tells the outside: counters, typed events and diagnostics channels, in one
 * place. Channel messages carry the namespace and keys, never values or secrets.
 */
export class Telemetry {
  readonly namespace: string
  readonly counts: Counters = {
    hitsL1: 0,
    hitsL2: 0,
    misses: 0,
    stale: 0,
    loads: 0,
    loaderErrors: 0,
    loaderTimeouts: 0,
    redisCommands: 0,
    redisErrors: 0,
    redisTimeouts: 0,
    connectionErrors: 0,
    redisSkipped: 0,
    fillsDiscarded: 0,
    invalidationsReceived: 0,
    badMessages: 0,
    decodeErrors: 0,
    reconnects: 0,
  }
  readonly staleEvents = new Emitter<StaleEvent>()
  readonly loaderErrorEvents = new Emitter<LoaderErrorEvent>()
  readonly redisErrorEvents = new Emitter<RedisErrorEvent>()
  readonly invalidationEvents = new Emitter<InvalidationEvent>()
  readonly fillDiscardedEvents = new Emitter<FillDiscardedEvent>()

  constructor(namespace: string) {
    this.namespace = namespace
  }

  hit(key: string, layer: 'l1' | 'l2'): void {
    if (channels.hit.hasSubscribers) channels.hit.publish({ namespace: this.namespace, key, layer })
  }

  miss(key: string): void {
    if (channels.miss.hasSubscribers) channels.miss.publish({ namespace: this.namespace, key })
  }

  load(key: string, started: number, ok: boolean): void {
    if (channels.load.hasSubscribers) {
      channels.load.publish({ namespace: this.namespace, key, durationMs: performance.now() - started, ok })
    }
  }

  loadFailed(key: string, err: unknown, started: number, timedOut: boolean): void {
    this.counts.loaderErrors++
    if (timedOut) this.counts.loaderTimeouts++
    this.load(key, started, false)
    this.loaderErrorEvents.emit({ key, error: err })
  }

  stale(key: string, reason: StaleReason, ageMs: number, error: unknown): void {
    publish(channels.stale, { namespace: this.namespace, key, reason })
    this.staleEvents.emit({ key, reason, ageMs, error })
  }

  redisError(operation: string, kind: RedisErrorEvent['kind'], err: unknown): void {
    if (kind === 'timeout') this.counts.redisTimeouts++
    else if (kind === 'error') this.counts.redisErrors++
    else this.counts.connectionErrors++
    publish(channels.redisError, { namespace: this.namespace, operation, kind, error: err })
    this.redisErrorEvents.emit({ operation, kind, error: err })
  }

  invalidated(keys: readonly string[], source: InvalidationEvent['source']): void {
    publish(channels.invalidate, { namespace: this.namespace, keys, source })
    this.invalidationEvents.emit({ keys, source })
  }

  discarded(key: string, reason: FillDiscardedEvent['reason']): void {
    this.counts.fillsDiscarded++
    publish(channels.fillDiscarded, { namespace: this.namespace, key, reason })
    this.fillDiscardedEvents.emit({ key, reason })
  }
}
