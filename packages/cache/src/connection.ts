import { type Breaker, ResilientError } from '@resilient/core'
import { type Cluster, Command, type Redis } from 'ioredis'
import {
  checkCallerClient,
  createOwnedClient,
  dropConnection,
  isReady,
  isRedisClient,
  mgetCommand,
  type RedisClient,
} from './client.js'
import { bounded, DeadlineGuard, isNotSent } from './deadline.js'
import type { ResolvedOptions } from './options.js'
import { isNoScript, SCRIPTS, type ScriptName, scriptCommand } from './scripts.js'
import type { Telemetry } from './telemetry.js'

export type OpResult<T> = { ok: true; value: T } | { ok: false; error: unknown }
/** An operation that was not attempted (breaker open, client not ready): `error` is undefined. */
export const SKIPPED: OpResult<never> = { ok: false, error: undefined }

/**
 * Redis reply errors about one request, not about the server: they never count against the
 * breaker (one bad key must not cut Redis off for every other key). READONLY is about the
 * node (it was demoted) and is handled by reconnecting, not by the breaker, so that reads,
 * which a replica still answers, keep working.
 */
const REQUEST_ERRORS = new Set(['CROSSSLOT', 'WRONGTYPE', 'NOPERM', 'NOSCRIPT', 'EXECABORT', 'READONLY'])

/** The Redis error code of a reply error (its first word), or undefined. */
export function replyCode(err: unknown): string | undefined {
  if (!(err instanceof Error) || err.name !== 'ReplyError') return undefined
  const m = /^([A-Z]+)\b/.exec(err.message)
  return m?.[1]
}

/** The breaker's `isFailure`: every error counts, except the request errors above. */
export function isNodeFailure(err: unknown): boolean {
  const code = replyCode(err)
  return code === undefined || !REQUEST_ERRORS.has(code)
}

/** An operation that never reached Redis: the breaker refused it, or the client did (deadline.ts marks those). */
const NOT_SENT = Symbol('not sent')

