import {
  checkBoolean,
  checkFunction,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkOneOf,
  checkString,
  configError,
  optional,
} from '@resilient/core'
import { digestToken, type ResolvedVerbose, type VerboseMode } from './access.js'
import type { ClosableServer } from './drain.js'
import type { CheckFunction } from './result.js'
import { DEFAULT_SHED_OPTIONS, type ResolvedShedOptions, type ShedOptions } from './shed.js'

export interface CheckDefinition {
  /** The check; called without `this`, so pass bound functions (`db.check` is). */
  check: CheckFunction
  /** A failing critical check makes readiness 503; a failing non-critical one only `warn`s. @default true */
  critical?: boolean
  /** Runs at most once per this many ms. @default HealthOptions.intervalMs */
  intervalMs?: number
  /** A run that takes longer fails (its signal aborts). @default HealthOptions.timeoutMs */
  timeoutMs?: number
  /** IETF componentType of its entries when the check gives none ('datastore', 'component'). */
  componentType?: string
}

export interface EventLoopOptions {
  /** Liveness fails while a loop delay above this was seen within `windowMs`. @default 2_000 */
  maxDelayMs?: number
  /** How often the loop delay is sampled (a timer-drift probe that never keeps the process alive). @default 100 */
  sampleMs?: number
  /** How long a seen stall keeps liveness failing. @default 5_000 */
  windowMs?: number
}

export interface SignalOptions {
  /** @default ['SIGTERM', 'SIGINT'] */
  signals?: NodeJS.Signals[]
  /** Call `process.exit` when the shutdown is done (0 if clean, 1 otherwise). A second signal exits at once. @default true */
  exit?: boolean
}

export interface HealthOptions {
  /** Dependency checks by name (no ':' in names); a function alone is a critical check. @default {} */
  checks?: Record<string, CheckDefinition | CheckFunction>
  /** Each check runs at most once per interval, in the background and when a probe finds it stale. @default 2_000 */
  intervalMs?: number
  /** A check run that takes longer fails. @default 500 */
  timeoutMs?: number
  /** After shutdown starts, readiness is 503 for this long before servers stop accepting. @default 5_000 */
  drainDelayMs?: number
  /** Budget, after the drain delay, for servers to finish in-flight requests and resources to close. @default 10_000 */
  shutdownTimeoutMs?: number
  /** Readiness answers 200 before the first check results exist (otherwise 503). @default false */
  readyBeforeFirstCheck?: boolean
  /** Event-loop delay watch for liveness; `false` turns it off. @default { maxDelayMs: 2_000, sampleMs: 100, windowMs: 5_000 } */
  eventLoop?: EventLoopOptions | false
  /**
   * Who gets the verbose view (details, criticality, component ids and outputs, breakers) on
   * the probe routes. `false`: nobody (public routes answer only statuses; use the admin
   * listener, `health.listenAdmin()`); `{ token }`: requests with `Authorization: Bearer <token>`
   * (a list rotates tokens; compared in constant time, kept only as a digest); `'query'`:
   * anyone sending `?verbose=1`, and `true`: always (both only for ports nobody outside reaches).
   * @default false
   */
  verbose?: VerboseMode
  /**
   * Load shedding: while the process is overloaded, application requests get 503 with
   * Retry-After (`health.shed(req, res)`, and the Express and Fastify adapters), and readiness
   * reports `warn` (or `fail`) under the entry `load`. `true` for the defaults. @default false
   */
  shed?: ShedOptions | boolean
  /** Servers to drain on shutdown (also `health.attachServer`). @default [] */
  servers?: ClosableServer[]
  /** Resources closed on shutdown, by name (also `health.onShutdown(name, fn)`). @default {} */
  resources?: Record<string, () => unknown>
  /** Install SIGTERM/SIGINT handlers that run `shutdown()` (also `health.handleSignals()`). @default false */
  handleSignals?: boolean | SignalOptions
  /** Start the background checks at once (else at the first probe or `refresh()`). @default true */
  autoStart?: boolean
  /** IETF top-level fields of the readiness body. */
  serviceId?: string
  version?: string
  releaseId?: string
  description?: string
}

