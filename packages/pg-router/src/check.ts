/** The health check result shape @resilient/health consumes (draft-inadarei-api-health-check). */
export interface CheckResult {
  status: 'pass' | 'warn' | 'fail'
  observedValue?: number
  observedUnit?: string
  output?: string
}

export interface CheckState {
  closed(): boolean
  writer(): string | null
  suspectedAt(): number | null
  discovery(): { consecutiveFailures: number; lastSuccessAt: number | null }
  healthyReplicas(): number
  conflict(): string[] | null
}

/**
 * `db.check`: reads state the router already keeps; never runs a query of its own.
 * - fail: closed, split brain, or no confirmed primary (writes are being held or refused);
 * - warn: a primary works but discovery keeps failing (the router would not see the next failover);
 * - pass: otherwise. observedValue: milliseconds since discovery last answered.
 */
export function createCheck(state: CheckState): () => Promise<CheckResult> {
  return async () => {
    if (state.closed()) return { status: 'fail', output: 'router is closed' }
    const conflict = state.conflict()
    if (conflict)
      return { status: 'fail', output: `several members claim to be primary: ${conflict.join(', ')}` }
    const d = state.discovery()
    const age = d.lastSuccessAt === null ? undefined : Math.max(0, Date.now() - d.lastSuccessAt)
    const withAge = (r: CheckResult): CheckResult =>
      age === undefined ? r : { ...r, observedValue: age, observedUnit: 'ms' }
    const writer = state.writer()
    if (writer === null) {
      const since = state.suspectedAt()
      return withAge({
        status: 'fail',
        output:
          since === null
            ? 'no primary confirmed yet'
            : `no confirmed primary: failover in progress for ${Math.round(performance.now() - since)} ms`,
      })
    }
    const replicas = state.healthyReplicas()
    if (d.consecutiveFailures > 0) {
      return withAge({
        status: 'warn',
        output: `primary ${writer} works; discovery failed ${d.consecutiveFailures} time(s) in a row`,
      })
    }
    return withAge({ status: 'pass', output: `primary ${writer}; ${replicas} replica(s) serving reads` })
  }
}
