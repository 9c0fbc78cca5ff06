import {
  checkBoolean,
  checkKnownKeys,
  checkObject,
  checkOneOf,
  publish,
  ResilientError,
} from '@resilient/core'
import type { QueryResultRow } from 'pg'
import { channels } from './channels.js'
import {
  classifyError,
  commitUnknown,
  isNotCommitted,
  mayRetry,
  notCommitted,
  sqlStateOf,
} from './classify.js'
import { backoff, closedError, type RouterContext } from './context.js'
import type { Lease } from './member-pool.js'
import type { Routing } from './routing.js'
import type {
  IsolationLevel,
  StatementOptions,
  TransactionClient,
  TransactionOptions,
  WalPosition,
} from './session.js'
import type { Statements } from './statement.js'
import type { QueryText, RunStatement } from './statement-metrics.js'
import type { Member } from './topology.js'

export type CommitStatus = 'committed' | 'aborted' | 'in progress'

const ISOLATION_LEVELS: readonly IsolationLevel[] = ['read committed', 'repeatable read', 'serializable']

/** `transaction(fn, { retry: true })` runs fn at most this many times. */
const MAX_TRANSACTION_RUNS = 3

interface TransactionPlan {
  readOnly: boolean
  /** Runs on the primary: every read-write transaction, and SERIALIZABLE READ ONLY (a hot standby cannot run serializable). */
  onPrimary: boolean
  begin: string
  retry: boolean
}

function checkTransactionOptions(options: TransactionOptions | undefined): TransactionPlan {
  if (options === undefined) return { readOnly: false, onPrimary: true, begin: 'BEGIN', retry: false }
  const o = checkObject(options, 'transaction options')
  checkKnownKeys(o, 'transaction', ['readOnly', 'isolationLevel', 'signal', 'retry'])
  const readOnly = o.readOnly === undefined ? false : checkBoolean(o.readOnly, 'transaction.readOnly')
  const retry = o.retry === undefined ? false : checkBoolean(o.retry, 'transaction.retry')
  const iso =
    o.isolationLevel === undefined
      ? undefined
      : checkOneOf(o.isolationLevel, 'transaction.isolationLevel', ISOLATION_LEVELS)
  let begin = 'BEGIN'
  if (iso) begin += ` ISOLATION LEVEL ${iso.toUpperCase()}`
  if (readOnly) begin += ' READ ONLY'
  return { readOnly, onPrimary: !readOnly || iso === 'serializable', begin, retry }
}

/**
 * Transactions and their outcome: BEGIN ... fn ... COMMIT on one pinned connection; what the
 * caller is told when that connection fails before, at or after COMMIT (certainly not
 * committed and retryable, E_COMMIT_UNKNOWN with the txid, or the error as it is); re-running
 * fn with `{ retry: true }`; and `resolveCommit` afterwards.
 */
export class Transactions {
  readonly #ctx: RouterContext
  readonly #routing: Routing
  readonly #statements: Statements
  readonly #run: RunStatement

  constructor(ctx: RouterContext, routing: Routing, statements: Statements, run: RunStatement) {
    this.#ctx = ctx
    this.#routing = routing
    this.#statements = statements
    this.#run = run
  }

