import { channels, publish } from './channels.js'
import { ResilientError } from './errors.js'
import { configError } from './options.js'

/** setTimeout's largest delay (about 24.8 days); a longer one would fire at once. */
const MAX_TIMER_MS = 2_147_483_647

export interface TimeoutOptions {
  /** A caller's signal: its abort aborts the work too. */
  signal?: AbortSignal | undefined
  /** Names the operation in the E_TIMEOUT message. */
  operation?: string
}

/**
 * Runs `fn` with a signal that aborts after `ms` (or when `options.signal` aborts), and
 * rejects with `E_TIMEOUT` at that moment even if `fn` ignores the signal. The work is
 * told to stop through the signal; it is not awaited further.
 * `ms` of `0`, `Infinity` or more than setTimeout's limit (about 24.8 days) means no
 * timeout: then no timer and no signal is created unless the caller passed one. A negative
 * or NaN `ms` rejects with E_CONFIG (it is a bug, not "no timeout").
 *
 * The timer is cleared the moment the call settles, and the listener on the caller's
 * signal is removed then too (no leak on a long-lived signal). While the call is pending
 * the timer keeps the process alive: a pending call gets its answer or its E_TIMEOUT.
 * A synchronous throw from `fn` becomes a rejection.
 *
 * Cost: creating an AbortSignal takes about 5 µs on Node 20, so a `fn` declared with no
 * parameter (`() => redis.get(k)`, `fn.length === 0`) gets no signal of its own: it is still
 * raced against the timer and the caller's signal, only nothing is aborted. Declare the
 * parameter (`(signal) => ...`) to receive one.
 */
export function withTimeout<T>(
  fn: (signal: AbortSignal | undefined) => Promise<T>,
  ms: number,
  options: TimeoutOptions = {},
): Promise<T> {
  const parent = options.signal
  if (typeof ms !== 'number' || Number.isNaN(ms) || ms < 0) {
    return Promise.reject(configError('timeoutMs', 'a number >= 0 (0 or Infinity for none)', ms))
  }
  if (parent?.aborted) return Promise.reject(abortError(parent, options.operation))
  if (ms === 0 || ms >= MAX_TIMER_MS) {
    try {
      return Promise.resolve(fn(parent))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  const controller = fn.length > 0 ? new AbortController() : undefined
  return new Promise<T>((resolve, reject) => {
    let settled = false
    const finish = () => {
      settled = true
      clearTimeout(timer)
      parent?.removeEventListener('abort', onParentAbort)
    }
    const onParentAbort = () => {
      if (settled) return
      finish()
      const err = abortError(parent!, options.operation)
      controller?.abort(err)
      reject(err)
    }
    const timer = setTimeout(() => {
      if (settled) return
      finish()
      const operation = options.operation ?? 'operation'
      const err = new ResilientError('E_TIMEOUT', `${operation} timed out after ${ms} ms`, {
        details: { timeoutMs: ms },
      })
      publish(channels.timeout, { operation, timeoutMs: ms })
      controller?.abort(err)
      reject(err)
    }, ms)
    parent?.addEventListener('abort', onParentAbort, { once: true })
    let work: Promise<T>
    try {
      work = fn(controller?.signal)
    } catch (err) {
      finish()
      reject(err)
      return
    }
    Promise.resolve(work).then(
      (value) => {
        if (settled) return
        finish()
        resolve(value)
      },
      (err) => {
        if (settled) return
        finish()
        reject(err)
      },
    )
  })
}

/** The error to reject with when a caller's signal aborted. */
export function abortError(signal: AbortSignal, operation?: string): Error {
  const reason = signal.reason
  if (ResilientError.is(reason)) return reason
  return new ResilientError('E_ABORTED', `${operation ?? 'operation'} was aborted`, { cause: reason })
}

export interface SleepOptions {
  /**
   * Whether the timer keeps the process alive. A background wait (a poller between two
   * polls) should not; a wait that someone awaits (a retry's backoff) should.
   * @default false
   */
  ref?: boolean
}

/**
 * Resolves after `ms`, or rejects (E_ABORTED, or the signal's ResilientError reason) when
 * `signal` aborts; the abort listener is removed when the timer fires. By default the
 * timer does not keep the process alive; pass `{ ref: true }` for a wait that must finish.
 */
export function sleep(ms: number, signal?: AbortSignal, options?: SleepOptions): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortError(signal))
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer)
      reject(abortError(signal!))
    }
    const timer = setTimeout(
      () => {
        signal?.removeEventListener('abort', onAbort)
        resolve()
      },
      // Longer than setTimeout's limit would fire at once: wait the limit instead.
      Math.min(Math.max(0, ms), MAX_TIMER_MS),
    )
    if (options?.ref !== true) timer.unref?.()
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}
