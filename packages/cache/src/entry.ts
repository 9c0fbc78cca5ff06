import { ResilientError } from '@resilient/core'
import type { Serializer } from './serializer.js'

/** A value with its logical expiry (end of fresh) and physical expiry (end of grace), epoch ms. */
export interface Entry {
  value: unknown
  exp: number
  hardExp: number
  tags: readonly string[] | undefined
  /** Bytes of the serialized value (UTF-16 length: an estimate used by L1's byte bound). */
  size: number
}

/** A new entry, fresh for `ttlMs` from now and servable as stale for `graceMs` after that. */
export function makeEntry(
  value: unknown,
  payload: string,
  opts: { ttlMs: number; graceMs: number; tags: readonly string[] | undefined },
): Entry {
  const now = Date.now()
  return {
    value,
    exp: now + opts.ttlMs,
    hardExp: now + opts.ttlMs + opts.graceMs,
    tags: opts.tags,
    size: payload.length,
  }
}

/**
 * L2 format: `<exp>:<hardExp>:<tags JSON or empty>\n<payload>`. The Lua lookup reads the
 * leading `<exp>` to decide whether a lease is needed. JSON strings never hold a raw newline.
 */
export function encodeL2(entry: Entry, payload: string): string {
  return `${entry.exp}:${entry.hardExp}:${entry.tags ? JSON.stringify(entry.tags) : ''}\n${payload}`
}

/** Parses an L2 string; `undefined` if it is not in our format or does not deserialize. */
export function decodeL2(raw: string, serializer: Serializer): Entry | undefined {
  const a = raw.indexOf(':')
  const b = a < 0 ? -1 : raw.indexOf(':', a + 1)
  const nl = b < 0 ? -1 : raw.indexOf('\n', b + 1)
  if (nl < 0) return undefined
  const exp = parseMs(raw, 0, a)
  const hardExp = parseMs(raw, a + 1, b)
  if (!Number.isFinite(exp) || !Number.isFinite(hardExp)) return undefined
  let tags: string[] | undefined
  if (nl > b + 1) {
    const t = JSON.parse(raw.slice(b + 1, nl)) as unknown
    if (!Array.isArray(t)) return undefined
    tags = t as string[]
  }
  const payload = raw.slice(nl + 1)
  return { value: serializer.deserialize(payload), exp, hardExp, tags, size: payload.length }
}

/**
 * The number in `raw[from, to)`: a plain run of digits (what encodeL2 writes) is read in
 * place, without a substring; anything else goes through Number() (NaN if it is not one).
 */
function parseMs(raw: string, from: number, to: number): number {
  if (to <= from || to - from > 15) return Number(raw.slice(from, to))
  let n = 0
  for (let i = from; i < to; i++) {
    const d = raw.charCodeAt(i) - 48
    if (d < 0 || d > 9) return Number(raw.slice(from, to))
    n = n * 10 + d
  }
  return n
}

/** Serializes for L2, refusing what the cache must not store. */
export function serializeValue(value: unknown, serializer: Serializer, maxValueBytes: number): string {
  if (value === undefined) {
    throw new ResilientError(
      'E_SERIALIZE',
      'cannot cache undefined: return null to cache "not found" (negative caching)',
    )
  }
  let payload: unknown
  try {
    payload = serializer.serialize(value)
  } catch (err) {
    if (ResilientError.is(err)) throw err
    throw new ResilientError('E_SERIALIZE', 'the serializer refused the value', { cause: err })
  }
  if (typeof payload !== 'string') {
    throw new ResilientError('E_SERIALIZE', 'the serializer must return a string')
  }
  if (payload.length > maxValueBytes || payload.length * 3 > maxValueBytes) {
    const bytes = Buffer.byteLength(payload, 'utf8')
    if (bytes > maxValueBytes) {
      throw new ResilientError(
        'E_LIMIT',
        `value is ${bytes} bytes serialized, more than maxValueBytes (${maxValueBytes})`,
        { details: { bytes, maxValueBytes } },
      )
    }
  }
  return payload
}
