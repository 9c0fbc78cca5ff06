import { publish, ResilientError } from '@resilient/core'
import type { QueryConfig, QueryResult, QueryResultRow } from 'pg'
import { channels } from './channels.js'
import { classifyError, commitUnknown, mayRetry } from './classify.js'
import { backoff, closedError, type RouterContext } from './context.js'
import type { Lease } from './member-pool.js'
import type { Routing } from './routing.js'
import type { WalPosition, WriteOptions } from './session.js'
import { counted, metricsOn, type QueryText, type RunStatement } from './statement-metrics.js'
import type { Member } from './topology.js'

export type StatementKind = 'read' | 'write'

/** One caller statement across its attempts: what it is, and its retry state. */
class Statement {
  /** Attempts started so far. */
  attempt = 0
  /** Read: members that failed it (skipped by the next attempts). */
  tried: Set<string> | null = null
  /** Read: statement timeouts so far (a timed-out read is retried once only). */
  statementTimeouts = 0
  lastErr: unknown = undefined
  tries = { n: 0 }
  /** performance.now() past which no new attempt starts (failover.timeoutMs from the call). */
  readonly deadline: number

  constructor(
    readonly kind: StatementKind,
    readonly text: QueryText,
    readonly values: unknown[] | undefined,
    readonly options: WriteOptions | undefined,
    /** Read-your-writes: the position a reader must have replayed. */
    readonly min: WalPosition | null,
    /** Read-your-writes: gets the primary's position after a write. */
    readonly onLsn: ((pos: WalPosition) => void) | undefined,
    timeoutMs: number,
  ) {
    this.deadline = performance.now() + timeoutMs
  }

  /** The `tried` set, created on first use. */
  triedSet(): Set<string> {
    if (this.tried === null) this.tried = new Set()
    return this.tried
  }
}

/**
 * The one path of a read or a write: pick a member, get a connection, run, and on a failure
 * decide the statement's fate in one place (`#failed`): thrown to the caller as what it is,
 * typed (E_COMMIT_UNKNOWN, E_FAILOVER_TIMEOUT), or retried. The first attempt of the common
 * case (an idle connection at hand, no signal, no metrics, no session) runs in pg's callback
 * form with one promise, as pg.Pool.query does; every later attempt, and a first one that
 * cannot take that shortcut, runs in `#loop`. Both go through the same `#failed`.
 */
export class Statements {
  readonly #ctx: RouterContext
  readonly #routing: Routing
  readonly #run: RunStatement
  readonly #queryTimeoutMs: number

  constructor(ctx: RouterContext, routing: Routing, run: RunStatement) {
    this.#ctx = ctx
    this.#routing = routing
    this.#run = run
    this.#queryTimeoutMs = ctx.opts.pool.queryTimeoutMs
  }

  execute<R extends QueryResultRow>(
    kind: StatementKind,
    text: QueryText,
    values: unknown[] | undefined,
    options: WriteOptions | undefined,
    min: WalPosition | null,
    onLsn?: (pos: WalPosition) => void,
  ): Promise<QueryResult<R>> {
    const ctx = this.#ctx
    if (ctx.closed) return Promise.reject(closedError())
    const st = new Statement(kind, text, values, options, min, onLsn, ctx.opts.failover.timeoutMs)
    if (onLsn === undefined && options?.signal === undefined && !metricsOn()) {
      const member = kind === 'write' ? ctx.gate.writer : this.#routing.quickReader(min)
      if (member !== null) return this.#fast<R>(st, member)
    }
    return counted(`pg-router.${kind}`, (tries) => {
      st.tries = tries
      return this.#loop<R>(st, null)
    })
  }

  /** The first attempt on an idle connection of `member`, in callback form; anything else goes to `#loop`. */
  #fast<R extends QueryResultRow>(st: Statement, member: Member): Promise<QueryResult<R>> {
    st.attempt = 1
    return new Promise<QueryResult<R>>((resolve) => {
      const started = member.pool.tryAcquire(st.kind, (err, lease) => {
        if (lease === undefined) {
          resolve(this.#retryAfter<R>(st, member, undefined, err))
          return
        }
        lease.startCb<R>(st.text as string | QueryConfig, st.values, this.#queryTimeoutMs, (qerr, r) => {
          if (r === undefined) {
            resolve(this.#retryAfter<R>(st, member, lease, qerr))
            return
          }
          lease.release()
          if (st.kind === 'write') this.#ctx.gate.noteWriteSuccess(member)
          resolve(r)
        })
      })
      if (!started) {
        // no idle connection at hand: the loop does the whole job (a read: on the member already picked)
        st.attempt = 0
        resolve(this.#loop<R>(st, member))
      }
    })
  }

  async #retryAfter<R extends QueryResultRow>(
    st: Statement,
    member: Member,
    lease: Lease | undefined,
    err: unknown,
  ): Promise<QueryResult<R>> {
    await this.#failed(st, member, lease, err) // throws unless another attempt may follow
    return this.#loop<R>(st, null)
  }

