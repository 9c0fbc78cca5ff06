import { ResilientError } from '@resilient/core'

/**
 * What a failed statement means for retrying it. Decided from SQLSTATE, Node error codes
 * and the connection's own state: never from message text.
 *
 * - `not-sent`: the statement never reached a server (no connection, connection already
 *   broken before dispatch, server refused the connection). Safe to retry anything.
 * - `demoted`: a server refused to write because it is (now) read-only (SQLSTATE 25006) or the
 *   connection's role check found it in recovery. Nothing was executed: reroute to the primary.
 * - `outcome-unknown`: the statement was sent and the connection died (or was terminated by
 *   the server) before an answer. Retry only reads and idempotent writes.
 * - `server`: an ordinary SQL error on a healthy connection (constraint, syntax, permission).
 *   Not retried; not a failover signal.
 * - `client`: the driver refused the call locally (bad parameters) on a healthy connection.
 */
export type ErrorClass = 'not-sent' | 'demoted' | 'outcome-unknown' | 'server' | 'client'

export interface Classification {
  class: ErrorClass
  /** The member looks unhealthy: the monitor should look again now (fast discovery). */
  failoverSignal: boolean
  /** The connection can no longer be reused. */
  discardConnection: boolean
  sqlState?: string
  errorCode?: string
}

export interface ClassifyContext {
  /** `connect`: while opening or checking out a connection; `query`: a statement was dispatched. */
  phase: 'connect' | 'query'
  /** The statement was handed to a connection that was healthy at that moment. */
  sent: boolean
  /** The connection is broken now (pg client not queryable, ending, or ended). */
  connectionLost: boolean
}

/** Node socket/DNS error codes that mean "the connection (or the attempt) is gone". */
export const CONNECTION_ERROR_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EADDRNOTAVAIL',
  'ERR_STREAM_DESTROYED',
  'ERR_STREAM_WRITE_AFTER_END',
  'ERR_SOCKET_CLOSED',
  'ERR_SSL_WRONG_VERSION_NUMBER',
])

/** SQLSTATEs the server sends when it is going away (or not ready to take connections). */
const SHUTDOWN_STATES: ReadonlySet<string> = new Set(['57P01', '57P02', '57P03'])

/** A five-character SQLSTATE, as pg's DatabaseError carries in `code`. */
export function sqlStateOf(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined
  const code = (err as { code?: unknown }).code
  if (typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code)) return undefined
  // Every SQLSTATE holds a digit ('08006', 'P0001'); five-letter Node codes ('EPIPE') do not.
  return 'severity' in err || /[0-9]/.test(code) ? code : undefined
}

export function errorCodeOf(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' ? code : undefined
}

/** The error our role check throws when a connection meant for writes is in recovery. */
export function roleMismatchError(member: string): ResilientError {
  return new ResilientError('E_NO_PRIMARY', `member ${member} is in recovery (not a primary)`, {
    details: { member, reason: 'in-recovery' },
    noStack: true,
  })
}

/** A connect that was waiting in a pool generation that got drained (a suspected primary). */
export function drainedError(member: string): ResilientError {
  return new ResilientError('E_NO_PRIMARY', `member ${member} was drained while waiting for a connection`, {
    details: { member, reason: 'drained' },
    noStack: true,
  })
}

export function isRoleMismatch(err: unknown): boolean {
  return ResilientError.is(err, 'E_NO_PRIMARY') && err.details.reason === 'in-recovery'
}

function result(
  cls: ErrorClass,
  failoverSignal: boolean,
  discardConnection: boolean,
  sqlState: string | undefined,
  errorCode: string | undefined,
): Classification {
  const out: Classification = { class: cls, failoverSignal, discardConnection }
  if (sqlState) out.sqlState = sqlState
  if (errorCode && errorCode !== sqlState) out.errorCode = errorCode
  return out
}

