import { listBreakers, ResilientError } from '@resilient/core'
import type { Health, NodeHandler } from './health.js'
import { errorOutput } from './result.js'

// prom-client is an optional peer: its types stay out of every declaration this package
// publishes (a user without it would get TS2307 from index.d.ts). Used inside functions only.
type PromClient = typeof import('prom-client')
type Registry = import('prom-client').Registry

/**
 * The part of a prom-client `Registry` the handler uses; any prom-client 15 `Registry` is one.
 * Declared here so that the types of @resilient/health load without prom-client installed.
 */
export interface MetricsRegistry {
  metrics(): Promise<string>
  readonly contentType: string
  getSingleMetric(name: string): unknown
  removeSingleMetric(name: string): void
}

export interface MetricsOptions {
  /** The prom-client registry to fill and expose. @default prom-client's global `register` */
  register?: MetricsRegistry
  /** Also collect prom-client's default process metrics (once per registry). @default true */
  defaultMetrics?: boolean
}

export const DEFAULT_METRICS_OPTIONS = { defaultMetrics: true } as const

const BREAKER_STATES = ['closed', 'open', 'half-open'] as const

async function loadPromClient(): Promise<PromClient> {
  try {
    const m = (await import('prom-client')) as PromClient & { default?: PromClient }
    return (m.default ?? m) as PromClient
  } catch (err) {
    throw new ResilientError(
      'E_CONFIG',
      'metrics need the optional peer dependency prom-client: install it (npm i prom-client)',
      { cause: err, details: { field: 'prom-client' } },
    )
  }
}

/**
 * A node:http handler for Prometheus text: check states, readiness, breaker states (from
 * @resilient/core) and, by default, prom-client's process metrics. prom-client is loaded
 * here, lazily: E_CONFIG if it is not installed. The latest health given a registry owns
 * its `resilient_*` metrics.
 */
export async function createMetricsHandler(
  health: Health,
  options: MetricsOptions = {},
): Promise<NodeHandler> {
  const prom = await loadPromClient()
  const register = (options.register as Registry | undefined) ?? prom.register
  if (
    (options.defaultMetrics ?? DEFAULT_METRICS_OPTIONS.defaultMetrics) &&
    !register.getSingleMetric('process_cpu_user_seconds_total')
  ) {
    prom.collectDefaultMetrics({ register })
  }
  const fresh = (name: string) => {
    register.removeSingleMetric(name)
    return name
  }

  new prom.Gauge({
    name: fresh('resilient_health_ready'),
    help: 'Readiness: 1 when the readiness probe answers 200 (pass or warn), 0 when 503.',
    registers: [register],
    collect() {
      this.set(health.status === 'fail' ? 0 : 1)
    },
  })
  new prom.Gauge({
    name: fresh('resilient_health_shutting_down'),
    help: '1 once shutdown has started.',
    registers: [register],
    collect() {
      this.set(health.isShuttingDown ? 1 : 0)
    },
  })
  new prom.Gauge({
    name: fresh('resilient_health_check_up'),
    help: 'Last result of each health check: 1 pass, 0.5 warn, 0 fail or not run yet.',
    labelNames: ['check', 'critical'],
    registers: [register],
    collect() {
      this.reset()
      const report = health.report({ verbose: true })
      for (const [key, entries] of Object.entries(report.checks)) {
        const check = key.split(':')[0]!
        for (const e of entries) {
          this.set(
            { check, critical: String(e.critical ?? true) },
            e.status === 'pass' ? 1 : e.status === 'warn' ? 0.5 : 0,
          )
        }
      }
    },
  })
  new prom.Gauge({
    name: fresh('resilient_health_check_calls'),
    help: 'How many times each health check function was called (at most once per interval).',
    labelNames: ['check'],
    registers: [register],
    collect() {
      this.reset()
      for (const [check, n] of Object.entries(health.checkCalls())) this.set({ check }, n)
    },
  })
  new prom.Gauge({
    name: fresh('resilient_breaker_state'),
    help: 'State of each circuit breaker: 1 for the current state, 0 for the others.',
    labelNames: ['breaker', 'state'],
    registers: [register],
    collect() {
      this.reset()
      for (const b of listBreakers()) {
        for (const s of BREAKER_STATES) this.set({ breaker: b.name, state: s }, b.state === s ? 1 : 0)
      }
    },
  })

  if (health.shedStats() !== undefined) {
    new prom.Counter({
      name: fresh('resilient_health_shed_requests_total'),
      help: 'Application requests answered 503 because the process was overloaded, by the threshold crossed.',
      labelNames: ['reason'],
      registers: [register],
      collect() {
        const stats = health.shedStats()
        if (!stats) return
        this.reset()
        for (const [reason, n] of Object.entries(stats.byReason)) this.inc({ reason }, n)
      },
    })
    new prom.Gauge({
      name: fresh('resilient_health_shedding'),
      help: '1 while load shedding is on (a threshold crossed at the last sample).',
      registers: [register],
      collect() {
        this.set(health.shedStats()?.shedding === undefined ? 0 : 1)
      },
    })
  }

  return (_req, res) => {
    register.metrics().then(
      (text) => {
        res.writeHead(200, { 'content-type': register.contentType, 'cache-control': 'no-store' })
        res.end(text)
      },
      (err: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' })
        res.end(`${errorOutput(err)}\n`)
      },
    )
  }
}
