import type * as grpc from '@grpc/grpc-js'
import {
  checkBoolean,
  checkKnownKeys,
  checkNumber,
  checkObject,
  checkString,
  configError,
  type Disposable,
  optional,
  toDisposable,
} from '@resilient/core'
import { service as healthDefinition } from 'grpc-health-check'
import type { Health } from './health.js'

/**
 * `grpc.health.v1.Health` on a `@grpc/grpc-js` server, answered from the same cached state as
 * the HTTP probes: a Check or a Watch never runs a check of its own. The service definition
 * comes from the maintained `grpc-health-check` package (the official proto); the handlers
 * are ours, because its `HealthImplementation` is push-only (the liveness state is read, not
 * pushed) and cannot end its Watch streams, which keeps `tryShutdown()` from ever finishing.
 */

/** `grpc.health.v1.HealthCheckResponse.ServingStatus`. `SERVICE_UNKNOWN` is only sent on Watch. */
export type ServingStatus = 'UNKNOWN' | 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN'

export interface HealthServiceOptions {
  /**
   * The service name liveness answers under, for Kubernetes' `grpc: { port, service }` liveness
   * probe. Service `''` is readiness; each check answers under its own name.
   * @default 'liveness'
   */
  livenessService?: string
  /**
   * Drain this server with `health.shutdown()`: every readiness service turns NOT_SERVING at
   * once; after `drainDelayMs` the Watch streams end and `server.tryShutdown()` lets the calls
   * in flight finish; `server.forceShutdown()` when `shutdownTimeoutMs` runs out.
   * @default true
   */
  drain?: boolean
  /** How often a Watch of the liveness service re-reads the event-loop state (only while one is open). @default 100 */
  livenessWatchMs?: number
}

export const DEFAULT_HEALTH_SERVICE_OPTIONS = {
  livenessService: 'liveness',
  drain: true,
  livenessWatchMs: 100,
} as const

/** The part of a `@grpc/grpc-js` Server this uses. */
export type GrpcServerLike = Pick<
  grpc.Server,
  'addService' | 'removeService' | 'tryShutdown' | 'forceShutdown'
>

/** The `grpc.health.v1.Health` service definition (from grpc-health-check), e.g. for a client. */
export const healthServiceDefinition = healthDefinition as unknown as grpc.ServiceDefinition

const GRPC_NOT_FOUND = 5

interface HealthRequest {
  service?: string
}
interface HealthResponse {
  status: ServingStatus
}

// One frozen response object per status: a Check allocates nothing of ours.
const RESPONSES: Record<ServingStatus, HealthResponse> = {
  UNKNOWN: Object.freeze({ status: 'UNKNOWN' }),
  SERVING: Object.freeze({ status: 'SERVING' }),
  NOT_SERVING: Object.freeze({ status: 'NOT_SERVING' }),
  SERVICE_UNKNOWN: Object.freeze({ status: 'SERVICE_UNKNOWN' }),
}

interface Watcher {
  call: grpc.ServerWritableStream<HealthRequest, HealthResponse>
  service: string
  last: ServingStatus
}

/**
 * Registers `grpc.health.v1.Health` (Check, Watch, List) on `server`: service `''` is
 * readiness (SERVING for pass and warn, as /ready answers 200), each check answers under its
 * name (SERVING only while it passes), liveness under `livenessService`. Returns a Disposable that removes the service.
 */
