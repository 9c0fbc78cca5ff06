import type { IncomingMessage, Server, ServerResponse } from 'node:http'

/**
 * What `attachServer` accepts: a node:http / https server (drained: stop accepting, close
 * idle keep-alive connections, let in-flight requests finish with `Connection: close`), or
 * anything with a `close()` that returns a promise (a Fastify instance's closer, a gRPC
 * server's graceful shutdown). Its `forceClose()`, if any, is called when the budget runs out.
 */
export type ClosableServer = Server | { close(): unknown; forceClose?(): void }

export interface DrainResult {
  /** false when the budget ran out and the remaining connections were destroyed. */
  clean: boolean
  /** Requests that were still in flight when the server stopped accepting. */
  inFlightAtClose: number
}

interface Tracked {
  inflight: Set<ServerResponse>
  draining: boolean
  dispose(): void
}

const tracked = new WeakMap<object, Tracked>()

function isHttpServer(server: ClosableServer): server is Server {
  return (
    typeof (server as Server).closeIdleConnections === 'function' &&
    typeof (server as Server).prependListener === 'function'
  )
}

/**
 * Starts following the requests of an http server: those in flight when the drain starts
 * are answered with `Connection: close`, so that keep-alive clients do not send more on
 * that connection. Idempotent.
 */
export function track(server: ClosableServer): void {
  if (!isHttpServer(server) || tracked.has(server)) return
  const state: Tracked = {
    inflight: new Set(),
    draining: false,
    dispose: () => server.removeListener('request', onRequest),
  }
  const onRequest = (_req: IncomingMessage, res: ServerResponse) => {
    if (state.draining) {
      if (!res.headersSent) res.setHeader('connection', 'close')
    }
    state.inflight.add(res)
    res.once('close', () => {
      state.inflight.delete(res)
      // The connection may now sit idle with keep-alive: close it (Node >= 18.2).
      if (state.draining) setImmediate(() => server.closeIdleConnections())
    })
  }
  server.prependListener('request', onRequest)
  tracked.set(server, state)
}

export function untrack(server: ClosableServer): void {
  const state = tracked.get(server)
  if (state) {
    state.dispose()
    tracked.delete(server)
  }
}

/**
 * Marks an http server as draining, without closing it: requests in flight (and any that
 * still arrive) are answered with `Connection: close`, idle keep-alive connections are
 * closed now and as they fall idle. Returns a function that stops the sweeping.
 */
export function startDraining(server: ClosableServer): () => void {
  if (!isHttpServer(server)) return () => {}
  track(server)
  const state = tracked.get(server)!
  state.draining = true
  for (const res of state.inflight) {
    if (!res.headersSent) res.setHeader('connection', 'close')
  }
  server.closeIdleConnections()
  // Connections whose response went out before we tracked them become idle later.
  const sweep = setInterval(() => server.closeIdleConnections(), 100)
  sweep.unref()
  return () => clearInterval(sweep)
}

/** Stops accepting, lets in-flight requests finish, and resolves when all connections are gone or the budget ran out. */
export async function drainServer(server: ClosableServer, budgetMs: number): Promise<DrainResult> {
  if (!isHttpServer(server)) {
    const clean = await bounded(
      Promise.resolve().then(() => server.close()),
      budgetMs,
    )
    if (!clean) (server as { forceClose?(): void }).forceClose?.()
    return { clean, inFlightAtClose: 0 }
  }
  track(server)
  const inFlightAtClose = tracked.get(server)!.inflight.size
  const closed = new Promise<void>((resolve) => {
    if (!server.listening) {
      resolve() // already closed (or never listened): only the connections remain
      return
    }
    server.close(() => resolve())
  })
  const stopSweeping = startDraining(server)
  let clean: boolean
  try {
    clean = await bounded(closed, budgetMs)
  } finally {
    stopSweeping()
  }
  if (!clean) server.closeAllConnections()
  untrack(server)
  return { clean, inFlightAtClose }
}

/** true if `p` settled within `ms`. Never rejects. */
export function bounded(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms)
    p.then(
      () => {
        clearTimeout(timer)
        resolve(true)
      },
      () => {
        clearTimeout(timer)
        resolve(false)
      },
    )
  })
}
