import { inspect } from 'node:util'
import { type Disposable, metrics, publish, ResilientError } from '@resilient/core'
import type { PoolOptions, QueryResult, QueryResultRow } from 'pg'
import { channels } from './channels.js'
import { type CheckResult, createCheck } from './check.js'
import type { RouterContext } from './context.js'
import { createPatroniDiscovery, createStaticDiscovery, type Discovery } from './discovery/index.js'
import { RouterPool } from './facade.js'
import type { FailoverEvent } from './failover.js'
import type { MemberPoolStats } from './member-pool.js'
import { Monitor } from './monitor.js'
import { type PgRouterOptions, type ResolvedOptions, resolveOptions } from './options.js'
import { Routing } from './routing.js'
import {
  Session,
  type SessionHost,
  type StatementOptions,
  type TransactionClient,
  type TransactionOptions,
  type WriteOptions,
} from './session.js'
import { SessionTokens, type TokenStats } from './session-tokens.js'
import { Statements } from './statement.js'
import { createRunStatement, type QueryText } from './statement-metrics.js'
import type { TimelineInfo, TimelineRegressionEvent } from './timeline.js'
import { eligibleReplicas, type Member, type Topology } from './topology.js'
import { type CommitStatus, Transactions } from './transaction.js'

export type { QueryText } from './statement-metrics.js'
export type { CommitStatus } from './transaction.js'
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
  /** Session tokens and positions ignored, for any reason (the sum of `tokens` but `rebased`). */
  badTokens: number
  /** Session tokens and positions by what happened to them (see the README's read-your-writes section). */
  tokens: TokenStats
  retries: { read: number; write: number; transaction: number }
}

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
  /**
   * The cluster went back to a lower timeline than one this router had acknowledged writes on
   * (those writes may be lost): an event per regression; also channel `timelineRegression`.
   */
  onTimelineRegression(listener: (e: TimelineRegressionEvent) => void): Disposable
  /**
   * Regressions detected and not acknowledged yet: `check()` warns and the
   * `resilient.pg_router.timeline.regression` gauge reports each until acknowledged.
   */
  timelineRegressions(): TimelineRegressionEvent[]
  /** Marks every regression detected so far as handled (check() passes again); returns how many. */
  acknowledgeTimelineRegressions(): number
  /** The primary's timeline, system identifier and timeline history as the router knows them now. */
  timelineInfo(): TimelineInfo
  /** After E_COMMIT_UNKNOWN: asks the primary `pg_xact_status(txid)`; null when it cannot tell. */
  resolveCommit(txid: string | number | bigint, options?: StatementOptions): Promise<CommitStatus | null>
  close(): Promise<void>
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

/** The gauge of unacknowledged timeline regressions (see `db.timelineRegressions()`). */
export const TIMELINE_REGRESSION_METRIC = 'resilient.pg_router.timeline.regression'

