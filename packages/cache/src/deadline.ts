import { ResilientError } from '@resilient/core'
import type { Command, Redis } from 'ioredis'
import type { RedisClient } from './client.js'

/**
 * Runs `fn` and rejects with E_TIMEOUT after `ms`, without an AbortController: this is on
 * the hot path. The timer starts before the command is handed to ioredis, so that with
 * equal timeouts ours fires first and is counted as a timeout.
 */
export function bounded<T>(fn: () => Promise<T>, ms: number, operation: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(timeoutError(ms, operation)), ms)
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
        resolve(v)
      },
      (err) => {
        clearTimeout(timer)
        reject(err)
      },
    )
  })
}

interface PendingOp {
  deadline: number
  /** Rejects the operation's promise (run()); for a command, rejects the command. */
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
 * rejects each operation at its own deadline, to the millisecond. Settled operations leave
 * the head of the queue at once (and drop their reject function), so the queue holds about
 * the operations in flight, not every operation of the last `ms`.
 */
export class DeadlineGuard {
  readonly #ms: number
  #queue: PendingOp[] = []
  #head = 0
  #timer: NodeJS.Timeout | undefined

  constructor(ms: number) {
    this.#ms = ms
  }

  /**
   * Sends an ioredis command and returns its own promise: no promise, closure or timer of
   * ours per command. At its deadline a command still without a reply is rejected with
   * E_TIMEOUT through ioredis's public `Command#reject` (what ioredis's own `commandTimeout`
   * does). Settled commands leave the head of the queue on the next send.
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
      deadline: performance.now() + this.#ms,
      reject: noop,
      command,
      done: false,
      operation,
    }
    q.push(op)
    if (this.#timer === undefined) this.#arm(op.deadline)
    return (client as Redis).sendCommand(command) as Promise<T>
  }

  run<T>(fn: () => Promise<T>, operation: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const op: PendingOp = {
        deadline: performance.now() + this.#ms,
        reject,
        command: undefined,
        done: false,
        operation,
      }
      this.#queue.push(op)
      if (this.#timer === undefined) this.#arm(op.deadline)
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
    this.#timer = setTimeout(this.#sweep, Math.max(0, Math.ceil(deadline - performance.now())))
  }

  #sweep = (): void => {
    this.#timer = undefined
    const now = performance.now()
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
      if (op.command) op.command.reject(timeoutError(this.#ms, op.operation))
      else reject(timeoutError(this.#ms, op.operation))
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

  /** Rejects nothing further and drops the timer (close()). */
  stop(): void {
    if (this.#timer) clearTimeout(this.#timer)
    this.#timer = undefined
  }

  /** Operations held in the queue (in flight, or settled behind an older one in flight). */
  get size(): number {
    return this.#queue.length - this.#head
  }
}

function timeoutError(ms: number, operation: string): ResilientError {
  return new ResilientError('E_TIMEOUT', `redis ${operation} timed out after ${Math.round(ms)} ms`, {
    noStack: true,
    details: { timeoutMs: ms, operation },
  })
}
