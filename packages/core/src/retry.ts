import { checkFunction, checkNumber, optional } from './options.js'
import { abortError, sleep } from './timeout.js'

export interface RetryOptions {
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
  /** Called before each wait. */
  onRetry?: (event: RetryEvent) => void
  /** Aborts the waiting and is passed to every attempt. */
  signal?: AbortSignal | undefined
  /** Source of randomness in [0, 1); for tests. @default Math.random */
  random?: () => number
}

export interface RetryEvent {
  attempt: number
  delayMs: number
  error: unknown
}

export const DEFAULT_RETRY_OPTIONS = {
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
  execute<T>(
    fn: (ctx: RetryContext) => Promise<T>,
    options?: { signal?: AbortSignal | undefined },
  ): Promise<T>
}

/** Checks options once; the returned policy runs any number of calls. */
export function createRetry(options: RetryOptions = {}): RetryPolicy {
  const maxAttempts = optional(options.maxAttempts, DEFAULT_RETRY_OPTIONS.maxAttempts, (v) =>
    checkNumber(v, 'retry.maxAttempts', { min: 1, integer: true }),
  )
  const baseDelayMs = optional(options.baseDelayMs, DEFAULT_RETRY_OPTIONS.baseDelayMs, (v) =>
    checkNumber(v, 'retry.baseDelayMs', { min: 0 }),
  )
  const maxDelayMs = optional(options.maxDelayMs, DEFAULT_RETRY_OPTIONS.maxDelayMs, (v) =>
    checkNumber(v, 'retry.maxDelayMs', { min: baseDelayMs }),
  )
  const deadlineMs = optional(options.deadlineMs, DEFAULT_RETRY_OPTIONS.deadlineMs, (v) =>
    checkNumber(v, 'retry.deadlineMs', { min: 0 }),
  )
  const shouldRetry = optional(
    options.shouldRetry,
    () => true,
    (v) => checkFunction<(err: unknown, attempt: number) => boolean>(v, 'retry.shouldRetry'),
  )
  const onRetry = options.onRetry
  const next = decorrelatedJitter(baseDelayMs, maxDelayMs, options.random)
  const defaultSignal = options.signal

  return {
    async execute(fn, callOptions) {
      const signal = callOptions?.signal ?? defaultSignal
      const started = performance.now()
      let delay = baseDelayMs
      for (let attempt = 1; ; attempt++) {
        if (signal?.aborted) throw abortError(signal, 'retry')
        try {
          return await fn({ attempt, signal })
        } catch (err) {
          if (attempt >= maxAttempts || !shouldRetry(err, attempt) || signal?.aborted) throw err
          delay = next(delay)
          const elapsed = performance.now() - started
          if (elapsed + delay > deadlineMs) throw err
          onRetry?.({ attempt, delayMs: delay, error: err })
          await sleep(delay, signal)
        }
      }
    },
  }
}

/** One-off form: `retry(fn, options)`. */
export function retry<T>(fn: (ctx: RetryContext) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  return createRetry(options).execute(fn)
}