/** Creates a router. Options are checked here (E_CONFIG naming the field); no I/O starts before this returns. */
export function createPgRouter(options: PgRouterOptions): PgRouter {
  const opts = resolveOptions(options)
  const discovery = makeDiscovery(opts)
  const monitor = new Monitor(opts, discovery)
  const gate = monitor.gate
  const ctx: RouterContext = {
    opts,
    monitor,
    gate,
    retries: { read: 0, write: 0, transaction: 0 },
    closed: false,
  }
  let closing: Promise<void> | null = null
  const tokens = new SessionTokens(opts.session.secret, monitor, opts.session.maxWaitMs)

  const discoveryErrors = discovery.onError((e) => {
    publish(channels.discoveryError, { source: e.source, error: e.error })
  })

  const namespace = typeof opts.connection.database === 'string' ? opts.connection.database : undefined
  const run = createRunStatement(namespace, opts.pool.queryTimeoutMs)
  const routing = new Routing(ctx)
  const statements = new Statements(ctx, routing, run)
  const transactions = new Transactions(ctx, routing, statements, run)

  const doWrite = <R extends QueryResultRow>(
    text: QueryText,
    values: unknown[] | undefined,
    options?: WriteOptions,
  ) => statements.execute<R>('write', text, values, options, null)
  const doRead = <R extends QueryResultRow>(
    text: QueryText,
    values: unknown[] | undefined,
    options?: StatementOptions,
  ) => statements.execute<R>('read', text, values, options, null)

  const sessionHost: SessionHost = {
    readAfter: (text, values, min, options) => statements.execute('read', text, values, options, min),
    writeTracked: (text, values, options, onPosition) =>
      statements.execute('write', text, values, options, null, onPosition),
    transactionTracked: (fn, options, min, onPosition) => transactions.run(fn, options, min, onPosition),
    reconcile: (pos, trusted) => tokens.reconcile(pos, trusted),
    observed: (pos) => tokens.observed(pos),
    encode: (pos) => tokens.encode(pos),
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
    closed: () => ctx.closed,
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
    timelineRegressions: () => monitor.timelines.unacknowledged,
  })

  // One point per unacknowledged regression, naming both timelines and the window of writes
  // that may be lost (epoch seconds); nothing once acknowledged.
  const regressionGauge = metrics.observeGauge(
    TIMELINE_REGRESSION_METRIC,
    {
      description:
        'Unacknowledged timeline regressions: the cluster went back to a lower timeline than one this router had acknowledged writes on.',
    },
    () =>
      monitor.timelines.unacknowledged.map((e) => ({
        value: 1,
        attributes: {
          'pg_router.timeline.lost': e.lostTimeline,
          'pg_router.timeline.current': e.timeline,
          'pg_router.member': e.member,
          'pg_router.writes.from': Math.floor(e.writesFrom / 1000),
          'pg_router.writes.until': Math.ceil(e.writesUntil / 1000),
        },
      })),
  )

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
    read: (text, values, options) => doRead(text, values, options),
    query: query as PgRouter['query'],
    transaction: (fn, options) => transactions.run(fn, options, null),
    session(token) {
      if (token === undefined || token === null || token === '') return new Session(sessionHost, null)
      const opened = tokens.open(token)
      if (opened === null) return new Session(sessionHost, null)
      return new Session(sessionHost, opened.pos, opened.trusted)
    },
    primary: undefined as unknown as RouterPool,
    replicas: undefined as unknown as RouterPool,
    topology: () => monitor.topology(),
    onFailover: (listener) => monitor.failovers.on(listener),
    onTopologyChange: (listener) => monitor.topologyChanges.on(listener),
    onTimelineRegression: (listener) => monitor.timelineRegressions.on(listener),
    timelineRegressions: () => monitor.timelines.unacknowledged.map((e) => ({ ...e })),
    acknowledgeTimelineRegressions: () => monitor.timelines.acknowledge(),
    timelineInfo: () => monitor.timelineInfo(),
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
        badTokens: tokens.ignored,
        tokens: { ...tokens.stats },
        retries: { ...ctx.retries },
      }
    },
    resolveCommit: (txid, options) => transactions.resolveCommit(txid, options),
    close() {
      if (closing) return closing
      ctx.closed = true
      discoveryErrors.dispose()
      regressionGauge.dispose()
      closing = monitor.close()
      return closing
    },
    [inspect.custom]() {
      const t = monitor.topology()
      return `PgRouter { primary: ${t.primary ? `'${t.primary.name}'` : 'null'}, replicas: [${t.replicas
        .map((r) => `'${r.name}'`)
        .join(', ')}], closed: ${ctx.closed} }`
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
      (await routing.acquireWriter(signal, performance.now() + opts.failover.timeoutMs)).lease,
    stats: () => sumStats(gate.writer ? [gate.writer] : []),
  })
  const replicas = new RouterPool('replicas', {
    options: poolOptions,
    query: (text, values) => doRead(text, values, undefined),
    acquire: async (signal) =>
      (await routing.acquireReader(signal, performance.now() + opts.failover.timeoutMs, null, new Set()))
        .lease,
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
