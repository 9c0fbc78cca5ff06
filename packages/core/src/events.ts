import { channels, publish } from './channels.js'

/** What every `onX(listener)` returns: call `dispose()` (or use `using`) to stop listening. */
export interface Disposable {
  dispose(): void
  [Symbol.dispose](): void
}

export type Listener<T> = (event: T) => void

function disposable(fn: () => void): Disposable {
  return { dispose: fn, [Symbol.dispose]: fn }
}

/**
 * A typed event source. A listener that throws never breaks the emitter or the other
 * listeners: the error goes to `onListenerError` (default: a process 'warning' with code
 * RESILIENT_LISTENER_ERROR, and the `resilient:core:listener-error` channel).
 * Listeners added or removed during an `emit` take effect from the next `emit`.
 * `on` is bound: `const onX = emitter.on` works.
 */
export class Emitter<T> {
  #listeners: Listener<T>[] = []
  #onListenerError: (err: unknown) => void

  constructor(onListenerError?: (err: unknown) => void) {
    this.#onListenerError = onListenerError ?? defaultListenerError
  }

  get size(): number {
    return this.#listeners.length
  }

  on = (listener: Listener<T>): Disposable => {
    if (typeof listener !== 'function') throw new TypeError('listener must be a function')
    this.#listeners = [...this.#listeners, listener]
    return disposable(() => {
      this.#listeners = this.#listeners.filter((l) => l !== listener)
    })
  }

  once = (listener: Listener<T>): Disposable => {
    const d = this.on((event) => {
      d.dispose()
      listener(event)
    })
    return d
  }

  emit(event: T): void {
    const listeners = this.#listeners
    for (let i = 0; i < listeners.length; i++) {
      try {
        listeners[i]!(event)
      } catch (err) {
        this.#onListenerError(err)
      }
    }
  }

  clear(): void {
    this.#listeners = []
  }
}

function defaultListenerError(err: unknown): void {
  publish(channels.listenerError, { error: err })
  process.emitWarning(
    `a resilient event listener threw: ${err instanceof Error ? err.message : String(err)}`,
    {
      code: 'RESILIENT_LISTENER_ERROR',
    },
  )
}

export function toDisposable(fn: () => void): Disposable {
  return disposable(fn)
}
