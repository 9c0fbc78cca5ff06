// The Express application: routes only. Everything it talks to is passed in, so a test (or
// another process layout) can build it around its own db, cache and health.
import { healthRoutes } from '@resilient/health/express'
import { rywSession } from '@resilient/pg-router/express'
import express from 'express'
import { createLibrary, parseBookId, toHttpError } from './library.js'

/** The header that carries a read-your-writes token, both ways. */
export const RYW_HEADER = 'x-ryw-token'

/**
 * @param {{ db: any, cache: any, health: any, exposeDebug?: boolean }} deps
 * @returns {import('express').Express}
 */
export function createApp({ db, cache, health, exposeDebug = false }) {
  const library = createLibrary({ db, cache })
  const app = express()
  app.disable('x-powered-by')
  app.use(express.json({ limit: '16kb' }))

  // GET /healthz (liveness), GET /ready (readiness): statuses only, answered from the state
  // the SDK refreshes once per interval (a probe never sends a query of its own). The
  // details and /metrics are on the admin listener (server.js), not on this public port.
  app.use(healthRoutes(health))

  // Read-your-writes: req.db = db.session(token from the x-ryw-token header); once the
  // handler's writes are done, the session's new token goes back in the same header.
  app.use(rywSession(db, { header: RYW_HEADER }))

  /**
   * The session for a read: only when the client sent a token (it wrote recently and must
   * see that write); otherwise undefined, and the read may be served from the cache.
   */
  const sessionOf = (/** @type {import('express').Request} */ req) =>
    req.get(RYW_HEADER) ? req.db : undefined

  app.get('/books/:id', async (req, res) => {
    res.json(await library.getBook(parseBookId(req.params.id), sessionOf(req)))
  })

  app.get('/books', async (req, res) => {
    res.json(await library.findBooks(/** @type {string} */ (req.query.author), sessionOf(req)))
  })

  app.post('/loans', async (req, res) => {
    const { loan, created } = await library.lend(req.db, req.body ?? {})
    res.status(created ? 201 : 200).json(loan)
  })

  app.get('/loans/:id', async (req, res) => {
    res.json(await library.getLoan(req.params.id, sessionOf(req)))
  })

  app.post('/loans/:id/return', async (req, res) => {
    const { loan } = await library.giveBack(req.db, req.params.id)
    res.json(loan)
  })

  if (exposeDebug) {
    // For the demo and the tests; do not expose this publicly.
    app.get('/debug/stats', (_req, res) => {
      res.json({ cache: cache.stats(), topology: db.topology(), router: db.stats(), process: processStats() })
    })
  }

  // Express 5 passes a rejected handler's error here.
  app.use(
    /** @type {import('express').ErrorRequestHandler} */ (err, req, res, _next) => {
      if (err?.expose === true && err.status >= 400 && err.status < 500) {
        // express.json(): a malformed or oversized body.
        res.status(err.status).json({ error: 'BAD_REQUEST', message: err.message })
        return
      }
      const { status, body, retryAfter } = toHttpError(err)
      if (status >= 500 && body.error === 'INTERNAL') console.error(`${req.method} ${req.path} failed:`, err)
      if (retryAfter !== undefined) res.set('retry-after', String(retryAfter))
      res.status(status).json(body)
    },
  )
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
