import { ResilientError } from '@resilient/core'
import type { Command, Redis } from 'ioredis'
import type { RedisClient } from './client.js'

/**
 * Why a timer is not the whole story: a timer callback runs in the event loop's timers phase,
 * before the poll phase reads the sockets. After the loop was blocked (a long synchronous
 * task, a GC pause, a busy machine), the reply to a command may be sitting in the socket
 * buffer, read only after the timer has fired. So a deadline that passes is checked again
 * one turn later (`setImmediate` runs after the poll phase): only what still has no reply
 * then is late. A stall of the process is not a slow Redis, and does not open the breaker.
 */

/**
 * Runs `fn` and rejects with E_TIMEOUT after `ms` (checked again after the poll phase),
 * without an AbortController. For operations whose timeout is not the cache's shared one.
 */
export function bounded<T>(fn: () => Promise<T>, ms: number, operation: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false
    const timer = setTimeout(() => {
      setImmediate(() => {
        if (settled) return
        settled = true
        reject(timeoutError(ms, operation))
      })
    }, ms)
    let work: Promise<T>
    try {
      work = fn()
    } catch (err) {
      clearTimeout(timer)
      reject(err)
      return
    }
    work.then(
      (v) => {
        clearTimeout(timer)
        if (settled) return
        settled = true
        resolve(v)
      },
      (err) => {
        clearTimeout(timer)
        if (settled) return
        settled = true
        reject(err)
      },
    )
  })
}

interface PendingOp {
  deadline: number
  /** Told at the deadline, before the rejection (a loader's context aborts its signal). */
  onExpire: { abort(reason: unknown): void } | undefined
  /**
   * Rejects the operation at its deadline: run()'s promise, or send()'s command (for a
   * Cluster command, the Cluster's own reject, so that the rejection is final).
   */
  reject: (err: unknown) => void
  /** The ioredis command of send(): settled once `isResolved` (a reply) or rejected by us. */
  command: Command | undefined
  done: boolean
  operation: string
}

function isSettled(op: PendingOp): boolean {
  return op.done || op.command?.isResolved === true
}

function noop(): void {}

/**
 * The cache's own timer guard for Redis operations that all share one timeout: a FIFO of
 * deadlines with a single timer armed for the oldest (equal timeouts make FIFO order
 * deadline order). Per operation this costs an array push instead of a timer; the timer
 * rejects each operation at its own deadline (after the poll phase, see above). Settled
 * operations leave the head of the queue at once (and drop their reject function), so the
 * queue holds about the operations in flight, not every operation of the last `ms`.
 */
export class DeadlineGuard {
  readonly #ms: number
  readonly #makeError: (ms: number, operation: string) => Error
  /** Date.now() instead of performance.now(): for long deadlines (loaders), and fake timers in tests. */
  readonly #wall: boolean
  #queue: PendingOp[] = []
  #head = 0
  #timer: NodeJS.Timeout | undefined
  #checking = false
  #stopped = false

  constructor(
    ms: number,
    makeError: (ms: number, operation: string) => Error = timeoutError,
    clock: 'monotonic' | 'wall' = 'monotonic',
  ) {
    this.#ms = ms
    this.#makeError = makeError
    this.#wall = clock === 'wall'
  }

