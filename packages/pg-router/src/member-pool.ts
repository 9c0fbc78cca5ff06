import { abortError, ResilientError } from '@resilient/core'
import pg from 'pg'
import { drainedError, errorCodeOf, roleMismatchError } from './classify.js'
import type { ConnectionOptions } from './options.js'

/**
 * One pg.Pool per member. Why pg's own Pool (not generic-pool): it already evicts a client
 * that errors while idle (and emits 'error', which we always listen to), it has an
 * `onConnect` hook where every new connection is role-checked before anyone gets it, and
 * `end()` closes idle clients at once and active ones on release. Draining a demoted
 * primary is therefore "swap in a fresh pool, end() the old one": no private fields needed.
 */

/** What we know about one pooled pg client. */
interface ClientInfo {
  /** `pg_is_in_recovery()` as last checked on this very connection. */
  inRecovery: boolean
  generation: number
}

const clientInfo = new WeakMap<object, ClientInfo>()

interface Deadline {
  at: number
  fire: () => void
}

/**
 * One coarse timer for every statement deadline in the process instead of a setTimeout per
 * statement (the hot path): it ticks every 20 ms while statements are in flight, and stops
 * after a tick with none. A deadline fires between `timeoutMs` and `timeoutMs + 20` ms.
 */
const DEADLINE_TICK_MS = 20
const deadlines = new Set<Deadline>()
let deadlineTimer: NodeJS.Timeout | undefined

function sweepDeadlines(): void {
  if (deadlines.size === 0) {
    clearInterval(deadlineTimer)
    deadlineTimer = undefined
    return
  }
  const now = performance.now()
  for (const d of deadlines) {
    if (d.at <= now) {
      deadlines.delete(d)
      d.fire()
    }
  }
}

function addDeadline(ms: number, fire: () => void): Deadline {
  const d = { at: performance.now() + ms, fire }
  deadlines.add(d)
  if (deadlineTimer === undefined) {
    deadlineTimer = setInterval(sweepDeadlines, DEADLINE_TICK_MS)
    deadlineTimer.unref()
  }
  return d
}

/** The parts of pg's client state we read (pg-pool reads the same two fields). */
interface PgClientState {
  _queryable?: boolean
  _ending?: boolean
  _ended?: boolean
  getTransactionStatus?: () => string | null
}

export function connectionLost(client: pg.ClientBase): boolean {
  const c = client as unknown as PgClientState
  return c._queryable === false || c._ending === true || c._ended === true
}

export interface MemberPoolConfig {
  name: string
  host: string
  port: number
  connection: ConnectionOptions
  max: number
  idleTimeoutMs: number
  connectTimeoutMs: number
  probeTimeoutMs: number
  /** An idle client of this pool died (pg-pool already discarded it). */
  onIdleError: (pool: MemberPool, err: Error, generation: number) => void
}

export interface MemberPoolStats {
  member: string
  total: number
  idle: number
  waiting: number
  /** Pools of earlier generations still closing (a drained primary's busy clients). */
  draining: number
  generation: number
  acquired: number
  connectErrors: number
  idleErrors: number
  discarded: number
}

export interface QueryOptions {
  timeoutMs: number
  signal?: AbortSignal | undefined
}

