import { ResilientError } from '@resilient/core'

/** Turns a value into the string stored in L2 and back. Both directions may throw. */
export interface Serializer {
  serialize(value: unknown): string
  deserialize(text: string): unknown
}

function refuse(path: string, what: string): never {
  throw new ResilientError(
    'E_SERIALIZE',
    `cannot cache ${what} at ${path || 'the top level'}: JSON would not give it back unchanged; ` +
      'convert it first (e.g. a Date to an ISO string) or pass a serializer that supports it',
    { details: { path: path || '$' } },
  )
}

const REFUSED_TYPES: Record<string, string | undefined> = {
  bigint: 'a BigInt',
  undefined: 'undefined',
  function: 'a function',
  symbol: 'a symbol',
}

function check(value: unknown, path: string, seen: Set<object>): void {
  const type = typeof value
  if (type === 'string' || type === 'boolean') return
  if (type === 'number') {
    if (!Number.isFinite(value)) refuse(path, `the number ${value}`)
    return
  }
  const refused = REFUSED_TYPES[type]
  if (refused) refuse(path, refused)
  if (value === null) return
  const obj = value as object
  if (seen.has(obj)) refuse(path, 'a circular reference')
  if (Array.isArray(obj)) {
    seen.add(obj)
    for (let i = 0; i < obj.length; i++) check(obj[i], `${path}[${i}]`, seen)
    seen.delete(obj)
    return
  }
  const proto = Object.getPrototypeOf(obj)
  if (proto !== Object.prototype && proto !== null) {
    const name = (proto?.constructor as { name?: string } | undefined)?.name
    refuse(path, `an instance of ${name || 'a class'}`)
  }
  seen.add(obj)
  for (const k of Object.keys(obj)) check((obj as Record<string, unknown>)[k], `${path}.${k}`, seen)
  seen.delete(obj)
}

/**
 * The default serializer: JSON, strict. It refuses (E_SERIALIZE, naming the path) every
 * value that `JSON.parse(JSON.stringify(v))` would not give back equal: BigInt, undefined,
 * functions, symbols, NaN and Infinity, Date, Map, Set and other class instances, and
 * circular references. So a value read from the cache has the same shape as the value
 * the loader returned. `null` is fine (negative caching).
 */
export const jsonSerializer: Serializer = {
  serialize(value: unknown): string {
    check(value, '', new Set())
    return JSON.stringify(value)
  },
  deserialize(text: string): unknown {
    return JSON.parse(text)
  },
}
