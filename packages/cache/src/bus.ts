import { dropConnection, type RedisClient, reconnectDelay, subscriberSource } from './client.js'
import { type RedisConnection, replyCode } from './connection.js'
import { bounded } from './deadline.js'
import type { Telemetry } from './telemetry.js'

/** An invalidation as it travels between instances. */
export interface InvalidationMessage {
  /** The sender: an instance ignores its own messages. */
  i: string
  /** Keys to drop from L1. */
  k: string[]
  /** Tags whose L1 entries to drop (deleteByTag): also those Redis did not know about. */
  t?: string[]
  /** The floor of the invalidation (delete/deleteByTag `floor`). */
  f?: string
}

const MAX_KEYS = 10_000
const MAX_FIELD = 65_536

function isStringList(v: unknown, max: number): v is string[] {
  if (!Array.isArray(v) || v.length > max) return false
  for (const s of v) if (typeof s !== 'string' || s.length === 0 || s.length > MAX_FIELD) return false
  return true
}

/**
 * Reads a message of the invalidation channel; undefined for anything that is not one of
 * ours (garbage, another program's, a truncated one). Never throws.
 */
export function parseMessage(raw: unknown): InvalidationMessage | undefined {
  if (typeof raw !== 'string' || raw.length === 0 || raw.length > 16 * 1024 * 1024) return undefined
  let m: unknown
  try {
    m = JSON.parse(raw)
  } catch {
    return undefined
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m)) return undefined
  const o = m as Record<string, unknown>
  if (typeof o.i !== 'string' || o.i.length === 0 || o.i.length > 256) return undefined
  if (!isStringList(o.k, MAX_KEYS)) return undefined
  if (o.t !== undefined && !isStringList(o.t, MAX_KEYS)) return undefined
  if (o.f !== undefined && (typeof o.f !== 'string' || o.f.length > MAX_FIELD)) return undefined
  return o as unknown as InvalidationMessage
}

/** What the bus needs from the invalidation side. */
export interface BusTarget {
  readonly id: string
  readonly channel: string
  /** Another instance's invalidation. */
  received(message: InvalidationMessage): void
  /** Messages may have been missed: drop what L1 holds. */
  resync(): void
}

export type BusState = 'connecting' | 'subscribing' | 'subscribed' | 'down' | 'closed'

/**
 * The invalidation bus: a second connection subscribed to `<namespace>:__invalidate`. Other
 * instances' invalidations drop keys from this L1. Whenever a subscription starts (the first
 * one included: entries may have been filled before it), L1 is resynced (cleared), because
 * messages sent while this instance was not subscribed are lost. A SUBSCRIBE that fails is
 * retried; the connection is PINGed every `heartbeatMs` (bounded by `redisTimeoutMs`), and one
 * that does not answer (half-open, hung) is dropped and made again.
 */
export class InvalidationBus {
  sub: RedisClient
  readonly #source: () => RedisClient
  readonly #target: BusTarget
  readonly #t: Telemetry
  readonly #redis: RedisConnection
  readonly #timeoutMs: number
  readonly #heartbeat: NodeJS.Timeout
  #state: BusState = 'connecting'
  #attempt = 0
  #retry: NodeJS.Timeout | undefined
  #pinging = false

  constructor(redis: RedisConnection, target: BusTarget, t: Telemetry, heartbeatMs: number) {
    this.#target = target
    this.#t = t
    this.#redis = redis
    this.#timeoutMs = redis.timeoutMs
    this.#source = subscriberSource(redis.client)
    this.sub = this.#attach(this.#source())
    this.#heartbeat = setInterval(this.#ping, heartbeatMs)
    this.#heartbeat.unref()
  }

  #attach(sub: RedisClient): RedisClient {
    this.#redis.listenErrors(sub, 'subscriber')
    sub.on('ready', () => {
      if (sub === this.sub) this.#onReady()
    })
    sub.on('close', () => {
      if (sub === this.sub) this.#onClose()
    })
    sub.on('end', () => {
      // It gave up (a Cluster node that stays down): the next one, elsewhere.
      if (sub !== this.sub || this.#state === 'closed') return
      this.#state = 'down'
      this.#retry = setTimeout(
        () => {
          if (this.#state !== 'closed') this.sub = this.#attach(this.#source())
        },
        reconnectDelay(++this.#attempt),
      )
      this.#retry.unref()
    })
    sub.on('message', this.#onMessage)
    return sub
  }

  get state(): BusState {
    return this.#state
  }

  #onReady = (): void => {
    if (this.#state === 'closed') return
    this.#state = 'subscribing'
    this.#attempt = 0
    this.#subscribe()
  }

  #subscribe = (): void => {
    this.#retry = undefined
    if (this.#state !== 'subscribing' || this.sub.status !== 'ready') return
    const sub = this.sub
    bounded(() => sub.subscribe(this.#target.channel), this.#timeoutMs, 'subscribe').then(
      () => {
        if (this.#state !== 'subscribing') return
        this.#state = 'subscribed'
        // Whatever was sent while this instance was not listening is lost: L1 cannot be trusted.
        this.#target.resync()
      },
      (err: unknown) => {
        this.#redis.failed('subscribe', err)
        if (this.#state !== 'subscribing') return
        this.#retry = setTimeout(this.#subscribe, reconnectDelay(++this.#attempt))
        this.#retry.unref()
      },
    )
  }

  #onClose = (): void => {
    if (this.#state === 'closed') return
    this.#state = this.#state === 'connecting' ? 'connecting' : 'down'
  }

  #ping = (): void => {
    if (this.#state !== 'subscribed' || this.#pinging) return
    this.#pinging = true
    const sub = this.sub
    bounded(() => sub.ping(), this.#timeoutMs, 'subscriber ping').then(
      () => {
        this.#pinging = false
      },
      (err: unknown) => {
        this.#pinging = false
        this.#redis.failed('subscriber ping', err)
        // An error reply is still a reply: the connection is alive and messages get through.
        if (this.#state !== 'subscribed' || replyCode(err) !== undefined) return
        // Half-open or hung: messages may be lost without a sign. Make a new connection; its
        // subscription resyncs L1.
        this.#state = 'down'
        this.#t.counts.reconnects++
        dropConnection(sub)
      },
    )
  }

  #onMessage = (channel: string, raw: string): void => {
    if (channel !== this.#target.channel) return
    try {
      const m = parseMessage(raw)
      if (m === undefined) {
        this.#t.counts.badMessages++
        return
      }
      if (m.i === this.#target.id) return
      this.#t.counts.invalidationsReceived++
      this.#target.received(m)
    } catch {
      // Nothing a message carries may throw into ioredis's parser.
      this.#t.counts.badMessages++
    }
  }

  close(): void {
    this.#state = 'closed'
    clearInterval(this.#heartbeat)
    if (this.#retry) clearTimeout(this.#retry)
    this.sub.disconnect()
  }
}
