/**
 * Metrics through `@opentelemetry/api` when it is installed (an optional peer), and a plain
 * in-process snapshot that anyone (health's Prometheus endpoint) can read.
 *
 * Names follow two conventions, documented in the README:
 * - database work: OpenTelemetry's database semantic conventions
 *   (`db.client.operation.duration`, `db.client.connection.*`);
 * - breaker and retry: the Resilience4j/Micrometer names (`resilience4j.circuitbreaker.*`,
 *   `resilience4j.retry.calls`), the most widely dashboarded resilience metrics.
 *
 * Without `@opentelemetry/api`, or with it but no MeterProvider registered, every `record*`
 * is a no-op apart from the snapshot counters. Instruments are re-created when the global
 * MeterProvider changes, so a provider registered after this module loaded is picked up.
 */
import { createRequire } from 'node:module'
import type * as OtelApi from '@opentelemetry/api'
import type { BreakerState } from './breaker.js'
import { listBreakers } from './breaker.js'
import { errorType } from './errors.js'
import { type Disposable, toDisposable } from './events.js'

type Api = typeof OtelApi

/**
 * An OpenTelemetry `MeterProvider`, typed structurally so that this package's types do not
 * require `@opentelemetry/api` to be installed.
 */
export interface MeterProviderLike {
  getMeter(name: string, version?: string, options?: any): any
}

/** The instrumentation scope of every instrument of this module. */
export const METER_NAME = '@resilient/core'

/** Every metric name this package emits. */
export const metricNames = {
  operationDuration: 'db.client.operation.duration',
  connectionCount: 'db.client.connection.count',
  connectionMax: 'db.client.connection.max',
  connectionIdleMax: 'db.client.connection.idle.max',
  connectionIdleMin: 'db.client.connection.idle.min',
  connectionPendingRequests: 'db.client.connection.pending_requests',
  connectionTimeouts: 'db.client.connection.timeouts',
  connectionCreateTime: 'db.client.connection.create_time',
  connectionWaitTime: 'db.client.connection.wait_time',
  connectionUseTime: 'db.client.connection.use_time',
  breakerCalls: 'resilience4j.circuitbreaker.calls',
  breakerNotPermitted: 'resilience4j.circuitbreaker.not.permitted.calls',
  breakerState: 'resilience4j.circuitbreaker.state',
  breakerFailureRate: 'resilience4j.circuitbreaker.failure.rate',
  retryCalls: 'resilience4j.retry.calls',
} as const

/** OpenTelemetry's advised buckets for `db.client.operation.duration`, in seconds. */
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10]

/** One database (or Redis) operation, for `db.client.operation.duration`. */
export interface OperationRecord {
  /** `db.system.name`: `'postgresql'`, `'redis'`. */
  system: string
  /** Seconds from sending the operation to its answer (or failure). */
  durationSeconds: number
  /** `db.operation.name`: a low-cardinality verb (`SELECT`, `GET`), never the query text. */
  operation?: string | undefined
  /** `db.namespace`: the database name (or Redis db index). */
  namespace?: string | undefined
  /** `error.type` when the operation failed: use `errorType(err)`. */
  errorType?: string | undefined
  /** `db.response.status_code`: a SQLSTATE, a Redis error prefix. */
  statusCode?: string | undefined
  /** `server.address` / `server.port` of the member that answered. */
  serverAddress?: string | undefined
  serverPort?: number | undefined
}

/** What a pool reports when asked; read each time metrics are collected or a snapshot taken. */
export interface PoolStats {
  /** Open connections not lent out. */
  idle: number
  /** Connections lent out. */
  used: number
  /** Callers waiting for a connection. */
  pending: number
  /** The most connections the pool may open. */
  max?: number | undefined
  idleMax?: number | undefined
  idleMin?: number | undefined
}

export type BreakerCallKind = 'successful' | 'failed' | 'ignored'
export type RetryCallKind =
  | 'successful_without_retry'
  | 'successful_with_retry'
  | 'failed_with_retry'
  | 'failed_without_retry'