  /** Attempts until one succeeds or `#failed` throws. `picked`: the member the first attempt goes to. */
  async #loop<R extends QueryResultRow>(st: Statement, picked: Member | null): Promise<QueryResult<R>> {
    const signal = st.options?.signal
    const routing = this.#routing
    for (;;) {
      if (st.attempt > 0) await backoff(st.kind === 'read' ? st.attempt - 1 : st.attempt, signal)
      if (this.#ctx.closed) throw closedError()
      st.tries.n = ++st.attempt
      const { lease, member } =
        st.kind === 'write'
          ? await routing.acquireWriter(signal, st.deadline)
          : await routing.acquireReader(signal, st.deadline, st.min, st.triedSet(), picked)
      picked = null
      try {
        const r = await this.#run<R>(lease, member, st.text, st.values, signal)
        if (st.onLsn) st.onLsn(await routing.capturePosition(lease, signal))
        lease.release()
        if (st.kind === 'write') this.#ctx.gate.noteWriteSuccess(member)
        return r
      } catch (err) {
        await this.#failed(st, member, lease, err) // throws unless another attempt may follow
      }
    }
  }

  /**
   * Attempt `st.attempt` failed on `member` (`lease` undefined: while getting a connection).
   * Throws what the caller gets, or returns when another attempt may follow (counted).
   */
  async #failed(st: Statement, member: Member, lease: Lease | undefined, err: unknown): Promise<void> {
    const { gate, monitor } = this.#ctx
    const signal = st.options?.signal
    const kind = st.kind
    if (lease === undefined) {
      this.#routing.connectFailed(
        kind,
        member,
        err,
        st.attempt,
        kind === 'read' ? st.triedSet() : null,
        signal,
      )
      st.lastErr = err
      if (performance.now() >= st.deadline) throw this.#pastDeadline(st, member, err, undefined, undefined)
      return
    }
    const c = classifyError(err, { phase: 'query', sent: lease.sent, connectionLost: lease.lost })
    if (c.sqlState === '25006' && !lease.lost && !lease.inRecovery && (await this.#stillPrimary(lease))) {
      // This very connection still says pg_is_in_recovery() = false: the database refuses the
      // write itself (default_transaction_read_only, a maintenance freeze). Its answer, at once:
      // no retry, no suspicion, no drain.
      lease.release()
      throw err
    }
    lease.release(c.discardConnection)
    if (kind === 'read') {
      // 25006 from a replica (or any connection known to be in recovery): the caller sent a
      // write down the read path. Its error, as-is: no retry (the primary would run it), no
      // failure mark on the member, no failover suspicion.
      if (c.sqlState === '25006' && (member !== gate.writer || lease.inRecovery)) throw err
      monitor.reportFailure(member, lease.generation, c)
      if (signal?.aborted) throw err
      // 40001 on a replica: cancelled by a conflict with recovery; another member will do.
      // A statement timeout is retried once: a hung replica, yes; a slow query, not again and again.
      const timedOutHere = ResilientError.is(err, 'E_TIMEOUT')
      const retryable =
        (mayRetry(c.class, 'read') && !(timedOutHere && st.statementTimeouts++ > 0)) ||
        (c.sqlState === '40001' && member !== gate.writer && !lease.lost)
      if (!retryable) throw err
    } else {
      monitor.reportFailure(member, lease.generation, c)
      if (signal?.aborted) {
        // the caller gave up: never retried; once sent, never "not executed"
        if (c.class === 'outcome-unknown') throw commitUnknown(err, member.name, null, c)
        throw err
      }
      if (!mayRetry(c.class, st.options?.idempotent === true ? 'idempotent-write' : 'write')) {
        if (c.class === 'outcome-unknown') throw commitUnknown(err, member.name, null, c)
        throw err
      }
    }
    st.lastErr = err
    if (performance.now() >= st.deadline) throw this.#pastDeadline(st, member, err, c.sqlState, c.errorCode)
    if (kind === 'read') st.triedSet().add(member.name)
    this.#ctx.retries[kind]++
    publish(channels.retry, { kind, member: member.name, errorClass: c.class, attempt: st.attempt })
  }

  /** Asks the connection itself whether it is still a primary (bounded by monitor.probeTimeoutMs); false when it cannot tell. */
  async #stillPrimary(lease: Lease): Promise<boolean> {
    try {
      const r = await lease.query<{ r: boolean }>(
        'SELECT pg_is_in_recovery() AS r',
        undefined,
        this.#ctx.opts.monitor.probeTimeoutMs,
      )
      return r.rows[0]?.r === false
    } catch {
      return false
    }
  }

  /** A failure that would have been retried, past failover.timeoutMs: typed, never a raw connection error. */
  #pastDeadline(
    st: Statement,
    member: Member,
    err: unknown,
    sqlState: string | undefined,
    errorCode: string | undefined,
  ): unknown {
    if (st.kind === 'write') {
      return new ResilientError(
        'E_FAILOVER_TIMEOUT',
        'the write did not succeed before the failover timeout',
        {
          cause: err,
        },
      )
    }
    if (ResilientError.is(err) || sqlState === '40001') return err
    return new ResilientError('E_FAILOVER_TIMEOUT', 'the read did not succeed before the failover timeout', {
      cause: err,
      details: { member: member.name, sqlState, errorCode },
    })
  }
}
