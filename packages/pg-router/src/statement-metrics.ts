import { errorType, metrics } from '@resilient/core'
import type { QueryConfig, QueryResult, QueryResultRow } from 'pg'
import { sqlStateOf } from './classify.js'
import type { Lease } from './member-pool.js'
import type { Member } from './topology.js'

/**
 * OpenTelemetry measurements of statements and calls. When no MeterProvider receives them, a
 * statement costs no timing, no verb parsing and no metric call.
 */

export type QueryText = string | QueryConfig

/**
 * Whether OpenTelemetry receives measurements, asked of core at most every METRICS_RECHECK_MS
 * (a MeterProvider registered later is picked up within that time).
 */
const METRICS_RECHECK_MS = 1_000
let metricsCheckedAt = Number.NEGATIVE_INFINITY
let metricsActive = false
export function metricsOn(): boolean {
  const now = performance.now()
  if (now - metricsCheckedAt >= METRICS_RECHECK_MS) {
    metricsCheckedAt = now
    metricsActive = metrics.active
  }
  return metricsActive
}

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

export function verbOf(text: QueryText): string | undefined {
  const t = typeof text === 'string' ? text : text?.text
  if (typeof t !== 'string') return undefined
  const v = /^\s*([A-Za-z]+)/.exec(t)?.[1]?.toUpperCase()
  return v !== undefined && VERBS.has(v) ? v : undefined
}

/** Runs one caller statement on a lease, bounded by pool.queryTimeoutMs and the signal. */
export type RunStatement = <R extends QueryResultRow>(
  lease: Lease,
  member: Member,
  text: QueryText,
  values: unknown[] | undefined,
  signal: AbortSignal | undefined,
) => Promise<QueryResult<R>>

/** `run`, recorded as a `db.client.operation.duration` measurement when metrics are on. */
export function createRunStatement(namespace: string | undefined, queryTimeoutMs: number): RunStatement {
  async function measured<R extends QueryResultRow>(
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
  return (lease, member, text, values, signal) =>
    metricsOn()
      ? measured(lease, member, text, values, signal)
      : lease.query(text, values, queryTimeoutMs, signal)
}

/** Scratch attempt counter for calls that are not measured. */
export const UNCOUNTED = { n: 0 }

/** Counts one read/write call in resilience4j.retry.calls (when metrics are on); `fn` sets `tries.n`. */
export function counted<T>(name: string, fn: (tries: { n: number }) => Promise<T>): Promise<T> {
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