/** One observation of a gauge registered with `metrics.observeGauge`. */
export interface GaugePoint {
  value: number
  attributes?: Record<string, string | number | boolean>
}

export interface GaugeOptions {
  description: string
  unit?: string
}

export interface MetricsSnapshot {
  breakers: {
    name: string
    state: BreakerState
    successes: number
    failures: number
    timeouts: number
    rejects: number
  }[]
  pools: ({ name: string } & PoolStats)[]
  retries: { name: string; kind: RetryCallKind; count: number }[]
  operations: { system: string; operation: string; count: number; errors: number; sumSeconds: number }[]
  /** Every point of every gauge registered with `metrics.observeGauge`, read now. */
  gauges: ({ name: string } & GaugePoint)[]
}

interface Instruments {
  provider: OtelApi.MeterProvider
  meter: OtelApi.Meter
  active: boolean
  /** Gauges of `observeGauge` already created on this meter. */
  gauges: Set<string>
  operationDuration: OtelApi.Histogram
  connectionTimeouts: OtelApi.Counter
  connectionCreateTime: OtelApi.Histogram
  connectionWaitTime: OtelApi.Histogram
  connectionUseTime: OtelApi.Histogram
  breakerCalls: OtelApi.Histogram
  breakerNotPermitted: OtelApi.Counter
  retryCalls: OtelApi.Counter
}

let api: Api | null | undefined
let explicitProvider: OtelApi.MeterProvider | undefined
let instruments: Instruments | undefined
/** A provider whose getMeter threw: not asked again on every measurement. */
let brokenProvider: unknown

function loadApi(): Api | null {
  if (api !== undefined) return api
  try {
    api = createRequire(import.meta.url)('@opentelemetry/api') as Api
  } catch {
    api = null
  }
  return api
}

const pools = new Map<string, { stats: () => PoolStats }>()
/** Gauges of `observeGauge`, by name: their options and every source of points. */
const gauges = new Map<string, { options: GaugeOptions; sources: Set<() => Iterable<GaugePoint>> }>()
const retryCounts = new Map<string, { name: string; kind: RetryCallKind; count: number }>()
const operationCounts = new Map<
  string,
  { system: string; operation: string; count: number; errors: number; sumSeconds: number }
>()

const POOL = 'db.client.connection.pool.name'
const STATE = 'db.client.connection.state'
const BREAKER_STATES: readonly BreakerState[] = ['closed', 'open', 'half-open']
// Resilience4j spells the state with an underscore.
const R4J_STATE: Record<BreakerState, string> = { closed: 'closed', open: 'open', 'half-open': 'half_open' }

function safePoolStats(stats: () => PoolStats): PoolStats | undefined {
  try {
    const s = stats()
    return typeof s === 'object' && s !== null ? s : undefined
  } catch {
    return undefined // a pool that cannot report is left out of this collection
  }
}

function safePoints(source: () => Iterable<GaugePoint>): GaugePoint[] {
  try {
    const out: GaugePoint[] = []
    for (const p of source()) if (typeof p?.value === 'number' && Number.isFinite(p.value)) out.push(p)
    return out
  } catch {
    return [] // a source that cannot report is left out of this collection
  }
}

/** Creates the observable gauge `name` on `inst`'s meter once. */
function createGauge(inst: Instruments, name: string): void {
  const g = gauges.get(name)
  if (!g || !inst.active || inst.gauges.has(name)) return
  inst.gauges.add(name)
  inst.meter
    .createObservableGauge(name, {
      description: g.options.description,
      ...(g.options.unit ? { unit: g.options.unit } : {}),
    })
    .addCallback((result) => {
      for (const source of gauges.get(name)?.sources ?? []) {
        for (const p of safePoints(source)) result.observe(p.value, p.attributes)
      }
    })
}

