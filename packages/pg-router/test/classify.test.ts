import { ResilientError } from '@resilient/core'
import pg from 'pg'
import { describe, expect, it } from 'vitest'
import { classifyError, mayRetry, roleMismatchError, sqlStateOf } from '../src/classify.js'

/** A DatabaseError as pg builds it from an ErrorResponse. */
function dbError(code: string, severity = 'ERROR'): Error {
  const e = new pg.DatabaseError('server said no', 100, 'error')
  e.code = code
  e.severity = severity
  return e
}

function nodeError(code: string): Error {
  return Object.assign(new Error('socket trouble'), { code, errno: -1, syscall: 'read' })
}

const sentOk = { phase: 'query', sent: true, connectionLost: false } as const
const sentLost = { phase: 'query', sent: true, connectionLost: true } as const
const notSent = { phase: 'query', sent: false, connectionLost: true } as const
const connecting = { phase: 'connect', sent: false, connectionLost: true } as const

describe('classifyError', () => {
  it('25006 on a write means demoted: nothing ran, reroute, suspect', () => {
    const c = classifyError(dbError('25006'), sentOk)
    expect(c).toMatchObject({ class: 'demoted', failoverSignal: true, sqlState: '25006' })
    expect(mayRetry(c.class, 'write')).toBe(true)
  })

  it('E_ABORTED once the statement was sent: outcome unknown (never "not executed"); before: the caller\'s', () => {
    const aborted = new ResilientError('E_ABORTED', 'query was aborted')
    expect(classifyError(aborted, sentLost)).toMatchObject({
      class: 'outcome-unknown',
      failoverSignal: false,
      discardConnection: true,
    })
    expect(classifyError(aborted, { ...notSent, connectionLost: false })).toMatchObject({
      class: 'client',
      failoverSignal: false,
    })
  })

  it('the role check failing on a new connection is demoted too', () => {
    expect(classifyError(roleMismatchError('pg1'), connecting)).toMatchObject({
      class: 'demoted',
      failoverSignal: true,
    })
  })

  it.each(['57P01', '57P02', '57P03'])('%s after the statement was sent: outcome unknown', (code) => {
    const c = classifyError(dbError(code, 'FATAL'), sentLost)
    expect(c).toMatchObject({ class: 'outcome-unknown', failoverSignal: true, discardConnection: true })
    expect(mayRetry(c.class, 'write')).toBe(false)
    expect(mayRetry(c.class, 'idempotent-write')).toBe(true)
    expect(mayRetry(c.class, 'read')).toBe(true)
  })

  it('57P03 while connecting: not sent, safe to retry anything', () => {
    const c = classifyError(dbError('57P03', 'FATAL'), connecting)
    expect(c.class).toBe('not-sent')
    expect(mayRetry(c.class, 'write')).toBe(true)
  })

  it.each(['08006', '08003', '08000', '08P01'])('connection exception %s', (code) => {
    expect(classifyError(dbError(code, 'FATAL'), sentLost).class).toBe('outcome-unknown')
    expect(classifyError(dbError(code, 'FATAL'), notSent).class).toBe('not-sent')
  })

  it('57P05 (idle_session_timeout) discards the connection without suspecting a failover', () => {
    expect(classifyError(dbError('57P05', 'FATAL'), notSent)).toMatchObject({
      failoverSignal: false,
      discardConnection: true,
    })
  })

  it.each(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED', 'EHOSTUNREACH'])(
    'Node %s: sent -> unknown, before sending or connecting -> not sent',
    (code) => {
      expect(classifyError(nodeError(code), sentLost)).toMatchObject({
        class: 'outcome-unknown',
        failoverSignal: true,
        errorCode: code,
      })
      expect(classifyError(nodeError(code), connecting).class).toBe('not-sent')
    },
  )

  it("pg's code-less 'Connection terminated unexpectedly' is judged by the client state, not the text", () => {
    const e = new Error('Connection terminated unexpectedly')
    expect(classifyError(e, sentLost).class).toBe('outcome-unknown')
    expect(classifyError(e, notSent).class).toBe('not-sent')
    // the same text on a healthy connection is not a connection failure at all
    expect(classifyError(e, sentOk)).toMatchObject({ class: 'client', failoverSignal: false })
    // and a different text with the same state classifies the same
    expect(classifyError(new Error('anything'), sentLost).class).toBe('outcome-unknown')
  })

  it('ordinary SQL errors are not retried and not a failover signal', () => {
    for (const code of ['23505', '42P01', '22P02', '40001', '40P01', '42501']) {
      const c = classifyError(dbError(code), sentOk)
      expect(c).toMatchObject({ class: 'server', failoverSignal: false, discardConnection: false })
      expect(mayRetry(c.class, 'read')).toBe(false)
    }
  })

  it('auth failure while connecting is a server error (not retried), too-many-connections is not-sent', () => {
    expect(classifyError(dbError('28P01', 'FATAL'), connecting).class).toBe('server')
    expect(classifyError(dbError('53300', 'FATAL'), connecting)).toMatchObject({
      class: 'not-sent',
      failoverSignal: false,
    })
  })

  it('our own timeouts: a connect timeout suspects the member, a slow statement does not', () => {
    const t = new ResilientError('E_TIMEOUT', 'slow')
    expect(classifyError(t, connecting)).toMatchObject({ class: 'not-sent', failoverSignal: true })
    expect(classifyError(t, sentOk)).toMatchObject({
      class: 'outcome-unknown',
      failoverSignal: false,
      discardConnection: true,
    })
  })

  it('sqlStateOf tells SQLSTATEs from Node codes', () => {
    expect(sqlStateOf(dbError('P0001'))).toBe('P0001')
    expect(sqlStateOf(nodeError('EPIPE'))).toBeUndefined()
    expect(sqlStateOf({ code: '08006' })).toBe('08006')
    expect(sqlStateOf(null)).toBeUndefined()
    expect(sqlStateOf('08006')).toBeUndefined()
  })
})
