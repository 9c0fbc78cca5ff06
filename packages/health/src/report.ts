import type { BreakerState } from '@resilient/core'
import type { CheckRunner } from './checks.js'
import { LOAD_ENTRY } from './options.js'
import type { CheckStatus } from './result.js'

/** One entry of `checks["<name>:<measurement>"]` in the IETF health+json body. */
export interface CheckEntry {
  componentId: string
  componentType?: string
  status: CheckStatus
  /** When the check ran (ISO 8601). */
  time?: string
  observedValue?: unknown
  observedUnit?: string
  output?: string
  /** Verbose view only. */
  critical?: boolean
  /** Verbose view only. */
  details?: Record<string, unknown>
}

export interface BreakerEntry {
  name: string
  state: BreakerState
  successes: number
  failures: number
  timeouts: number
  rejects: number
}

/** The `application/health+json` body (draft-inadarei-api-health-check). */
export interface HealthReport {
  status: CheckStatus
  version?: string
  releaseId?: string
  serviceId?: string
  description?: string
  /** Why the status is not pass, when that is not a single check (shutting down, not checked yet). */
  output?: string
  checks: Record<string, CheckEntry[]>
  /** Verbose view only: every circuit breaker of this process (from @resilient/core). */
  breakers?: BreakerEntry[]
}

/** The `load` entry when load shedding is on. */
export interface LoadEntry {
  status: CheckStatus
  /** Verbose view: which threshold, by how much. */
  output?: string | undefined
  details?: Record<string, unknown>
}

export interface ReportInput {
  runners: readonly CheckRunner[]
  load?: LoadEntry | undefined
  shuttingDown: boolean
  readyBeforeFirstCheck: boolean
  service: { serviceId?: string; version?: string; releaseId?: string; description?: string }
  verbose: boolean
}

/** The readiness status: fail if a critical check fails (or has no result yet), warn if a non-critical one does. */
export function readinessStatus(input: Omit<ReportInput, 'verbose' | 'service'>): CheckStatus {
  if (input.shuttingDown) return 'fail'
  let status: CheckStatus = 'pass'
  for (const r of input.runners) {
    const s = r.outcome?.status
    if (s === undefined) {
      if (!input.readyBeforeFirstCheck) status = r.def.critical ? 'fail' : worstOf(status, 'warn')
    } else if (s === 'fail') status = r.def.critical ? 'fail' : worstOf(status, 'warn')
    else if (s === 'warn') status = worstOf(status, 'warn')
    if (status === 'fail') break
  }
  if (input.load && input.load.status !== 'pass') status = worstOf(status, input.load.status)
  return status
}

function worstOf(a: CheckStatus, b: CheckStatus): CheckStatus {
  return a === 'fail' || b === 'fail' ? 'fail' : a === 'warn' || b === 'warn' ? 'warn' : 'pass'
}

export function buildReport(input: ReportInput): HealthReport {
  const status = readinessStatus(input)
  const report: HealthReport = { status, ...input.service, checks: {} }
  if (input.shuttingDown) report.output = 'shutting down'
  let pending = 0
  for (const runner of input.runners) {
    const { name, critical, componentType } = runner.def
    const outcome = runner.outcome
    if (!outcome) {
      pending++
      const entry: CheckEntry = { componentId: name, status: input.readyBeforeFirstCheck ? 'pass' : 'fail' }
      if (componentType) entry.componentType = componentType
      entry.output = 'not checked yet'
      if (input.verbose) entry.critical = critical
      push(report.checks, name, entry)
      continue
    }
    for (const result of outcome.results) {
      const entry: CheckEntry = { componentId: result.componentId ?? name, status: result.status }
      const type = result.componentType ?? componentType
      if (type) entry.componentType = type
      entry.time = outcome.time
      let key = result.measurement ? `${name}:${result.measurement}` : name
      if (result.observedValue !== undefined) {
        entry.observedValue = result.observedValue
        if (result.observedUnit) entry.observedUnit = result.observedUnit
      } else if (!result.measurement) {
        key = `${name}:responseTime`
        entry.observedValue = Math.round(outcome.durationMs * 1000) / 1000
        entry.observedUnit = 'ms'
      }
      if (result.output) entry.output = result.output
      if (input.verbose) {
        entry.critical = critical
        if (result.details) entry.details = result.details
      }
      push(report.checks, key, entry)
    }
  }
  if (input.load) {
    const entry: CheckEntry = { componentId: 'process', componentType: 'system', status: input.load.status }
    if (input.load.output) entry.output = input.load.output
    if (input.verbose && input.load.details) entry.details = input.load.details
    push(report.checks, LOAD_ENTRY, entry)
  }
  if (!input.shuttingDown && pending > 0 && status !== 'pass') report.output = 'checks have not completed yet'
  return report
}

function push(checks: Record<string, CheckEntry[]>, key: string, entry: CheckEntry): void {
  const list = checks[key]
  if (list) list.push(entry)
  else checks[key] = [entry]
}

/** One entry of the public view: the check's status, nothing that names a member or an address. */
export interface PublicCheckEntry {
  status: CheckStatus
}

/** What the public probe routes answer: statuses only. The details live on the admin listener. */
export interface PublicReport {
  status: CheckStatus
  /** 'shutting down' or 'checks have not completed yet': never a check's own output. */
  output?: string
  /** One entry per check, keyed by the check's name (no measurement, no component). */
  checks: Record<string, PublicCheckEntry[]>
}

/** The readiness body for outsiders: the top-level status and each check's worst status. */
export function buildPublicReport(input: Omit<ReportInput, 'verbose' | 'service'>): PublicReport {
  const status = readinessStatus(input)
  const report: PublicReport = { status, checks: {} }
  if (input.shuttingDown) report.output = 'shutting down'
  let pending = false
  for (const runner of input.runners) {
    const s = runner.outcome?.status
    if (s === undefined) pending = true
    report.checks[runner.def.name] = [{ status: s ?? (input.readyBeforeFirstCheck ? 'pass' : 'fail') }]
  }
  if (input.load) report.checks[LOAD_ENTRY] = [{ status: input.load.status }]
  if (!input.shuttingDown && pending && status !== 'pass') report.output = 'checks have not completed yet'
  return report
}
