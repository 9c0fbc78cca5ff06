import type { TimelineRegressionEvent } from './timeline.js'

/** The health check result shape @resilient/health consumes (draft-inadarei-api-health-check). */
export interface CheckResult {
  status: 'pass' | 'warn' | 'fail'
  /** 'discoveryAge' when observedValue is given. */
  measurement?: string
  /** The confirmed primary's member name, when there is one. */
  componentId?: string
  componentType?: 'datastore'
  /** Milliseconds since discovery last answered. */
  observedValue?: number
  observedUnit?: string
  /** Why it is not 'pass' (no secrets). */
  output?: string
  /** { primary, replicasServingReads }: for verbose views. */
  details?: Record<string, unknown>
}

export interface CheckState {
  closed(): boolean
  writer(): string | null
  suspectedAt(): number | null
  discovery(): { consecutiveFailures: number; lastSuccessAt: number | null }
  healthyReplicas(): number
  conflict(): string[] | null
  /** `failover.timeoutMs`: how long writes are held before they fail. */
  failoverTimeoutMs(): number
  /** Timeline regressions detected and not acknowledged (absent: none). */
  timelineRegressions?(): readonly TimelineRegressionEvent[]
}

/**
 * `db.check`: reads state the router already keeps; never runs a query of its own.
 * - fail: closed, split brain, no primary confirmed yet (startup), a failover that has lasted
 *   longer than `failover.timeoutMs` (writes now fail), or a failover with no member serving reads;
 * - warn: a failover younger than `failover.timeoutMs` while at least one replica serves reads
 *   (writes are held, not failed: the pod can still serve, so readiness stays up), or a primary
 *   works but discovery keeps failing (the router would not see the next failover);
 * - pass: otherwise. observedValue: milliseconds since discovery last answered.
 */
export function createCheck(state: CheckState): () => Promise<CheckResult> {
  const base = createBaseCheck(state)
  return async () => {
    const r = await base()
    const lost = state.timelineRegressions?.() ?? []
    if (lost.length === 0 || r.output === 'router is closed') return r
    // Past data loss: the pod can still serve, so warn (never fail) until acknowledged.
    const e = lost[lost.length - 1]!
    const iso = (t: number) => new Date(t).toISOString()
    const output =
      `timeline went back from ${e.lostTimeline} to ${e.timeline} (${e.member}): writes acknowledged ` +
      `between ${iso(e.writesFrom)} and ${iso(e.writesUntil)} may be lost` +
      (lost.length > 1 ? ` (${lost.length} regressions)` : '') +
      '; db.acknowledgeTimelineRegressions() once handled'
    return {
      ...r,
      status: r.status === 'fail' ? 'fail' : 'warn',
      output: r.output === undefined ? output : `${r.output}; ${output}`,
      details: { ...r.details, timelineRegressions: lost.map((x) => ({ ...x })) },
    }
  }
}

function createBaseCheck(state: CheckState): () => Promise<CheckResult> {
  return async () => {
    if (state.closed()) return { status: 'fail', output: 'router is closed' }
    const conflict = state.conflict()
    if (conflict)
      return { status: 'fail', output: `several members claim to be primary: ${conflict.join(', ')}` }
    const d = state.discovery()
    const age = d.lastSuccessAt === null ? undefined : Math.max(0, Date.now() - d.lastSuccessAt)
    const withAge = (r: CheckResult): CheckResult => {
      const out: CheckResult = { ...r, componentType: 'datastore' }
      if (age !== undefined) {
        out.measurement = 'discoveryAge'
        out.observedValue = age
        out.observedUnit = 'ms'
      }
      return out
    }
    const writer = state.writer()
    if (writer === null) {
      const since = state.suspectedAt()
      if (since === null) return withAge({ status: 'fail', output: 'no primary confirmed yet' })
      const heldMs = Math.max(0, Math.round(performance.now() - since))
      const readers = state.healthyReplicas()
      const details = { primary: null, replicasServingReads: readers, failoverMs: heldMs }
      if (heldMs > state.failoverTimeoutMs()) {
        return withAge({
          status: 'fail',
          output: `no confirmed primary: failover in progress for ${heldMs} ms, longer than failover.timeoutMs (writes fail)`,
          details,
        })
      }
      if (readers === 0) {
        return withAge({
          status: 'fail',
          output: `no confirmed primary and no replica serving reads: failover in progress for ${heldMs} ms`,
          details,
        })
      }
      return withAge({
        status: 'warn',
        output: `failover in progress: writes held (${heldMs} ms); ${readers} replica(s) serving reads`,
        details,
      })
    }
    const details = { primary: writer, replicasServingReads: state.healthyReplicas() }
    if (d.consecutiveFailures > 0) {
      return withAge({
        status: 'warn',
        componentId: writer,
        output: `primary ${writer} works; discovery failed ${d.consecutiveFailures} time(s) in a row`,
        details,
      })
    }
    return withAge({ status: 'pass', componentId: writer, details })
  }
}