/** A checked-out connection. Release it exactly once. */
export class Lease {
  /** The statement was handed to a healthy connection (it may have reached the server). */
  sent = false
  #released = false
  #onError = (_err: Error) => {
    // A checked-out client whose socket dies emits 'error'; its pending query also fails, and
    // that failure is what the caller sees. Without this listener the process would crash.
    this.broken = true
  }
  broken = false
  /** pg-pool's release for this checkout (the facade replaces `client.release` with ours). */
  readonly #poolRelease: (err?: Error | boolean) => void

  constructor(
    readonly client: pg.PoolClient,
    readonly member: MemberPool,
    readonly generation: number,
  ) {
    this.#poolRelease = client.release
    client.on('error', this.#onError)
  }

  get released(): boolean {
    return this.#released
  }

  get inRecovery(): boolean {
    return clientInfo.get(this.client)?.inRecovery ?? true
  }

  get lost(): boolean {
    return this.broken || connectionLost(this.client)
  }

  /** Runs one statement, bounded by `timeoutMs` and the signal; on either the connection is marked for destruction. */
  query<R extends pg.QueryResultRow = any>(
    text: string | pg.QueryConfig,
    values: unknown[] | undefined,
    options: QueryOptions,
  ): Promise<pg.QueryResult<R>> {
    this.sent = !connectionLost(this.client)
    const p = this.client.query<R>(text as pg.QueryConfig, values as unknown[])
    const { timeoutMs, signal } = options
    if (!(timeoutMs > 0) && !signal) return p
    return new Promise((resolve, reject) => {
      let done = false
      let deadline: Deadline | undefined
      const finish = () => {
        done = true
        if (deadline) deadlines.delete(deadline)
        signal?.removeEventListener('abort', onAbort)
      }
      const onAbort = () => {
        if (done) return
        finish()
        this.broken = true
        reject(abortError(signal!, 'query'))
      }
      if (signal?.aborted) return onAbort()
      if (timeoutMs > 0) {
        deadline = addDeadline(timeoutMs, () => {
          if (done) return
          finish()
          this.broken = true
          reject(
            new ResilientError('E_TIMEOUT', `query on ${this.member.name} timed out after ${timeoutMs} ms`, {
              details: { member: this.member.name, timeoutMs },
            }),
          )
        })
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      p.then(
        (r) => {
          if (done) return
          finish()
          resolve(r)
        },
        (err) => {
          if (done) return
          finish()
          reject(err)
        },
      )
    })
  }

  /**
   * Back to the pool, or destroyed when `destroy` is set, the connection broke, or it is not
   * idle (an open or failed transaction must never be handed to the next caller).
   */
  release(destroy?: boolean | Error): void {
    if (this.#released) return
    this.#released = true
    this.client.removeListener('error', this.#onError)
    const status = (this.client as unknown as PgClientState).getTransactionStatus?.()
    const bad = Boolean(destroy) || this.lost || (status != null && status !== 'I')
    if (bad) this.member.countDiscard()
    try {
      this.#poolRelease.call(this.client, bad ? (destroy instanceof Error ? destroy : true) : undefined)
    } catch {
      // double release from a user's client: already back in the pool
    }
  }
}

export class MemberPool {
  readonly name: string
  readonly host: string
  readonly port: number
  #config: MemberPoolConfig
  #pool: pg.Pool | null = null
  /** Connects waiting in the current generation; drain() rejects them at once. */
  #waiting = new Set<(err: Error) => void>()
  #generation = 0
  #draining = new Set<Promise<void>>()
  #closed = false
  #acquired = 0
  #connectErrors = 0
  #idleErrors = 0
  #discarded = 0

  constructor(config: MemberPoolConfig) {
    this.name = config.name
    this.host = config.host
    this.port = config.port
    this.#config = config
  }

  get generation(): number {
    return this.#generation
  }

  get closed(): boolean {
    return this.#closed
  }

  /** Busy + waiting: what 'least-busy' compares. */
  get load(): number {
    const p = this.#pool
    return p ? p.totalCount - p.idleCount + p.waitingCount : 0
  }

  countDiscard(): void {
    this.#discarded++
  }

  #current(): pg.Pool {
    if (this.#closed) {
      throw new ResilientError('E_SHUTTING_DOWN', 'the router is closed', { details: { member: this.name } })
    }
    if (this.#pool) return this.#pool
    const generation = ++this.#generation
    const c = this.#config
    const probeTimeoutMs = c.probeTimeoutMs
    const config: pg.PoolConfig = {
      ...c.connection,
      host: c.host,
      port: c.port,
      max: c.max,
      idleTimeoutMillis: c.idleTimeoutMs,
      connectionTimeoutMillis: c.connectTimeoutMs,
      keepAlive: true,
      allowExitOnIdle: true,
      // Every new connection learns its role before anyone may use it.
      onConnect: (async (client: pg.ClientBase) => {
        const r = await client.query<{ r: boolean }>({
          text: 'SELECT pg_is_in_recovery() AS r',
          query_timeout: probeTimeoutMs,
        } as pg.QueryConfig)
        clientInfo.set(client, { inRecovery: r.rows[0]?.r !== false, generation })
      }) as unknown as (client: pg.ClientBase) => void,
    }
    // pg copies and hides `password`; keep it out of our own object graph too
    if ('password' in c.connection) {
      Object.defineProperty(config, 'password', {
        value: c.connection.password,
        enumerable: false,
        writable: true,
        configurable: true,
      })
    }
    const pool = new pg.Pool(config)
    pool.on('error', (err) => {
      this.#idleErrors++
      this.#config.onIdleError(this, err, generation)
    })
    this.#pool = pool
    return pool
  }

  /**
   * A connection from this member. For `write`, the connection must have answered
   * `pg_is_in_recovery() = false`: checked when it was opened, and checked again if it was
   * opened while the member was still a replica (promotion keeps connections open; demotion
   * never does, since Postgres restarts to become a standby).
   */
  async acquire(mode: 'read' | 'write', signal?: AbortSignal): Promise<Lease> {
    if (signal?.aborted) throw abortError(signal, 'connect')
    const pool = this.#current()
    const generation = this.#generation
    // Saturated: a timeout now means "busy", not "the server is gone".
    const saturated = pool.idleCount === 0 && pool.totalCount >= this.#config.max
    let client: pg.PoolClient
    try {
      client = await connectWithSignal(pool, signal, this.#waiting)
    } catch (err) {
      this.#connectErrors++
      if (saturated && !ResilientError.is(err) && errorCodeOf(err) === undefined) {
        throw new ResilientError(
          'E_LIMIT',
          `no free connection to ${this.name} within ${this.#config.connectTimeoutMs} ms (pool.max ${this.#config.max})`,
          { cause: err, details: { member: this.name, max: this.#config.max } },
        )
      }
      throw err
    }
    this.#acquired++
    const lease = new Lease(client, this, generation)
    let info = clientInfo.get(client)
    if (!info || (mode === 'write' && info.inRecovery)) {
      try {
        const r = await lease.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r', undefined, {
          timeoutMs: this.#config.probeTimeoutMs,
          signal,
        })
        info = { inRecovery: r.rows[0]?.r !== false, generation }
        clientInfo.set(client, info)
      } catch (err) {
        lease.release(true)
        this.#connectErrors++
        throw err
      }
    }
    if (mode === 'write' && info.inRecovery) {
      lease.release()
      throw roleMismatchError(this.name)
    }
    return lease
  }

  /** Stop handing out this generation's connections: idle ones close now, busy ones on release. */
  drain(): void {
    const p = this.#pool
    if (!p) return
    this.#pool = null
    const waiting = this.#waiting
    this.#waiting = new Set()
    const err = drainedError(this.name)
    for (const reject of waiting) reject(err)
    const done: Promise<void> = p.end().then(
      () => {
        this.#draining.delete(done)
      },
      () => {
        this.#draining.delete(done)
      },
    )
    this.#draining.add(done)
  }

  stats(): MemberPoolStats {
    const p = this.#pool
    return {
      member: this.name,
      total: p?.totalCount ?? 0,
      idle: p?.idleCount ?? 0,
      waiting: p?.waitingCount ?? 0,
      draining: this.#draining.size,
      generation: this.#generation,
      acquired: this.#acquired,
      connectErrors: this.#connectErrors,
      idleErrors: this.#idleErrors,
      discarded: this.#discarded,
    }
  }

  /** Ends every pool of this member; waits for busy clients at most `waitMs`. */
  async close(waitMs: number): Promise<void> {
    this.drain()
    this.#closed = true
    const all = Promise.all([...this.#draining])
    let timer: NodeJS.Timeout | undefined
    await Promise.race([all, new Promise<void>((r) => (timer = setTimeout(r, waitMs)))])
    clearTimeout(timer)
  }
}

/**
 * pool.connect(), but the caller's abort, or the drain of this pool generation, rejects at
 * once; a client that arrives later goes straight back (to a pool that is ending: it closes).
 * With an idle client at hand and no signal, it is pool.connect() itself (the hot path).
 */
function connectWithSignal(
  pool: pg.Pool,
  signal: AbortSignal | undefined,
  waiting: Set<(err: Error) => void>,
): Promise<pg.PoolClient> {
  const p = pool.connect()
  if (!signal && pool.idleCount > 0) return p
  return new Promise((resolve, reject) => {
    let done = false
    const fail = (err: Error) => {
      if (done) return
      done = true
      cleanup()
      reject(err)
    }
    const onAbort = () => fail(abortError(signal!, 'connect'))
    const cleanup = () => {
      signal?.removeEventListener('abort', onAbort)
      waiting.delete(fail)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    waiting.add(fail)
    p.then(
      (client) => {
        if (done) return client.release()
        done = true
        cleanup()
        resolve(client)
      },
      (err) => fail(err),
    )
  })
}