export const DEFAULT_EVENT_LOOP_OPTIONS = {
  maxDelayMs: 2_000,
  sampleMs: 100,
  windowMs: 5_000,
} as const

export const DEFAULT_SIGNAL_OPTIONS = {
  signals: ['SIGTERM', 'SIGINT'] as readonly NodeJS.Signals[],
  exit: true,
} as const

export const DEFAULT_HEALTH_OPTIONS = {
  checks: {},
  intervalMs: 2_000,
  timeoutMs: 500,
  drainDelayMs: 5_000,
  shutdownTimeoutMs: 10_000,
  readyBeforeFirstCheck: false,
  eventLoop: DEFAULT_EVENT_LOOP_OPTIONS,
  verbose: false,
  shed: false,
  servers: [],
  resources: {},
  handleSignals: false,
  autoStart: true,
} as const

export interface ResolvedCheck {
  name: string
  check: CheckFunction
  critical: boolean
  intervalMs: number
  timeoutMs: number
  componentType: string | undefined
}

export interface ResolvedOptions {
  checks: ResolvedCheck[]
  intervalMs: number
  timeoutMs: number
  drainDelayMs: number
  shutdownTimeoutMs: number
  readyBeforeFirstCheck: boolean
  eventLoop: Required<EventLoopOptions> | false
  verbose: ResolvedVerbose
  shed: ResolvedShedOptions | false
  servers: ClosableServer[]
  resources: [string, () => unknown][]
  handleSignals: Required<SignalOptions> | false
  autoStart: boolean
  service: { serviceId?: string; version?: string; releaseId?: string; description?: string }
}

const HEALTH_KEYS = [
  'checks',
  'intervalMs',
  'timeoutMs',
  'drainDelayMs',
  'shutdownTimeoutMs',
  'readyBeforeFirstCheck',
  'eventLoop',
  'verbose',
  'shed',
  'servers',
  'resources',
  'handleSignals',
  'autoStart',
  'serviceId',
  'version',
  'releaseId',
  'description',
] as const
const CHECK_KEYS = ['check', 'critical', 'intervalMs', 'timeoutMs', 'componentType'] as const
const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR2'] as const

const ms =
  (field: string, min = 1) =>
  (v: unknown) =>
    checkNumber(v, field, { min, max: 2_147_483_647, integer: true })

export function resolveSignalOptions(value: unknown, field: string): Required<SignalOptions> {
  const o = value === true || value === undefined ? {} : checkObject(value, field)
  checkKnownKeys(o, field, ['signals', 'exit'])
  const signals = optional(o.signals, [...DEFAULT_SIGNAL_OPTIONS.signals], (v) => {
    if (!Array.isArray(v) || v.length === 0) throw configError(`${field}.signals`, 'a non-empty array', v)
    return v.map((s, i) => checkOneOf(s, `${field}.signals[${i}]`, SIGNALS))
  })
  const exit = optional(o.exit, DEFAULT_SIGNAL_OPTIONS.exit, (v) => checkBoolean(v, `${field}.exit`))
  return { signals, exit }
}