function identity<T>(v: T): T {
  return v
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** The client is making a connection (not given up, not a lazy client never started). */
function isConnecting(client: RedisClient): boolean {
  const s = client.status
  return (
    s === 'connecting' || s === 'connect' || s === 'reconnecting' || s === 'close' || s === 'disconnecting'
  )
}

function isTimeout(err: unknown): boolean {
  return ResilientError.is(err, 'E_TIMEOUT') || (err instanceof Error && err.message === 'Command timed out')
}

/**
 * The connection to Redis and everything that bounds it: the client (created, or the
 * caller's, checked), the breaker in front of it, and the deadline timer that rejects an
 * operation at `redisTimeoutMs`. Every Redis call of the cache goes through it. Nothing here
 * throws or rejects for a Redis reason: a failure is a result, a stat, an event and a
 * channel message.
 *
 * - Reads and fills go through the breaker (`command`, `script`, `readL2`): skipped while it
 *   is open or the client is not connected.
 * - Invalidations (`{ always: true }`) are attempted whatever the breaker says: one bounded
 *   round trip that tells the other instances, if Redis answers. Only a client that is not
 *   connected skips them (nothing is ever queued).
 * - After `reconnectAfterTimeouts` timeouts in a row, the connection is dropped and made
 *   again: a black-holed connection (no reset, no reply) would otherwise stay "ready" until
 *   the kernel gives up, minutes later. A READONLY reply (the node was demoted behind a
 *   fixed endpoint) reconnects too.
 */
export class RedisConnection {
  readonly client: RedisClient
  readonly owned: boolean
  readonly breaker: Breaker
  /** redisTimeoutMs: the bound of every operation. */
  readonly timeoutMs: number
  readonly #deadlines: DeadlineGuard
  readonly #t: Telemetry
  readonly #cleanup: (() => void)[] = []
  readonly #reconnectAfter: number
  /** How long an invalidation waits for a connection being made: the connect timeout. */
  readonly connectWaitMs: number
  /** Timeouts in a row on this connection; any answer resets it. */
  timeoutStreak = 0
  #lastReconnect = Number.NEGATIVE_INFINITY

  constructor(
    o: ResolvedOptions,
    redis: NonNullable<Exclude<ResolvedOptions['redis'], false>>,
    breaker: Breaker,
    t: Telemetry,
  ) {
    this.#t = t
    this.timeoutMs = o.redisTimeoutMs
    this.breaker = breaker
    this.#reconnectAfter = o.reconnectAfterTimeouts
    this.connectWaitMs = Math.max(1000, o.redisTimeoutMs * 10)
    this.#deadlines = new DeadlineGuard(o.redisTimeoutMs)
    if (isRedisClient(redis)) {
      checkCallerClient(redis, o.redisTimeoutMs)
      this.client = redis
      this.owned = false
    } else {
      this.client = createOwnedClient(redis, o.redisTimeoutMs)
      this.owned = true
    }
    this.listenErrors(this.client, 'client')
    if (!this.client.isCluster) {
      const load = () => loadScripts(this.client as Redis)
      this.client.on('ready', load)
      this.#cleanup.push(() => this.client.off('ready', load))
    } else {
      // A Cluster connects to a node on its first command, and meanwhile queues commands for it
      // (ioredis forces an offline queue on Cluster nodes): one could run after the cache gave
      // up on it. So every node is connected as soon as it is known; until it is ready, the
      // Cluster refuses commands for it instead of queueing them.
      const cluster = this.client as Cluster
      const connect = (node: Redis) => {
        node.once('ready', () => loadScripts(node))
        if (node.status === 'wait') node.connect().catch(noop)
      }
      const onReady = () => {
        for (const node of cluster.nodes('all')) connect(node)
      }
      cluster.on('+node', connect)
      cluster.on('ready', onReady)
      this.#cleanup.push(() => {
        cluster.off('+node', connect)
        cluster.off('ready', onReady)
      })
    }
  }

  /** 'ready', 'connecting', 'reconnecting', 'end'... */
  get status(): string {
    return this.client.status
  }

  /** Commands can be sent now: the client is connected and the breaker lets calls through. */
  usable(): boolean {
    return isReady(this.client) && this.breaker.state !== 'open'
  }

  /**
   * One command, bounded. Skipped (SKIPPED) when the client is not connected, or, unless
   * `always`, when the breaker is open.
   */
  command<T = unknown>(
    operation: string,
    name: string,
    args: (string | number)[],
    always = false,
  ): Promise<OpResult<T>> {
    return this.#run(operation, always, () => this.#send<T>(operation, this.#build(name, args)))
  }

  /** A Lua script of `scripts.ts` as one bounded operation (EVALSHA, then EVAL after NOSCRIPT). */
  script(
    operation: string,
    name: ScriptName,
    keys: string[],
    args: (string | number)[],
    always = false,
  ): Promise<OpResult<unknown>> {
    return this.#run(operation, always, () => this.#sendScript(operation, name, keys, args))
  }

  #run<T>(operation: string, always: boolean, fn: () => Promise<T>): Promise<OpResult<T>> {
    if (always) return this.#runAlways(operation, fn)
    const p = this.#attempt(operation, false, fn)
    return p === NOT_SENT ? Promise.resolve(this.#skip()) : p.then(this.#skipIfNotSent, this.#onRejected)
  }

  /**
   * An invalidation: whatever the breaker says; while a connection is being made (a reconnect
   * after a blip, a Cluster node coming back), it waits for it, up to `connectWaitMs`, and
   * tries again whatever never reached Redis (refused before it was written). Then one bounded
   * round trip. Nothing that may have reached Redis is sent twice.
   */
  async #runAlways<T>(operation: string, fn: () => Promise<T>): Promise<OpResult<T>> {
    const until = performance.now() + this.connectWaitMs
    for (;;) {
      if (isReady(this.client)) {
        const p = this.#attempt(operation, true, fn)
        if (p !== NOT_SENT) {
          const r = await p.then(identity, this.#onRejected)
          if (r !== NOT_SENT) return r
        }
      } else if (!isConnecting(this.client)) return this.#skip()
      const left = until - performance.now()
      if (left <= 0) return this.#skip()
      if (isReady(this.client)) await sleep(Math.min(10, left))
      else await this.#whenReady(left)
    }
  }

  /** Sends through the breaker (or, for an invalidation while it is not closed, around it). */
  #attempt<T>(
    operation: string,
    always: boolean,
    fn: () => Promise<T>,
  ): Promise<OpResult<T> | typeof NOT_SENT> | typeof NOT_SENT {
    const state = this.breaker.state
    let p: Promise<T>
    if (state === 'closed') p = this.breaker.execute(fn)
    else if (always) p = fn()
    else if (state === 'open') return NOT_SENT
    else p = this.breaker.execute(fn) // half-open: the one trial, or E_CIRCUIT_OPEN
    return p.then(
      (value): OpResult<T> => {
        this.timeoutStreak = 0
        return { ok: true, value }
      },
      (err: unknown): OpResult<T> | typeof NOT_SENT => {
        if (ResilientError.is(err, 'E_CIRCUIT_OPEN') || isNotSent(err)) return NOT_SENT
        this.failed(operation, err) // a READONLY reconnects
        // READONLY: a replica refused it, it did not run: an invalidation goes again once the
        // connection is remade (behind a fixed endpoint, to the promoted node).
        if (always && replyCode(err) === 'READONLY') return NOT_SENT
        return { ok: false, error: err }
      },
    )
  }

  #skipIfNotSent = <T>(r: OpResult<T> | typeof NOT_SENT): OpResult<T> => (r === NOT_SENT ? this.#skip() : r)

  #onRejected = (err: unknown): OpResult<never> => {
    this.failed('redis', err)
    return { ok: false, error: err }
  }

  #skip(): OpResult<never> {
    this.#t.counts.redisSkipped++
    return SKIPPED
  }

  /** Resolves true when the client becomes ready (a 'ready' event), false after `ms` or if it ends. */
  #whenReady(ms: number): Promise<boolean> {
    const client = this.client
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer)
        client.off('ready', onReady)
        client.off('end', onEnd)
        resolve(ok)
      }
      const onReady = () => done(true)
      const onEnd = () => done(false)
      const timer = setTimeout(() => done(false), ms)
      client.on('ready', onReady)
      client.on('end', onEnd)
    })
  }

  #build(name: string, args: (string | number)[]): Command {
    const options = this.client.options as { keyPrefix?: string }
    return new Command(name, args, { replyEncoding: 'utf8', keyPrefix: options.keyPrefix })
  }

  #send<T>(operation: string, command: Command): Promise<T> {
    this.#t.counts.redisCommands++
    return this.#deadlines.send<T>(this.client, command, operation)
  }

  #sendScript(
    operation: string,
    name: ScriptName,
    keys: string[],
    args: (string | number)[],
  ): Promise<unknown> {
    return this.#send(operation, scriptCommand(this.client, name, keys, args)).catch((err: unknown) => {
      // Redis does not have the script (restarted, failed over): it did not run. Send its source.
      if (!isNoScript(err)) throw err
      return this.#send(operation, scriptCommand(this.client, name, keys, args, true))
    })
  }

  /**
   * `MGET keys` as `command()` does it but without its result wrapper, for the L2-hit path:
   * undefined when it is skipped (client not ready, breaker open); else a promise of the
   * reply that rejects on a Redis error or timeout (hand the rejection to `readFailed`, the
   * reply to `readOk`). The command is rejected at its deadline through ioredis's
   * `Command#reject`: no timer and no promise of ours per read.
   */
  readL2(keys: string[]): Promise<unknown> | undefined {
    const client = this.client
    if (!isReady(client) || this.breaker.state === 'open') {
      this.#t.counts.redisSkipped++
      return undefined
    }
    return this.breaker.execute(() => {
      this.#t.counts.redisCommands++
      const command = mgetCommand(client, keys)
      return command
        ? this.#deadlines.send(client, command, 'lookup')
        : this.#deadlines.run(() => client.mget(keys), 'lookup')
    })
  }

  /** A failed `readL2`: a rejection by the breaker is a skip; anything else a Redis error. Never throws. */
  readFailed = (err: unknown): undefined => {
    if (ResilientError.is(err, 'E_CIRCUIT_OPEN')) this.#t.counts.redisSkipped++
    else this.failed('lookup', err)
    return undefined
  }

  /** Counts and reports a failed command; reconnects after too many timeouts in a row, or a READONLY. */
  failed(operation: string, err: unknown): void {
    const timeout = isTimeout(err)
    this.#t.redisError(operation, timeout ? 'timeout' : 'error', err)
    if (timeout) {
      this.timeoutStreak++
      if (this.#reconnectAfter > 0 && this.timeoutStreak >= this.#reconnectAfter) this.reconnect('timeouts')
      return
    }
    this.timeoutStreak = 0 // an answer, if an error one
    if (replyCode(err) === 'READONLY') this.reconnect('readonly')
  }

  /**
   * Drops the connection and lets the client make a new one (its retryStrategy): in-flight
   * commands fail at once, nothing is resent. At most once per `redisTimeoutMs` x 10 (1 s at
   * least), so that a node that keeps answering READONLY is not hammered.
   */
  reconnect(reason: 'timeouts' | 'readonly'): void {
    const now = performance.now()
    if (now - this.#lastReconnect < Math.max(1000, this.timeoutMs * 10)) return
    this.#lastReconnect = now
    this.timeoutStreak = 0
    this.#t.counts.reconnects++
    this.#t.redisError(
      'reconnect',
      'connection',
      new ResilientError(
        'E_CACHE_UNAVAILABLE',
        `reconnecting to Redis (${reason === 'timeouts' ? 'timeouts in a row' : 'the node answered READONLY'})`,
        {
          details: { reason },
        },
      ),
    )
    dropConnection(this.client)
  }

  /** 'error' events of a connection (refused, reset...): counted and reported, never thrown. */
  listenErrors(client: RedisClient, role: string): void {
    const onError = (err: unknown) => this.#t.redisError(role, 'connection', err)
    client.on('error', onError)
    this.#cleanup.push(() => client.off('error', onError))
  }

  /** The error of a write that did not reach Redis. */
  unavailable(operation: string, cause: unknown, reason?: string): ResilientError {
    const why =
      reason ??
      (cause === undefined
        ? `redis is ${this.client.status}`
        : ResilientError.is(cause, 'E_TIMEOUT')
          ? 'the Redis command timed out'
          : 'the Redis command failed')
    return new ResilientError(
      'E_CACHE_UNAVAILABLE',
      `cache ${operation} did not reach Redis (${why}); this process's L1 was updated, other instances were not`,
      { cause, details: { operation } },
    )
  }

  /** PING within the bound: the latency in ms, or why not. */
  async ping(): Promise<{ ok: true; ms: number } | { ok: false; why: string }> {
    if (!isReady(this.client)) return { ok: false, why: `redis ${this.client.status}` }
    if (this.breaker.state === 'open') return { ok: false, why: 'redis breaker open' }
    const started = performance.now()
    const r = await this.command('ping', 'ping', [])
    if (!r.ok) {
      const why = ResilientError.is(r.error, 'E_TIMEOUT')
        ? 'timed out'
        : r.error === undefined
          ? 'skipped'
          : 'failed'
      return { ok: false, why: `redis ping ${why}` }
    }
    return { ok: true, ms: performance.now() - started }
  }

  /** Stops the timers; quits the client if the cache created it. */
  async close(): Promise<void> {
    this.#deadlines.stop()
    for (const fn of this.#cleanup) fn()
    if (this.owned) {
      const client = this.client
      await bounded(() => client.quit(), this.timeoutMs, 'quit').catch(noop)
      client.disconnect()
    }
  }
}

function noop(): void {}

/** SCRIPT LOAD of every script when a connection is made: the first EVALSHA then finds it. */
function loadScripts(node: Redis): void {
  for (const s of Object.values(SCRIPTS)) node.call('SCRIPT', 'LOAD', s.lua).catch(noop)
}
