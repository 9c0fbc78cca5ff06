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
    this.details = Object.freeze({ ...options.details })
    Object.defineProperty(this, brand, { value: true })
  }

  override get name(): string {
    return 'ResilientError'
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
