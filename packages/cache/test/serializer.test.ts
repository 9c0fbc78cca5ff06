import { createCache, jsonSerializer } from '@resilient/cache'
import { ResilientError } from '@resilient/core'
import { describe, expect, it } from 'vitest'

function serializeError(value: unknown): ResilientError {
  try {
    jsonSerializer.serialize(value)
  } catch (err) {
    expect(ResilientError.is(err, 'E_SERIALIZE')).toBe(true)
    return err as ResilientError
  }
  throw new Error('expected E_SERIALIZE')
}

describe('jsonSerializer (strict)', () => {
  it('round-trips what JSON gives back unchanged, null included', () => {
    const value = { a: 1, b: 'x', c: [true, null, { d: -2.5 }], e: null, f: Object.create(null) }
    const text = jsonSerializer.serialize(value)
    expect(jsonSerializer.deserialize(text)).toEqual(JSON.parse(JSON.stringify(value)))
    expect(jsonSerializer.serialize(null)).toBe('null')
  })

  it.each([
    ['BigInt', 10n, 'a BigInt', '$'],
    ['Date', { at: new Date(0) }, 'an instance of Date', '.at'],
    ['Map', { m: new Map() }, 'an instance of Map', '.m'],
    ['NaN', { list: [1, Number.NaN] }, 'the number NaN', '.list[1]'],
    ['Infinity', { n: Number.POSITIVE_INFINITY }, 'the number Infinity', '.n'],
    ['nested undefined', { u: undefined }, 'undefined', '.u'],
    ['function', { f: () => 1 }, 'a function', '.f'],
    ['symbol', [Symbol('s')], 'a symbol', '[0]'],
  ])('refuses a %s with a message naming what and where', (_label, value, what, path) => {
    const err = serializeError(value)
    expect(err.message).toContain(what)
    expect(err.details.path).toBe(path)
  })

  it('refuses circular references instead of overflowing', () => {
    const a: Record<string, unknown> = {}
    a.self = a
    expect(serializeError(a).message).toContain('circular')
  })

  it('accepts the same object twice when it is not a cycle', () => {
    const shared = { x: 1 }
    expect(jsonSerializer.serialize({ a: shared, b: shared })).toBe('{"a":{"x":1},"b":{"x":1}}')
  })
})

describe('values the cache refuses', () => {
  it('refuses undefined (return null to cache "not found") and over-large values', async () => {
    const cache = createCache({ redis: false, maxValueBytes: 16 })
    const undef = await cache.getOrLoad('k', () => undefined).catch((e: unknown) => e)
    expect(ResilientError.is(undef, 'E_SERIALIZE')).toBe(true)
    expect((undef as Error).message).toContain('return null')
    const big = await cache.set('k', 'x'.repeat(100)).catch((e: unknown) => e)
    expect(ResilientError.is(big, 'E_LIMIT')).toBe(true)
    expect((big as Error).message).toContain('maxValueBytes (16)')
    // multi-byte characters are counted in UTF-8 bytes: 6 characters, 18 bytes + quotes
    await expect(cache.set('k', '€€€€€€')).rejects.toThrow('20 bytes')
    // nothing was stored by the failed calls
    expect(await cache.get('k')).toBeUndefined()
    await cache.close()
  })

  it('uses a custom serializer when given one', async () => {
    const cache = createCache({
      redis: false,
      serializer: {
        serialize: (v) => String((v as bigint).toString()),
        deserialize: (t) => BigInt(t),
      },
    })
    expect(await cache.getOrLoad('n', () => 12345678901234567890n)).toBe(12345678901234567890n)
    await cache.close()
  })
})
