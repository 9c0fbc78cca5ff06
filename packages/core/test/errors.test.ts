import { inspect } from 'node:util'
import { ErrorCodes, errorType, ResilientError, toError } from '@resilient/core'
import { describe, expect, it } from 'vitest'

describe('ResilientError', () => {
  it('carries a stable code, keeps its cause and details', () => {
    const cause = new Error('socket hang up')
    const err = new ResilientError('E_NO_PRIMARY', 'no primary', { cause, details: { member: 'pg1' } })
    expect(err).toBeInstanceOf(Error)
    expect(err.code).toBe('E_NO_PRIMARY')
    expect(err.cause).toBe(cause)
    expect(err.details).toEqual({ member: 'pg1' })
    expect(Object.isFrozen(err.details)).toBe(true)
    expect(err.name).toBe('ResilientError')
    expect(ResilientError.is(err)).toBe(true)
    expect(ResilientError.is(err, 'E_NO_PRIMARY')).toBe(true)
    expect(ResilientError.is(err, 'E_TIMEOUT')).toBe(false)
    expect(ResilientError.is(cause)).toBe(false)
    expect(ResilientError.is(null)).toBe(false)
    expect(ResilientError.is('E_NO_PRIMARY')).toBe(false)
  })

  it('has no cause property when none is given', () => {
    const err = new ResilientError('E_LIMIT', 'too many')
    expect('cause' in err).toBe(false)
  })

  it('is recognised across two copies of the package (Symbol.for brand)', async () => {
    // A second module instance of errors.ts: a different class, like a second installed copy.
    const spec = '../src/errors.ts?copy'
    const copy = (await import(/* @vite-ignore */ spec)) as typeof import('../src/errors.js')
    expect(copy.ResilientError).not.toBe(ResilientError)
    const foreign = new copy.ResilientError('E_TIMEOUT', 'slow')
    expect(ResilientError.is(foreign, 'E_TIMEOUT')).toBe(true)
    expect(foreign instanceof ResilientError).toBe(true)
    expect(copy.ResilientError.is(new ResilientError('E_LOADER', 'x'))).toBe(true)
    // A look-alike without the brand is not one.
    expect(ResilientError.is({ code: 'E_TIMEOUT', message: 'x' })).toBe(false)
    expect({ code: 'E_TIMEOUT' } instanceof ResilientError).toBe(false)
  })

  it('keeps the ordinary instanceof for subclasses', () => {
    class Sub extends ResilientError {}
    expect(new Sub('E_CONFLICT', 'x') instanceof Sub).toBe(true)
    expect(new ResilientError('E_CONFLICT', 'x') instanceof Sub).toBe(false)
  })

  it('captures no stack with noStack, and restores Error.stackTraceLimit', () => {
    const before = Error.stackTraceLimit
    const err = new ResilientError('E_CIRCUIT_OPEN', 'open', { noStack: true })
    expect(Error.stackTraceLimit).toBe(before)
    expect(err.stack).not.toMatch(/\n\s+at /)
    const withStack = new ResilientError('E_CIRCUIT_OPEN', 'open')
    expect(withStack.stack).toMatch(/\n\s+at /)
  })

  it('serialises to JSON without the stack', () => {
    const err = new ResilientError('E_COMMIT_UNKNOWN', 'commit unknown', { details: { txid: '42' } })
    expect(JSON.parse(JSON.stringify(err))).toEqual({
      name: 'ResilientError',
      code: 'E_COMMIT_UNKNOWN',
      message: 'commit unknown',
      details: { txid: '42' },
    })
    expect(inspect(err)).toContain('E_COMMIT_UNKNOWN')
  })

  it('lists every code once', () => {
    expect(new Set(ErrorCodes).size).toBe(ErrorCodes.length)
    expect(ErrorCodes).toContain('E_SHUTTING_DOWN')
  })
})

describe('errorType / toError', () => {
  it('names an error by its code, else its class, never its message', () => {
    expect(errorType(new ResilientError('E_TIMEOUT', 'secret text'))).toBe('E_TIMEOUT')
    expect(errorType(Object.assign(new Error('x'), { code: '57P01' }))).toBe('57P01')
    expect(errorType(new TypeError('x'))).toBe('TypeError')
    expect(errorType('boom')).toBe('_OTHER')
    expect(errorType(null)).toBe('_OTHER')
  })

  it('wraps non-errors', () => {
    const e = new Error('x')
    expect(toError(e)).toBe(e)
    expect(toError('boom').message).toBe('boom')
    expect(toError(42).message).toContain('42')
  })
})