export function addHealthService(
  server: GrpcServerLike,
  health: Health,
  options: HealthServiceOptions = {},
): Disposable {
  if (typeof (server as { addService?: unknown })?.addService !== 'function')
    throw configError('server', 'a @grpc/grpc-js Server', server)
  if (typeof (health as { checkStatus?: unknown })?.checkStatus !== 'function')
    throw configError('health', 'a Health from createHealth()', health)
  const o = checkObject(options, 'grpc')
  checkKnownKeys(o, 'grpc', ['livenessService', 'drain', 'livenessWatchMs'])
  const d = DEFAULT_HEALTH_SERVICE_OPTIONS
  const livenessService = optional(o.livenessService, d.livenessService as string, (v) =>
    checkString(v, 'grpc.livenessService', { nonEmpty: true }),
  )
  if (health.checkNames.includes(livenessService))
    throw configError('grpc.livenessService', 'a name that is not also a check name')
  const drain = optional(o.drain, d.drain as boolean, (v) => checkBoolean(v, 'grpc.drain'))
  const livenessWatchMs = optional(o.livenessWatchMs, d.livenessWatchMs as number, (v) =>
    checkNumber(v, 'grpc.livenessWatchMs', { min: 10, max: 60_000, integer: true }),
  )

  const statusOf = (service: string): ServingStatus => {
    if (service === livenessService) return health.livenessStatus === 'fail' ? 'NOT_SERVING' : 'SERVING'
    if (service === '') return health.isShuttingDown || health.status === 'fail' ? 'NOT_SERVING' : 'SERVING'
    const s = health.checkStatus(service)
    if (s === undefined) return 'SERVICE_UNKNOWN'
    // A check's own service is SERVING only while it passes: a warn (degraded, e.g. Redis
    // down while the cache serves from L1) leaves '' SERVING but says so for that component.
    return health.isShuttingDown || s !== 'pass' ? 'NOT_SERVING' : 'SERVING'
  }

  const watchers = new Set<Watcher>()
  let livenessTimer: NodeJS.Timeout | undefined
  let closed = false

  /** Sends each Watch its service's status if it changed. Runs on every health event. */
  const update = () => {
    let livenessWatched = false
    for (const w of watchers) {
      if (w.service === livenessService) livenessWatched = true
      const s = statusOf(w.service)
      if (s !== w.last) {
        w.last = s
        w.call.write(RESPONSES[s])
      }
    }
    if (!livenessWatched && livenessTimer) {
      clearInterval(livenessTimer)
      livenessTimer = undefined
    }
  }

  const endWatches = () => {
    for (const w of watchers) w.call.end()
    watchers.clear()
    clearInterval(livenessTimer)
    livenessTimer = undefined
  }

  server.addService(healthServiceDefinition, {
    Check(
      call: grpc.ServerUnaryCall<HealthRequest, HealthResponse>,
      callback: grpc.sendUnaryData<HealthResponse>,
    ) {
      const s = statusOf(call.request.service ?? '')
      if (s === 'SERVICE_UNKNOWN') callback({ code: GRPC_NOT_FOUND, details: 'unknown service' })
      else callback(null, RESPONSES[s])
    },
    Watch(call: grpc.ServerWritableStream<HealthRequest, HealthResponse>) {
      const service = call.request.service ?? ''
      const w: Watcher = { call, service, last: statusOf(service) }
      call.write(RESPONSES[w.last])
      if (closed) {
        call.end()
        return
      }
      watchers.add(w)
      const forget = () => watchers.delete(w)
      call.once('cancelled', forget)
      call.once('close', forget)
      call.once('error', forget)
      if (service === livenessService && !livenessTimer) {
        livenessTimer = setInterval(update, livenessWatchMs)
        livenessTimer.unref()
      }
    },
    List(
      _call: grpc.ServerUnaryCall<unknown, unknown>,
      callback: grpc.sendUnaryData<{ statuses: Record<string, HealthResponse> }>,
    ) {
      const statuses: Record<string, HealthResponse> = { '': RESPONSES[statusOf('')] }
      for (const name of health.checkNames) statuses[name] = RESPONSES[statusOf(name)]
      statuses[livenessService] = RESPONSES[statusOf(livenessService)]
      callback(null, { statuses })
    },
  })

  // Health events: a check changed, readiness changed, shutdown started (all NOT_SERVING).
  const subscriptions = [
    health.onCheckChange(update),
    health.onStatusChange(update),
    health.onShutdownPhase(update),
  ]
  health.start()

  const attached = drain
    ? health.attachServer({
        close: () =>
          new Promise<void>((resolve, reject) => {
            closed = true
            update()
            endWatches() // open Watch streams would hold tryShutdown() forever
            server.tryShutdown((err) => (err ? reject(err) : resolve()))
          }),
        forceClose: () => server.forceShutdown(),
      })
    : undefined

  return toDisposable(() => {
    for (const s of subscriptions) s.dispose()
    attached?.dispose()
    endWatches()
    server.removeService(healthServiceDefinition)
  })
}
