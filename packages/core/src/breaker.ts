import CircuitBreaker from 'opossum'
import { channels, publish } from './channels.js'
import { ResilientError } from './errors.js'
import { type Disposable, Emitter } from './events.js'
import { checkFunction, checkNumber, checkString, optional } from './options.js'
import { withTimeout } from './timeout.js'

export type BreakerState = 'closed' | 'open' | 'half-open'

export interface BreakerOptions {
  /** Names the breaker in errors, events, channels and metrics. @default 'breaker' */
  name?: string
  /** Percentage of failed calls in the window that opens the breaker. @default 50 */
  errorThresholdPercentage?: number
  /** Calls in the window before the breaker may open at all. @default 10 */
  volumeThreshold?: number
  /** How long the breaker stays open before one trial call is let through, in ms. @default 5_000 */
  resetTimeoutMs?: number
  /** Length of the rolling window of counts, in ms. @default 10_000 */
  rollingWindowMs?: number
  /** Buckets of the rolling window. @default 10 */
  rollingBuckets?: number
  /** A call that takes longer fails with E_TIMEOUT (its signal aborts) and counts as a failure; 0 for none. @default 0 */
  timeoutMs?: number
  /** Errors for which this returns false do not count as failures (a 404, a constraint violation). @default () => true */
  isFailure?: (err: unknown) => boolean
}

export const DEFAULT_BREAKER_OPTIONS = {
  name: 'breaker',
  errorThresholdPercentage: 50,
  volumeThreshold: 10,
  resetTimeoutMs: 5_000,
  rollingWindowMs: 10_000,
  rollingBuckets: 10,
  timeoutMs: 0,
} as const

export interface BreakerStateChange {
  name: string
  from: BreakerState
  to: BreakerState
}

export interface BreakerStats {
  name: string
  state: BreakerState
  successes: number
  failures: number
  timeouts: number
  rejects: number
}

export interface Breaker {
  readonly name: string
  readonly state: BreakerState
  /** Runs `fn` through the breaker; `fn` gets a signal of its own that aborts on timeout or caller abort. */
  execute<T>(
    fn: (signal: AbortSignal | undefined) => Promise<T>,
    options?: { signal?: AbortSignal | undefined },
  ): Promise<T>
  onStateChange(listener: (change: BreakerStateChange) => void): Disposable
  stats(): BreakerStats
  /** Forces the breaker open (until the reset timeout) or closed. */
  open(): void
  close(): void
  /** Stops its timers; later calls are rejected with E_CIRCUIT_OPEN. */
  shutdown(): void
}

type Action = (
  fn: (signal: AbortSignal | undefined) => Promise<unknown>,
  signal: AbortSignal | undefined,
) => Promise<unknown>

/** Every breaker created in this process, for health's verbose view. */
const registry = new Set<WeakRef<Breaker>>()

export function listBreakers(): Breaker[] {
  const out: Breaker[] = []
  for (const ref of registry) {
    const b = ref.deref()
    if (b) out.push(b)
    else registry.delete(ref)
  }
  return out
}

export function createBreaker(options: BreakerOptions = {}): Breaker {
  const d = DEFAULT_BREAKER_OPTIONS
  const name = optional(options.name, d.name, (v) => checkString(v, 'breaker.name', { nonEmpty: true }))
  const errorThresholdPercentage = optional(
    options.errorThresholdPercentage,
    d.errorThresholdPercentage,
    (v) => checkNumber(v, 'breaker.errorThresholdPercentage', { min: 1, max: 100 }),
  )
  const volumeThreshold = optional(options.volumeThreshold, d.volumeThreshold, (v) =>
    checkNumber(v, 'breaker.volumeThreshold', { min: 0, integer: true }),
  )
  const resetTimeoutMs = optional(options.resetTimeoutMs, d.resetTimeoutMs, (v) =>
    checkNumber(v, 'breaker.resetTimeoutMs', { min: 1 }),
  )
  const rollingWindowMs = optional(options.rollingWindowMs, d.rollingWindowMs, (v) =>
    checkNumber(v, 'breaker.rollingWindowMs', { min: 10, integer: true }),
  )
  const rollingBuckets = optional(options.rollingBuckets, d.rollingBuckets, (v) =>
    checkNumber(v, 'breaker.rollingBuckets', { min: 1, integer: true }),
  )
  if (rollingWindowMs % rollingBuckets !== 0) {
    throw new ResilientError(
      'E_CONFIG',
      'invalid option breaker.rollingBuckets: must divide breaker.rollingWindowMs evenly',
      { details: { field: 'breaker.rollingBuckets' } },
    )
  }
  const timeoutMs = optional(options.timeoutMs, d.timeoutMs, (v) =>
    checkNumber(v, 'breaker.timeoutMs', { min: 0 }),
  )
  const isFailure = optional(
    options.isFailure,
    () => true,
    (v) => checkFunction<(err: unknown) => boolean>(v, 'breaker.isFailure'),
  )

  const action: Action =
    timeoutMs > 0
      ? (fn, signal) => withTimeout(fn, timeoutMs, { signal, operation: `breaker ${name} call` })
      : (fn, signal) => fn(signal)

  const cb = new CircuitBreaker<Parameters<Action>, unknown>(action, {
    name,
    timeout: false, // timeouts are ours: per call, with their own signal
    errorThresholdPercentage,
    volumeThreshold,
    resetTimeout: resetTimeoutMs,
    rollingCountTimeout: rollingWindowMs,
    rollingCountBuckets: rollingBuckets,
    rollingPercentilesEnabled: false,
    enableSnapshots: false,
    errorFilter: (err: unknown) => !isFailure(err),
  })

  const changes = new Emitter<BreakerStateChange>()
  let state: BreakerState = 'closed'
  let successes = 0
  let failures = 0
  let timeouts = 0
  let rejects = 0
  let isShutdown = false

  const move = (to: BreakerState) => {
    if (to === state) return
    const change = { name, from: state, to }
    state = to
    publish(channels.breakerState, change)
    changes.emit(change)
  }
  cb.on('open', () => move('open'))
  cb.on('halfOpen', () => move('half-open'))
  cb.on('close', () => move('closed'))

  const rejected = () => {
    rejects++
    return Promise.reject(
      new ResilientError('E_CIRCUIT_OPEN', `circuit ${name} is open`, {
        noStack: true,
        details: { breaker: name },
      }),
    )
  }

  const breaker: Breaker = {
    name,
    get state() {
      return state
    },
    execute<T>(
      fn: (signal: AbortSignal | undefined) => Promise<T>,
      callOptions?: { signal?: AbortSignal | undefined },
    ) {
      // Fail fast without opossum's error (it captures a stack on every rejection).
      if (isShutdown || cb.opened || (cb.halfOpen && !cb.pendingClose)) return rejected() as Promise<T>
      return (cb.fire(fn as Parameters<Action>[0], callOptions?.signal) as Promise<T>).then(
        (value) => {
          successes++
          return value
        },
        (err: unknown) => {
          if (ResilientError.is(err, 'E_TIMEOUT')) timeouts++
          if (isFailure(err)) failures++
          throw err
        },
      )
    },
    onStateChange: (listener) => changes.on(listener),
    stats: () => ({ name, state, successes, failures, timeouts, rejects }),
    open: () => cb.open(),
    close: () => cb.close(),
    shutdown: () => {
      isShutdown = true
      cb.shutdown()
    },
  }
  registry.add(new WeakRef(breaker))
  return breaker
}
