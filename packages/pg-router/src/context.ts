import { ResilientError, sleep } from '@resilient/core'
import type { WriterGate } from './failover.js'
import type { Monitor } from './monitor.js'
import type { ResolvedOptions } from './options.js'

/** What the router's parts share: the options, the monitor and its writer gate, counters, and whether it is closed. */
export interface RouterContext {
  readonly opts: ResolvedOptions
  readonly monitor: Monitor
  readonly gate: WriterGate
  /** Attempts retried, by kind (stats().retries). */
  readonly retries: { read: number; write: number; transaction: number }
  closed: boolean
}

export const closedError = (): ResilientError =>
  new ResilientError('E_SHUTTING_DOWN', 'the router is closed', { noStack: true })

/** The pause before attempt `attempt + 1`: none after the first, then 4-8, 8-16... ms, at most 100 ms. */
export function backoff(attempt: number, signal: AbortSignal | undefined): Promise<void> {
  return attempt <= 1 ? Promise.resolve() : sleep(Math.min(100, 2 ** attempt * (1 + Math.random())), signal)
}

/**
 * The pause after the `n`-th (0-based) connection refused for too many clients (53300/53400):
 * 50-100 ms, then doubling up to 1-2 s. Retrying such a member every 100 ms for
 * failover.timeoutMs only adds to the connection storm it is in. Does not keep the process alive.
 */
export function overloadBackoff(n: number, signal: AbortSignal | undefined): Promise<void> {
  return sleep(Math.min(2_000, 100 * 2 ** n) * (0.5 + Math.random() / 2), signal)
}

/** A wait for the writer that ran out: the last connection error, when there was one, becomes its cause. */
export function timedOut(err: unknown, lastErr: unknown): unknown {
  return ResilientError.is(err, 'E_FAILOVER_TIMEOUT') && lastErr !== undefined
    ? new ResilientError('E_FAILOVER_TIMEOUT', err.message, { cause: lastErr, details: { ...err.details } })
    : err
}