function build(otel: Api, provider: OtelApi.MeterProvider): Instruments {
  const meter = provider.getMeter(METER_NAME)
  const active = meter !== otel.createNoopMeter()
  const seconds = (name: string, description: string, buckets?: number[]) =>
    meter.createHistogram(name, {
      unit: 's',
      description,
      ...(buckets ? { advice: { explicitBucketBoundaries: buckets } } : {}),
    })

  if (active) {
    meter
      .createObservableUpDownCounter(metricNames.connectionCount, {
        unit: '{connection}',
        description: 'Connections of a pool in the state given by db.client.connection.state.',
      })
      .addCallback((result) => {
        for (const [name, pool] of pools) {
          const s = safePoolStats(pool.stats)
          if (!s) continue
          result.observe(s.idle, { [POOL]: name, [STATE]: 'idle' })
          result.observe(s.used, { [POOL]: name, [STATE]: 'used' })
        }
      })
    const poolGauge = (name: string, unit: string, description: string, pick: (s: PoolStats) => unknown) =>
      meter.createObservableUpDownCounter(name, { unit, description }).addCallback((result) => {
        for (const [poolName, pool] of pools) {
          const s = safePoolStats(pool.stats)
          const v = s && pick(s)
          if (typeof v === 'number') result.observe(v, { [POOL]: poolName })
        }
      })
    poolGauge(
      metricNames.connectionMax,
      '{connection}',
      'The most connections the pool may open.',
      (s) => s.max,
    )
    poolGauge(
      metricNames.connectionIdleMax,
      '{connection}',
      'The most idle connections allowed.',
      (s) => s.idleMax,
    )
    poolGauge(
      metricNames.connectionIdleMin,
      '{connection}',
      'The fewest idle connections kept.',
      (s) => s.idleMin,
    )
    poolGauge(
      metricNames.connectionPendingRequests,
      '{request}',
      'Callers waiting for a connection of the pool.',
      (s) => s.pending,
    )
    meter
      .createObservableGauge(metricNames.breakerState, {
        description: 'Circuit breaker state: 1 for the current state, 0 for the others.',
      })
      .addCallback((result) => {
        for (const b of listBreakers()) {
          const current = b.state
          for (const s of BREAKER_STATES)
            result.observe(s === current ? 1 : 0, { name: b.name, state: R4J_STATE[s] })
        }
      })
    meter
      .createObservableGauge(metricNames.breakerFailureRate, {
        unit: '%',
        description: 'Failed calls in the rolling window, in percent; -1 below the volume threshold.',
      })
      .addCallback((result) => {
        for (const b of listBreakers()) result.observe(b.stats().failureRate, { name: b.name })
      })
  }

  const inst: Instruments = {
    provider,
    meter,
    active,
    gauges: new Set(),
    operationDuration: seconds(
      metricNames.operationDuration,
      'Duration of database client operations.',
      DURATION_BUCKETS,
    ),
    connectionTimeouts: meter.createCounter(metricNames.connectionTimeouts, {
      unit: '{timeout}',
      description: 'Timeouts while waiting for a connection from the pool.',
    }),
    connectionCreateTime: seconds(metricNames.connectionCreateTime, 'Time it took to open a new connection.'),
    connectionWaitTime: seconds(
      metricNames.connectionWaitTime,
      'Time it took to get a connection from the pool.',
    ),
    connectionUseTime: seconds(
      metricNames.connectionUseTime,
      'Time between borrowing a connection and returning it.',
    ),
    breakerCalls: seconds(metricNames.breakerCalls, 'Calls through a circuit breaker, by outcome (kind).'),
    breakerNotPermitted: meter.createCounter(metricNames.breakerNotPermitted, {
      description: 'Calls a circuit breaker rejected without running them.',
    }),
    retryCalls: meter.createCounter(metricNames.retryCalls, {
      description: 'Calls through a retry policy, by outcome (kind).',
    }),
  }
  for (const name of gauges.keys()) createGauge(inst, name)
  return inst
}

/** The instruments for the current MeterProvider; undefined without @opentelemetry/api. */
function current(): Instruments | undefined {
  const otel = loadApi()
  if (!otel) return undefined
  const provider = explicitProvider ?? otel.metrics.getMeterProvider()
  if (instruments?.provider !== provider) {
    if (provider === brokenProvider) return undefined
    try {
      instruments = build(otel, provider)
    } catch {
      brokenProvider = provider // a broken provider must not break the data path
      return undefined
    }
  }
  return instruments
}

