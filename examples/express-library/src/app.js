// The Express application: routes only. Everything it talks to is passed in, so a test (or
// another process layout) can build it around its own db, cache and health.
import { healthRoutes } from '@resilient/health/express'
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

  // GET /healthz (liveness) and GET /ready (readiness), answered from the health state that
  // the SDK refreshes once per interval: a probe never sends a query of its own.
  app.use(healthRoutes(health))

  /** The client's read-your-writes session, when it sent a token. */
  const sessionOf = (/** @type {import('express').Request} */ req) => {
    const token = req.get(RYW_HEADER)
    return token ? db.session(token) : undefined
  }

  app.get('/books/:id', async (req, res) => {
    res.json(await library.getBook(parseBookId(req.params.id), sessionOf(req)))
  })

  app.get('/books', async (req, res) => {
    res.json(await library.findBooks(/** @type {string} */ (req.query.author), sessionOf(req)))
  })

  app.post('/loans', async (req, res) => {
    const session = db.session(req.get(RYW_HEADER) || undefined)
    const { loan, created } = await library.lend(session, req.body ?? {})
    res.set(RYW_HEADER, session.token)
    res.status(created ? 201 : 200).json(loan)
  })

  app.get('/loans/:id', async (req, res) => {
    res.json(await library.getLoan(req.params.id, sessionOf(req)))
  })

  app.post('/loans/:id/return', async (req, res) => {
    const session = db.session(req.get(RYW_HEADER) || undefined)
    const { loan } = await library.giveBack(session, req.params.id)
    res.set(RYW_HEADER, session.token)
    res.json(loan)
  })

  if (exposeDebug) {
    // For the demo and the tests; do not expose this publicly.
    app.get('/debug/stats', (_req, res) => {
      res.json({ cache: cache.stats(), topology: db.topology() })
    })
  }

  // Express 5 passes a rejected handler's error here.
  app.use(
    /** @type {import('express').ErrorRequestHandler} */ (err, _req, res, _next) => {
      if (err?.expose === true && err.status >= 400 && err.status < 500) {
        // express.json(): a malformed or oversized body.
        res.status(err.status).json({ error: 'BAD_REQUEST', message: err.message })
        return
      }
      const { status, body, retryAfter } = toHttpError(err)
      if (status >= 500 && body.error === 'INTERNAL') console.error('request failed', err)
      if (retryAfter !== undefined) res.set('retry-after', String(retryAfter))
      res.status(status).json(body)
    },
  )
  return app
}