  async run<T>(
    fn: (tx: TransactionClient) => Promise<T>,
    options: TransactionOptions | undefined,
    min: WalPosition | null,
    onLsn?: (pos: WalPosition) => void,
  ): Promise<T> {
    const ctx = this.#ctx
    if (ctx.closed) throw closedError()
    if (typeof fn !== 'function') throw new TypeError('transaction(fn): fn must be a function')
    const plan = checkTransactionOptions(options)
    const signal = options?.signal
    const deadline = performance.now() + ctx.opts.failover.timeoutMs
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#once(fn, plan, signal, deadline, min, onLsn)
      } catch (err) {
        // Re-run fn only when asked, only when it certainly did not commit, and within the deadline.
        if (
          !plan.retry ||
          !isNotCommitted(err) ||
          signal?.aborted ||
          attempt >= MAX_TRANSACTION_RUNS ||
          performance.now() >= deadline ||
          ctx.closed
        ) {
          throw err
        }
        ctx.retries.transaction++
        publish(channels.retry, {
          kind: 'transaction',
          member: (err.details.member as string | undefined) ?? null,
          errorClass: 'not-committed',
          attempt,
        })
        await backoff(attempt, signal)
      }
    }
  }

  /** After E_COMMIT_UNKNOWN: `pg_xact_status(txid)` on the primary; null when it cannot tell. */
  async resolveCommit(
    txid: string | number | bigint,
    options: StatementOptions | undefined,
  ): Promise<CommitStatus | null> {
    const s = typeof txid === 'string' ? txid : String(txid)
    if (!/^[0-9]{1,20}$/.test(s)) {
      throw new ResilientError('E_CONFIG', 'invalid option txid: expected a non-negative integer', {
        details: { field: 'txid' },
      })
    }
    try {
      const r = await this.#statements.execute<{ s: CommitStatus | null }>(
        'write',
        'SELECT pg_xact_status($1::xid8) AS s',
        [s],
        { idempotent: true, signal: options?.signal },
        null,
      )
      return r.rows[0]?.s ?? null
    } catch (err) {
      // 22023: the xid is in the future or too old for this server to tell
      if (sqlStateOf(err) === '22023') return null
      throw err
    }
  }

  async #rollback(lease: Lease): Promise<void> {
    if (lease.lost) return lease.release(true)
    try {
      await lease.query('ROLLBACK', undefined, this.#ctx.opts.monitor.probeTimeoutMs)
      lease.release()
    } catch {
      lease.release(true)
    }
  }

  /**
   * The failure of a transaction statement before COMMIT was sent: when the connection died
   * (socket gone, 57P0x, 08xxx, a client that is no longer queryable) the server rolled the
   * transaction back, so the caller gets a typed, retryable E_NO_PRIMARY; anything else
   * (an SQL error, E_TIMEOUT, E_ABORTED, the caller's own error) is thrown as it is.
   */
  #beforeCommitError(err: unknown, lease: Lease, member: Member, stage: string): unknown {
    const c = classifyError(err, { phase: 'query', sent: true, connectionLost: lease.lost })
    if (lease.lost || (c.failoverSignal && c.discardConnection)) {
      this.#ctx.monitor.reportFailure(member, lease.generation, c)
      if (ResilientError.is(err) && err.code !== 'E_NO_PRIMARY') return err // E_TIMEOUT, E_ABORTED: already typed
      return notCommitted(err, member.name, c, stage)
    }
    return err
  }

  /** BEGIN on a connection, retried (on another connection) while nothing of the caller's has run. */
  async #begin(
    plan: TransactionPlan,
    signal: AbortSignal | undefined,
    deadline: number,
    min: WalPosition | null,
  ): Promise<{ lease: Lease; member: Member }> {
    const { monitor, opts } = this.#ctx
    const tried = new Set<string>()
    for (let attempt = 1; ; attempt++) {
      const got = plan.onPrimary
        ? await this.#routing.acquireWriter(signal, deadline, plan.readOnly ? 'read' : 'write')
        : await this.#routing.acquireReader(signal, deadline, min, tried)
      const { lease, member } = got
      try {
        await lease.query(plan.begin, undefined, opts.monitor.probeTimeoutMs, signal)
        return got
      } catch (err) {
        const c = classifyError(err, { phase: 'query', sent: lease.sent, connectionLost: lease.lost })
        lease.release(true)
        monitor.reportFailure(member, lease.generation, c)
        if (signal?.aborted || !mayRetry(c.class, 'read')) throw err
        if (performance.now() >= deadline) {
          throw new ResilientError(
            'E_FAILOVER_TIMEOUT',
            'the transaction could not begin before the failover timeout',
            {
              cause: err,
              details: {
                member: member.name,
                committed: false,
                retryable: true,
                sqlState: c.sqlState,
                errorCode: c.errorCode,
              },
            },
          )
        }
        tried.add(member.name)
        await backoff(attempt, signal)
      }
    }
  }

  async #once<T>(
    fn: (tx: TransactionClient) => Promise<T>,
    plan: TransactionPlan,
    signal: AbortSignal | undefined,
    deadline: number,
    min: WalPosition | null,
    onLsn: ((pos: WalPosition) => void) | undefined,
  ): Promise<T> {
    const { gate, monitor, opts } = this.#ctx
    const queryTimeoutMs = opts.pool.queryTimeoutMs
    const { lease, member } = await this.#begin(plan, signal, deadline, min)
    let done = false
    /** Errors that came out of this transaction's own connection (tx.query). */
    const own = new Set<unknown>()
    const tx: TransactionClient = {
      query: <R extends QueryResultRow = any>(text: QueryText, values?: unknown[]) => {
        if (done) return Promise.reject(new Error('this transaction is over: use the client only inside fn'))
        return this.#run<R>(lease, member, text, values, signal).catch((err: unknown) => {
          own.add(err)
          throw err
        })
      },
    }
    let result: T
    try {
      result = await fn(tx)
    } catch (err) {
      done = true
      if (!own.has(err)) {
        // The caller's own error (an HTTP call's ECONNRESET is not our connection's): as it is.
        // If our connection did die meanwhile, what it said is what the monitor hears.
        const last = [...own].pop()
        if (lease.lost && last !== undefined)
          this.#beforeCommitError(last, lease, member, 'in the transaction function')
        await this.#rollback(lease)
        throw err
      }
      const out = this.#beforeCommitError(err, lease, member, 'in the transaction function')
      await this.#rollback(lease)
      throw out
    }
    done = true
    if (plan.readOnly) {
      try {
        await lease.query('COMMIT', undefined, opts.monitor.probeTimeoutMs, signal)
        lease.release()
      } catch (err) {
        // never swallowed: a serializable transaction's answers stand only once COMMIT succeeded
        const c = classifyError(err, { phase: 'query', sent: lease.sent, connectionLost: lease.lost })
        lease.release(true)
        monitor.reportFailure(member, lease.generation, c)
        if ((c.class === 'not-sent' || c.class === 'outcome-unknown') && !ResilientError.is(err)) {
          throw notCommitted(err, member.name, c, 'at the COMMIT of a read-only transaction')
        }
        throw err
      }
      return result
    }
    let txid: string | null
    try {
      const r = await lease.query<{ x: string | null }>(
        'SELECT txid_current_if_assigned()::text AS x',
        undefined,
        queryTimeoutMs,
        signal,
      )
      txid = r.rows[0]?.x ?? null
    } catch (err) {
      const out = this.#beforeCommitError(err, lease, member, 'before COMMIT')
      await this.#rollback(lease)
      throw out // COMMIT was never sent: nothing committed
    }
    try {
      await lease.query('COMMIT', undefined, queryTimeoutMs, signal)
    } catch (err) {
      const c = classifyError(err, { phase: 'query', sent: lease.sent, connectionLost: lease.lost })
      lease.release(true)
      monitor.reportFailure(member, lease.generation, c)
      if (c.class === 'outcome-unknown' && txid !== null) throw commitUnknown(err, member.name, txid, c)
      // not-sent: the server aborts a transaction whose connection is gone. txid null: nothing was written.
      if ((c.class === 'not-sent' || c.class === 'outcome-unknown') && !ResilientError.is(err, 'E_ABORTED')) {
        throw notCommitted(
          err,
          member.name,
          c,
          txid === null ? 'at COMMIT (nothing was written)' : 'before COMMIT was sent',
        )
      }
      throw err
    }
    if (onLsn) onLsn(await this.#routing.capturePosition(lease, signal))
    lease.release()
    gate.noteWriteSuccess(member)
    return result
  }
}
