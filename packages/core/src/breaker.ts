import CircuitBreaker from 'opossum'
import { channels, publish } from './channels.js'
import { ResilientError } from './errors.js'
import { type Disposable, Emitter } from './events.js'
import { metrics } from './metrics.js'
import { checkFunction, checkKnownKeys, checkNumber, checkObject, checkString, optional } from './options.js'
import { abortError, withTimeout } from './timeout.js'

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
  /**
   * Opens the breaker after this many failures in a row, whatever the window holds; 0 for
   * never. A percentage over a window reacts slowly after a busy healthy period (thousands of
   * successes must roll out first); a dependency that hangs should be cut off after a few
   * timeouts. @default 0
   */
  consecutiveFailures?: number
}

export const DEFAULT_BREAKER_OPTIONS = {
  name: 'breaker',
  errorThresholdPercentage: 50,
  volumeThreshold: 10,
  resetTimeoutMs: 5_000,
  rollingWindowMs: 10_000,
  rollingBuckets: 10,
  timeoutMs: 0,
  consecutiveFailures: 0,
} as const

export interface BreakerStateChange {
  name: string
  from: BreakerState
  to: BreakerState
}

export interface BreakerStats {
  name: string
  state: BreakerState
  /** Calls that succeeded (or failed with an error `isFailure` rejects), since creation. */
  successes: number
  /** Calls that failed and counted as failures, since creation. */
  failures: number
  /** Of the failures, those that hit `timeoutMs`. */
  timeouts: number
  /** Calls rejected with E_CIRCUIT_OPEN without running, since creation. */
  rejects: number
  /** Failed calls in the rolling window, in percent; -1 while the window holds fewer calls than `volumeThreshold`. */
  failureRate: number
}

export interface Breaker {
  readonly name: string
  readonly state: BreakerState
  /**
   * Runs `fn` through the breaker. `fn` gets a signal of its own that aborts on this
   * call's timeout or on the caller's abort (undefined when there is neither). While open,
   * and while half-open with its one trial call in flight, calls are rejected at once with
   * E_CIRCUIT_OPEN (no stack captured).
   */
  execute<T>(
    fn: (signal: AbortSignal | undefined) => Promise<T>,
    options?: { signal?: AbortSignal | undefined },
  ): Promise<T>
  onStateChange(listener: (change: BreakerStateChange) => void): Disposable
  stats(): BreakerStats
  /** Forces the breaker open (until the reset timeout) or closed. */
  open(): void
  close(): void
  /** Stops its timers and leaves `listBreakers()`; later calls are rejected with E_CIRCUIT_OPEN. */
  shutdown(): void
}

type Action = (
  fn: (signal: AbortSignal | undefined) => Promise<unknown>,
  signal: AbortSignal | undefined,
) => Promise<unknown>

/** Every breaker created in this process and not shut down, for health and metrics. */
const registry = new Set<WeakRef<Breaker>>()

