import { ResilientError } from '@resilient/core'
import { DeadlineGuard } from './deadline.js'
import type { LoadContext, Loader } from './types.js'

/**
 * What a loader gets. `signal` is made on first use: most loaders never touch it, and an
 * AbortController per load costs more than the rest of a miss in process.
 */
class Context implements LoadContext {
  readonly key: string
  readonly floor: string | undefined
  #controller: AbortController | undefined
  #aborted = false
  #reason: unknown

  constructor(key: string, floor: string | undefined) {
    this.key = key
    this.floor = floor
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController()
      if (this.#aborted) this.#controller.abort(this.#reason)
    }
    return this.#controller.signal
  }

  abort(reason: unknown): void {
    if (this.#aborted) return
    this.#aborted = true
    this.#reason = reason
    this.#controller?.abort(reason)
  }
}

function loaderTimeout(ms: number): Error {
  return new ResilientError('E_TIMEOUT', `cache loader timed out after ${ms} ms`, {
    details: { timeoutMs: ms },
  })
}

/**
 * Runs loaders under the hard timeout: one deadline queue and one timer for all of them
 * (every load of a cache has the same `loaderTimeoutMs.hard`), checked after the poll phase
 * like Redis deadlines (a stalled process does not time its loaders out). At the deadline the
 * call fails with E_TIMEOUT and `ctx.signal` aborts; on close() every running load fails with
 * E_SHUTTING_DOWN, its signal aborts, and no timer is left behind.
 */
export class LoaderRunner {
  readonly #guard: DeadlineGuard
  #closed: unknown

  constructor(hardMs: number) {
    this.#guard = new DeadlineGuard(hardMs, loaderTimeout, 'wall')
  }

  run(loader: Loader<unknown>, key: string, floor: string | undefined): Promise<unknown> {
    if (this.#closed !== undefined) return Promise.reject(this.#closed)
    const ctx = new Context(key, floor)
    return this.#guard.run(() => Promise.resolve(loader(ctx)), 'cache loader', ctx)
  }

  /** close(): settles every running load with `reason`. */
  rejectAll(reason: unknown): void {
    this.#closed = reason
    this.#guard.rejectAll(reason)
  }
}

export const TIMED_OUT = Symbol('timed out')

/** A timer as a promise that can be cancelled (the soft loader timeout). */
export function sleepResult(ms: number): { promise: Promise<typeof TIMED_OUT>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined
  const promise = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms)
  })
  return { promise, cancel: () => clearTimeout(timer) }
}
