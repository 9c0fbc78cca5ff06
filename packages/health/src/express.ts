import type { IncomingMessage, ServerResponse } from 'node:http'
import { checkBoolean, configError, optional } from '@resilient/core'
import express from 'express'
import type { Health, NodeHandler } from './health.js'

export interface HealthRoutesOptions<R extends RouterLike = RouterLike> {
  /** @default '/healthz' */
  livenessPath?: string
  /** @default '/ready' */
  readinessPath?: string
  /** Serve Prometheus text here (needs the optional peer prom-client); `false` for none. @default false */
  metricsPath?: string | false
  /** Add the routes to this router (`express.Router()` of your Express 4 or 5); else a new Router of the `express` peer. */
  router?: R
  /**
   * With `shed` on in createHealth: after the probe routes, every other request through this
   * router is answered 503 with Retry-After while the process is overloaded (mount the router
   * first: `app.use(healthRoutes(health))`). @default true
   */
  shed?: boolean
}

/** The part of an Express Router (4 or 5) this uses. */
export interface RouterLike {
  get(path: string, handler: NodeHandler): unknown
  /** Probe routes take every method: GET and HEAD are answered, others get 405 with `Allow`. */
  all(path: string, handler: NodeHandler): unknown
  /** Needed for `shed`. */
  use?(handler: (req: IncomingMessage, res: ServerResponse, next: () => void) => void): unknown
}

export const DEFAULT_HEALTH_ROUTES_OPTIONS = {
  livenessPath: '/healthz',
  readinessPath: '/ready',
  metricsPath: false,
} as const

function path(value: unknown, field: string): string {
  if (typeof value !== 'string' || !value.startsWith('/'))
    throw configError(field, 'a path starting with "/"', value)
  return value
}

/**
 * An Express Router with GET (and HEAD) /healthz and /ready, 405 for other methods:
 * `app.use(healthRoutes(health))`.
 * Works with Express 5 and 4: the handlers are plain node:http handlers.
 */
export function healthRoutes(health: Health, options?: HealthRoutesOptions<never>): express.Router
/** Adds the routes to `options.router` (a Router of your own Express 4 or 5) and returns it. */
export function healthRoutes<R extends RouterLike>(
  health: Health,
  options: HealthRoutesOptions<R> & { router: R },
): R
export function healthRoutes(health: Health, options: HealthRoutesOptions<RouterLike> = {}): RouterLike {
  if (typeof health?.readiness !== 'function')
    throw configError('health', 'a Health from createHealth()', health)
  const d = DEFAULT_HEALTH_ROUTES_OPTIONS
  const router: RouterLike = options.router ?? express.Router()
  // all(): the handlers answer GET and HEAD, and 405 with `Allow: GET, HEAD` to anything else.
  router.all(path(options.livenessPath ?? d.livenessPath, 'livenessPath'), health.liveness)
  router.all(path(options.readinessPath ?? d.readinessPath, 'readinessPath'), health.readiness)
  const metricsPath = options.metricsPath ?? d.metricsPath
  if (metricsPath !== false) router.all(path(metricsPath, 'metricsPath'), health.metrics)
  const shed = optional(options.shed, true, (v) => checkBoolean(v, 'shed'))
  if (shed && health.shedStats() !== undefined) {
    if (typeof router.use !== 'function')
      throw configError('router', 'a Router with use() (for shed)', router)
    router.use(shedRequests(health))
  }
  return router
}

/**
 * Express middleware (4 and 5): while the process is overloaded (`shed` in createHealth),
 * answers 503 with Retry-After instead of calling `next()`. `healthRoutes()` adds it after
 * the probe routes; use this one when you mount the probes elsewhere.
 */
export function shedRequests(
  health: Health,
): (req: IncomingMessage, res: ServerResponse, next: () => void) => void {
  return (req, res, next) => {
    if (!health.shed(req, res)) next()
  }
}