/** Every live breaker of this process (not shut down, not garbage-collected). */
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
  checkObject(options, 'breaker')
  checkKnownKeys(options as Record<string, unknown>, 'breaker', KNOWN_KEYS)
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
    checkNumber(v, 'breaker.resetTimeoutMs', { min: 1, max: MAX_TIMER_MS }),
  )
  const rollingWindowMs = optional(options.rollingWindowMs, d.rollingWindowMs, (v) =>
    checkNumber(v, 'breaker.rollingWindowMs', { min: 10, max: MAX_TIMER_MS, integer: true }),
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
    checkNumber(v, 'breaker.timeoutMs', { min: 0, max: MAX_TIMER_MS }),
  )
  const isFailure = optional(
    options.isFailure,
    () => true,
    (v) => checkFunction<(err: unknown) => boolean>(v, 'breaker.isFailure'),
  )

  const consecutiveFailures = optional(options.consecutiveFailures, d.consecutiveFailures, (v) =>
    checkNumber(v, 'breaker.consecutiveFailures', { min: 0, integer: true }),
  )

  const safeIsFailure = (err: unknown): boolean => {
    try {
      return isFailure(err) !== false
    } catch {
      return true // a throwing filter must not turn a failure into a success
    }
  }
  const classify = (err: unknown, signal: AbortSignal | undefined): 'failed' | 'ignored' | 'aborted' => {
    if (signal?.aborted && !ResilientError.is(err, 'E_TIMEOUT')) return 'aborted'
    return safeIsFailure(err) ? 'failed' : 'ignored'
  }
  let pending: 'ignored' | 'aborted' | undefined

  const operation = `breaker ${name} call`
  const timeoutOptions: { signal?: AbortSignal; operation: string } = { operation }
  const action: Action =
    timeoutMs > 0
      ? (fn, signal) => withTimeout(fn, timeoutMs, signal ? { signal, operation } : timeoutOptions)
      : (fn, signal) => fn(signal)

  const cb = new CircuitBreaker<Parameters<Action>, unknown>(action, {
    name,
    timeout: false, // timeouts are ours: per call, with their own signal (opossum's controller is shared)
    errorThresholdPercentage,
    volumeThreshold,
    resetTimeout: resetTimeoutMs,
    rollingCountTimeout: rollingWindowMs,
    rollingCountBuckets: rollingBuckets,
    rollingPercentilesEnabled: false,
    enableSnapshots: false,
    // opossum calls this (err, fn, signal) right before it emits 'success' (true: not a
    // failure) or 'failure' (false), synchronously; `pending` carries our verdict to that event.
    errorFilter: ((err: unknown, _fn: unknown, signal?: AbortSignal) => {
      const kind = classify(err, signal)
      if (kind === 'failed') return false
      // A call the caller aborted says nothing about the dependency: it does not count,
      // except as the half-open trial, where it re-opens (we learned nothing, so we wait
      // another resetTimeoutMs rather than close blind).
      pending = kind
      return !(kind === 'aborted' && cb.halfOpen)
    }) as (err: unknown) => boolean,
  })
  // opossum's rolling window (an array of count buckets it rotates in place); undefined if a
  // future opossum changes shape, and then every call goes through `cb.fire()`.
  const window = statusWindow(cb)
  dropLatencySamples(cb, window)

  const changes = new Emitter<BreakerStateChange>()
  let state: BreakerState = 'closed'
  let successes = 0
  let failures = 0
  let timeouts = 0
  let rejects = 0
  let isShutdown = false
  let ref: WeakRef<Breaker> | undefined

  const move = (to: BreakerState) => {
    if (to === state) return
    const change: BreakerStateChange = Object.freeze({ name, from: state, to })
    state = to
    publish(channels.breakerState, change)
    changes.emit(change)
  }
  // The half-open trial goes through `cb.fire()`: it is counted on opossum's events.
  // Failures in a row (consecutiveFailures); any success or state change starts it again.
  let streak = 0
  const countStreak = () => {
    streak++
    if (consecutiveFailures > 0 && streak >= consecutiveFailures && cb.closed) cb.open()
  }
  cb.on('success', () => {
    const kind = pending
    pending = undefined
    if (kind !== 'aborted') {
      successes++ // an error isFailure rejects counts as a success, as in opossum
      streak = 0
    }
  })
  cb.on('failure', (err: unknown) => {
    const kind = pending
    pending = undefined
    if (kind === 'aborted') return // the half-open trial its caller aborted: re-opens, is not counted
    failures++
    if (ResilientError.is(err, 'E_TIMEOUT')) timeouts++
    countStreak()
  })
  cb.on('open', () => {
    streak = 0
    move('open')
  })
  cb.on('halfOpen', () => move('half-open'))
  cb.on('close', () => {
    streak = 0
    move('closed')
  })

  // ---- the closed-state path: opossum stays the state engine, but is fed counts directly.
  // `cb.fire()` costs a 'fire' emit, a semaphore promise, a new Promise, two Date.now() and a
  // 'success' emit with two listeners per call; here a call costs one `.then` on fn's own
  // promise and three increments. The outcome is applied exactly as opossum's fire() would:
  // the same window buckets, the same open decision (its `fail()`), the same close on a
  // success seen while half-open.

  /** opossum's `fail()` decision, after a failure was counted in the window. */
  const afterFailure = () => {
    countStreak()
    if (cb.opened) return // the streak just opened it
    if (cb.warmUp) return
    const s = cb.stats
    if (s.fires < volumeThreshold && !cb.halfOpen) return
    if ((s.failures / s.fires) * 100 > errorThresholdPercentage || cb.halfOpen) cb.open()
  }
  const onSuccess = (): void => {
    if (isShutdown) return
    successes++
    streak = 0
    window![0]!.successes++
    if (cb.halfOpen) cb.close() // opossum: any success seen while half-open closes
  }
  /** Counts a failed call; returns its kind for metrics. */
  const onFailure = (err: unknown, signal: AbortSignal | undefined): 'failed' | 'ignored' | 'aborted' => {
    const kind = classify(err, signal)
    if (isShutdown) return kind
    const bucket = window![0]!
    if (kind === 'failed' || (kind === 'aborted' && cb.halfOpen)) {
      bucket.failures++
      if (kind === 'failed') {
        failures++
        if (ResilientError.is(err, 'E_TIMEOUT')) timeouts++
      }
      afterFailure()
    } else {
      bucket.successes++ // opossum counts a filtered error as a success
      if (kind === 'ignored') {
        successes++
        streak = 0
        if (cb.halfOpen) cb.close()
      }
    }
    return kind
  }
  const onFailureNoSignal = (err: unknown): void => {
    onFailure(err, undefined)
  }

  const rejectDetails = Object.freeze({ breaker: name })
  const rejected = () => {
    rejects++
    publish(channels.breakerReject, { name })
    metrics.recordBreakerNotPermitted(name)
    return Promise.reject(
      new ResilientError('E_CIRCUIT_OPEN', `circuit ${name} is open`, {
        noStack: true,
        details: rejectDetails,
      }),
    )
  }

  /** Through opossum's own fire(): the half-open trial (or every call, if its window was not found). */
  const fire = <T>(fn: (signal: AbortSignal | undefined) => Promise<T>, signal: AbortSignal | undefined) => {
    const p = cb.fire(fn as Parameters<Action>[0], signal) as Promise<T>
    if (!metrics.active) return p
    const t0 = performance.now()
    return p.then(
      (value) => {
        metrics.recordBreakerCall(name, 'successful', (performance.now() - t0) / 1000)
        return value
      },
      (err: unknown) => {
        const kind = classify(err, signal)
        if (kind !== 'aborted') metrics.recordBreakerCall(name, kind, (performance.now() - t0) / 1000)
        throw err
      },
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
    ): Promise<T> {
      // Fail fast without opossum's error (it captures a stack on every rejection).
      // Half-open: opossum lets exactly one call through (pendingClose), we reject the rest.
      if (isShutdown || cb.opened || (cb.halfOpen && !cb.pendingClose)) return rejected() as Promise<T>
      // A programming error is not a failure of the dependency: it never reaches the window.
      if (typeof fn !== 'function') return Promise.reject(new TypeError('breaker.execute needs a function'))
      const signal = callOptions?.signal
      if (signal?.aborted) return Promise.reject(abortError(signal, operation))
      if (window === undefined || !cb.closed) return fire(fn, signal)

      window[0]!.fires++
      let p: Promise<T>
      try {
        p =
          timeoutMs > 0
            ? withTimeout(fn, timeoutMs, signal ? { signal, operation } : timeoutOptions)
            : fn(signal)
        if (!(p instanceof Promise)) p = Promise.resolve(p)
      } catch (err) {
        p = Promise.reject(err) // a synchronous throw is a failed call, as in opossum
      }
      // The caller gets fn's own promise: our reaction was registered first, so the outcome
      // is counted (and the breaker maybe opened) before the caller's code resumes.
      if (metrics.active) {
        const t0 = performance.now()
        p.then(
          () => {
            onSuccess()
            metrics.recordBreakerCall(name, 'successful', (performance.now() - t0) / 1000)
          },
          (err: unknown) => {
            const kind = onFailure(err, signal)
            if (kind !== 'aborted') metrics.recordBreakerCall(name, kind, (performance.now() - t0) / 1000)
          },
        )
      } else if (signal === undefined) p.then(onSuccess, onFailureNoSignal)
      else p.then(onSuccess, (err: unknown) => onFailure(err, signal))
      return p
    },
    onStateChange: (listener) => changes.on(listener),
    stats: () => ({ name, state, successes, failures, timeouts, rejects, failureRate: failureRate() }),
    open: () => {
      if (!isShutdown) cb.open()
    },
    close: () => {
      if (!isShutdown) cb.close()
    },
    shutdown: () => {
      if (isShutdown) return
      isShutdown = true
      cb.shutdown()
      changes.clear()
      if (ref) registry.delete(ref)
    },
  }

  const failureRate = (): number => {
    if (isShutdown) return -1
    const s = cb.stats
    const calls = s.successes + s.failures
    if (calls < volumeThreshold || calls === 0) return -1
    return (s.failures / calls) * 100
  }

  ref = new WeakRef(breaker)
  registry.add(ref)
  return breaker
}