export function resolveOptions(options: unknown): ResolvedOptions {
  const o = options === undefined ? {} : checkObject(options, 'health')
  checkKnownKeys(o, 'health', HEALTH_KEYS)
  const d = DEFAULT_HEALTH_OPTIONS
  const intervalMs = optional(o.intervalMs, d.intervalMs, ms('health.intervalMs', 10))
  const timeoutMs = optional(o.timeoutMs, d.timeoutMs, ms('health.timeoutMs'))

  const checks: ResolvedCheck[] = []
  const rawChecks = optional(o.checks, {}, (v) => checkObject(v, 'health.checks'))
  for (const [name, raw] of Object.entries(rawChecks)) {
    const field = `health.checks.${name}`
    if (name === '' || name.includes(':')) throw configError(field, 'a check name without ":"')
    if (typeof raw === 'function') {
      checks.push({
        name,
        check: raw as CheckFunction,
        critical: true,
        intervalMs,
        timeoutMs,
        componentType: undefined,
      })
      continue
    }
    const c = checkObject(raw, field)
    checkKnownKeys(c, field, CHECK_KEYS)
    checks.push({
      name,
      check: checkFunction<CheckFunction>(c.check, `${field}.check`),
      critical: optional(c.critical, true, (v) => checkBoolean(v, `${field}.critical`)),
      intervalMs: optional(c.intervalMs, intervalMs, ms(`${field}.intervalMs`, 10)),
      timeoutMs: optional(c.timeoutMs, timeoutMs, ms(`${field}.timeoutMs`)),
      componentType: optional(c.componentType, undefined, (v) =>
        checkString(v, `${field}.componentType`, { nonEmpty: true }),
      ),
    })
  }

  let eventLoop: Required<EventLoopOptions> | false = { ...DEFAULT_EVENT_LOOP_OPTIONS }
  if (o.eventLoop === false) eventLoop = false
  else if (o.eventLoop !== undefined) {
    const e = checkObject(o.eventLoop, 'health.eventLoop')
    checkKnownKeys(e, 'health.eventLoop', ['maxDelayMs', 'sampleMs', 'windowMs'])
    const dl = DEFAULT_EVENT_LOOP_OPTIONS
    eventLoop = {
      maxDelayMs: optional(e.maxDelayMs, dl.maxDelayMs, ms('health.eventLoop.maxDelayMs')),
      sampleMs: optional(e.sampleMs, dl.sampleMs, ms('health.eventLoop.sampleMs', 10)),
      windowMs: optional(e.windowMs, dl.windowMs, ms('health.eventLoop.windowMs')),
    }
  }

  const servers = optional(o.servers, [] as ClosableServer[], (v) => {
    if (!Array.isArray(v)) throw configError('health.servers', 'an array of servers', v)
    v.forEach((s, i) => {
      checkServer(s, `health.servers[${i}]`)
    })
    return [...v] as ClosableServer[]
  })
  const resources = Object.entries(optional(o.resources, {}, (v) => checkObject(v, 'health.resources'))).map(
    ([name, fn]) =>
      [name, checkFunction<() => unknown>(fn, `health.resources.${name}`)] as [string, () => unknown],
  )

  const str = (key: 'serviceId' | 'version' | 'releaseId' | 'description') =>
    optional(o[key], undefined, (v) => checkString(v, `health.${key}`))
  const service: ResolvedOptions['service'] = {}
  for (const key of ['serviceId', 'version', 'releaseId', 'description'] as const) {
    const v = str(key)
    if (v !== undefined) service[key] = v
  }

  return {
    checks,
    intervalMs,
    timeoutMs,
    drainDelayMs: optional(o.drainDelayMs, d.drainDelayMs, ms('health.drainDelayMs', 0)),
    shutdownTimeoutMs: optional(o.shutdownTimeoutMs, d.shutdownTimeoutMs, ms('health.shutdownTimeoutMs')),
    readyBeforeFirstCheck: optional(o.readyBeforeFirstCheck, d.readyBeforeFirstCheck, (v) =>
      checkBoolean(v, 'health.readyBeforeFirstCheck'),
    ),
    eventLoop,
    verbose: optional(o.verbose, d.verbose as ResolvedVerbose, resolveVerbose),
    shed: resolveShed(o.shed, checks),
    servers,
    resources,
    handleSignals:
      o.handleSignals === undefined || o.handleSignals === false
        ? false
        : resolveSignalOptions(o.handleSignals, 'health.handleSignals'),
    autoStart: optional(o.autoStart, d.autoStart, (v) => checkBoolean(v, 'health.autoStart')),
    service,
  }
}

export function checkServer(value: unknown, field: string): ClosableServer {
  if (
    typeof value !== 'object' ||
    value === null ||
    typeof (value as { close?: unknown }).close !== 'function'
  ) {
    throw configError(field, 'a server (an object with close())', value)
  }
  return value as ClosableServer
}

