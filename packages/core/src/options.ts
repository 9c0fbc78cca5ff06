import { ResilientError } from './errors.js'

/**
 * Small, explicit option checks. Each throws `E_CONFIG` with a message that names the
 * field (`cache.redisTimeoutMs`), what was expected, and what kind of value came in.
 * Values of strings are never echoed: a password put in the wrong field must not leak.
 */

export function describeValue(value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  switch (typeof value) {
    case 'undefined':
      return 'undefined'
    case 'number':
      return Number.isNaN(value) ? 'NaN' : String(value)
    case 'boolean':
      return String(value)
    case 'string':
      return `a string of length ${value.length}`
    case 'function':
      return 'a function'
    case 'bigint':
      return 'a bigint'
    case 'symbol':
      return 'a symbol'
    default:
      return 'an object'
  }
}

export function configError(
  field: string,
  expected: string,
  ...rest: [got?: unknown, cause?: unknown]
): ResilientError {
  const [got, cause] = rest
  const suffix = rest.length >= 1 ? `, got ${describeValue(got)}` : ''
  return new ResilientError('E_CONFIG', `invalid option ${field}: expected ${expected}${suffix}`, {
    details: { field },
    cause,
  })
}

export interface NumberRule {
  min?: number
  max?: number
  integer?: boolean
}

export function checkNumber(value: unknown, field: string, rule: NumberRule = {}): number {
  const { min, max, integer } = rule
  const expected = `${integer ? 'an integer' : 'a number'}${
    min !== undefined && max !== undefined
      ? ` from ${min} to ${max}`
      : min !== undefined
        ? ` >= ${min}`
        : max !== undefined
          ? ` <= ${max}`
          : ''
  }`
  if (typeof value !== 'number' || Number.isNaN(value)) throw configError(field, expected, value)
  if (integer && !Number.isInteger(value) && Number.isFinite(value)) throw configError(field, expected, value)
  if (min !== undefined && value < min) throw configError(field, expected, value)
  if (max !== undefined && value > max) throw configError(field, expected, value)
  return value
}

export function checkString(value: unknown, field: string, opts: { nonEmpty?: boolean } = {}): string {
  if (typeof value !== 'string' || (opts.nonEmpty && value.length === 0)) {
    throw configError(field, opts.nonEmpty ? 'a non-empty string' : 'a string', value)
  }
  return value
}

export function checkBoolean(value: unknown, field: string): boolean {
  if (typeof value !== 'boolean') throw configError(field, 'true or false', value)
  return value
}

export function checkFunction<F extends Function>(value: unknown, field: string): F {
  if (typeof value !== 'function') throw configError(field, 'a function', value)
  return value as F
}

export function checkOneOf<T extends string>(value: unknown, field: string, allowed: readonly T[]): T {
  if (typeof value !== 'string' || !allowed.includes(value as T)) {
    throw configError(field, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, value)
  }
  return value as T
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

export function checkObject(value: unknown, field: string): Record<string, unknown> {
  if (!isPlainObject(value)) throw configError(field, 'an object', value)
  return value
}

export function checkArray(value: unknown, field: string, opts: { nonEmpty?: boolean } = {}): unknown[] {
  if (!Array.isArray(value) || (opts.nonEmpty && value.length === 0)) {
    throw configError(field, opts.nonEmpty ? 'a non-empty array' : 'an array', value)
  }
  return value
}

/** Throws E_CONFIG for the first key of `obj` that is not in `allowed` (a typo is a bug). */
export function checkKnownKeys(
  obj: Record<string, unknown>,
  field: string,
  allowed: readonly string[],
): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      const where = field ? `${field}.${key}` : key
      throw new ResilientError('E_CONFIG', `unknown option ${where}: expected one of ${allowed.join(', ')}`, {
        details: { field: where },
      })
    }
  }
}

/** `undefined` means "use the default"; anything else is checked. */
export function optional<T>(value: unknown, fallback: T, check: (v: unknown) => T): T {
  return value === undefined ? fallback : check(value)
}

/**
 * Makes `key` non-enumerable on `obj` (as pg-pool does for `password`), so that it is
 * left out of `util.inspect`, `JSON.stringify` and spreads, but still readable.
 */
export function hideSecret<T extends object>(obj: T, key: string): T {
  if (Object.hasOwn(obj, key)) {
    const value = (obj as Record<string, unknown>)[key]
    Object.defineProperty(obj, key, { value, enumerable: false, writable: true, configurable: true })
  }
  return obj
}

const SECRET_PARAMS = new Set(['password', 'passwd', 'pass', 'pwd', 'secret', 'token', 'sslpassword', 'auth'])

/**
 * `http://user:secret@host:8008/x` -> `http://user:***@host:8008/x`; query parameters that
 * carry secrets (`?password=`, `?sslpassword=`, `?token=`...) become `***` too. A string that
 * does not parse as a URL (`db1:5432`) comes back unchanged.
 */
export function redactUrl(url: string): string {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    return url
  }
  if (u.password) u.password = '***'
  for (const key of [...u.searchParams.keys()]) {
    if (SECRET_PARAMS.has(key.toLowerCase())) u.searchParams.set(key, '***')
  }
  return u.toString()
}
