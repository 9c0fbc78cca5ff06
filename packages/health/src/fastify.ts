import { checkBoolean, checkOneOf, configError, optional } from '@resilient/core'
import type { FastifyInstance, FastifyReply, FastifyRequest, LogLevel } from 'fastify'
import fp from 'fastify-plugin'
import { startDraining, track } from './drain.js'
import type { Health, ProbeResponse } from './health.js'
import { METHOD_NOT_ALLOWED } from './http.js'

export interface HealthPluginOptions {
  /** The Health from createHealth(). */
  health: Health
  /** @default '/healthz' */
  livenessPath?: string
  /** @default '/ready' */
  readinessPath?: string
  /** Serve Prometheus text here (needs the optional peer prom-client); `false` for none. @default false */
  metricsPath?: string | false
  /**
   * Tie the two shutdowns together: `health.shutdown()` closes this Fastify instance after
   * the drain delay (so its onClose hooks run), and a `fastify.close()` started elsewhere
   * makes readiness fail at once and then runs health's shutdown hooks (without a drain delay).
   * @default true
   */
  closeWithHealth?: boolean
  /** Log level of the probe routes (probes are frequent). @default 'warn' */
  logLevel?: LogLevel
  /**
   * With `shed` on in createHealth: every route of this instance but the probes and metrics
   * is answered 503 with Retry-After while the process is overloaded (an onRequest hook).
   * @default true
   */
  shed?: boolean
}

export const DEFAULT_HEALTH_PLUGIN_OPTIONS = {
  livenessPath: '/healthz',
  readinessPath: '/ready',
  metricsPath: false,
  closeWithHealth: true,
  logLevel: 'warn',
} as const

const LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

function path(value: unknown, fallback: string, field: string): string {
  return optional(value, fallback, (v) => {
    if (typeof v !== 'string' || !v.startsWith('/')) throw configError(field, 'a path starting with "/"', v)
    return v
  })
}

function send(reply: FastifyReply, r: ProbeResponse): FastifyReply {
  const { 'content-length': _length, ...headers } = r.headers
  return reply.code(r.statusCode).headers(headers).send(r.body)
}

async function healthPlugin(fastify: FastifyInstance, options: HealthPluginOptions): Promise<void> {
  const health = options?.health
  if (typeof health?.readinessResponse !== 'function') {
    throw configError('health', 'a Health from createHealth()', health)
  }
  const d = DEFAULT_HEALTH_PLUGIN_OPTIONS
  const livenessPath = path(options.livenessPath, d.livenessPath, 'livenessPath')
  const readinessPath = path(options.readinessPath, d.readinessPath, 'readinessPath')
  const metricsPath =
    options.metricsPath === undefined || options.metricsPath === false
      ? false
      : path(options.metricsPath, '', 'metricsPath')
  const closeWithHealth = optional(options.closeWithHealth, d.closeWithHealth as boolean, (v) =>
    checkBoolean(v, 'closeWithHealth'),
  )
  const logLevel = optional(options.logLevel, d.logLevel as LogLevel, (v) =>
    checkOneOf(v, 'logLevel', LEVELS),
  )

  const probe = (req: FastifyRequest) => ({
    url: req.url,
    authorization: req.headers?.authorization,
    method: req.method,
  })
  fastify.get(livenessPath, { logLevel }, (req: FastifyRequest, reply: FastifyReply) =>
    send(reply, health.livenessResponse(probe(req))),
  )
  fastify.get(readinessPath, { logLevel }, (req: FastifyRequest, reply: FastifyReply) =>
    send(reply, health.readinessResponse(probe(req))),
  )
  if (metricsPath) {
    fastify.get(metricsPath, { logLevel }, (req: FastifyRequest, reply: FastifyReply) => {
      reply.hijack()
      health.metrics(req.raw, reply.raw)
    })
  }
  const shed = optional(options.shed, true, (v) => checkBoolean(v, 'shed'))
  if (shed && health.shedStats() !== undefined) {
    const exempt = new Set<string>([livenessPath, readinessPath, ...(metricsPath ? [metricsPath] : [])])
    fastify.addHook('onRequest', (req, reply, done) => {
      if (exempt.has(req.routeOptions.url ?? '')) return done()
      const r = health.shedResponse()
      if (r === undefined) return done()
      send(reply, r)
    })
  }
  // Every other method on a probe route: 405 with `Allow: GET, HEAD`.
  const others = fastify.supportedMethods.filter((m) => m !== 'GET' && m !== 'HEAD')
  for (const url of [livenessPath, readinessPath, ...(metricsPath ? [metricsPath] : [])]) {
    fastify.route({
      method: others,
      url,
      logLevel,
      handler: (_req, reply) => send(reply, METHOD_NOT_ALLOWED),
    })
  }

  if (!closeWithHealth) return
  // Who started the close decides the order: health (drain first, then fastify.close(),
  // then health's hooks) or fastify.close() (readiness fails, fastify closes, then hooks).
  let closing: Promise<unknown> | undefined
  let startedByHealth = false
  let startedElsewhere = false
  let stopDraining: () => void = () => {}
  let serverClosed: () => void = () => {}
  const closed = new Promise<void>((resolve) => {
    serverClosed = resolve
  })
  // Fastify waits for keep-alive connections on close: answer in-flight requests with
  // `Connection: close` and close connections as they fall idle, as for node:http servers.
  track(fastify.server)
  health.attachServer({
    close: () => {
      // fastify.close() came first: this "server" is closed when its onClose runs.
      if (startedElsewhere) return closed
      startedByHealth = true
      stopDraining = startDraining(fastify.server)
      closing ??= fastify.close()
      return closing
    },
  })
  fastify.addHook('preClose', async () => {
    if (startedByHealth) return
    startedElsewhere = true
    stopDraining = startDraining(fastify.server)
    // Readiness fails from now on; health's hooks wait for fastify's server to close.
    void health.shutdown({ reason: 'fastify.close()', drainDelayMs: 0 })
  })
  fastify.addHook('onClose', async () => {
    stopDraining()
    serverClosed()
    if (startedElsewhere) await health.shutdown()
  })
}

/** Fastify 5 plugin: GET /healthz and /ready (and optionally /metrics), shutdown tied to fastify.close(). */
export default fp(healthPlugin, { name: '@resilient/health', fastify: '5.x' })
export { healthPlugin }
