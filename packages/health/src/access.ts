import { createHash, timingSafeEqual } from 'node:crypto'

/**
 * Who gets the verbose view of a probe, decided without parsing the request: no URL or
 * header is parsed, split or decoded, so a huge or malformed query string or header costs
 * a bounded scan at most and never changes the answer of a public probe.
 */
export type VerboseMode = boolean | 'query' | { token: string | readonly string[] }

/** The resolved mode: a token is kept only as its SHA-256 digest (never the token itself). */
export type ResolvedVerbose = boolean | 'query' | { digests: readonly Buffer[] }

/** Longest Authorization header compared (`Bearer ` + a token of up to 1 KiB); longer ones never match. */
export const MAX_AUTHORIZATION_LENGTH = 7 + 1024
/** Only this much of a query string is scanned for `verbose=` (the 'query' mode). */
export const MAX_QUERY_SCAN = 2048

export function digestToken(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest()
}

/** `Bearer <token>`, scheme case-insensitive; constant time in the token (digests are compared). */
export function bearerMatches(authorization: unknown, digests: readonly Buffer[]): boolean {
  if (typeof authorization !== 'string') return false
  const n = authorization.length
  if (n < 8 || n > MAX_AUTHORIZATION_LENGTH) return false
  // "bearer " without allocating: compare char codes, case-insensitively.
  const scheme = 'bearer '
  for (let i = 0; i < 7; i++) {
    const c = authorization.charCodeAt(i)
    if ((c >= 65 && c <= 90 ? c + 32 : c) !== scheme.charCodeAt(i)) return false
  }
  const given = createHash('sha256').update(authorization.slice(7), 'utf8').digest()
  let ok = false
  // Every digest is compared (no early exit): the time does not tell which key matched.
  for (const d of digests) if (timingSafeEqual(given, d)) ok = true
  return ok
}

/**
 * `?verbose=1` (anything but `0`/`false`/empty) within the first MAX_QUERY_SCAN characters of
 * the query string, found by a scan: nothing is decoded or allocated.
 */
export function queryAsksVerbose(url: string | undefined): boolean {
  if (typeof url !== 'string') return false
  const q = url.indexOf('?')
  if (q < 0) return false
  const end = Math.min(url.length, q + 1 + MAX_QUERY_SCAN)
  let i = q + 1
  while (i < end) {
    let amp = url.indexOf('&', i)
    if (amp < 0 || amp > end) amp = end
    // key "verbose" followed by '=' or the end of the pair
    if (amp - i >= 7 && url.startsWith('verbose', i) && (amp === i + 7 || url.charCodeAt(i + 7) === 61)) {
      const v = i + 8
      if (amp <= v) return true // "verbose" or "verbose=" (as URLSearchParams reads it: '')
      if (amp - v === 1 && url.charCodeAt(v) === 48) return false // "0"
      if (amp - v === 5 && url.startsWith('false', v)) return false
      return true
    }
    i = amp + 1
  }
  return false
}

/** Decides, per request, whether a probe answers with the verbose view. */
export function verboseGate(
  mode: ResolvedVerbose,
): (url: string | undefined, authorization: unknown) => boolean {
  if (mode === true) return () => true
  if (mode === false) return () => false
  if (mode === 'query') return (url) => queryAsksVerbose(url)
  const { digests } = mode
  return (_url, authorization) => bearerMatches(authorization, digests)
}
