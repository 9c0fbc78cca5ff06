import { inspect } from 'node:util'
import {
  abortError,
  checkBoolean,
  checkKnownKeys,
  checkObject,
  checkOneOf,
  type Disposable,
  errorType,
  metrics,
  publish,
  ResilientError,
  sleep,
} from '@resilient/core'
import type { PoolOptions, QueryConfig, QueryResult, QueryResultRow } from 'pg'
import { channels } from './channels.js'
import { type CheckResult, createCheck } from './check.js'
import { type Classification, classifyError, mayRetry, sqlStateOf } from './classify.js'
import { createPatroniDiscovery, createStaticDiscovery, type Discovery } from './discovery/index.js'
import { RouterPool } from './facade.js'
import type { FailoverEvent } from './failover.js'
import type { Lease, MemberPoolStats } from './member-pool.js'
import { Monitor } from './monitor.js'
import { type PgRouterOptions, type ResolvedOptions, resolveOptions } from './options.js'
import {
  decodeToken,
  type IsolationLevel,
  Session,
  type SessionHost,
  type StatementOptions,
  type TransactionClient,
  type TransactionOptions,
  type WalPosition,
  type WriteOptions,
} from './session.js'
import {
  eligibleReplicas,
  isEligible,
  type Member,
  parseLsn,
  type Topology,
  timelineOfWalFile,
} from './topology.js'

export type QueryText = string | QueryConfig
export type QueryCallback<R extends QueryResultRow> = (err: Error | null, result?: QueryResult<R>) => void

export interface MemberStats extends MemberPoolStats {
  role: string
  state: string
  lagBytes: number | null
  /** Gets reads (replica) or writes (primary) right now. */
  healthy: boolean
}

export interface RouterStats {
  primary: string | null
  failovers: number
  /** Writes waiting for a confirmed primary right now. */
  queuedWrites: number
  discovery: {
    failures: number
    consecutiveFailures: number
    lastSuccessAt: number | null
    source: string | null
  }
  members: MemberStats[]
  /** Session tokens that could not be used (ignored; the session started empty). */
  badTokens: number
  retries: { read: number; write: number; transaction: number }
}

export type CommitStatus = 'committed' | 'aborted' | 'in progress'

