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

/** What we know about one pooled pg client (kept on the client itself, under a symbol). */
interface ClientInfo {
  /** `pg_is_in_recovery()` as last checked on this very connection (true until checked). */
  inRecovery: boolean
  /** The role check has answered on this connection. */
  checked: boolean
  /** The client emitted 'error' (its socket died): never reuse it. */
  broken: boolean
  generation: number
}

const INFO = Symbol('pg-router.clientInfo')
type InfoHolder = { [INFO]?: ClientInfo }

function infoOf(client: object): ClientInfo | undefined {
  return (client as InfoHolder)[INFO]
}

/**
 * Attached once per client, when it connects, for its whole life: a checked-out client
 * whose socket dies emits 'error' (its pending query fails too, and that failure is what the
 * caller sees). Without a listener the process would crash; with one per checkout the hot
 * path would pay an add/remove per statement.
 */
function onClientError(this: InfoHolder): void {
  const info = this[INFO]
  if (info) info.broken = true
}

/**
 * Statement deadlines without a timer per statement: a lease with a statement in flight is
 * in `inflight` (its `deadlineAt` set), and one coarse interval, running only while the list
 * is non-empty, expires the overdue ones. Expiring destroys the connection's socket: pg
 * rejects the pending query at once and the caller gets E_TIMEOUT.
 *
 * The interval's tick is a twentieth of the shortest timeout in flight, between 5 ms and
 * 1 s: a deadline fires at most 5% late (the default 30 s one at most 1 s late, a 100 ms one
 * at most 5 ms late). The fixed 20 ms tick it replaces woke a busy process 50 times a second
 * for statements that almost all have 30 s to go.
 */
const MIN_TICK_MS = 5
const MAX_TICK_MS = 1_000

export function deadlineTickMs(timeoutMs: number): number {
  return Math.min(MAX_TICK_MS, Math.max(MIN_TICK_MS, Math.floor(timeoutMs / 20)))
}

/**
 * The leases with a statement in flight, in a plain array: each knows its own index (`slot`),
 * so adding and removing are a store and a swap with the last one, no hashing and no allocation.
 */
const inflight: Lease[] = []
let deadlineTimer: NodeJS.Timeout | undefined
/** The timeout the armed interval is sized for, and its tick (both 0: none armed). */
let armedForMs = 0
let tickMs = 0

function arm(timeoutMs: number): void {
  armedForMs = timeoutMs
  const ms = deadlineTickMs(timeoutMs)
  if (deadlineTimer !== undefined && ms === tickMs) return
  clearInterval(deadlineTimer)
  tickMs = ms
  deadlineTimer = setInterval(sweepDeadlines, ms)
  deadlineTimer.unref()
}

function sweepDeadlines(): void {
  const now = performance.now()
  let shortest = Number.POSITIVE_INFINITY
  for (let i = inflight.length - 1; i >= 0; i--) {
    const lease = inflight[i] as Lease
    if (lease.deadlineAt <= now) {
      unwatch(lease)
      lease.expire()
    } else if (lease.timeoutMs < shortest) {
      shortest = lease.timeoutMs
    }
  }
  if (inflight.length === 0) {
    clearInterval(deadlineTimer)
    deadlineTimer = undefined
    armedForMs = 0
    tickMs = 0
  } else if (shortest > armedForMs) {
    arm(shortest) // the statement that needed the finer tick has settled
  }
}

function watch(lease: Lease): void {
  if (lease.slot !== -1) return
  lease.slot = inflight.length
  inflight.push(lease)
  if (deadlineTimer === undefined || lease.timeoutMs < armedForMs) arm(lease.timeoutMs)
}

function unwatch(lease: Lease): void {
  const i = lease.slot
  if (i === -1) return
  lease.slot = -1
  const last = inflight.pop() as Lease
  if (last !== lease) {
    inflight[i] = last
    last.slot = i
  }
}

/** The parts of pg's client state we read (pg-pool reads the same two fields). */
interface PgClientState {
  _queryable?: boolean
  _ending?: boolean
  _ended?: boolean
  getTransactionStatus?: () => string | null
  connection?: { stream?: { destroy?: () => void } }
}

export function connectionLost(client: pg.ClientBase): boolean {
  const c = client as unknown as PgClientState
  return c._queryable === false || c._ending === true || c._ended === true
}

