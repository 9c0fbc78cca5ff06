import type { IncomingHttpHeaders } from 'node:http'
import {
  checkBoolean,
  checkFunction,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkOneOf,
  checkString,
  configError,
  optional,
} from '@resilient/core'

/**
 * What the Express middleware and the Fastify plugin share: options, reading the token from
 * a request, and the cookie. No framework is imported here.
 */

/** What the middleware needs of a session: a token that changes after writes. */
export interface RywSessionLike {
  readonly token: string
}

/** What the middleware needs of the router: `db.session(token?)`. */
export interface RywSessionSource<S extends RywSessionLike = RywSessionLike> {
  session(token?: string): S
}

export interface RywCookieOptions {
  /** Cookie name. */
  name: string
  /** @default '/' */
  path?: string
  /** Lifetime in seconds; the token only matters for as long as replicas may lag. @default 300 */
  maxAgeSec?: number
  /** @default true */
  httpOnly?: boolean
  /** @default false (set true behind HTTPS) */
  secure?: boolean
  /** @default 'lax' */
  sameSite?: 'lax' | 'strict' | 'none'
}

export interface RywOptions {
  /** Request and response header that carries the token. @default 'x-ryw-token' */
  header?: string
  /**
   * Also read the token from, and send it back in, this cookie: a name, or cookie options.
   * A token in the header wins over the cookie. @default undefined (no cookie)
   */
  cookie?: string | RywCookieOptions
  /** Tokens longer than this are ignored (a fresh session is used). @default 1024 */
  maxTokenLength?: number
}

export const DEFAULT_RYW_OPTIONS = Object.freeze({
  header: 'x-ryw-token',
  maxTokenLength: 1024,
  cookie: Object.freeze({
    path: '/',
    maxAgeSec: 300,
    httpOnly: true,
    secure: false,
    sameSite: 'lax' as const,
  }),
})

export interface ResolvedRywOptions {
  header: string
  maxTokenLength: number
  cookie: Required<RywCookieOptions> | undefined
}

const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const COOKIE_VALUE_CHARS = /^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*$/
const PATH_CHARS = /^[\x20-\x3A\x3C-\x7E]*$/

/** Checks the middleware options once; E_CONFIG names the field (`ryw.cookie.name`). */
export function resolveRywOptions(options: unknown, field = 'ryw'): ResolvedRywOptions {
  const o = optional(options, {}, (v) => checkObject(v, field))
  checkKnownKeys(o, field, ['header', 'cookie', 'maxTokenLength'])
  const header = optional(o.header, DEFAULT_RYW_OPTIONS.header, (v) =>
    checkString(v, `${field}.header`, { nonEmpty: true }),
  ).toLowerCase()
  if (!TOKEN_CHARS.test(header)) throw configError(`${field}.header`, 'an HTTP header name')
  const maxTokenLength = optional(o.maxTokenLength, DEFAULT_RYW_OPTIONS.maxTokenLength, (v) =>
    checkNumber(v, `${field}.maxTokenLength`, { min: 16, max: 8192, integer: true }),
  )
  let cookie: Required<RywCookieOptions> | undefined
  if (o.cookie !== undefined) {
    const D = DEFAULT_RYW_OPTIONS.cookie
    const c = typeof o.cookie === 'string' ? { name: o.cookie } : checkObject(o.cookie, `${field}.cookie`)
    checkKnownKeys(c, `${field}.cookie`, ['name', 'path', 'maxAgeSec', 'httpOnly', 'secure', 'sameSite'])
    const nameField = typeof o.cookie === 'string' ? `${field}.cookie` : `${field}.cookie.name`
    const name = checkString(c.name, nameField, { nonEmpty: true })
    if (!TOKEN_CHARS.test(name)) throw configError(nameField, 'a cookie name (RFC 6265 token)')
    const path = optional(c.path, D.path, (v) => checkString(v, `${field}.cookie.path`, { nonEmpty: true }))
    if (!PATH_CHARS.test(path))
      throw configError(`${field}.cookie.path`, 'a path without ; or control characters')
    cookie = {
      name,
      path,
      maxAgeSec: optional(c.maxAgeSec, D.maxAgeSec, (v) =>
        checkNumber(v, `${field}.cookie.maxAgeSec`, { min: 1, max: 31_536_000, integer: true }),
      ),
      httpOnly: optional(c.httpOnly, D.httpOnly, (v) => checkBoolean(v, `${field}.cookie.httpOnly`)),
      secure: optional(c.secure, D.secure, (v) => checkBoolean(v, `${field}.cookie.secure`)),
      sameSite: optional(c.sameSite, D.sameSite, (v) =>
        checkOneOf(v, `${field}.cookie.sameSite`, ['lax', 'strict', 'none'] as const),
      ),
    }
    if (cookie.sameSite === 'none' && !cookie.secure) {
      throw configError(`${field}.cookie.secure`, "true when sameSite is 'none' (browsers drop it otherwise)")
    }
  }
  return { header, maxTokenLength, cookie }
}

export function checkSessionSource(db: unknown, field = 'db'): void {
  if (typeof db !== 'object' || db === null)
    throw configError(field, 'a router (an object with session())', db)
  checkFunction((db as { session?: unknown }).session, `${field}.session`)
}

/** The token a request carries: the header first, then the cookie; undefined when absent or unusable. */
export function tokenFromRequest(headers: IncomingHttpHeaders, o: ResolvedRywOptions): string | undefined {
  const h = headers[o.header]
  let token = Array.isArray(h) ? h[0] : h
  if ((token === undefined || token === '') && o.cookie) token = cookieValue(headers.cookie, o.cookie.name)
  if (token === undefined) return undefined
  token = token.trim()
  if (token.length === 0 || token.length > o.maxTokenLength) return undefined
  return token
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq < 0 || part.slice(0, eq).trim() !== name) continue
    let raw = part.slice(eq + 1).trim()
    if (raw.length >= 2 && raw.startsWith('"') && raw.endsWith('"')) raw = raw.slice(1, -1)
    try {
      return decodeURIComponent(raw)
    } catch {
      return undefined
    }
  }
  return undefined
}

export function serializeCookie(token: string, c: Required<RywCookieOptions>): string {
  const value = encodeURIComponent(token)
  // encodeURIComponent leaves only cookie-safe characters; checked anyway (defense in depth).
  if (!COOKIE_VALUE_CHARS.test(value)) throw new TypeError('token is not cookie-safe')
  let s = `${c.name}=${value}; Path=${c.path}; Max-Age=${c.maxAgeSec}`
  if (c.httpOnly) s += '; HttpOnly'
  if (c.secure) s += '; Secure'
  s += `; SameSite=${c.sameSite === 'lax' ? 'Lax' : c.sameSite === 'strict' ? 'Strict' : 'None'}`
  return s
}

/** A session for the token; a token the router refuses (malformed, foreign) gives a fresh session. */
export function openSession<S extends RywSessionLike>(db: RywSessionSource<S>, token: string | undefined): S {
  if (token === undefined) return db.session()
  try {
    return db.session(token)
  } catch {
    return db.session()
  }
}

/** The headers to add to a response: none unless the session's token moved past the request's. */
export function responseToken(session: RywSessionLike, incoming: string | undefined): string | undefined {
  const token = session.token
  if (typeof token !== 'string' || token.length === 0 || token === incoming) return undefined
  return token
}

export function appendSetCookie(current: number | string | string[] | undefined, cookie: string): string[] {
  if (current === undefined) return [cookie]
  if (Array.isArray(current)) return [...current, cookie]
  return [String(current), cookie]
}