export interface PgRouter {
  /** Resolves once a primary is confirmed; rejects with E_NO_PRIMARY after `timeoutMs` (default failover.timeoutMs). */
  ready(options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<void>
  /** Runs on the confirmed primary. */
  write<R extends QueryResultRow = any>(
    text: QueryText,
    values?: unknown[],
    options?: WriteOptions,
  ): Promise<QueryResult<R>>
  /** Runs on a replica within `replicas.maxLagBytes`, else (fallbackToPrimary) the primary. Retried elsewhere on connection failures. */
  read<R extends QueryResultRow = any>(
    text: QueryText,
    values?: unknown[],
    options?: StatementOptions,
  ): Promise<QueryResult<R>>
  /** pg.Pool-compatible `query`: a non-idempotent write. Promise, or callback as last argument. */
  query<R extends QueryResultRow = any>(text: QueryText, values?: unknown[]): Promise<QueryResult<R>>
  query<R extends QueryResultRow = any>(text: QueryText, callback: QueryCallback<R>): void
  query<R extends QueryResultRow = any>(text: QueryText, values: unknown[], callback: QueryCallback<R>): void
  /** BEGIN ... COMMIT on one pinned connection. A cut-off COMMIT rejects with E_COMMIT_UNKNOWN carrying `txid`. */
  transaction<T>(fn: (tx: TransactionClient) => Promise<T>, options?: TransactionOptions): Promise<T>
  /** Read-your-writes. A token that cannot be used is ignored (see channel `badToken`). */
  session(token?: string | null): Session
  /** pg.Pool-like facades for ORMs (Drizzle, Kysely): writes/connections on the primary. */
  readonly primary: RouterPool
  /** ...and reads/connections on a replica. */
  readonly replicas: RouterPool
  topology(): Topology
  onFailover(listener: (e: FailoverEvent) => void): Disposable
  onTopologyChange(listener: (t: Topology) => void): Disposable
  /** Health check from state only (no query). Safe to pass unbound: `{ check: db.check }`. */
  check: () => Promise<CheckResult>
  stats(): RouterStats
  /** After E_COMMIT_UNKNOWN: asks the primary `pg_xact_status(txid)`; null when it cannot tell. */
  resolveCommit(txid: string | number | bigint, options?: StatementOptions): Promise<CommitStatus | null>
  close(): Promise<void>
}

/** Session position meaning "the write succeeded but its position is unknown: read from the primary". */
const PRIMARY_ONLY: WalPosition = Object.freeze({ lsn: (1n << 64n) - 1n, timeline: null })
/** The primary's WAL position and its timeline (the insert timeline, in the WAL file's name). */
const CAPTURE_SQL = 'SELECT pg_current_wal_lsn()::text AS lsn, pg_walfile_name(pg_current_wal_lsn()) AS f'
/** Statement verbs reported as `db.operation.name` (anything else is left out: low cardinality). */
const VERBS: ReadonlySet<string> = new Set([
  'SELECT',
  'INSERT',
  'UPDATE',
  'DELETE',
  'MERGE',
  'WITH',
  'VALUES',
  'TABLE',
  'CALL',
  'COPY',
  'BEGIN',
  'COMMIT',
  'ROLLBACK',
  'SAVEPOINT',
  'RELEASE',
  'CREATE',
  'ALTER',
  'DROP',
  'TRUNCATE',
  'LOCK',
  'SET',
  'SHOW',
  'EXPLAIN',
  'ANALYZE',
  'VACUUM',
])

function verbOf(text: QueryText): string | undefined {
  const t = typeof text === 'string' ? text : text?.text
  if (typeof t !== 'string') return undefined
  const v = /^\s*([A-Za-z]+)/.exec(t)?.[1]?.toUpperCase()
  return v !== undefined && VERBS.has(v) ? v : undefined
}

const ISOLATION_LEVELS: readonly IsolationLevel[] = ['read committed', 'repeatable read', 'serializable']

function commitUnknown(err: unknown, member: Member, txid: string | null, c: Classification): ResilientError {
  return new ResilientError(
    'E_COMMIT_UNKNOWN',
    txid === null
      ? `the connection to ${member.name} was lost after the statement was sent: it may or may not have been applied`
      : `the connection to ${member.name} was lost after COMMIT was sent: transaction ${txid} may or may not have committed`,
    { cause: err, details: { member: member.name, txid, sqlState: c.sqlState, errorCode: c.errorCode } },
  )
}

/**
 * A transaction whose connection died before COMMIT was sent: the server rolled it back, so it
 * certainly did not commit and running it again is safe (as far as the database goes).
 */
function notCommitted(err: unknown, member: Member, c: Classification, stage: string): ResilientError {
  return new ResilientError(
    'E_NO_PRIMARY',
    `the connection to ${member.name} was lost ${stage}: the transaction did not commit and may be retried`,
    {
      cause: err,
      details: {
        member: member.name,
        reason: 'connection-lost',
        committed: false,
        retryable: true,
        sqlState: c.sqlState,
        errorCode: c.errorCode,
      },
    },
  )
}

function isNotCommitted(err: unknown): err is ResilientError {
  return ResilientError.is(err, 'E_NO_PRIMARY') && err.details.reason === 'connection-lost'
}

/** `transaction(fn, { retry: true })` runs fn at most this many times. */
const MAX_TRANSACTION_RUNS = 3

function checkTransactionOptions(options: TransactionOptions | undefined): {
  readOnly: boolean
  begin: string
  retry: boolean
} {
  if (options === undefined) return { readOnly: false, begin: 'BEGIN', retry: false }
  const o = checkObject(options, 'transaction options')
  checkKnownKeys(o, 'transaction', ['readOnly', 'isolationLevel', 'signal', 'retry'])
  const readOnly = o.readOnly === undefined ? false : checkBoolean(o.readOnly, 'transaction.readOnly')
  const retry = o.retry === undefined ? false : checkBoolean(o.retry, 'transaction.retry')
  const iso =
    o.isolationLevel === undefined
      ? undefined
      : checkOneOf(o.isolationLevel, 'transaction.isolationLevel', ISOLATION_LEVELS)
  let begin = 'BEGIN'
  if (iso) begin += ` ISOLATION LEVEL ${iso.toUpperCase()}`
  if (readOnly) begin += ' READ ONLY'
  return { readOnly, begin, retry }
}

function makeDiscovery(opts: ResolvedOptions): Discovery {
  const s = opts.source
  if (s.kind === 'custom') return s.discovery
  if (s.kind === 'patroni') return createPatroniDiscovery(s.patroni)
  return createStaticDiscovery({
    hosts: s.hosts,
    connection: opts.connection,
    timeoutMs: opts.monitor.probeTimeoutMs,
  })
}

/**
 * Whether OpenTelemetry receives measurements, asked of core at most every METRICS_RECHECK_MS
 * (a MeterProvider registered later is picked up within that time). When it does not, a
 * statement costs no timing, no verb parsing and no metric call.
 */
const METRICS_RECHECK_MS = 1_000
let metricsCheckedAt = Number.NEGATIVE_INFINITY
let metricsActive = false
function metricsOn(): boolean {
  const now = performance.now()
  if (now - metricsCheckedAt >= METRICS_RECHECK_MS) {
    metricsCheckedAt = now
    metricsActive = metrics.active
  }
  return metricsActive
}

/** Scratch attempt counter for calls that are not measured. */
const UNCOUNTED = { n: 0 }

/** Creates a router. Options are checked here (E_CONFIG naming the field); no I/O starts before this returns. */
export function createPgRouter(options: PgRouterOptions): PgRouter {
  const opts = resolveOptions(options)
  const discovery = makeDiscovery(opts)
  const monitor = new Monitor(opts, discovery)
  const gate = monitor.gate
  const queryTimeoutMs = opts.pool.queryTimeoutMs
  let closed = false
  let closing: Promise<void> | null = null
  let rr = 0
  let badTokens = 0
  const retries = { read: 0, write: 0, transaction: 0 }

  const discoveryErrors = discovery.onError((e) => {
    publish(channels.discoveryError, { source: e.source, error: e.error })
  })

  const namespace = typeof opts.connection.database === 'string' ? opts.connection.database : undefined

  /** One caller statement on `lease`, bounded by pool.queryTimeoutMs and the signal, recorded in metrics when they are on. */
  function run<R extends QueryResultRow>(
    lease: Lease,
    member: Member,
    text: QueryText,
    values: unknown[] | undefined,
    signal: AbortSignal | undefined,
  ): Promise<QueryResult<R>> {
    if (!metricsOn()) return lease.query<R>(text, values, queryTimeoutMs, signal)
    return runMeasured<R>(lease, member, text, values, signal)
  }

  async function runMeasured<R extends QueryResultRow>(
    lease: Lease,
    member: Member,
    text: QueryText,
    values: unknown[] | undefined,
    signal: AbortSignal | undefined,
  ): Promise<QueryResult<R>> {
    const t0 = performance.now()
    try {
      const r = await lease.query<R>(text, values, queryTimeoutMs, signal)
      metrics.recordOperation({
        system: 'postgresql',
        durationSeconds: (performance.now() - t0) / 1000,
        operation: verbOf(text),
        namespace,
        serverAddress: member.host,
        serverPort: member.port,
      })
      return r
    } catch (err) {
      metrics.recordOperation({
        system: 'postgresql',
        durationSeconds: (performance.now() - t0) / 1000,
        operation: verbOf(text),
        namespace,
        errorType: errorType(err),
        statusCode: sqlStateOf(err),
        serverAddress: member.host,
        serverPort: member.port,
      })
      throw err
    }
  }

  /** Counts one read/write call in resilience4j.retry.calls (when metrics are on). */
  function counted<T>(name: string, fn: (tries: { n: number }) => Promise<T>): Promise<T> {
    if (!metricsOn()) return fn(UNCOUNTED)
    return countedMeasured(name, fn)
  }

  async function countedMeasured<T>(name: string, fn: (tries: { n: number }) => Promise<T>): Promise<T> {
    const tries = { n: 0 }
    try {
      const r = await fn(tries)
      metrics.recordRetry(name, tries.n > 1 ? 'successful_with_retry' : 'successful_without_retry')
      return r
    } catch (err) {
      metrics.recordRetry(name, tries.n > 1 ? 'failed_with_retry' : 'failed_without_retry')
      throw err
    }
  }

  const closedError = () => new ResilientError('E_SHUTTING_DOWN', 'the router is closed', { noStack: true })

  const backoff = (attempt: number, signal: AbortSignal | undefined) =>
    attempt <= 1 ? Promise.resolve() : sleep(Math.min(100, 2 ** attempt * (1 + Math.random())), signal)

  const timedOut = (err: unknown, lastErr: unknown) =>
    ResilientError.is(err, 'E_FAILOVER_TIMEOUT') && lastErr !== undefined
      ? new ResilientError('E_FAILOVER_TIMEOUT', err.message, { cause: lastErr, details: { ...err.details } })
      : err

  /** A write-capable connection on the confirmed primary; connect-phase failures are retried until the deadline. */
  async function acquireWriter(
    signal: AbortSignal | undefined,
    deadline: number,
  ): Promise<{ lease: Lease; member: Member; attempts: number }> {
    let lastErr: unknown
    for (let attempt = 1; ; attempt++) {
      if (closed) throw closedError()
      let member = gate.writer
      if (member === null || signal?.aborted) {
        try {
          member = await gate.wait(signal, deadline)
        } catch (err) {
          throw timedOut(err, lastErr)
        }
      }
      try {
        return { lease: await member.pool.acquire('write', signal), member, attempts: attempt }
      } catch (err) {
        writeConnectFailed(member, err, attempt, signal)
        lastErr = err
        if (performance.now() >= deadline) {
          throw new ResilientError(
            'E_FAILOVER_TIMEOUT',
            'no primary connection before the failover timeout',
            {
              cause: lastErr,
            },
          )
        }
        await backoff(attempt, signal)
      }
    }
  }

  /** A connect for a write failed: throws unless it may be retried (nothing was sent); else counts the retry. */
  function writeConnectFailed(
    member: Member,
    err: unknown,
    attempt: number,
    signal: AbortSignal | undefined,
  ): void {
    if (signal?.aborted) throw abortError(signal, 'write')
    const c = classifyError(err, { phase: 'connect', sent: false, connectionLost: true })
    if (c.class !== 'not-sent' && c.class !== 'demoted') throw err
    monitor.reportFailure(member, member.pool.generation, c)
    retries.write++
    publish(channels.retry, { kind: 'write', member: member.name, errorClass: c.class, attempt })
  }

  /** A replica for a read now (none: null): the hot path of every read. */
  function pickReader(exclude: ReadonlySet<string> | null, min: WalPosition | null): Member | null {
    const rules = {
      maxLagBytes: opts.replicas.maxLagBytes,
      now: performance.now(),
      minLsn: min?.lsn,
      minTimeline: min?.timeline,
      exclude: exclude ?? undefined,
    }
    const writer = gate.writer
    if (opts.replicas.strategy === 'least-busy') {
      let best: Member | null = null
      let bestLoad = 0
      for (const m of monitor.members.values()) {
        if (m === writer || !isEligible(m, rules)) continue
        const load = m.pool.load
        if (best === null || load < bestLoad) {
          best = m
          bestLoad = load
        }
      }
      return best
    }
    let count = 0
    for (const m of monitor.members.values()) if (m !== writer && isEligible(m, rules)) count++
    if (count === 0) return null
    let k = rr++ % count
    for (const m of monitor.members.values()) {
      if (m === writer || !isEligible(m, rules)) continue
      if (k-- === 0) return m
    }
    return null
  }

  /** Waits (bounded by session.maxWaitMs) for some replica to replay `min`. */
  async function waitForReplay(
    min: WalPosition,
    exclude: ReadonlySet<string>,
    signal: AbortSignal | undefined,
  ) {
    const until = performance.now() + opts.session.maxWaitMs
    for (;;) {
      await monitor.refreshLsns(false)
      const m = pickReader(exclude, min)
      if (m) return m
      const left = until - performance.now()
      if (left <= 0) return null
      await sleep(Math.min(10, left), signal)
    }
  }

  /** A read connection: a qualifying replica, else the primary (fallbackToPrimary or a session that needs it). */
  async function acquireReader(
    signal: AbortSignal | undefined,
    deadline: number,
    min: WalPosition | null,
    tried: Set<string>,
  ): Promise<{ lease: Lease; member: Member }> {
    let lastErr: unknown
    for (let attempt = 1; ; attempt++) {
      if (closed) throw closedError()
      if (signal?.aborted) throw abortError(signal, 'read')
      // A position with no known timeline: only the primary is sure to have it.
      let member = min !== null && min.timeline === null ? null : pickReader(tried, min)
      if (!member && min !== null && attempt === 1 && replayCanCatchUp(min)) {
        member = await waitForReplay(min, tried, signal)
      }
      if (!member) {
        if (opts.replicas.fallbackToPrimary || min !== null) {
          try {
            member = await gate.wait(signal, deadline)
          } catch (err) {
            throw timedOut(err, lastErr)
          }
          // the primary failed us too: give the replicas another chance first
          if (tried.has(member.name)) {
            tried.clear()
            await backoff(attempt, signal)
          }
        } else if (tried.size > 0 && performance.now() < deadline) {
          tried.clear()
          await backoff(attempt + 2, signal)
          continue
        } else {
          throw new ResilientError(
            'E_NO_PRIMARY',
            'no replica qualifies for reads and replicas.fallbackToPrimary is false',
            { cause: lastErr },
          )
        }
      }
      try {
        return { lease: await member.pool.acquire('read', signal), member }
      } catch (err) {
        readConnectFailed(member, err, attempt, tried, signal)
        lastErr = err
        if (performance.now() >= deadline) throw err
      }
    }
  }

  /** A connect for a read failed: throws unless another member may be tried; else counts the retry. */
  function readConnectFailed(
    member: Member,
    err: unknown,
    attempt: number,
    tried: Set<string>,
    signal: AbortSignal | undefined,
  ): void {
    if (signal?.aborted) throw abortError(signal, 'read')
    const c = classifyError(err, { phase: 'connect', sent: false, connectionLost: true })
    if (c.class !== 'not-sent') throw err
    monitor.reportFailure(member, member.pool.generation, c)
    tried.add(member.name)
    retries.read++
    publish(channels.retry, { kind: 'read', member: member.name, errorClass: c.class, attempt })
  }

  /**
   * The member a first read attempt goes to, decided synchronously (the hot path), or null
   * when only the full acquireReader can tell (waiting for replay, no primary confirmed).
   */
  function quickReader(min: WalPosition | null): Member | null {
    if (min !== null && min.timeline === null) return gate.writer
    const m = pickReader(null, min)
    if (m !== null) return m
    if (min === null) return opts.replicas.fallbackToPrimary ? gate.writer : null
    return replayCanCatchUp(min) ? null : gate.writer
  }

  /**
   * Whether waiting can help `min`: some readable replica already replays its timeline (a
   * replica on another timeline has to be re-measured after discovery sees it move first).
   */
  function replayCanCatchUp(min: WalPosition): boolean {
    if (min.timeline === null) return false
    for (const m of monitor.members.values()) {
      if (m.role === 'replica' && m !== gate.writer && m.lsnTimeline === min.timeline) return true
    }
    return false
  }

  /** The primary's WAL position right after a write, on the same connection; PRIMARY_ONLY when unknown. */
  async function capturePosition(lease: Lease, signal: AbortSignal | undefined): Promise<WalPosition> {
    try {
      const r = await lease.query<{ lsn: string; f: string }>(
        CAPTURE_SQL,
        undefined,
        opts.monitor.probeTimeoutMs,
        signal,
      )
      const lsn = parseLsn(r.rows[0]?.lsn)
      const timeline = timelineOfWalFile(r.rows[0]?.f)
      return lsn === null || timeline === null ? PRIMARY_ONLY : { lsn, timeline }
    } catch {
      return PRIMARY_ONLY
    }
  }

  function doWrite<R extends QueryResultRow>(
    text: QueryText,
    values: unknown[] | undefined,
    options: WriteOptions | undefined,
    onLsn?: (pos: WalPosition) => void,
  ): Promise<QueryResult<R>> {
    if (onLsn === undefined && options?.signal === undefined && !closed && !metricsOn()) {
      const w = gate.writer
      if (w !== null) return fastStatement<R>('write', w, text, values, options, null)
    }
    return counted('pg-router.write', (tries) => writeLoop<R>(text, values, options, onLsn, tries))
  }

  /**
   * The common case of a read or a write: an idle connection of `member` right now, no signal,
   * no metrics, no session. One promise and pg's callbacks underneath, as pg.Pool.query does.
   * A failure is handled as the slow loop's first attempt would handle it, and that loop
   * (readLoop, writeLoop) takes over from the second attempt; with no idle connection at hand
   * the loop does the whole job (a read: on the member already picked, for round robin).
   */
  function fastStatement<R extends QueryResultRow>(
    mode: 'read' | 'write',
    member: Member,
    text: QueryText,
    values: unknown[] | undefined,
    options: WriteOptions | undefined,
    min: WalPosition | null,
  ): Promise<QueryResult<R>> {
    const startedAt = mode === 'read' ? performance.now() : 0
    return new Promise<QueryResult<R>>((resolve) => {
      const started = member.pool.tryAcquire(mode, (err, lease) => {
        if (lease === undefined) {
          resolve(afterFastFailure<R>(mode, member, undefined, err, text, values, options, min, startedAt))
          return
        }
        lease.startCb<R>(text as string | QueryConfig, values, queryTimeoutMs, (qerr, r) => {
          if (r === undefined) {
            resolve(afterFastFailure<R>(mode, member, lease, qerr, text, values, options, min, startedAt))
            return
          }
          lease.release()
          if (mode === 'write') gate.noteWriteSuccess(member)
          resolve(r)
        })
      })
      if (!started) {
        resolve(
          mode === 'write'
            ? writeLoop<R>(text, values, options, undefined, UNCOUNTED)
            : readLoop<R>(text, values, options, min, UNCOUNTED, 1, undefined, member),
        )
      }
    })
  }

  /**
   * The first attempt of fastStatement failed (no connection: `lease` undefined). Rejects with
   * what the caller gets, or hands over to the slow loop from attempt 2.
   */
  function afterFastFailure<R extends QueryResultRow>(
    mode: 'read' | 'write',
    member: Member,
    lease: Lease | undefined,
    err: unknown,
    text: QueryText,
    values: unknown[] | undefined,
    options: WriteOptions | undefined,
    min: WalPosition | null,
    startedAt: number,
  ): Promise<QueryResult<R>> {
    try {
      if (mode === 'write') {
        if (lease === undefined) writeConnectFailed(member, err, 1, undefined)
        else writeFailed(err, lease, member, options, 1)
        return writeLoop<R>(text, values, options, undefined, UNCOUNTED, 2, err)
      }
      const state: ReadState = {
        tried: null,
        statementTimeouts: 0,
        deadline: startedAt + opts.failover.timeoutMs,
      }
      if (lease === undefined) {
        state.tried = new Set()
        readConnectFailed(member, err, 1, state.tried, undefined)
      } else {
        readFailed(err, lease, member, undefined, 1, state)
      }
      return readLoop<R>(text, values, options, min, UNCOUNTED, 2, state)
    } catch (e) {
      return Promise.reject(e)
    }
  }

  /** A statement of a write failed: throws what the caller gets, or returns when it may be retried (counted). */
  function writeFailed(
    err: unknown,
    lease: Lease,
    member: Member,
    options: WriteOptions | undefined,
    attempt: number,
  ): void {
    const signal = options?.signal
    const c = classifyError(err, { phase: 'query', sent: lease.sent, connectionLost: lease.lost })
    lease.release(c.discardConnection)
    monitor.reportFailure(member, lease.generation, c)
    if (signal?.aborted) throw err
    if (mayRetry(c.class, options?.idempotent === true ? 'idempotent-write' : 'write')) {
      retries.write++
      publish(channels.retry, { kind: 'write', member: member.name, errorClass: c.class, attempt })
      return
    }
    if (c.class === 'outcome-unknown') throw commitUnknown(err, member, null, c)
    throw err
  }

  async function writeLoop<R extends QueryResultRow>(
    text: QueryText,
    values: unknown[] | undefined,
    options: WriteOptions | undefined,
    onLsn: ((pos: WalPosition) => void) | undefined,
    tries: { n: number },
    firstAttempt = 1,
    firstErr?: unknown,
  ): Promise<QueryResult<R>> {
    if (closed) throw closedError()
    const signal = options?.signal
    const deadline = performance.now() + opts.failover.timeoutMs
    let lastErr: unknown = firstErr
    for (let attempt = firstAttempt; ; attempt++) {
      if (attempt > 1 && performance.now() >= deadline) {
        throw new ResilientError(
          'E_FAILOVER_TIMEOUT',
          'the write did not succeed before the failover timeout',
          {
            cause: lastErr,
          },
        )
      }
      tries.n = attempt
      let lease: Lease
      let member = gate.writer
      if (member !== null && attempt === 1 && signal === undefined) {
        // hot path: the confirmed writer's pool, one hop
        try {
          lease = await member.pool.acquire('write')
        } catch (err) {
          writeConnectFailed(member, err, attempt, signal)
          lastErr = err
          ;({ lease, member } = await acquireWriter(signal, deadline))
        }
      } else {
        ;({ lease, member } = await acquireWriter(signal, deadline))
      }
      try {
        const r = await run<R>(lease, member, text, values, signal)
        if (onLsn) onLsn(await capturePosition(lease, signal))
        lease.release()
        gate.noteWriteSuccess(member)
        return r
      } catch (err) {
        writeFailed(err, lease, member, options, attempt) // throws unless it may be retried
        lastErr = err
        await backoff(attempt, signal)
      }
    }
  }

  function doRead<R extends QueryResultRow>(
    text: QueryText,
    values: unknown[] | undefined,
    options: StatementOptions | undefined,
    min: WalPosition | null,
  ): Promise<QueryResult<R>> {
    if (options?.signal === undefined && !closed && !metricsOn()) {
      const m = quickReader(min)
      if (m !== null) return fastStatement<R>('read', m, text, values, options, min)
    }
    return counted('pg-router.read', (tries) => readLoop<R>(text, values, options, min, tries))
  }

  /** Retry state of one read across attempts. */
  interface ReadState {
    tried: Set<string> | null
    statementTimeouts: number
    deadline: number
  }

  /** A statement of a read failed: throws what the caller gets, or returns when another attempt may follow (counted). */
  function readFailed(
    err: unknown,
    lease: Lease,
    member: Member,
    signal: AbortSignal | undefined,
    attempt: number,
    state: ReadState,
  ): void {
    const c = classifyError(err, { phase: 'query', sent: lease.sent, connectionLost: lease.lost })
    lease.release(c.discardConnection)
    // 25006 from a replica (or any connection known to be in recovery): the caller sent a
    // write down the read path. Its error, as-is: no retry (the primary would run it), no
    // failure mark on the member, no failover suspicion.
    if (c.sqlState === '25006' && (member !== gate.writer || lease.inRecovery)) throw err
    monitor.reportFailure(member, lease.generation, c)
    if (signal?.aborted) throw err
    // 40001 on a replica: cancelled by a conflict with recovery; another member will do.
    // A statement timeout is retried once: a hung replica, yes; a slow query, not again and again.
    const timedOutHere = ResilientError.is(err, 'E_TIMEOUT')
    const retryable =
      (mayRetry(c.class, 'read') && !(timedOutHere && state.statementTimeouts++ > 0)) ||
      (c.sqlState === '40001' && member !== gate.writer && !lease.lost)
    if (!retryable) throw err
    if (performance.now() >= state.deadline) {
      if (ResilientError.is(err) || c.sqlState === '40001') throw err
      // a connection failure that would have been retried: typed, not pg's raw error
      throw new ResilientError('E_FAILOVER_TIMEOUT', 'the read did not succeed before the failover timeout', {
        cause: err,
        details: { member: member.name, sqlState: c.sqlState, errorCode: c.errorCode },
      })
    }
    state.tried ??= new Set()
    state.tried.add(member.name)
    retries.read++
    publish(channels.retry, { kind: 'read', member: member.name, errorClass: c.class, attempt })
  }

  async function readLoop<R extends QueryResultRow>(
    text: QueryText,
    values: unknown[] | undefined,
    options: StatementOptions | undefined,
    min: WalPosition | null,
    tries: { n: number },
    firstAttempt = 1,
    carried?: ReadState,
    picked?: Member,
  ): Promise<QueryResult<R>> {
    if (closed) throw closedError()
    const signal = options?.signal
    const state: ReadState = carried ?? {
      tried: null,
      statementTimeouts: 0,
      deadline: performance.now() + opts.failover.timeoutMs,
    }
    const deadline = state.deadline
    for (let attempt = firstAttempt; ; attempt++) {
      if (attempt > 1) await backoff(attempt - 2, signal)
      tries.n = attempt
      let lease: Lease
      let member = attempt === 1 && signal === undefined ? (picked ?? quickReader(min)) : null
      if (member !== null) {
        // hot path: the member is known now, one hop to its pool
        try {
          lease = await member.pool.acquire('read')
        } catch (err) {
          state.tried ??= new Set()
          readConnectFailed(member, err, attempt, state.tried, signal)
          ;({ lease, member } = await acquireReader(signal, deadline, min, state.tried))
        }
      } else {
        state.tried ??= new Set()
        ;({ lease, member } = await acquireReader(signal, deadline, min, state.tried))
      }
      try {
        const r = await run<R>(lease, member, text, values, signal)
        lease.release()
        return r
      } catch (err) {
        readFailed(err, lease, member, signal, attempt, state) // throws unless another attempt may follow
      }
    }
  }

  async function rollback(lease: Lease): Promise<void> {
    if (lease.lost) return lease.release(true)
    try {
      await lease.query('ROLLBACK', undefined, opts.monitor.probeTimeoutMs)
      lease.release()
    } catch {
      lease.release(true)
    }
  }

  /**
   * The failure of a transaction statement before COMMIT was sent: when the connection died
   * (socket gone, 57P0x, 08xxx, a client that is no longer queryable) the server rolled the
   * transaction back, so the caller gets a typed, retryable E_NO_PRIMARY; anything else
   * (an SQL error, E_TIMEOUT, E_ABORTED, the caller's own error) is thrown as it is.
   */
  function beforeCommitError(err: unknown, lease: Lease, member: Member, stage: string): unknown {
    const c = classifyError(err, { phase: 'query', sent: true, connectionLost: lease.lost })
    if (lease.lost || (c.failoverSignal && c.discardConnection)) {
      monitor.reportFailure(member, lease.generation, c)
      if (ResilientError.is(err) && err.code !== 'E_NO_PRIMARY') return err // E_TIMEOUT, E_ABORTED: already typed
      return notCommitted(err, member, c, stage)
    }
    return err
  }

  async function transactionOnce<T>(
    fn: (tx: TransactionClient) => Promise<T>,
    readOnly: boolean,
    begin: string,
    signal: AbortSignal | undefined,
    deadline: number,
    min: WalPosition | null,
    onLsn: ((pos: WalPosition) => void) | undefined,
  ): Promise<T> {
    const tried = new Set<string>()
    // Acquire + BEGIN, retried while nothing of the caller's has run yet.
    let lease: Lease
    let member: Member
    for (let attempt = 1; ; attempt++) {
      const got = readOnly
        ? await acquireReader(signal, deadline, min, tried)
        : await acquireWriter(signal, deadline)
      lease = got.lease
      member = got.member
      try {
        await lease.query(begin, undefined, opts.monitor.probeTimeoutMs, signal)
        break
      } catch (err) {
        const c = classifyError(err, { phase: 'query', sent: lease.sent, connectionLost: lease.lost })
        lease.release(true)
        monitor.reportFailure(member, lease.generation, c)
        if (signal?.aborted || !mayRetry(c.class, 'read')) throw err
        if (performance.now() >= deadline) {
          throw new ResilientError(
            'E_FAILOVER_TIMEOUT',
            'the transaction could not begin before the failover timeout',
            {
              cause: err,
              details: {
                member: member.name,
                committed: false,
                retryable: true,
                sqlState: c.sqlState,
                errorCode: c.errorCode,
              },
            },
          )
        }
        tried.add(member.name)
        await backoff(attempt, signal)
      }
    }
    let done = false
    const tx: TransactionClient = {
      query: (text, values) => {
        if (done) return Promise.reject(new Error('this transaction is over: use the client only inside fn'))
        return run(lease, member, text as QueryText, values, signal)
      },
    }
    let result: T
    try {
      result = await fn(tx)
    } catch (err) {
      done = true
      const out = beforeCommitError(err, lease, member, 'in the transaction function')
      await rollback(lease)
      throw out
    }
    done = true
    if (readOnly) {
      try {
        await lease.query('COMMIT', undefined, opts.monitor.probeTimeoutMs, signal)
        lease.release()
      } catch {
        lease.release(true) // the reads are done; what they returned stands
      }
      return result
    }
    let txid: string | null
    try {
      const r = await lease.query<{ x: string | null }>(
        'SELECT txid_current_if_assigned()::text AS x',
        undefined,
        queryTimeoutMs,
        signal,
      )
      txid = r.rows[0]?.x ?? null
    } catch (err) {
      const out = beforeCommitError(err, lease, member, 'before COMMIT')
      await rollback(lease)
      throw out // COMMIT was never sent: nothing committed
    }
    try {
      await lease.query('COMMIT', undefined, queryTimeoutMs, signal)
    } catch (err) {
      const c = classifyError(err, { phase: 'query', sent: lease.sent, connectionLost: lease.lost })
      lease.release(true)
      monitor.reportFailure(member, lease.generation, c)
      if (c.class === 'outcome-unknown' && txid !== null) throw commitUnknown(err, member, txid, c)
      // not-sent: the server aborts a transaction whose connection is gone. txid null: nothing was written.
      if ((c.class === 'not-sent' || c.class === 'outcome-unknown') && !ResilientError.is(err, 'E_ABORTED')) {
        throw notCommitted(
          err,
          member,
          c,
          txid === null ? 'at COMMIT (nothing was written)' : 'before COMMIT was sent',
        )
      }
      throw err
    }
    if (onLsn) onLsn(await capturePosition(lease, signal))
    lease.release()
    gate.noteWriteSuccess(member)
    return result
  }

  async function doTransaction<T>(
    fn: (tx: TransactionClient) => Promise<T>,
    options: TransactionOptions | undefined,
    min: WalPosition | null,
    onLsn?: (pos: WalPosition) => void,
  ): Promise<T> {
    if (closed) throw closedError()
    if (typeof fn !== 'function') throw new TypeError('transaction(fn): fn must be a function')
    const { readOnly, begin, retry } = checkTransactionOptions(options)
    const signal = options?.signal
    const deadline = performance.now() + opts.failover.timeoutMs
    for (let attempt = 1; ; attempt++) {
      try {
        return await transactionOnce(fn, readOnly, begin, signal, deadline, min, onLsn)
      } catch (err) {
        // Re-run fn only when asked, only when it certainly did not commit, and within the deadline.
        if (
          !retry ||
          !isNotCommitted(err) ||
          signal?.aborted ||
          attempt >= MAX_TRANSACTION_RUNS ||
          performance.now() >= deadline ||
          closed
        ) {
          throw err
        }
        retries.transaction++
        publish(channels.retry, {
          kind: 'transaction',
          member: (err.details.member as string | undefined) ?? null,
          errorClass: 'not-committed',
          attempt,
        })
        await backoff(attempt, signal)
      }
    }
  }

  const sessionHost: SessionHost = {
    readAfter: (text, values, min, options) => doRead(text, values, options, min),
    writeTracked: (text, values, options, onPosition) => doWrite(text, values, options, onPosition),
    transactionTracked: (fn, options, min, onPosition) => doTransaction(fn, options, min, onPosition),
  }

  function query(text: QueryText, a?: unknown, b?: unknown): Promise<QueryResult> | undefined {
    const cb = (typeof a === 'function' ? a : typeof b === 'function' ? b : undefined) as
      | QueryCallback<any>
      | undefined
    const values = Array.isArray(a) ? a : undefined
    if (
      typeof text === 'object' &&
      text !== null &&
      typeof (text as { submit?: unknown }).submit === 'function'
    ) {
      const err = new TypeError(
        'db.query does not take a Submittable (cursor, stream): use db.primary.connect()',
      )
      if (cb) {
        process.nextTick(cb, err)
        return undefined
      }
      return Promise.reject(err)
    }
    const p = doWrite(text, values, undefined)
    if (!cb) return p
    p.then(
      (r) => cb(null, r),
      (err) => cb(err),
    )
    return undefined
  }

  const check = createCheck({
    closed: () => closed,
    writer: () => gate.writer?.name ?? null,
    suspectedAt: () => gate.suspectedAt,
    discovery: () => ({
      consecutiveFailures: monitor.consecutiveDiscoveryFailures,
      lastSuccessAt: monitor.lastDiscoveryAt,
    }),
    healthyReplicas: () =>
      eligibleReplicas(monitor.members.values(), {
        maxLagBytes: opts.replicas.maxLagBytes,
        now: performance.now(),
      }).filter((m) => m !== gate.writer).length,
    conflict: () => monitor.conflict,
    failoverTimeoutMs: () => opts.failover.timeoutMs,
  })

  const router: PgRouter & { [inspect.custom]: () => string } = {
    async ready(readyOptions) {
      const timeoutMs = readyOptions?.timeoutMs ?? opts.failover.timeoutMs
      try {
        await gate.wait(readyOptions?.signal, performance.now() + timeoutMs)
      } catch (err) {
        if (!ResilientError.is(err, 'E_FAILOVER_TIMEOUT')) throw err
        throw new ResilientError('E_NO_PRIMARY', `no primary confirmed within ${timeoutMs} ms`, {
          cause: monitor.lastConfirmError ?? monitor.lastDiscoveryError ?? err,
          details: { timeoutMs },
        })
      }
    },
    write: (text, values, options) => doWrite(text, values, options),
    read: (text, values, options) => doRead(text, values, options, null),
    query: query as PgRouter['query'],
    transaction: (fn, options) => doTransaction(fn, options, null),
    session(token) {
      if (token === undefined || token === null || token === '') return new Session(sessionHost, null)
      const decoded = decodeToken(token)
      if (!decoded.ok) {
        badTokens++
        publish(channels.badToken, { reason: decoded.reason })
        return new Session(sessionHost, null)
      }
      return new Session(sessionHost, { lsn: decoded.data.lsn, timeline: decoded.data.timeline ?? null })
    },
    primary: undefined as unknown as RouterPool,
    replicas: undefined as unknown as RouterPool,
    topology: () => monitor.topology(),
    onFailover: (listener) => monitor.failovers.on(listener),
    onTopologyChange: (listener) => monitor.topologyChanges.on(listener),
    check,
    stats() {
      const t = monitor.topology()
      const healthy = new Set([
        ...(t.primary ? [t.primary.name] : []),
        ...t.replicas.filter((r) => r.healthy).map((r) => r.name),
      ])
      return {
        primary: gate.writer?.name ?? null,
        failovers: gate.failovers,
        queuedWrites: gate.queueLength,
        discovery: {
          failures: monitor.discoveryFailures,
          consecutiveFailures: monitor.consecutiveDiscoveryFailures,
          lastSuccessAt: monitor.lastDiscoveryAt,
          source: monitor.lastDiscoverySource,
        },
        members: [...monitor.members.values()].map((m) => ({
          ...m.pool.stats(),
          role: m.role,
          state: m.state,
          lagBytes: m.measuredLagBytes ?? m.reportedLagBytes,
          healthy: healthy.has(m.name),
        })),
        badTokens,
        retries: { ...retries },
      }
    },
    async resolveCommit(txid, options) {
      const s = typeof txid === 'string' ? txid : String(txid)
      if (!/^[0-9]{1,20}$/.test(s)) {
        throw new ResilientError('E_CONFIG', 'invalid option txid: expected a non-negative integer', {
          details: { field: 'txid' },
        })
      }
      try {
        const r = await doWrite<{ s: CommitStatus | null }>('SELECT pg_xact_status($1::xid8) AS s', [s], {
          idempotent: true,
          signal: options?.signal,
        })
        return r.rows[0]?.s ?? null
      } catch (err) {
        // 22023: the xid is in the future or too old for this server to tell
        if (sqlStateOf(err) === '22023') return null
        throw err
      }
    },
    close() {
      if (closing) return closing
      closed = true
      discoveryErrors.dispose()
      closing = monitor.close()
      return closing
    },
    [inspect.custom]() {
      const t = monitor.topology()
      return `PgRouter { primary: ${t.primary ? `'${t.primary.name}'` : 'null'}, replicas: [${t.replicas
        .map((r) => `'${r.name}'`)
        .join(', ')}], closed: ${closed} }`
    },
  }

  const poolOptions: PoolOptions = Object.freeze({
    max: opts.pool.max,
    maxUses: Number.POSITIVE_INFINITY,
    allowExitOnIdle: true,
    maxLifetimeSeconds: 0,
    idleTimeoutMillis: opts.pool.idleTimeoutMs,
    connectionTimeoutMillis: opts.pool.connectTimeoutMs,
  })
  const primary = new RouterPool('primary', {
    options: poolOptions,
    query: (text, values) => doWrite(text, values, undefined),
    acquire: async (signal) =>
      (await acquireWriter(signal, performance.now() + opts.failover.timeoutMs)).lease,
    stats: () => sumStats(gate.writer ? [gate.writer] : []),
  })
  const replicas = new RouterPool('replicas', {
    options: poolOptions,
    query: (text, values) => doRead(text, values, undefined, null),
    acquire: async (signal) =>
      (await acquireReader(signal, performance.now() + opts.failover.timeoutMs, null, new Set())).lease,
    stats: () =>
      sumStats([...monitor.members.values()].filter((m) => m.role === 'replica' && m !== gate.writer)),
  })
  Object.defineProperty(router, 'primary', { value: primary, enumerable: true })
  Object.defineProperty(router, 'replicas', { value: replicas, enumerable: true })

  monitor.start()
  return router
}

function sumStats(members: Member[]): { total: number; idle: number; waiting: number } {
  let total = 0
  let idle = 0
  let waiting = 0
  for (const m of members) {
    const s = m.pool.stats()
    total += s.total
    idle += s.idle
    waiting += s.waiting
  }
  return { total, idle, waiting }
}