function poolName(name: string): string {
  if (typeof name !== 'string' || name.length === 0)
    throw new TypeError('pool name must be a non-empty string')
  return name
}

/**
 * The metric helpers other packages call. All are cheap no-ops without OpenTelemetry; none
 * throws on a bad measurement (a metric must never break a query).
 */
export const metrics = {
  /** Whether `@opentelemetry/api` could be loaded. */
  get available(): boolean {
    return loadApi() !== null
  },

  /** Whether a real (non-no-op) MeterProvider is receiving measurements now. */
  get active(): boolean {
    return current()?.active === true
  },

  /**
   * Uses `provider` instead of the global MeterProvider (tests, or an app that does not
   * register a global one); `undefined` goes back to the global.
   */
  setMeterProvider(provider: MeterProviderLike | undefined): void {
    explicitProvider = provider as OtelApi.MeterProvider | undefined
    instruments = undefined
    brokenProvider = undefined
  },

  /** Records one operation in `db.client.operation.duration` and in the snapshot. */
  recordOperation(op: OperationRecord): void {
    const operation = op.operation ?? ''
    const key = `${op.system}\u0000${operation}`
    let agg = operationCounts.get(key)
    if (!agg) {
      agg = { system: op.system, operation, count: 0, errors: 0, sumSeconds: 0 }
      operationCounts.set(key, agg)
    }
    agg.count++
    if (op.errorType !== undefined) agg.errors++
    if (Number.isFinite(op.durationSeconds)) agg.sumSeconds += op.durationSeconds

    const inst = current()
    if (!inst?.active || !Number.isFinite(op.durationSeconds)) return
    const attrs: OtelApi.Attributes = { 'db.system.name': op.system }
    if (op.operation !== undefined) attrs['db.operation.name'] = op.operation
    if (op.namespace !== undefined) attrs['db.namespace'] = op.namespace
    if (op.errorType !== undefined) attrs['error.type'] = op.errorType
    if (op.statusCode !== undefined) attrs['db.response.status_code'] = op.statusCode
    if (op.serverAddress !== undefined) attrs['server.address'] = op.serverAddress
    if (op.serverPort !== undefined) attrs['server.port'] = op.serverPort
    inst.operationDuration.record(op.durationSeconds, attrs)
  },

  /**
   * Starts timing one operation; call the returned function once when it settles, with the
   * error if it failed (its `error.type` is `errorType(err)`). Calling it again does nothing.
   *   const done = metrics.startOperation({ system: 'redis', operation: 'GET' })
   *   try { const v = await redis.get(k); done(); return v } catch (e) { done(e); throw e }
   */
  startOperation(op: Omit<OperationRecord, 'durationSeconds' | 'errorType'>): (error?: unknown) => void {
    const t0 = performance.now()
    let ended = false
    return (...args: [error?: unknown]) => {
      if (ended) return
      ended = true
      const record: OperationRecord = { ...op, durationSeconds: (performance.now() - t0) / 1000 }
      if (args.length > 0 && args[0] !== undefined) record.errorType = errorType(args[0])
      metrics.recordOperation(record)
    }
  },

  /**
   * Reports a pool's connection counts (`db.client.connection.count` idle/used,
   * `.pending_requests`, `.max`, `.idle.max`, `.idle.min`) from `stats()`, read at each
   * collection. Dispose when the pool closes. A second pool of the same name replaces the first.
   */
  observePool(name: string, stats: () => PoolStats): Disposable {
    poolName(name)
    if (typeof stats !== 'function') throw new TypeError('stats must be a function')
    const entry = { stats }
    pools.set(name, entry)
    current() // create the observable instruments now if a provider is there
    return toDisposable(() => {
      if (pools.get(name) === entry) pools.delete(name)
    })
  },

  /**
   * A gauge read at each collection (and by `metricsSnapshot()`): `points()` returns one
   * observation per attribute set. Several sources may share a name (two routers in one
   * process); each disposes of its own. A source that throws is left out of that collection.
   */
  observeGauge(name: string, options: GaugeOptions, points: () => Iterable<GaugePoint>): Disposable {
    if (typeof name !== 'string' || name.length === 0)
      throw new TypeError('gauge name must be a non-empty string')
    if (typeof points !== 'function') throw new TypeError('points must be a function')
    let g = gauges.get(name)
    if (!g) {
      g = { options: { ...options }, sources: new Set() }
      gauges.set(name, g)
    }
    const source = points
    g.sources.add(source)
    const inst = current()
    if (inst) createGauge(inst, name)
    return toDisposable(() => {
      gauges.get(name)?.sources.delete(source)
    })
  },

  /** `db.client.connection.create_time`: seconds to open one new connection. */
  recordConnectionCreate(pool: string, seconds: number): void {
    const inst = current()
    if (inst?.active && Number.isFinite(seconds)) inst.connectionCreateTime.record(seconds, { [POOL]: pool })
  },
  /** `db.client.connection.wait_time`: seconds a caller waited for a connection. */
  recordConnectionWait(pool: string, seconds: number): void {
    const inst = current()
    if (inst?.active && Number.isFinite(seconds)) inst.connectionWaitTime.record(seconds, { [POOL]: pool })
  },
  /** `db.client.connection.use_time`: seconds a connection was lent out. */
  recordConnectionUse(pool: string, seconds: number): void {
    const inst = current()
    if (inst?.active && Number.isFinite(seconds)) inst.connectionUseTime.record(seconds, { [POOL]: pool })
  },
  /** `db.client.connection.timeouts`: one caller gave up waiting for a connection. */
  recordConnectionTimeout(pool: string): void {
    const inst = current()
    if (inst?.active) inst.connectionTimeouts.add(1, { [POOL]: pool })
  },

  /** Used by breakers: one finished call (seconds is 0 when timing was off). */
  recordBreakerCall(name: string, kind: BreakerCallKind, seconds: number): void {
    const inst = current()
    if (inst?.active) inst.breakerCalls.record(seconds, { name, kind })
  },
  /** Used by breakers: one call rejected while open. */
  recordBreakerNotPermitted(name: string): void {
    const inst = current()
    if (inst?.active) inst.breakerNotPermitted.add(1, { name, kind: 'not_permitted' })
  },
  /** Used by retry policies: one finished call through the policy. */
  recordRetry(name: string, kind: RetryCallKind): void {
    const key = `${name}\u0000${kind}`
    const agg = retryCounts.get(key)
    if (agg) agg.count++
    else retryCounts.set(key, { name, kind, count: 1 })
    const inst = current()
    if (inst?.active) inst.retryCalls.add(1, { name, kind })
  },
}

/**
 * A plain snapshot of what core knows now: every live breaker's counters, every observed
 * pool's stats, retry outcomes and operation counts since start. For health's `/metrics`
 * (prom-client collect callbacks) or a debug endpoint; cheap enough to call per scrape.
 */
export function metricsSnapshot(): MetricsSnapshot {
  const poolsOut: MetricsSnapshot['pools'] = []
  for (const [name, pool] of pools) {
    const s = safePoolStats(pool.stats)
    if (s) poolsOut.push({ ...s, name })
  }
  return {
    breakers: listBreakers().map((b) => {
      const { name, state, successes, failures, timeouts, rejects } = b.stats()
      return { name, state, successes, failures, timeouts, rejects }
    }),
    pools: poolsOut,
    retries: [...retryCounts.values()].map((r) => ({ ...r })),
    operations: [...operationCounts.values()].map((o) => ({ ...o })),
    gauges: [...gauges.entries()].flatMap(([name, g]) =>
      [...g.sources].flatMap((source) => safePoints(source).map((p) => ({ name, ...p }))),
    ),
  }
}

/** Forgets the snapshot counters (tests). */
export function resetMetricsSnapshot(): void {
  retryCounts.clear()
  operationCounts.clear()
}
