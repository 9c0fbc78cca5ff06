// The Fastify application: routes only. Everything it talks to is passed in, so a test (or
// another process layout) can build it around its own db, cache and health.
import healthPlugin from '@resilient/health/fastify'
import rywPlugin from '@resilient/pg-router/fastify'
import Fastify from 'fastify'
import { createLibrary, parseBookId, toHttpError } from './library.js'

/** The header that carries a read-your-writes token, both ways. */
export const RYW_HEADER = 'x-ryw-token'

/**
 * @param {{ db: any, cache: any, health: any, exposeDebug?: boolean, logger?: boolean | object }} deps
 */
export async function createApp({ db, cache, health, exposeDebug = false, logger = false }) {
  const library = createLibrary({ db, cache })
  const app = Fastify({ logger, bodyLimit: 16 * 1024 })

  // GET /healthz (liveness), GET /ready (readiness): statuses only, answered from the state
  // the SDK refreshes once per interval. The details and /metrics are on the admin listener
  // (server.js). The plugin also ties health.shutdown() to app.close(): readiness fails,
  // requests drain, then resources close.
  await app.register(healthPlugin, { health })

  // Read-your-writes: request.db = db.session(token from the x-ryw-token header); the
  // session's new token goes back in the same header (onSend).
  await app.register(rywPlugin, { db, header: RYW_HEADER })

  /**
   * The session for a read: only when the client sent a token (it wrote recently and must
   * see that write); otherwise undefined, and the read may be served from the cache.
   * @param {import('fastify').FastifyRequest} request
   */
  const sessionOf = (request) => (request.headers[RYW_HEADER] ? request.db : undefined)

  const idParam = /** @type {const} */ ({
    params: { type: 'object', properties: { id: { type: 'string', maxLength: 64 } }, required: ['id'] },
  })

  app.get('/books/:id', { schema: idParam }, async (request) => {
    const { id } = /** @type {{ id: string }} */ (request.params)
    return library.getBook(parseBookId(id), sessionOf(request))
  })

  app.get('/books', async (request) => {
    const { author } = /** @type {{ author?: string }} */ (request.query)
    return library.findBooks(/** @type {string} */ (author), sessionOf(request))
  })

  app.get('/loans/:id', { schema: idParam }, async (request) => {
    const { id } = /** @type {{ id: string }} */ (request.params)
    return library.getLoan(id, sessionOf(request))
  })

  app.post('/loans', async (request, reply) => {
    const { loan, created } = await library.lend(request.db, /** @type {any} */ (request.body) ?? {})
    reply.code(created ? 201 : 200)
    return loan
  })

  app.post('/loans/:id/return', { schema: idParam }, async (request) => {
    const { id } = /** @type {{ id: string }} */ (request.params)
    const { loan } = await library.giveBack(request.db, id)
    return loan
  })

  if (exposeDebug) {
    // For the demo and the tests; do not expose this publicly.
    app.get('/debug/stats', async () => ({
      cache: cache.stats(),
      topology: db.topology(),
      router: db.stats(),
      process: processStats(),
    }))
  }

  app.setErrorHandler((err, request, reply) => {
    const e = /** @type {any} */ (err)
    if (e?.validation || (typeof e?.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500)) {
      // Schema validation, malformed JSON, body too large.
      reply.code(e.statusCode ?? 400).send({ error: 'BAD_REQUEST', message: e.message })
      return
    }
    const { status, body, retryAfter } = toHttpError(err)
    if (status >= 500 && body.error === 'INTERNAL') request.log.error({ err }, 'request failed')
    if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter))
    reply.code(status).send(body)
  })
  return app
}

/** Heap and open handles (sockets, timers, ...) by type: what a soak test watches for leaks. */
function processStats() {
  /** @type {Record<string, number>} */
  const resources = {}
  for (const type of process.getActiveResourcesInfo()) resources[type] = (resources[type] ?? 0) + 1
  const { heapUsed, rss } = process.memoryUsage()
  return { heapUsed, rss, resources }
}