/** Cuts a connection now (a hung server never answers an orderly Terminate). */
function destroyConnection(client: pg.PoolClient): void {
  const stream = (client as unknown as PgClientState).connection?.stream
  if (stream && typeof stream.destroy === 'function') stream.destroy()
  else (client as unknown as pg.Client).end().catch(() => {})
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

const NO_INFO: ClientInfo = Object.freeze({ inRecovery: true, checked: false, broken: false, generation: -1 })

/** A checked-out connection. Release it exactly once. */
export class Lease {
  /** The statement was handed to a healthy connection (it may have reached the server). */
  sent = false
  /** The statement in flight passed its deadline: the connection was cut. */
  timedOut = false
  /** performance.now() by which the statement in flight must settle; 0: none in flight. */
  deadlineAt = 0
  /** Index in the in-flight list while a deadline is armed; -1: not in it. */
  slot = -1
  #timeoutMs = 0
  #released = false
  #aborted = false
  readonly #info: ClientInfo
  /** pg-pool's release for this checkout (the facade replaces `client.release` with ours). */
  readonly #poolRelease: (err?: Error | boolean) => void

  constructor(
    readonly client: pg.PoolClient,
    readonly member: MemberPool,
    readonly generation: number,
  ) {
    this.#poolRelease = client.release
    this.#info = infoOf(client) ?? NO_INFO
  }

  get released(): boolean {
    return this.#released
  }

  get inRecovery(): boolean {
    return this.#info.inRecovery
  }

  /** The connection died (socket error), or a statement on it was abandoned (timeout, abort). */
  get broken(): boolean {
    return this.#info.broken || this.#aborted || this.timedOut
  }

  get lost(): boolean {
    return this.broken || connectionLost(this.client)
  }

  /** The bound of the statement in flight (or the last one), in ms; 0: none. */
  get timeoutMs(): number {
    return this.#timeoutMs
  }

  /** A statement is about to be handed to pg: it counts as sent unless the connection is gone; `timeoutMs` > 0 arms its deadline. */
  #begin(timeoutMs: number): void {
    this.sent = !connectionLost(this.client)
    if (timeoutMs > 0) {
      this.#timeoutMs = timeoutMs
      this.deadlineAt = performance.now() + timeoutMs
      watch(this)
    }
  }

  /**
   * Starts one statement and returns pg's own promise (no wrapper); `timeoutMs` > 0 arms the
   * coarse deadline. Call `settled()` once it settled, and map a rejection with
   * `failure(err)`. `query()` does all of that.
   */
  start<R extends pg.QueryResultRow = any>(
    text: string | pg.QueryConfig,
    values: unknown[] | undefined,
    timeoutMs: number,
  ): Promise<pg.QueryResult<R>> {
    this.#begin(timeoutMs)
    return this.client.query<R>(text as pg.QueryConfig, values as unknown[])
  }

  /**
   * `start()` in pg's callback form (no promise at all): `cb` gets the result, or the error
   * as the caller should see it (`failure(err)`), with the deadline already disarmed.
   */
  startCb<R extends pg.QueryResultRow = any>(
    text: string | pg.QueryConfig,
    values: unknown[] | undefined,
    timeoutMs: number,
    cb: (err: unknown, result?: pg.QueryResult<R>) => void,
  ): void {
    this.#begin(timeoutMs)
    const done = (err: Error | null, r: pg.QueryResult<R>) => {
      this.settled()
      if (err) cb(this.failure(err))
      else cb(null, r)
    }
    try {
      ;(this.client as unknown as { query: (t: unknown, v: unknown, cb: typeof done) => void }).query(
        text,
        values,
        done,
      )
    } catch (err) {
      this.settled()
      cb(err)
    }
  }

  /** The statement settled: disarm its deadline. */
  settled(): void {
    if (this.deadlineAt !== 0) {
      this.deadlineAt = 0
      unwatch(this)
    }
  }

  /** What the caller sees for a failed statement: E_TIMEOUT when the deadline cut it, else pg's error. */
  failure(err: unknown): unknown {
    if (!this.timedOut) return err
    return new ResilientError(
      'E_TIMEOUT',
      `query on ${this.member.name} timed out after ${this.#timeoutMs} ms`,
      { cause: err, details: { member: this.member.name, timeoutMs: this.#timeoutMs } },
    )
  }

  /** Called by the deadline sweep. */
  expire(): void {
    this.deadlineAt = 0
    this.timedOut = true
    destroyConnection(this.client)
  }

  /** Runs one statement, bounded by `timeoutMs` and the signal; on either the connection is marked for destruction. */
  async query<R extends pg.QueryResultRow = any>(
    text: string | pg.QueryConfig,
    values: unknown[] | undefined,
    timeoutMs: number,
    signal?: AbortSignal | undefined,
  ): Promise<pg.QueryResult<R>> {
    if (signal?.aborted) {
      this.#aborted = true
      throw abortError(signal, 'query')
    }
    const p = this.start<R>(text, values, timeoutMs)
    try {
      return await (signal ? this.#withSignal(p, signal) : p)
    } catch (err) {
      throw this.failure(err)
    } finally {
      this.settled()
    }
  }

  /** Rejects at once when `signal` aborts (the connection is then abandoned: destroyed on release). */
  #withSignal<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let done = false
      const onAbort = () => {
        if (done) return
        done = true
        this.#aborted = true
        reject(abortError(signal, 'query'))
      }
      signal.addEventListener('abort', onAbort, { once: true })
      p.then(
        (r) => {
          if (done) return
          done = true
          signal.removeEventListener('abort', onAbort)
          resolve(r)
        },
        (err) => {
          if (done) return
          done = true
          signal.removeEventListener('abort', onAbort)
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
    this.settled()
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
      // No pool-level connectionTimeoutMillis: pg-pool would arm a timer on every checkout,
      // even of an idle client. Opening a connection is bounded by the client (below), and
      // waiting for a busy pool by connectWithSignal.
      Client: boundedClient(c.connectTimeoutMs) as unknown as pg.PoolConfig['Client'],
      keepAlive: true,
      allowExitOnIdle: true,
      // Every new connection learns its role before anyone may use it.
      onConnect: (async (client: pg.ClientBase) => {
        const info: ClientInfo = { inRecovery: true, checked: false, broken: false, generation }
        ;(client as InfoHolder)[INFO] = info
        client.on('error', onClientError)
        const r = await client.query<{ r: boolean }>({
          text: 'SELECT pg_is_in_recovery() AS r',
          query_timeout: probeTimeoutMs,
        } as pg.QueryConfig)
        info.inRecovery = r.rows[0]?.r !== false
        info.checked = true
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
    const pool = this.#pool ?? this.#current()
    const generation = this.#generation
    // Saturated: a timeout now means "busy", not "the server is gone".
    const saturated = pool.idleCount === 0 && pool.totalCount >= this.#config.max
    let client: pg.PoolClient
    try {
      // An idle client for us (none queued before us) and no signal: pool.connect() itself, the hot path.
      client = await (signal === undefined && pool.idleCount > pool.waitingCount
        ? pool.connect()
        : connectWithSignal(pool, signal, this.#waiting, this.#config.connectTimeoutMs))
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
    const info = infoOf(client)
    if (info?.checked && !(mode === 'write' && info.inRecovery)) {
      return new Lease(client, this, generation)
    }
    return this.#recheck(client, mode, generation, signal)
  }

  /**
   * The hot path of acquire(), in callback form: only when an idle client is there for us
   * (none queued before us) and this generation's pool exists. Returns false (and never
   * calls `cb`) when it does not apply: use acquire().
   */
  tryAcquire(mode: 'read' | 'write', cb: (err: unknown, lease?: Lease) => void): boolean {
    const pool = this.#pool
    if (pool === null || this.#closed || !(pool.idleCount > pool.waitingCount)) return false
    const generation = this.#generation
    pool.connect((err, client) => {
      if (err || client === undefined) {
        this.#connectErrors++
        cb(err ?? new Error('pg-pool gave no client'))
        return
      }
      this.#acquired++
      const info = infoOf(client)
      if (info?.checked && !(mode === 'write' && info.inRecovery)) {
        cb(null, new Lease(client, this, generation))
        return
      }
      this.#recheck(client, mode, generation, undefined).then((lease) => cb(null, lease), cb)
    })
    return true
  }

  /** A connection whose role is unknown, or that was opened on a replica and is wanted for writes. */
  async #recheck(
    client: pg.PoolClient,
    mode: 'read' | 'write',
    generation: number,
    signal: AbortSignal | undefined,
  ): Promise<Lease> {
    let info = infoOf(client)
    if (!info) {
      info = { inRecovery: true, checked: false, broken: false, generation }
      ;(client as InfoHolder)[INFO] = info
      client.on('error', onClientError)
    }
    const lease = new Lease(client, this, generation)
    try {
      const r = await lease.query<{ r: boolean }>(
        'SELECT pg_is_in_recovery() AS r',
        undefined,
        this.#config.probeTimeoutMs,
        signal,
      )
      info.inRecovery = r.rows[0]?.r !== false
      info.checked = true
    } catch (err) {
      lease.release(true)
      this.#connectErrors++
      throw err
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
 * A pg.Client class whose connection attempts give up after `timeoutMs` (pg's own
 * `connectionTimeoutMillis`, set on the client only). The config keeps its non-enumerable
 * password: it is the prototype of what the client reads, not copied.
 */
function boundedClient(timeoutMs: number): typeof pg.Client {
  return class BoundedClient extends pg.Client {
    constructor(config?: pg.ClientConfig) {
      super(
        Object.create(config ?? null, {
          connectionTimeoutMillis: { value: timeoutMs, enumerable: true },
        }) as pg.ClientConfig,
      )
    }
  }
}

/**
 * pool.connect(), but the caller's abort, or the drain of this pool generation, rejects at
 * once; a client that arrives later goes straight back (to a pool that is ending: it closes).
 */
function connectWithSignal(
  pool: pg.Pool,
  signal: AbortSignal | undefined,
  waiting: Set<(err: Error) => void>,
  timeoutMs: number,
): Promise<pg.PoolClient> {
  const p = pool.connect()
  return new Promise((resolve, reject) => {
    let done = false
    const fail = (err: Error) => {
      if (done) return
      done = true
      cleanup()
      reject(err)
    }
    const onAbort = () => fail(abortError(signal!, 'connect'))
    // Like pg-pool's own: a plain Error (no code), turned into E_LIMIT by acquire() when the pool was full.
    const timer = setTimeout(() => fail(new Error('timeout exceeded when trying to connect')), timeoutMs)
    const cleanup = () => {
      clearTimeout(timer)
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
