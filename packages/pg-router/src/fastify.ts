import type { FastifyPluginCallback } from 'fastify'
import fp from 'fastify-plugin'
import {
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
 * Read-your-writes for Fastify 5: `await app.register(rywPlugin, { db })`. Each request gets
 * `request.db = db.session(token)` (token from the `x-ryw-token` header, or the cookie when
 * configured); an onSend hook adds the session's new token to the reply. Replies sent with
 * `reply.hijack()` skip onSend and so carry no token.
 */
export interface RywPluginOptions<S extends RywSessionLike = RywSessionLike> extends RywOptions {
  /** The router (anything with `session(token?)`). */
  db: RywSessionSource<S>
}

const kIncoming = Symbol('resilient.ryw.incoming')

declare module 'fastify' {
  interface FastifyRequest {
    /** The read-your-writes session of this request (set by @resilient/pg-router/fastify). */
    db: Session
  }
}

const plugin: FastifyPluginCallback<RywPluginOptions> = (fastify, options, done) => {
  const { db, ...rest } = (options ?? {}) as RywPluginOptions
  let o: ReturnType<typeof resolveRywOptions>
  try {
    checkSessionSource(db, 'db')
    o = resolveRywOptions(rest, 'ryw')
  } catch (err) {
    // A callback plugin must report through done(): a throw here would be uncaught.
    done(err as Error)
    return
  }
  fastify.decorateRequest('db', null as unknown as Session)
  fastify.addHook('onRequest', (request, _reply, next) => {
    const incoming = tokenFromRequest(request.headers, o)
    ;(request as unknown as Record<symbol, unknown>)[kIncoming] = incoming
    try {
      request.db = openSession(db, incoming) as unknown as Session
    } catch (err) {
      next(err as Error)
      return
    }
    next()
  })
  fastify.addHook('onSend', (request, reply, payload, next) => {
    const session = request.db
    if (session) {
      try {
        const token = responseToken(
          session,
          (request as unknown as Record<symbol, unknown>)[kIncoming] as string,
        )
        if (token !== undefined) {
          reply.header(o.header, token)
          if (o.cookie) {
            // Fastify appends to set-cookie: cookies set by the handler stay.
            reply.header('set-cookie', serializeCookie(token, o.cookie))
          }
        }
      } catch {
        // A token the HTTP layer refuses must not break the reply: it just goes without.
      }
    }
    next(null, payload)
  })
  done()
}

export const rywPlugin = fp(plugin, { name: '@resilient/pg-router/fastify', fastify: '5.x' })
export default rywPlugin
