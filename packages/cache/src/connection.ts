import { type Breaker, ResilientError } from '@resilient/core'
import {
  checkCallerClient,
  createOwnedClient,
  isReady,
  isRedisClient,
  mgetCommand,
  type RedisClient,
} from './client.js'
import { bounded, DeadlineGuard } from './deadline.js'
import type { ResolvedOptions } from './options.js'
import { defineScripts, runScript, type ScriptName } from './scripts.js'
import type { Telemetry } from './telemetry.js'

export type OpResult<T> = { ok: true; value: T } | { ok: false; error: unknown }
/** An operation that was not attempted (breaker open, client not ready): `error` is undefined. */
export const SKIPPED: OpResult<never> = { ok: false, error: undefined }

/**
 * The connection to Redis and everything that bounds it: the client (created, or the
 * caller's, checked), the breaker in front of it, and the deadline timer that rejects an
 * operation at `redisTimeoutMs`. Every Redis call of the cache goes through `op()` or, for
 * the L2-hit read, `readL2()`. Neither ever throws or rejects for a Redis reason: a failure
 * is a result, a stat, an event and a channel message.
 */
export class RedisConnection {
  readonly client: RedisClient
  readonly owned: boolean
  readonly breaker: Breaker
  readonly #deadlines: DeadlineGuard
  /** redisTimeoutMs: the bound of every operation. */
  readonly timeoutMs: number
  readonly #t: Telemetry
  readonly #cleanup: (() => void)[] = []

  constructor(
    o: ResolvedOptions,
    redis: NonNullable<Exclude<ResolvedOptions['redis'], false>>,
    breaker: Breaker,
    t: Telemetry,
  ) {
    this.#t = t
    this.timeoutMs = o.redisTimeoutMs
    this.breaker = breaker
    this.#deadlines = new DeadlineGuard(o.redisTimeoutMs)
    if (isRedisClient(redis)) {
      checkCallerClient(redis, o.redisTimeoutMs)
      this.client = redis
      this.owned = false
    } else {
      this.client = createOwnedClient(redis, o.redisTimeoutMs)
      this.owned = true
    }
    defineScripts(this.client)
    this.listenErrors(this.client, 'client')
  }

  /** 'ready', 'connecting', 'reconnecting', 'end'... */
  get status(): string {
    return this.client.status
  }

  /** Commands can be sent now: the client is connected and the breaker lets calls through. */
  usable(): boolean {
    return isReady(this.client) && this.breaker.state !== 'open'
  }

  /** One Redis operation: skipped if Redis is not usable now, else bounded and through the breaker. Never throws. */
  op<T>(operation: string, timeoutMs: number, fn: () => Promise<T>): Promise<OpResult<T>> {
    if (!isReady(this.client) || this.breaker.state === 'open') {
      this.#t.counts.redisSkipped++
      return Promise.resolve(SKIPPED)
    }
    return this.breaker
      .execute(() => {
        this.#t.counts.redisCommands++
        return timeoutMs === this.timeoutMs
          ? this.#deadlines.run(fn, operation)
          : bounded(fn, timeoutMs, operation)
      })
      .then(
        (value): OpResult<T> => ({ ok: true, value }),
        (err: unknown): OpResult<T> => {
          if (ResilientError.is(err, 'E_CIRCUIT_OPEN')) {
            this.#t.counts.redisSkipped++
            return SKIPPED
          }
          this.failed(operation, err)
          return { ok: false, error: err }
        },
      )
  }

  /** A Lua script of `scripts.ts` as one bounded operation. */
  script(
    operation: string,
    name: ScriptName,
    keys: string[],
    args: (string | number)[],
  ): Promise<OpResult<unknown>> {
    return this.op(operation, this.timeoutMs, () => runScript(this.client, name, keys, args))
  }

  /** The bare script call, for `op()`'s `fn`. */
  runScript(name: ScriptName, keys: string[], args: (string | number)[]): Promise<unknown> {
    return runScript(this.client, name, keys, args)
  }

  /**
   * `MGET keys` as `op()` does it but without its result wrapper, for the L2-hit path:
   * undefined when it is skipped (client not ready, breaker open); else a promise of the
   * reply that rejects on a Redis error or timeout (hand the rejection to `readFailed`).
   * The command is rejected at its deadline through ioredis's `Command#reject`: no timer
   * and no promise of ours per read.
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

  /** Counts and reports a failed command. */
  failed(operation: string, err: unknown): void {
    const timeout =
      ResilientError.is(err, 'E_TIMEOUT') || (err instanceof Error && err.message === 'Command timed out')
    this.#t.redisError(operation, timeout ? 'timeout' : 'error', err)
  }

  /** 'error' events of a connection (refused, reset...): counted and reported, never thrown. */
  listenErrors(client: RedisClient, role: string): void {
    const onError = (err: unknown) => this.#t.redisError(role, 'connection', err)
    client.on('error', onError)
    this.#cleanup.push(() => client.off('error', onError))
  }

  /** The error of a write that did not reach Redis. */
  unavailable(operation: string, cause: unknown): ResilientError {
    const why =
      cause === undefined
        ? this.breaker.state === 'open'
          ? 'the Redis breaker is open'
          : `redis is ${this.client.status}`
        : 'the Redis command failed'
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
    const r = await this.op('ping', this.timeoutMs, () => this.client.ping())
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
