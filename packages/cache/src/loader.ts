import { ResilientError, withTimeout } from '@resilient/core'
import type { Loader } from './types.js'

/**
 * Runs loaders with the hard timeout. A loader that declares a parameter gets an
 * AbortSignal (aborted at the hard timeout and on close()); one that does not is raced
 * against a plain timer, which costs far less than an AbortController per load.
 */
export class LoaderRunner {
  readonly #closing: AbortSignal
  /** Rejecters of running loads that took no signal: close() settles them with its reason. */
  readonly #unsignalled = new Set<(err: unknown) => void>()

  constructor(closing: AbortSignal) {
    this.#closing = closing
  }

  run(loader: Loader<unknown>, hard: number): Promise<unknown> {
    if (loader.length > 0) {
      return withTimeout(async (signal) => loader(signal as AbortSignal), hard, {
        signal: this.#closing,
        operation: 'cache loader',
      })
    }
    const closing = this.#closing
    if (closing.aborted) return Promise.reject(closing.reason)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#unsignalled.delete(reject)
        reject(
          new ResilientError('E_TIMEOUT', `cache loader timed out after ${hard} ms`, {
            details: { timeoutMs: hard },
          }),
        )
      }, hard)
      this.#unsignalled.add(reject)
      const done = () => {
        clearTimeout(timer)
        this.#unsignalled.delete(reject)
      }
      let work: Promise<unknown>
      try {
        work = Promise.resolve((loader as () => unknown)())
      } catch (err) {
        done()
        reject(err)
        return
      }
      work.then(
        (v) => {
          done()
          resolve(v)
        },
        (err) => {
          done()
          reject(err)
        },
      )
    })
  }

  /** close(): settles every running load that took no signal with `reason`. */
  rejectAll(reason: unknown): void {
    for (const reject of this.#unsignalled) reject(reason)
    this.#unsignalled.clear()
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
