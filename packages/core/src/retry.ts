import { channels, publish } from './channels.js'
import { type Disposable, Emitter } from './events.js'
import { metrics } from './metrics.js'
import {
  checkFunction,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkString,
  configError,
  optional,
} from './options.js'
import { abortError, sleep } from './timeout.js'

export interface RetryOptions {
  /** Names the policy in channels and metrics. @default 'retry' */
  name?: string
  /** Attempts in all, the first included. @default 3 */
  maxAttempts?: number
  /** The smallest delay between attempts, in ms. @default 50 */
  baseDelayMs?: number
  /** The largest delay between attempts, in ms. @default 2_000 */
  maxDelayMs?: number
  /** No new attempt starts after this many ms from the first; `Infinity` for none. @default Infinity */
  deadlineMs?: number
  /** Whether `err` (from attempt number `attempt`, 1-based) may be retried. @default () => true */
  shouldRetry?: (err: unknown, attempt: number) => boolean
  /** Called before each wait (like `policy.onRetry(listener)`); a throw is reported, not propagated. */
  onRetry?: (event: RetryEvent) => void
  /** Aborts the waiting and is passed to every attempt. */
  signal?: AbortSignal | undefined
  /** Source of randomness in [0, 1); for tests. @default Math.random */
  random?: () => number
}

export interface RetryEvent {
  /** The policy's name. */
  name: string
  /** The attempt that just failed (1-based). */
  attempt: number
  /** How long the policy waits before attempt `attempt + 1`. */
  delayMs: number
  error: unknown
}

export const DEFAULT_RETRY_OPTIONS = {
  name: 'retry',
  maxAttempts: 3,
  baseDelayMs: 50,
  maxDelayMs: 2_000,
  deadlineMs: Number.POSITIVE_INFINITY,
} as const

export interface RetryContext {
  attempt: number
  signal: AbortSignal | undefined
}

/**
 * "Decorrelated jitter" (AWS architecture blog): each delay is random between `base` and
 * three times the previous delay, capped at `max`. Spreads retries of many clients apart.
 */
export function decorrelatedJitter(
  base: number,
  max: number,
  random: () => number = Math.random,
): (previous: number) => number {
  return (previous) => {
    const upper = Math.max(base, previous * 3)
    return Math.min(max, base + random() * (upper - base))
  }
}

export interface RetryPolicy {
  readonly name: string
  /**
   * Runs `fn` until it resolves, `shouldRetry` says no, `maxAttempts` are used, the next
   * wait would pass `deadlineMs`, or the signal aborts (then E_ABORTED, or the signal's
   * ResilientError reason). The last error of `fn` is rethrown as is.
   */
  execute<T>(
    fn: (ctx: RetryContext) => Promise<T>,
    options?: { signal?: AbortSignal | undefined },
  ): Promise<T>
  /** Called before each wait, after `options.onRetry`. */
  onRetry(listener: (event: RetryEvent) => void): Disposable
}

const KNOWN_KEYS = [
  'name',
  'maxAttempts',
  'baseDelayMs',
  'maxDelayMs',
  'deadlineMs',
  'shouldRetry',
  'onRetry',
  'signal',
  'random',
] as const

/** Checks options once; the returned policy runs any number of calls. */
export function createRetry(options: RetryOptions = {}): RetryPolicy {
  checkObject(options, 'retry')
  checkKnownKeys(options as Record<string, unknown>, 'retry', KNOWN_KEYS)
  const name = optional(options.name, DEFAULT_RETRY_OPTIONS.name, (v) =>
    checkString(v, 'retry.name', { nonEmpty: true }),
  )
  const maxAttempts = optional(options.maxAttempts, DEFAULT_RETRY_OPTIONS.maxAttempts, (v) =>
    checkNumber(v, 'retry.maxAttempts', { min: 1, integer: true }),
  )
  const baseDelayMs = optional(options.baseDelayMs, DEFAULT_RETRY_OPTIONS.baseDelayMs, (v) =>
    checkNumber(v, 'retry.baseDelayMs', { min: 0, max: MAX_TIMER_MS }),
  )
  const maxDelayMs = optional(
    options.maxDelayMs,
    Math.max(DEFAULT_RETRY_OPTIONS.maxDelayMs, baseDelayMs),
    (v) => checkNumber(v, 'retry.maxDelayMs', { min: baseDelayMs, max: MAX_TIMER_MS }),
  )
  const deadlineMs = optional(options.deadlineMs, DEFAULT_RETRY_OPTIONS.deadlineMs, (v) =>
    checkNumber(v, 'retry.deadlineMs', { min: 0 }),
  )
  const shouldRetry = optional(
    options.shouldRetry,
    () => true,
    (v) => checkFunction<(err: unknown, attempt: number) => boolean>(v, 'retry.shouldRetry'),
  )
  const random = optional(options.random, Math.random, (v) => checkFunction<() => number>(v, 'retry.random'))
  const listeners = new Emitter<RetryEvent>()
  if (options.onRetry !== undefined) listeners.on(checkFunction(options.onRetry, 'retry.onRetry'))
  const defaultSignal = optional<AbortSignal | undefined>(options.signal, undefined, (v) => {
    if (!(v instanceof AbortSignal)) throw configError('retry.signal', 'an AbortSignal', v)
    return v
  })
  const next = decorrelatedJitter(baseDelayMs, maxDelayMs, random)

  return {
    name,
    async execute(fn, callOptions) {
      const signal = callOptions?.signal ?? defaultSignal
      const started = performance.now()
      let delay = baseDelayMs
      for (let attempt = 1; ; attempt++) {
        if (signal?.aborted) throw abortError(signal, `retry ${name}`)
        try {
          const value = await fn({ attempt, signal })
          metrics.recordRetry(name, attempt === 1 ? 'successful_without_retry' : 'successful_with_retry')
          return value
        } catch (err) {
          const again = attempt < maxAttempts && !signal?.aborted && shouldRetry(err, attempt)
          if (again) delay = next(delay)
          if (!again || performance.now() - started + delay > deadlineMs) {
            metrics.recordRetry(name, attempt === 1 ? 'failed_without_retry' : 'failed_with_retry')
            throw err
          }
          const event = { name, attempt, delayMs: delay, error: err }
          publish(channels.retry, event)
          listeners.emit(event)
          try {
            await sleep(delay, signal, { ref: true })
          } catch (abort) {
            metrics.recordRetry(name, 'failed_with_retry')
            throw abort
          }
        }
      }
    },
    onRetry: (listener) => listeners.on(listener),
  }
}

/** setTimeout's largest delay; longer ones fire at once. */
const MAX_TIMER_MS = 2_147_483_647

/** One-off form: `retry(fn, options)`. */
export function retry<T>(fn: (ctx: RetryContext) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  return createRetry(options).execute(fn)
}
