import * as net from 'node:net'
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
 * in `inflight` (its `deadlineAt` the earliest deadline of its statements), and one coarse
 * interval, running only while some lease has a deadline, expires the overdue ones. Expiring
 * abandons the connection (see Lease): every statement on it fails at once with E_TIMEOUT,
 * the server is sent a CancelRequest for what it runs, then the socket is destroyed.
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
 * Leases whose statements have no deadline are listed too (abandonMember() finds them here).
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

function disarm(): void {
  clearInterval(deadlineTimer)
  deadlineTimer = undefined
  armedForMs = 0
  tickMs = 0
}

function sweepDeadlines(): void {
  const now = performance.now()
  let shortest = Number.POSITIVE_INFINITY
  for (let i = inflight.length - 1; i >= 0; i--) {
    const lease = inflight[i] as Lease
    if (lease.deadlineAt <= now) {
      lease.expire()
    } else if (lease.timeoutMs > 0 && lease.timeoutMs < shortest) {
      shortest = lease.timeoutMs
    }
  }
  if (shortest === Number.POSITIVE_INFINITY) disarm()
  else if (shortest > armedForMs) arm(shortest) // the statement that needed the finer tick has settled
}

function watch(lease: Lease): void {
  if (lease.slot === -1) {
    lease.slot = inflight.length
    inflight.push(lease)
  }
  const ms = lease.timeoutMs
  if (ms > 0 && (deadlineTimer === undefined || ms < armedForMs)) arm(ms)
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

/**
 * Abandons every lease of `pool` (generation `generation` or older) with a statement in flight:
 * each statement fails at once with `err(lease)`, the server is asked to cancel, the sockets
 * are cut. For a member that stopped answering: its callers must not wait for their deadline.
 * Returns how many leases were abandoned.
 */
export function abandonMember(pool: MemberPool, generation: number, err: (lease: Lease) => unknown): number {
  let n = 0
  for (let i = inflight.length - 1; i >= 0; i--) {
    const lease = inflight[i] as Lease
    if (lease.member === pool && lease.generation <= generation) {
      lease.abandon('unresponsive', err(lease))
      n++
    }
  }
  return n
}

/** The parts of pg's client state we read (pg-pool reads the same two fields). */
interface PgClientState {
  _queryable?: boolean
  _ending?: boolean
  _ended?: boolean
  processID?: number | null
  secretKey?: number | null
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

/** CancelRequest code (protocol): 1234 << 16 | 5678. */
const CANCEL_REQUEST_CODE = 80877102

/**
 * Sends a protocol CancelRequest for backend `pid` (with its secret key) on a new connection
 * to `host`:`port`, and resolves once the request was handed to the kernel, or the connection
 * failed, or `boundMs` passed: never waits for the server's answer (there is none: a server
 * closes the connection once it has acted on it, and a frozen one never does). Never rejects.
 */
export function sendCancel(
  host: string,
  port: number,
  pid: number,
  key: number,
  boundMs: number,
): Promise<void> {
  return new Promise((resolve) => {
    let done = false
    const sock = host.startsWith('/')
      ? net.connect({ path: `${host}/.s.PGSQL.${port}` })
      : net.connect({ host, port })
    const finish = () => {
      if (done) return
      done = true
      clearTimeout(timer)
      sock.destroy()
      resolve()
    }
    const timer = setTimeout(finish, boundMs)
    timer.unref()
    sock.on('error', finish)
    sock.on('connect', () => {
      const packet = Buffer.allocUnsafe(16)
      packet.writeInt32BE(16, 0)
      packet.writeInt32BE(CANCEL_REQUEST_CODE, 4)
      packet.writeInt32BE(pid, 8)
      packet.writeInt32BE(key, 12)
      sock.end(packet, finish)
    })
  })
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
  /** TCP keepalive's first probe after this many ms of silence (0: the OS default). */
  keepAliveInitialDelayMs: number
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

type StatementCallback = (err: unknown, result?: pg.QueryResult<any>) => void

/** One statement handed to pg on a lease: its own deadline, and whom to tell. Kept in a FIFO list (pg answers in order). */
class InFlight {
  next: InFlight | null = null
  done = false
  constructor(
    /** performance.now() deadline; Infinity: none. */
    readonly at: number,
    /** Its bound in ms; 0: none. */
    readonly ms: number,
    readonly cb: StatementCallback,
  ) {}
}

/** Why a lease's connection was given up with statements in flight. */
export type AbandonReason = 'timeout' | 'abort' | 'unresponsive' | 'released'

/**
 * A checked-out connection. Release it exactly once.
 *
 * Every statement keeps its own deadline (statements queued on one connection, e.g. a
 * `Promise.all` inside a transaction, each count from their own start). When one passes it,
 * when the caller's signal aborts, or when the member is found unresponsive, the connection is
 * abandoned: every statement on it fails at once (E_TIMEOUT, E_ABORTED, ...), a protocol
 * CancelRequest (the backend's pid and secret key) asks the server to stop what it runs, and
 * only then is the socket destroyed and the client handed back to pg-pool, which drops it.
 * The cancel is bounded (monitor.probeTimeoutMs): to a frozen server it is never answered.
 */
export class Lease {
  /** The last statement was handed to a healthy connection (it may have reached the server). */
  sent = false
  /** A statement passed its deadline: the connection was abandoned. */
  timedOut = false
  /** The earliest deadline (performance.now()) of the statements in flight; Infinity: none. */
  deadlineAt = Number.POSITIVE_INFINITY
  /** Index in the in-flight list while a statement is in flight; -1: not in it. */
  slot = -1
  /** The smallest bound (ms) of the statements in flight with one; 0: none. */
  timeoutMs = 0
  #head: InFlight | null = null
  #tail: InFlight | null = null
  #released = false
  #abandoned: AbandonReason | null = null
  /** The cancel-then-destroy of an abandoned connection, while it runs. */
  #cutting: Promise<void> | null = null
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

  /** Why the connection was abandoned with statements in flight; null: it was not. */
  get abandoned(): AbandonReason | null {
    return this.#abandoned
  }

  /** The connection died (socket error), or it was abandoned (timeout, abort, unresponsive member). */
  get broken(): boolean {
    return this.#info.broken || this.#abandoned !== null
  }

  get lost(): boolean {
    return this.broken || connectionLost(this.client)
  }

  /** Whether statements are in flight on this connection. */
  get busy(): boolean {
    return this.#head !== null
  }

  /**
   * Hands one statement to pg, bounded by `timeoutMs` (> 0), in pg's callback form: `cb` gets
   * the result, or the error as the caller should see it, exactly once.
   */
  startCb<R extends pg.QueryResultRow = any>(
    text: string | pg.QueryConfig,
    values: unknown[] | undefined,
    timeoutMs: number,
    cb: (err: unknown, result?: pg.QueryResult<R>) => void,
  ): void {
    if (this.#abandoned !== null) {
      this.sent = false
      cb(this.#abandonedError())
      return
    }
    this.sent = !connectionLost(this.client)
    const s = new InFlight(
      timeoutMs > 0 ? performance.now() + timeoutMs : Number.POSITIVE_INFINITY,
      timeoutMs,
      cb,
    )
    this.#push(s)
    try {
      ;(this.client as unknown as { query: (t: unknown, v: unknown, cb: StatementCallback) => void }).query(
        text,
        values,
        (err, r) => this.#settle(s, err, r),
      )
    } catch (err) {
      this.#settle(s, err, undefined)
    }
  }

  /** Runs one statement, bounded by `timeoutMs` (0: none) and the signal. */
  query<R extends pg.QueryResultRow = any>(
    text: string | pg.QueryConfig,
    values: unknown[] | undefined,
    timeoutMs: number,
    signal?: AbortSignal | undefined,
  ): Promise<pg.QueryResult<R>> {
    if (signal?.aborted) {
      this.sent = false // nothing of this statement left us
      return Promise.reject(abortError(signal, 'query'))
    }
    return new Promise<pg.QueryResult<R>>((resolve, reject) => {
      let settled = false
      const onAbort = signal ? () => this.abandon('abort', abortError(signal, 'query')) : undefined
      this.startCb<R>(text, values, timeoutMs, (err, r) => {
        settled = true
        if (onAbort) signal?.removeEventListener('abort', onAbort)
        if (err) reject(err)
        else resolve(r as pg.QueryResult<R>)
      })
      if (onAbort && !settled) signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  #push(s: InFlight): void {
    if (this.#tail === null) this.#head = s
    else this.#tail.next = s
    this.#tail = s
    if (s.at < this.deadlineAt) this.deadlineAt = s.at
    if (s.ms > 0 && (this.timeoutMs === 0 || s.ms < this.timeoutMs)) this.timeoutMs = s.ms
    watch(this)
  }

  /** pg answered statement `s` (in order); ignored once the lease was abandoned. */
  #settle(s: InFlight, err: unknown, r: pg.QueryResult<any> | undefined): void {
    if (s.done) return
    s.done = true
    this.#remove(s)
    if (err) s.cb(err)
    else s.cb(null, r)
  }

  #remove(s: InFlight): void {
    let prev: InFlight | null = null
    let cur = this.#head
    while (cur !== null && cur !== s) {
      prev = cur
      cur = cur.next
    }
    if (cur === null) return
    if (prev === null) this.#head = s.next
    else prev.next = s.next
    if (this.#tail === s) this.#tail = prev
    s.next = null
    if (this.#head === null) {
      this.deadlineAt = Number.POSITIVE_INFINITY
      this.timeoutMs = 0
      unwatch(this)
      return
    }
    let at = Number.POSITIVE_INFINITY
    let ms = 0
    for (let c: InFlight | null = this.#head; c !== null; c = c.next) {
      if (c.at < at) at = c.at
      if (c.ms > 0 && (ms === 0 || c.ms < ms)) ms = c.ms
    }
    this.deadlineAt = at
    this.timeoutMs = ms
  }

  /** Called by the deadline sweep: the earliest statement passed its deadline. */
  expire(): void {
    let ms = 0
    for (let c = this.#head; c !== null; c = c.next) if (c.at === this.deadlineAt) ms = c.ms
    this.timedOut = true
    this.abandon(
      'timeout',
      new ResilientError('E_TIMEOUT', `query on ${this.member.name} timed out after ${ms} ms`, {
        details: { member: this.member.name, timeoutMs: ms },
      }),
    )
  }

  /**
   * Gives the connection up: every statement in flight fails now with `err`, then the server is
   * asked to cancel (bounded) and the socket is destroyed. A no-op when nothing is in flight
   * or it was already abandoned.
   */
  abandon(reason: AbandonReason, err: unknown): void {
    if (this.#abandoned !== null || this.#head === null) return
    this.#abandoned = reason
    this.#cutting = this.#cut()
    let s: InFlight | null = this.#head
    this.#head = null
    this.#tail = null
    this.deadlineAt = Number.POSITIVE_INFINITY
    this.timeoutMs = 0
    unwatch(this)
    while (s !== null) {
      const next: InFlight | null = s.next
      s.next = null
      s.done = true
      s.cb(err)
      s = next
    }
  }

  /** Cancel on the server (when pg knows the backend's key), then destroy the socket. */
  async #cut(): Promise<void> {
    const c = this.client as unknown as PgClientState
    const pid = c.processID
    const key = c.secretKey
    if (typeof pid === 'number' && typeof key === 'number' && !connectionLost(this.client)) {
      await sendCancel(this.member.host, this.member.port, pid, key, this.member.cancelBoundMs)
    }
    destroyConnection(this.client)
  }

  #abandonedError(): ResilientError {
    return new ResilientError('E_NO_PRIMARY', `the connection to ${this.member.name} was abandoned`, {
      details: { member: this.member.name, reason: 'abandoned' },
      noStack: true,
    })
  }

  /**
   * Back to the pool, or destroyed when `destroy` is set, the connection broke, or it is not
   * idle (an open or failed transaction must never be handed to the next caller). Statements
   * still in flight are abandoned (cancelled on the server) first.
   */
  release(destroy?: boolean | Error): void {
    if (this.#released) return
    this.#released = true
    if (this.#head !== null) {
      this.abandon(
        'released',
        new ResilientError(
          'E_ABORTED',
          `the connection to ${this.member.name} was released while the statement ran`,
          {
            details: { member: this.member.name },
            noStack: true,
          },
        ),
      )
    }
    const status = (this.client as unknown as PgClientState).getTransactionStatus?.()
    const bad = Boolean(destroy) || this.lost || (status != null && status !== 'I')
    if (bad) this.member.countDiscard()
    const arg = bad ? (destroy instanceof Error ? destroy : true) : undefined
    if (this.#cutting !== null) {
      // the pool drops the client (and ends its socket) only after the cancel went out
      void this.#cutting.then(() => this.#releaseToPool(arg))
      return
    }
    this.#releaseToPool(arg)
  }

  #releaseToPool(arg: Error | boolean | undefined): void {
    try {
      this.#poolRelease.call(this.client, arg)
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

  /** How long a CancelRequest to this member may take (monitor.probeTimeoutMs). */
  get cancelBoundMs(): number {
    return this.#config.probeTimeoutMs
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
      keepAliveInitialDelayMillis: c.keepAliveInitialDelayMs,
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
