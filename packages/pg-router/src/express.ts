import type { IncomingMessage, ServerResponse } from 'node:http'
import {
  appendSetCookie,
  checkSessionSource,
  openSession,
  type RywOptions,
  type RywSessionLike,
  type RywSessionSource,
  resolveRywOptions,
  responseToken,
  serializeCookie,
  tokenFromRequest,
} from './ryw-http.js'
import type { Session } from './session.js'

export type { RywCookieOptions, RywOptions, RywSessionLike, RywSessionSource } from './ryw-http.js'
export { DEFAULT_RYW_OPTIONS } from './ryw-http.js'

/**
 * Read-your-writes for Express (and any connect-style server): each request gets
 * `req.db = db.session(token)` where the token comes from the request; once the handler's
 * writes are done and the response starts, the session's new token goes back in a header
 * (and a cookie, when configured), so the client's next request reads its own writes.
 */

type Next = (err?: unknown) => void

/** A request as this middleware leaves it. */
export type RywRequest<S extends RywSessionLike = RywSessionLike> = IncomingMessage & { db: S }

/**
 * Express middleware: `app.use(rywSession(db))`. Sets `req.db` to `db.session(token)` and
 * adds the session's new token to the response (header, and cookie if configured) just
 * before the headers go out. Writes that finish after the response started cannot be
 * reflected: await them before responding.
 */
export function rywSession<S extends RywSessionLike>(
  db: RywSessionSource<S>,
  options: RywOptions = {},
): (req: IncomingMessage, res: ServerResponse, next: Next) => void {
  checkSessionSource(db)
  const o = resolveRywOptions(options)
  return function rywSessionMiddleware(req, res, next) {
    let session: S
    const incoming = tokenFromRequest(req.headers, o)
    try {
      session = openSession(db, incoming)
    } catch (err) {
      next(err)
      return
    }
    ;(req as RywRequest<S>).db = session
    const writeHead = res.writeHead
    let done = false
    // Node's implicit headers (res.end / res.write / res.send without writeHead) also go
    // through writeHead, so this runs exactly once, before any header byte is sent.
    res.writeHead = function writeHeadWithToken(this: ServerResponse, ...args: unknown[]) {
      if (!done) {
        done = true
        try {
          const token = responseToken(session, incoming)
          if (token !== undefined && !this.headersSent) {
            this.setHeader(o.header, token)
            if (o.cookie) {
              this.setHeader(
                'set-cookie',
                appendSetCookie(this.getHeader('set-cookie'), serializeCookie(token, o.cookie)),
              )
            }
          }
        } catch {
          // A token the HTTP layer refuses must not break the response: it just goes without.
        }
      }
      return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args)
    } as ServerResponse['writeHead']
    next()
  }
}

declare global {
  namespace Express {
    interface Request {
      /** The read-your-writes session of this request (set by @resilient/pg-router/express). */
      db: Session
    }
  }
}