/** setTimeout's largest delay; longer ones fire at once. */
const MAX_TIMER_MS = 2_147_483_647

const KNOWN_KEYS = [
  'name',
  'errorThresholdPercentage',
  'volumeThreshold',
  'resetTimeoutMs',
  'rollingWindowMs',
  'rollingBuckets',
  'timeoutMs',
  'isFailure',
  'consecutiveFailures',
] as const

/** The counts of one bucket of opossum's window. */
interface Bucket {
  fires: number
  successes: number
  failures: number
}

/**
 * opossum 9's rolling window: the array of buckets its Status rotates in place (`pop` +
 * `unshift`), `[0]` being the current bucket. Guarded: if a future opossum changes shape,
 * undefined (and the breaker goes through `fire()` for every call).
 */
function statusWindow(cb: CircuitBreaker): Bucket[] | undefined {
  const status = cb.status as unknown as Record<symbol, unknown>
  const sym = Object.getOwnPropertySymbols(status).find((s) => s.description === 'window')
  const window = sym === undefined ? undefined : status[sym]
  if (!Array.isArray(window) || window.length === 0) return undefined
  const b = window[0] as Record<string, unknown>
  if (typeof b.fires !== 'number' || typeof b.successes !== 'number' || typeof b.failures !== 'number') {
    return undefined
  }
  return window as Bucket[]
}

/**
 * opossum 9 pushes every call's latency into its window even with rolling percentiles off
 * (status.js `increment`): at 100k calls/s that is a million-entry array per window. The
 * half-open trial still goes through it: we count without the samples.
 */
function dropLatencySamples(cb: CircuitBreaker, window: Bucket[] | undefined): void {
  const status = cb.status as unknown as { increment?: (property: string, latency?: number) => void }
  if (typeof status.increment !== 'function' || window === undefined) return
  status.increment = (property: string) => {
    const bucket = window[0] as unknown as Record<string, number> | undefined
    if (bucket && typeof bucket[property] === 'number') bucket[property]++
  }
}