  #now(): number {
    return this.#wall ? Date.now() : performance.now()
  }

  /**
   * Sends an ioredis command and returns its own promise: no promise, closure or timer of
   * ours per command. At its deadline a command still without a reply is rejected with
   * E_TIMEOUT through ioredis's public `Command#reject` (what ioredis's own `commandTimeout`
   * does). Settled commands leave the head of the queue on the next send.
   *
   * On a Cluster, ioredis replaces `command.reject` with its redirection logic (MOVED, ASK,
   * TRYAGAIN, CLUSTERDOWN, a closed connection: send the command again). Once this guard
   * has rejected a command, any later error for it (a MOVED from a node that was hung) is
   * dropped: a command the caller was told failed is never sent again.
   */
  send<T>(client: RedisClient, command: Command, operation: string): Promise<T> {
    const q = this.#queue
    let head = this.#head
    while (head < q.length && isSettled(q[head]!)) head++
    if (head === q.length && head > 0) {
      q.length = 0
      head = 0
    }
    this.#head = head
    const op: PendingOp = {
      deadline: this.#now() + this.#ms,
      onExpire: undefined,
      reject: noop,
      command,
      done: false,
      operation,
    }
    q.push(op)
    if (this.#timer === undefined && !this.#checking) this.#arm(op.deadline)
    let promise = (client as Redis).sendCommand(command) as Promise<T>
    if (command.isResolved) {
      // Settled before anything could be written: the client refused it (not connected, a
      // Cluster node still connecting). It never reached Redis.
      op.done = true
      promise = promise.catch(markNotSent)
    } else if (client.isCluster) {
      const clusterReject = command.reject
      op.reject = (err) => clusterReject.call(command, err as Error)
      command.reject = (err: Error) => {
        if (!op.done) clusterReject.call(command, err)
      }
    }
    return promise
  }

  /** Runs `fn` under the deadline; `onExpire` is aborted with the error when it passes. */
  run<T>(fn: () => Promise<T>, operation: string, onExpire?: { abort(reason: unknown): void }): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const op: PendingOp = {
        deadline: this.#now() + this.#ms,
        onExpire,
        reject,
        command: undefined,
        done: false,
        operation,
      }
      this.#queue.push(op)
      if (this.#timer === undefined && !this.#checking) this.#arm(op.deadline)
      let work: Promise<T>
      try {
        work = fn()
      } catch (err) {
        this.#settled(op)
        reject(err)
        return
      }
      work.then(
        (v) => {
          if (op.done) return
          this.#settled(op)
          resolve(v)
        },
        (err) => {
          if (op.done) return
          this.#settled(op)
          reject(err)
        },
      )
    })
  }

  /** Marks `op` settled; if it was the oldest, drops it and the settled ones behind it. */
  #settled(op: PendingOp): void {
    op.done = true
    op.reject = noop
    const q = this.#queue
    let head = this.#head
    if (q[head] !== op) return
    head++
    while (head < q.length && isSettled(q[head]!)) head++
    if (head === q.length) {
      q.length = 0
      head = 0
    }
    this.#head = head
  }

  #arm(deadline: number): void {
    this.#timer = setTimeout(this.#sweep, Math.max(0, Math.ceil(deadline - this.#now())))
  }

  /** The timers phase: let the poll phase read what arrived, then judge (#expire). */
  #sweep = (): void => {
    this.#timer = undefined
    this.#checking = true
    setImmediate(this.#expire)
  }

  #expire = (): void => {
    this.#checking = false
    if (this.#stopped) return
    const now = this.#now()
    const q = this.#queue
    let head = this.#head
    while (head < q.length) {
      const op = q[head]!
      if (isSettled(op)) {
        head++
        continue
      }
      if (op.deadline > now + 0.5) break
      const reject = op.reject
      op.done = true
      op.reject = noop
      head++
      const err = this.#makeError(this.#ms, op.operation)
      op.onExpire?.abort(err)
      if (op.command && reject === noop) op.command.reject(err)
      else reject(err)
    }
    if (head >= q.length) {
      q.length = 0
      this.#head = 0
      return
    }
    if (head > 1024) {
      this.#queue = q.slice(head)
      head = 0
    }
    this.#head = head
    this.#arm(this.#queue[head]!.deadline)
  }

  /** close(): rejects every operation still pending with `reason` (aborting its onExpire), and stops. */
  rejectAll(reason: unknown): void {
    const q = this.#queue
    for (let i = this.#head; i < q.length; i++) {
      const op = q[i]!
      if (isSettled(op)) continue
      const reject = op.reject
      op.done = true
      op.reject = noop
      op.onExpire?.abort(reason)
      if (op.command && reject === noop) op.command.reject(reason as Error)
      else reject(reason)
    }
    q.length = 0
    this.#head = 0
    this.stop()
  }

  /** Rejects nothing further and drops the timer (close()). */
  stop(): void {
    this.#stopped = true
    if (this.#timer) clearTimeout(this.#timer)
    this.#timer = undefined
  }

  /** Operations held in the queue (in flight, or settled behind an older one in flight). */
  get size(): number {
    return this.#queue.length - this.#head
  }
}

const NOT_SENT_MARK = Symbol.for('resilient.cache.notSent')

function markNotSent(err: unknown): never {
  if (err instanceof Error) (err as unknown as Record<symbol, boolean>)[NOT_SENT_MARK] = true
  throw err
}

/** The client refused the command before writing it (deadline.ts saw it settle synchronously). */
export function isNotSent(err: unknown): boolean {
  return (
    err instanceof Error &&
    ((err as unknown as Record<symbol, boolean>)[NOT_SENT_MARK] === true ||
      err.message === "Stream isn't writeable and enableOfflineQueue options is false")
  )
}

export function timeoutError(ms: number, operation: string): ResilientError {
  return new ResilientError('E_TIMEOUT', `redis ${operation} timed out after ${Math.round(ms)} ms`, {
    noStack: true,
    details: { timeoutMs: ms, operation },
  })
}
