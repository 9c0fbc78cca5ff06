import { inspect } from 'node:util'
import {
  checkArray,
  checkBoolean,
  checkFunction,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkOneOf,
  checkString,
  configError,
  hideSecret,
  optional,
  ResilientError,
  redactUrl,
} from '@resilient/core'
import { describe, expect, it } from 'vitest'

const SECRET = 'hunter2-s3cr3t'

function configFailure(fn: () => unknown): ResilientError {
  try {
    fn()
  } catch (err) {
    expect(ResilientError.is(err, 'E_CONFIG')).toBe(true)
    return err as ResilientError
  }
  throw new Error('expected E_CONFIG')
}

describe('option checks', () => {
  const cases: [string, () => unknown][] = [
    ['checkNumber', () => checkNumber(SECRET, 'pool.max')],
    ['checkNumber min', () => checkNumber(-1, 'pool.max', { min: 0 })],
    ['checkNumber max', () => checkNumber(101, 'pool.max', { max: 100 })],
    ['checkNumber integer', () => checkNumber(1.5, 'pool.max', { integer: true })],
    ['checkNumber NaN', () => checkNumber(Number.NaN, 'pool.max')],
    ['checkString', () => checkString(42, 'pool.max')],
    ['checkString nonEmpty', () => checkString('', 'pool.max', { nonEmpty: true })],
    ['checkBoolean', () => checkBoolean(SECRET, 'pool.max')],
    ['checkFunction', () => checkFunction(SECRET, 'pool.max')],
    ['checkOneOf', () => checkOneOf(SECRET, 'pool.max', ['a', 'b'])],
    ['checkObject', () => checkObject(SECRET, 'pool.max')],
    ['checkArray', () => checkArray(SECRET, 'pool.max')],
    ['checkArray nonEmpty', () => checkArray([], 'pool.max', { nonEmpty: true })],
  ]
  for (const [label, fn] of cases) {
    it(`${label} names the field and never echoes a string value`, () => {
      const err = configFailure(fn)
      expect(err.message).toContain('pool.max')
      expect(err.details.field).toBe('pool.max')
      expect(err.message).not.toContain(SECRET)
      expect(inspect(err)).not.toContain(SECRET)
    })
  }

  it('says what kind of value came in', () => {
    expect(configFailure(() => checkNumber(SECRET, 'a.b')).message).toContain(
      `a string of length ${SECRET.length}`,
    )
    expect(configFailure(() => checkNumber(-3, 'a.b', { min: 0 })).message).toContain('got -3')
    expect(configFailure(() => checkString(null, 'a.b')).message).toContain('got null')
  })

  it('passes good values through', () => {
    expect(checkNumber(5, 'x', { min: 0, max: 10, integer: true })).toBe(5)
    expect(checkNumber(Number.POSITIVE_INFINITY, 'x', { min: 0, integer: true })).toBe(
      Number.POSITIVE_INFINITY,
    )
    expect(checkString('a', 'x', { nonEmpty: true })).toBe('a')
    expect(checkOneOf('b', 'x', ['a', 'b'])).toBe('b')
    expect(checkObject({ a: 1 }, 'x')).toEqual({ a: 1 })
    expect(optional(undefined, 7, (v) => checkNumber(v, 'x'))).toBe(7)
    expect(optional(3, 7, (v) => checkNumber(v, 'x'))).toBe(3)
    expect(() => optional(SECRET, 7, (v) => checkNumber(v, 'x'))).toThrow(/x/)
  })

  it('rejects objects that are not plain', () => {
    expect(() => checkObject(new Map(), 'opts')).toThrow(/opts/)
    expect(() => checkObject([], 'opts')).toThrow(/opts/)
    expect(checkObject(Object.create(null), 'opts')).toBeTruthy()
  })

  it('checkKnownKeys names the unknown key with its path', () => {
    const err = configFailure(() => checkKnownKeys({ max: 1, maxx: 2 }, 'pool', ['max', 'min']))
    expect(err.message).toContain('pool.maxx')
    expect(err.details.field).toBe('pool.maxx')
  })

  it('configError keeps the cause and omits "got" when no value is given', () => {
    const cause = new Error('inner')
    const err = configError('a.b', 'something', undefined, cause)
    expect(err.cause).toBe(cause)
    expect(configError('a.b', 'something').message).toBe('invalid option a.b: expected something')
  })
})

describe('secrets', () => {
  it('hideSecret keeps the value readable but out of inspect, JSON and spreads', () => {
    const conn = hideSecret({ user: 'app', password: SECRET }, 'password')
    expect(conn.password).toBe(SECRET)
    expect(inspect(conn)).not.toContain(SECRET)
    expect(JSON.stringify(conn)).not.toContain(SECRET)
    expect({ ...conn }).not.toHaveProperty('password')
    conn.password = 'new'
    expect(conn.password).toBe('new')
  })

  it('redactUrl masks the password and secret query parameters', () => {
    expect(redactUrl(`http://user:${SECRET}@host:8008/cluster`)).toBe('http://user:***@host:8008/cluster')
    const pg = redactUrl(`postgres://u@db:5432/app?sslpassword=${SECRET}&application_name=x`)
    expect(pg).not.toContain(SECRET)
    expect(pg).toContain('application_name=x')
    expect(redactUrl('http://host:8008/')).toBe('http://host:8008/')
    expect(redactUrl('db1:5432')).toBe('db1:5432')
  })
})
