import { abortError, ResilientError } from '@resilient/core'
import type { Member } from './topology.js'

/** What onFailover listeners get once writes work on a new primary. Times are epoch ms. */
export interface FailoverEvent {
  /** The primary before (null when there was none, e.g. at start). */
  from: string | null
  to: string
  /** Why the old primary was suspected: an error class/SQLSTATE, or 'discovery'. */
  reason: string
  /** When the data path (or discovery) first suspected the old primary. */
  suspectedAt: number
  /** When discovery first named the new primary. */
  newPrimaryDiscoveredAt: number
  /** When a connection to it answered `pg_is_in_recovery() = false`. */
  newPrimaryConfirmedAt: number
  /** First write acknowledged by it; null when none came within 10 s of the confirmation. */
  firstSuccessAt: number | null
  durations: {
    /** suspected -> confirmed: how long writes were held. */
    heldMs: number
    /** discovered -> confirmed: our own share of the delay. */
    confirmMs: number
    /** confirmed -> first acknowledged write; null when there was none. */
    firstWriteMs: number | null
  }
}

interface Waiter {
  /** A read waiting for the primary (fallback, a session) does not count against maxQueue. */
  write: boolean
  resolve: (m: Member) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
  signal: AbortSignal | undefined
  onAbort: () => void
}

const epoch = (t: number) => Math.round(performance.timeOrigin + t)

/**
 * Who may take writes. Writes pass only while a writer is confirmed; while a failover is
 * suspected they wait here (bounded by their deadline and by `maxQueue`).
 */
export class WriterGate {
  #writer: Member | null = null
  #suspectedAt: number | null = null
  #reason = 'start'
  #previous: string | null = null
  #discoveredAt: number | null = null
  #waiters = new Set<Waiter>()
  /** Writes among #waiters. */
  #writes = 0
  #pending: { event: FailoverEvent; confirmedAt: number; timer: NodeJS.Timeout } | null = null
  #closedError: Error | null = null
  failovers = 0

  constructor(
    readonly maxQueue: number,
    readonly emitFailover: (e: FailoverEvent) => void,
  ) {}

  get writer(): Member | null {
    return this.#writer
  }

  get suspectedAt(): number | null {
    return this.#suspectedAt
  }

  /** Writes waiting for a writer (reads waiting for the primary are not counted). */
  get queueLength(): number {
    return this.#writes
  }

  /** Discovery named `name` as primary (first time since the suspicion). */
  noteDiscovered(name: string): void {
    if (this.#writer === null && this.#discoveredAt === null && name !== this.#previous) {
      this.#discoveredAt = performance.now()
    }
  }

  /** Stop writes to the current writer. Returns false when there was none (already suspected). */
  suspect(reason: string): boolean {
    if (this.#writer === null) return false
    this.#previous = this.#writer.name
    this.#writer = null
    this.#suspectedAt = performance.now()
    this.#discoveredAt = null
    this.#reason = reason
    return true
  }

  /** `member` answered `pg_is_in_recovery() = false` on a fresh connection: release the writes. */
  confirm(member: Member): void {
    const now = performance.now()
    const previous = this.#previous
    const suspectedAt = this.#suspectedAt
    this.#writer = member
    if (suspectedAt !== null && previous !== member.name) {
      this.flushPending()
      this.failovers++
      const discoveredAt = this.#discoveredAt ?? now
      const event: FailoverEvent = {
        from: previous,
        to: member.name,
        reason: this.#reason,
        suspectedAt: epoch(suspectedAt),
        newPrimaryDiscoveredAt: epoch(discoveredAt),
        newPrimaryConfirmedAt: epoch(now),
        firstSuccessAt: null,
        durations: {
          heldMs: Math.round(now - suspectedAt),
          confirmMs: Math.round(now - discoveredAt),
          firstWriteMs: null,
        },
      }
      const timer = setTimeout(() => this.flushPending(), 10_000)
      timer.unref()
      this.#pending = { event, confirmedAt: now, timer }
    }
    this.#suspectedAt = null
    this.#discoveredAt = null
    const waiters = [...this.#waiters]
    this.#waiters.clear()
    this.#writes = 0
    for (const w of waiters) {
      clearTimeout(w.timer)
      w.signal?.removeEventListener('abort', w.onAbort)
      w.resolve(member)
    }
  }

  /** A write was acknowledged by `member`. */
  noteWriteSuccess(member: Member): void {
    member.writes++
    const p = this.#pending
    if (!p || p.event.to !== member.name) return
    const now = performance.now()
    p.event.firstSuccessAt = epoch(now)
    p.event.durations.firstWriteMs = Math.round(now - p.confirmedAt)
    this.flushPending()
  }

  flushPending(): void {
    const p = this.#pending
    if (!p) return
    this.#pending = null
    clearTimeout(p.timer)
    this.emitFailover(p.event)
  }

  /**
   * The writer, waiting for one until `deadline` (performance.now() scale). At most `maxQueue`
   * writes wait at once: one more is refused at once with E_LIMIT (reason 'queue-full'); reads
   * waiting for the primary do not take places in that queue.
   */
  wait(signal: AbortSignal | undefined, deadline: number, kind: 'read' | 'write' = 'write'): Promise<Member> {
    if (this.#closedError) return Promise.reject(this.#closedError)
    if (signal?.aborted) return Promise.reject(abortError(signal, kind))
    if (this.#writer) return Promise.resolve(this.#writer)
    const remaining = deadline - performance.now()
    if (remaining <= 0) return Promise.reject(this.#timeoutError())
    const write = kind === 'write'
    if (write && this.#writes >= this.maxQueue) return Promise.reject(this.#queueFullError())
    return new Promise<Member>((resolve, reject) => {
      const leave = () => {
        if (this.#waiters.delete(w) && write) this.#writes--
      }
      const w: Waiter = {
        write,
        resolve,
        reject,
        signal,
        timer: setTimeout(() => {
          leave()
          signal?.removeEventListener('abort', w.onAbort)
          reject(this.#timeoutError())
        }, remaining),
        onAbort: () => {
          leave()
          clearTimeout(w.timer)
          reject(abortError(signal!, kind))
        },
      }
      signal?.addEventListener('abort', w.onAbort, { once: true })
      this.#waiters.add(w)
      if (write) this.#writes++
    })
  }

  #timeoutError(): ResilientError {
    return new ResilientError('E_FAILOVER_TIMEOUT', 'no confirmed primary before the failover timeout', {
      details: { reason: 'deadline', previous: this.#previous },
    })
  }

  /** Not a timeout: the router sheds load at once (nothing was sent). */
  #queueFullError(): ResilientError {
    return new ResilientError(
      'E_LIMIT',
      `no confirmed primary and failover.maxQueue (${this.maxQueue}) writes are already waiting for one`,
      { details: { reason: 'queue-full', maxQueue: this.maxQueue, previous: this.#previous }, noStack: true },
    )
  }

  close(err: Error): void {
    this.#closedError = err
    this.flushPending()
    const waiters = [...this.#waiters]
    this.#waiters.clear()
    this.#writes = 0
    for (const w of waiters) {
      clearTimeout(w.timer)
      w.signal?.removeEventListener('abort', w.onAbort)
      w.reject(err)
    }
  }
}
