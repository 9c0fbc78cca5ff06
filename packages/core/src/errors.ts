/**
 * One error class for the whole SDK. Callers match on `code`, never on `message`.
 */

/** Every stable error code. The table in the README lists what each means. */
export const ErrorCodes = [
  'E_CONFIG',
  'E_NO_PRIMARY',
  'E_FAILOVER_TIMEOUT',
  'E_COMMIT_UNKNOWN',
  'E_DISCOVERY',
  'E_CIRCUIT_OPEN',
  'E_TIMEOUT',
  'E_CACHE_UNAVAILABLE',
  'E_LOADER',
  'E_SHUTTING_DOWN',
  'E_ABORTED',
  'E_CONFLICT',
  'E_LIMIT',
  'E_SERIALIZE',
] as const

export type ErrorCode = (typeof ErrorCodes)[number]

const brand = Symbol.for('@resilient/core.ResilientError')
const NO_DETAILS: Readonly<Record<string, unknown>> = Object.freeze({})

export interface ResilientErrorOptions {
  cause?: unknown
  /** Extra, non-secret facts about the failure (a txid, a field name, a member name). */
  details?: Record<string, unknown>
  /** Skip the stack capture: for errors created on hot paths (a breaker rejecting while open). */
  noStack?: boolean
}

export class ResilientError extends Error {
  readonly code: ErrorCode
  readonly details: Readonly<Record<string, unknown>>
  declare readonly cause?: unknown

  constructor(code: ErrorCode, message: string, options: ResilientErrorOptions = {}) {
    if (options.noStack) {
      const limit = Error.stackTraceLimit
      Error.stackTraceLimit = 0
      super(message, options.cause === undefined ? undefined : { cause: options.cause })
      Error.stackTraceLimit = limit
    } else {
      super(message, options.cause === undefined ? undefined : { cause: options.cause })
    }
    this.code = code
    const details = options.details
    // A frozen details object is kept as is (hot paths pass one made once); others are copied and frozen.
    this.details =
      details === undefined ? NO_DETAILS : Object.isFrozen(details) ? details : Object.freeze({ ...details })
  }

  override get name(): string {
    return 'ResilientError'
  }

  /**
   * `err instanceof ResilientError` is true for a ResilientError from any copy of this
   * package (two versions installed side by side), like `ResilientError.is(err)`.
   */
  static override [Symbol.hasInstance](value: unknown): boolean {
    // A subclass keeps the ordinary prototype check: `this` is the class `instanceof` asked about.
    // biome-ignore lint/complexity/noThisInStatic: `this` is deliberately the subclass here
    if (this !== ResilientError) return Function.prototype[Symbol.hasInstance].call(this, value)
    return ResilientError.is(value)
  }

  /** What `JSON.stringify` and structured loggers see: no stack, the cause's code and name only. */
  toJSON(): { name: string; code: ErrorCode; message: string; details: Readonly<Record<string, unknown>> } {
    return { name: this.name, code: this.code, message: this.message, details: this.details }
  }

  /** True for any ResilientError, even one from another copy of this package. */
  static is(err: unknown, code?: ErrorCode): err is ResilientError {
    return (
      typeof err === 'object' &&
      err !== null &&
      (err as Record<symbol, unknown>)[brand] === true &&
      (code === undefined || (err as ResilientError).code === code)
    )
  }
}

/**
 * A short, stable, low-cardinality name for an error, for metrics (`error.type`) and logs:
 * the `code` of a ResilientError, else a string `code` (a SQLSTATE, `ECONNRESET`), else the
 * error's class name, else `_OTHER`. Never the message.
 */
export function errorType(err: unknown): string {
  if (typeof err === 'object' && err !== null) {
    const code = (err as { code?: unknown }).code
    if (typeof code === 'string' && code.length > 0 && code.length <= 64) return code
    const name = (err as { name?: unknown }).name
    if (typeof name === 'string' && name.length > 0 && name.length <= 64) return name
  }
  return '_OTHER'
}

// The brand lives on the prototype: set once, inherited by every instance and subclass.
Object.defineProperty(ResilientError.prototype, brand, { value: true })

export function isResilientError(err: unknown, code?: ErrorCode): err is ResilientError {
  return ResilientError.is(err, code)
}

/** The thrown value as an Error, without losing what it was. */
export function toError(value: unknown): Error {
  if (value instanceof Error) return value
  return new Error(typeof value === 'string' ? value : `non-error thrown: ${safeString(value)}`)
}

function safeString(value: unknown): string {
  try {
    return String(value)
  } catch {
    return Object.prototype.toString.call(value)
  }
}
