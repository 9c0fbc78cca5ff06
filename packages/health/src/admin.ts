import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import {
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkString,
  listBreakers,
  optional,
} from '@resilient/core'
import { bearerMatches } from './access.js'
import type { Health, NodeHandler } from './health.js'
import { isProbeMethod, jsonResponse, METHOD_NOT_ALLOWED, type ProbeResponse, writeResponse } from './http.js'
import { resolveTokens } from './options.js'

/**
 * The admin listener: the verbose probes, Prometheus metrics and the breakers, on a port of
 * its own that only operators reach (bind it to loopback, or keep it out of every Service
 * and Ingress and restrict it with a NetworkPolicy). Optionally behind a bearer token too.
 */
export interface AdminOptions {
  /** The port to listen on (0: any free port). */
  port: number
  /** The address to bind. `0.0.0.0` lets a Prometheus in another pod scrape it. @default '127.0.0.1' */
  host?: string
  /** Require `Authorization: Bearer <token>` on every admin route (a list rotates tokens). */
  token?: string | string[]
}

export const DEFAULT_ADMIN_OPTIONS = { host: '127.0.0.1' } as const

/** The admin routes, answered to GET and HEAD (405 with `Allow` otherwise). */
export const ADMIN_PATHS = {
  liveness: '/healthz',
  readiness: '/ready',
  metrics: '/metrics',
  breakers: '/health/circuit-breakers',
} as const

export interface AdminListener {
  readonly server: http.Server
  readonly host: string
  readonly port: number
  /** `http://host:port`. */
  readonly url: string
  /** Stops listening and closes its connections (also done when health's shutdown ends). */
  close(): Promise<void>
}

const NOT_FOUND = jsonResponse(
  404,
  { error: 'not found', routes: Object.values(ADMIN_PATHS) },
  'application/json',
)
const UNAUTHORIZED = (() => {
  const r = jsonResponse(401, { error: 'unauthorized' }, 'application/json')
  r.headers['www-authenticate'] = 'Bearer'
  return r
})()

/** `url` is `path` or `path?...`, without parsing it. */
function routeIs(url: string, path: string): boolean {
  return url.startsWith(path) && (url.length === path.length || url.charCodeAt(path.length) === 63)
}

/**
 * A node:http handler for the admin routes, to mount on a server of your own (the admin
 * listener of `health.listenAdmin()` uses it): verbose liveness and readiness, metrics,
 * and `GET /health/circuit-breakers`.
 */
export function createAdminHandler(health: Health, options: { token?: string | string[] } = {}): NodeHandler {
  const o = checkObject(options, 'admin')
  checkKnownKeys(o, 'admin', ['token'])
  const digests = o.token === undefined ? undefined : resolveTokens(o.token, 'admin.token')
  return (req, res) => {
    const url = req.url ?? '/'
    if (digests && !bearerMatches(req.headers.authorization, digests))
      return writeResponse(req, res, UNAUTHORIZED)
    let r: ProbeResponse
    if (routeIs(url, ADMIN_PATHS.liveness))
      r = health.livenessResponse({ verbose: true, method: req.method ?? 'GET' })
    else if (routeIs(url, ADMIN_PATHS.readiness))
      r = health.readinessResponse({ verbose: true, method: req.method ?? 'GET' })
    else if (routeIs(url, ADMIN_PATHS.metrics)) return health.metrics(req, res)
    else if (routeIs(url, ADMIN_PATHS.breakers)) {
      r = isProbeMethod(req.method)
        ? jsonResponse(200, { breakers: listBreakers().map((b) => b.stats()) }, 'application/json')
        : METHOD_NOT_ALLOWED
    } else r = NOT_FOUND
    writeResponse(req, res, r)
  }
}

/** Starts the admin listener; it closes by itself once health's shutdown has ended. */
export async function listenAdmin(health: Health, options: AdminOptions): Promise<AdminListener> {
  const o = checkObject(options, 'admin')
  checkKnownKeys(o, 'admin', ['port', 'host', 'token'])
  const port = checkNumber(o.port, 'admin.port', { min: 0, max: 65_535, integer: true })
  const host = optional(o.host, DEFAULT_ADMIN_OPTIONS.host as string, (v) =>
    checkString(v, 'admin.host', { nonEmpty: true }),
  )
  const handler = createAdminHandler(health, o.token === undefined ? {} : { token: o.token as string })
  const server = http.createServer(handler)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  let closed: Promise<void> | undefined
  const close = () => {
    closed ??= new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
    })
    return closed
  }
  // Operators watch the drain on it: it stays up until health's shutdown has ended.
  const sub = health.onShutdownPhase((e) => {
    if (e.phase === 'closed') void close()
  })
  server.once('close', () => sub.dispose())
  const address = server.address() as AddressInfo
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address
  return { server, host: address.address, port: address.port, url: `http://${shown}:${address.port}`, close }
}
