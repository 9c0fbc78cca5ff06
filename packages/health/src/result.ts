/**
 * The shape a health check returns, after the IETF draft "Health Check Response Format
 * for HTTP APIs" (draft-inadarei-api-health-check). `db.check()` of @resilient/pg-router
 * and `cache.check()` of @resilient/cache return this.
 */

export type CheckStatus = 'pass' | 'warn' | 'fail'

export const CHECK_STATUSES: readonly CheckStatus[] = ['pass', 'warn', 'fail']

export interface CheckResult {
  /** pass: healthy; warn: healthy with a concern (still serves); fail: unhealthy. */
  status: CheckStatus
  /**
   * What is measured; the response keys the entry `"<check name>:<measurement>"`.
   * @default 'responseTime' when the check gives no observedValue (health then reports
   * the check's own duration in ms), else the entry is keyed by the check name alone
   */
  measurement?: string
  /** A unique id of the component (a member name, a host:port): no secrets. @default the check name */
  componentId?: string
  /** 'datastore', 'component', 'system' or a URI. */
  componentType?: string
  /** A number, string or boolean describing the measurement (lag bytes, latency ms). */
  observedValue?: unknown
  /** The unit of observedValue ('ms', 'bytes', 'connections'). */
  observedUnit?: string
  /** A short, human message; shown raw, so it must carry no secrets. Keep it for warn/fail. */
  output?: string
  /** Extra, non-secret facts; listed only in the verbose view. */
  details?: Record<string, unknown>
}

/** What a check function may return: a result (or several), `true`/`undefined` = pass, `false` = fail. */
export type CheckReturn = CheckResult | readonly CheckResult[] | boolean | undefined | null | void

/** The context a check receives: its signal aborts at the check's timeout or at shutdown. */
export interface CheckContext {
  signal: AbortSignal
}

export type CheckFunction = (context: CheckContext) => CheckReturn | Promise<CheckReturn>

const MAX_OUTPUT = 500

export function truncate(text: string, max = MAX_OUTPUT): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text
}

/** Turns whatever a check returned into a non-empty list of valid results. Never throws. */
export function normalizeReturn(value: unknown): CheckResult[] {
  if (value === true || value === undefined || value === null) return [{ status: 'pass' }]
  if (value === false) return [{ status: 'fail', output: 'check returned false' }]
  if (Array.isArray(value)) {
    if (value.length === 0) return [{ status: 'pass' }]
    return value.map(normalizeOne)
  }
  return [normalizeOne(value)]
}

function normalizeOne(value: unknown): CheckResult {
  if (typeof value !== 'object' || value === null) {
    return { status: 'fail', output: `check returned ${typeof value} instead of a result` }
  }
  const v = value as Record<string, unknown>
  const status = v.status
  if (status !== 'pass' && status !== 'warn' && status !== 'fail') {
    return { status: 'fail', output: 'check returned an invalid status' }
  }
  const out: CheckResult = { status }
  if (typeof v.measurement === 'string' && v.measurement !== '') out.measurement = v.measurement
  if (typeof v.componentId === 'string') out.componentId = v.componentId
  if (typeof v.componentType === 'string') out.componentType = v.componentType
  if (v.observedValue !== undefined && isPlainValue(v.observedValue)) out.observedValue = v.observedValue
  if (typeof v.observedUnit === 'string') out.observedUnit = v.observedUnit
  if (typeof v.output === 'string' && v.output !== '') out.output = truncate(v.output)
  if (typeof v.details === 'object' && v.details !== null && !Array.isArray(v.details)) {
    // The verbose body serializes it: a cycle or a bigint must not break the probe.
    try {
      JSON.stringify(v.details)
      out.details = v.details as Record<string, unknown>
    } catch {
      out.details = { error: 'details are not serializable' }
    }
  }
  return out
}

function isPlainValue(v: unknown): boolean {
  return (
    v === null ||
    typeof v === 'string' ||
    typeof v === 'boolean' ||
    (typeof v === 'number' && Number.isFinite(v))
  )
}

/** The message of a thrown value, without its stack or its cause's. */
export function errorOutput(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code
    const prefix = typeof code === 'string' && !err.message.includes(code) ? `${code}: ` : ''
    return truncate(`${prefix}${err.message}`)
  }
  if (typeof err === 'string') return truncate(err)
  return 'check threw a non-error value'
}

/** fail > warn > pass. */
export function worst(a: CheckStatus, b: CheckStatus): CheckStatus {
  if (a === 'fail' || b === 'fail') return 'fail'
  if (a === 'warn' || b === 'warn') return 'warn'
  return 'pass'
}