export function classifyError(err: unknown, ctx: ClassifyContext): Classification {
  const sqlState = sqlStateOf(err)
  const errorCode = errorCodeOf(err)
  const lost = ctx.connectionLost
  const unsentOr = (c: ErrorClass): ErrorClass => (ctx.phase === 'connect' || !ctx.sent ? 'not-sent' : c)

  if (isRoleMismatch(err)) return result('demoted', true, false, undefined, 'E_NO_PRIMARY')
  if (ResilientError.is(err)) {
    if (err.code === 'E_NO_PRIMARY' && err.details.reason === 'drained') {
      return result('not-sent', false, true, undefined, err.code)
    }
    switch (err.code) {
      case 'E_ABORTED':
        // The caller gave up. Once the statement may have reached the server its outcome is
        // unknown (a COMMIT waiting for a sync standby has already committed locally).
        return ctx.phase === 'query' && ctx.sent
          ? result('outcome-unknown', false, true, undefined, err.code)
          : result('client', false, lost, undefined, err.code)
      case 'E_TIMEOUT':
        // A connect that timed out is a sick member; a slow statement is not, but its connection is gone.
        return ctx.phase === 'connect'
          ? result('not-sent', true, true, undefined, err.code)
          : result(unsentOr('outcome-unknown'), false, true, undefined, err.code)
      default:
        return result('client', false, lost, undefined, err.code)
    }
  }

  if (sqlState) {
    if (sqlState === '25006') return result('demoted', true, lost, sqlState, errorCode)
    if (SHUTDOWN_STATES.has(sqlState)) {
      // 57P01 can arrive after COMMIT was applied locally (terminated while waiting for a sync standby).
      return result(unsentOr('outcome-unknown'), true, true, sqlState, errorCode)
    }
    if (sqlState === '57P05') {
      // idle_session_timeout: the server closed one idle connection; nothing is failing over
      return result(unsentOr('outcome-unknown'), false, true, sqlState, errorCode)
    }
    if (sqlState.startsWith('08')) return result(unsentOr('outcome-unknown'), true, true, sqlState, errorCode)
    if (sqlState === '53300' || sqlState === '53400') {
      // too many connections: the member is busy, not failing over
      return result(unsentOr('server'), false, true, sqlState, errorCode)
    }
    if (ctx.phase === 'connect') return result('server', false, true, sqlState, errorCode)
    return result('server', false, lost, sqlState, errorCode)
  }

  if (errorCode && CONNECTION_ERROR_CODES.has(errorCode)) {
    return result(unsentOr('outcome-unknown'), true, true, undefined, errorCode)
  }

  // No code at all: decide from where we were and the connection's state.
  if (ctx.phase === 'connect') return result('not-sent', true, true, undefined, errorCode)
  if (!ctx.sent) return result('not-sent', true, true, undefined, errorCode)
  if (lost) return result('outcome-unknown', true, true, undefined, errorCode)
  return result('client', false, false, undefined, errorCode)
}

/** Whether a failure of this class may be retried for a statement of this kind. */
export function mayRetry(cls: ErrorClass, kind: 'read' | 'write' | 'idempotent-write'): boolean {
  switch (cls) {
    case 'not-sent':
    case 'demoted':
      return true
    case 'outcome-unknown':
      return kind !== 'write'
    default:
      return false
  }
}

/** The statement (txid null) or COMMIT (txid set) may have reached the server, and no answer came. */
export function commitUnknown(
  err: unknown,
  member: string,
  txid: string | null,
  c: Classification,
): ResilientError {
  return new ResilientError(
    'E_COMMIT_UNKNOWN',
    txid === null
      ? `the connection to ${member} was lost after the statement was sent: it may or may not have been applied`
      : `the connection to ${member} was lost after COMMIT was sent: transaction ${txid} may or may not have committed`,
    { cause: err, details: { member, txid, sqlState: c.sqlState, errorCode: c.errorCode } },
  )
}

/**
 * A transaction whose connection died before COMMIT was sent: the server rolled it back, so it
 * certainly did not commit and running it again is safe (as far as the database goes).
 */
export function notCommitted(err: unknown, member: string, c: Classification, stage: string): ResilientError {
  return new ResilientError(
    'E_NO_PRIMARY',
    `the connection to ${member} was lost ${stage}: the transaction did not commit and may be retried`,
    {
      cause: err,
      details: {
        member,
        reason: 'connection-lost',
        committed: false,
        retryable: true,
        sqlState: c.sqlState,
        errorCode: c.errorCode,
      },
    },
  )
}

export function isNotCommitted(err: unknown): err is ResilientError {
  return ResilientError.is(err, 'E_NO_PRIMARY') && err.details.reason === 'connection-lost'
}