/** Shortest token accepted for the verbose view (a guessable token is no protection). */
export const MIN_TOKEN_LENGTH = 16

export function resolveTokens(value: unknown, field: string): Buffer[] {
  const list = Array.isArray(value) ? value : [value]
  if (list.length === 0) throw configError(field, 'a token or a non-empty list of tokens', value)
  return list.map((t, i) => {
    const f = Array.isArray(value) ? `${field}[${i}]` : field
    if (typeof t !== 'string' || t.length < MIN_TOKEN_LENGTH || t.length > 1024)
      throw configError(f, `a string of ${MIN_TOKEN_LENGTH} to 1024 characters`, t)
    return digestToken(t)
  })
}

function resolveVerbose(v: unknown): ResolvedVerbose {
  if (v === 'query' || v === true || v === false) return v
  if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
    const o = checkObject(v, 'health.verbose')
    checkKnownKeys(o, 'health.verbose', ['token'])
    return { digests: resolveTokens(o.token, 'health.verbose.token') }
  }
  throw configError('health.verbose', "false, true, 'query' or { token }", v)
}

/** The name of the readiness entry that reports load shedding; no check may take it. */
export const LOAD_ENTRY = 'load'

const SHED_KEYS = [
  'maxEventLoopDelayMs',
  'maxEventLoopUtilization',
  'maxHeapUsedBytes',
  'maxRssBytes',
  'sampleIntervalMs',
  'retryAfterSeconds',
  'readiness',
] as const

function resolveShed(value: unknown, checks: ResolvedCheck[]): ResolvedShedOptions | false {
  if (value === undefined || value === false) return false
  const o = value === true ? {} : checkObject(value, 'health.shed')
  checkKnownKeys(o, 'health.shed', SHED_KEYS)
  if (checks.some((c) => c.name === LOAD_ENTRY))
    throw configError(
      `health.checks.${LOAD_ENTRY}`,
      `a check name other than '${LOAD_ENTRY}' while shed is on`,
    )
  const d = DEFAULT_SHED_OPTIONS
  const limit = (
    key: (typeof SHED_KEYS)[number],
    fallback: number | false,
    rule: { min: number; max: number; integer?: boolean },
  ) => optional(o[key], fallback, (v) => (v === false ? false : checkNumber(v, `health.shed.${key}`, rule)))
  const resolved: ResolvedShedOptions = {
    maxEventLoopDelayMs: limit('maxEventLoopDelayMs', d.maxEventLoopDelayMs, { min: 1, max: 600_000 }),
    maxEventLoopUtilization: limit('maxEventLoopUtilization', d.maxEventLoopUtilization, {
      min: 0.01,
      max: 1,
    }),
    maxHeapUsedBytes: limit('maxHeapUsedBytes', d.maxHeapUsedBytes, {
      min: 1,
      max: Number.MAX_SAFE_INTEGER,
      integer: true,
    }),
    maxRssBytes: limit('maxRssBytes', d.maxRssBytes, { min: 1, max: Number.MAX_SAFE_INTEGER, integer: true }),
    sampleIntervalMs: optional(
      o.sampleIntervalMs,
      d.sampleIntervalMs as number,
      ms('health.shed.sampleIntervalMs', 5),
    ),
    retryAfterSeconds: optional(o.retryAfterSeconds, d.retryAfterSeconds as number, (v) =>
      checkNumber(v, 'health.shed.retryAfterSeconds', { min: 0, max: 86_400, integer: true }),
    ),
    readiness: optional(o.readiness, d.readiness as 'warn' | 'fail', (v) =>
      checkOneOf(v, 'health.shed.readiness', ['warn', 'fail'] as const),
    ),
  }
  if (
    resolved.maxEventLoopDelayMs === false &&
    resolved.maxEventLoopUtilization === false &&
    resolved.maxHeapUsedBytes === false &&
    resolved.maxRssBytes === false
  )
    throw configError('health.shed', 'at least one threshold (or shed: false)')
  return resolved
}
