import type { IncomingMessage, ServerResponse } from 'node:http'
import {
  checkFunction,
  checkString,
  type Disposable,
  Emitter,
  listBreakers,
  ResilientError,
  toDisposable,
  withTimeout,
} from '@resilient/core'
import { verboseGate } from './access.js'
import { type AdminListener, type AdminOptions, listenAdmin } from './admin.js'
import { channels, publish } from './channels.js'
import { type CheckChange, CheckRunner } from './checks.js'
import { type ClosableServer, type DrainResult, drainServer, track, untrack } from './drain.js'
import { type LoopMonitor, monitorEventLoop } from './event-loop.js'
import { isProbeMethod, jsonResponse, METHOD_NOT_ALLOWED, type ProbeResponse, writeResponse } from './http.js'
import {
  checkServer,
  type HealthOptions,
  type ResolvedOptions,
  resolveOptions,
  resolveSignalOptions,
  type SignalOptions,
} from './options.js'
import {
  buildPublicReport,
  buildReport,
  type HealthReport,
  type LoadEntry,
  readinessStatus,
} from './report.js'
import { type CheckStatus, errorOutput } from './result.js'
import { LoadShedder, type ShedChange, type ShedReason, type ShedStats } from './shed.js'

export type HealthState = 'serving' | 'draining' | 'closing' | 'closed'

export interface StatusChange {
  from: CheckStatus
  to: CheckStatus
}

export type ShutdownPhase = 'draining' | 'closing-servers' | 'closing-resources' | 'closed'

export interface ShutdownPhaseEvent {
  phase: ShutdownPhase
  reason: string
  /** Since the shutdown started, in ms. */
  elapsedMs: number
}

export interface ResourceReport {
  name: string
  ok: boolean
  /** Redacted message of the failure (its cause and stack are left out). */
  error?: string
  durationMs: number
}

export interface ShutdownReport {
  /** Every server drained and every resource closed within the budget. */
  clean: boolean
  reason: string
  durationMs: number
  servers: DrainResult[]
  resources: ResourceReport[]
}

export interface ShutdownOptions {
  /** Shown in events; a signal name when a signal started it. @default 'shutdown()' */
  reason?: string
  /** Overrides HealthOptions.drainDelayMs for this shutdown (0 when the server is already closing). */
  drainDelayMs?: number
}

export type { ProbeResponse }

export interface ProbeOptions {
  /** Overrides HealthOptions.verbose (the admin listener passes `true`). */
  verbose?: boolean
  /** The request URL: with `verbose: 'query'`, `?verbose=1` selects the verbose view. */
  url?: string
  /** The request's Authorization header: with `verbose: { token }`, `Bearer <token>` selects the verbose view. */
  authorization?: string | undefined
  /** The request method: anything but GET and HEAD gets 405 with `Allow: GET, HEAD`. @default 'GET' */
  method?: string
}

export type NodeHandler = (req: IncomingMessage, res: ServerResponse) => void

export interface Health {
  /** GET handler for node:http: 200 unless the process itself is broken (event-loop stall); never touches a dependency. */
  readonly liveness: NodeHandler
  /** GET handler for node:http: 200 (pass/warn) or 503 (fail), application/health+json, from cached check results. */
  readonly readiness: NodeHandler
  /** GET handler for node:http: Prometheus text (needs the optional peer prom-client). */
  readonly metrics: NodeHandler
  /** The liveness answer, for adapters (`url` lets `?verbose=1` work when `verbose: 'query'`). */
  livenessResponse(options?: ProbeOptions): ProbeResponse
  /** The readiness answer, for adapters; refreshes stale checks in the background. */
  readinessResponse(options?: ProbeOptions): ProbeResponse
  /** The readiness report as an object. */
  report(options?: { verbose?: boolean }): HealthReport
  /** The readiness status now. */
  readonly status: CheckStatus
  /** The checks' names, in the order given. */
  readonly checkNames: readonly string[]
  /**
   * One check's status, as the public readiness view shows it (before its first result
   * `fail`, or `pass` with readyBeforeFirstCheck); `undefined` for a name that is no check.
   */
  checkStatus(name: string): CheckStatus | undefined
  /** `fail` while the event loop stalls past `eventLoop.maxDelayMs` (when /healthz answers 503), else `pass`. */
  readonly livenessStatus: CheckStatus
  readonly state: HealthState
  readonly isShuttingDown: boolean
  /** Runs every check now (joining runs in progress) and returns the report. E_SHUTTING_DOWN after shutdown. */
  refresh(options?: { verbose?: boolean }): Promise<HealthReport>
  /** Starts the background checks (done at construction unless `autoStart: false`). */
  start(): void
  /** Drains the server(s) this tracks on shutdown. E_SHUTTING_DOWN once servers are closing. */
  attachServer(server: ClosableServer): Disposable
  /** Registers a resource to close on shutdown (all run concurrently within the budget). E_SHUTTING_DOWN after shutdown began. */
  onShutdown(name: string, close: () => unknown): Disposable
  /** Readiness fails now; after drainDelayMs servers stop accepting and drain; then resources close. Never rejects; idempotent. */
  shutdown(options?: ShutdownOptions): Promise<ShutdownReport>
  /** Runs shutdown() on SIGTERM/SIGINT, then exits (0 if clean) unless `exit: false`. A second signal exits at once. */
  handleSignals(options?: SignalOptions): Disposable
  onStatusChange(listener: (change: StatusChange) => void): Disposable
  onCheckChange(listener: (change: CheckChange) => void): Disposable
  onShutdownPhase(listener: (event: ShutdownPhaseEvent) => void): Disposable
  /** How many times each check function was called (for tests and metrics). */
  checkCalls(): Record<string, number>
  /**
   * node:http: with `shed` on, answers 503 with `Retry-After` and returns true while the
   * process is overloaded (call it first in your handler, after the probe routes); else false.
   */
  shed(req: IncomingMessage, res: ServerResponse): boolean
  /** For adapters: the 503 to answer (and the request counted as shed), or `undefined` to serve it. */
  shedResponse(): ProbeResponse | undefined
  /** Why a request arriving now would be shed (`undefined`: it would not, or `shed` is off). */
  readonly shedding: ShedReason | undefined
  /** Shed requests so far and the last sample; `undefined` when `shed` is off. */
  shedStats(): ShedStats | undefined
  /** The sampled overload state changed (what readiness reports under `load`). */
  onShedChange(listener: (change: ShedChange) => void): Disposable
  /**
   * Starts the admin listener on a port of its own: verbose /healthz and /ready, /metrics and
   * /health/circuit-breakers. Binds 127.0.0.1 unless told otherwise; closes when shutdown ends.
   */
  listenAdmin(options: AdminOptions): Promise<AdminListener>
}

type CachedBody = ProbeResponse
const probeResponse = jsonResponse

export function createHealth(options?: HealthOptions): Health {
  const o: ResolvedOptions = resolveOptions(options)
  const stopChecks = new AbortController()
  const statusChanges = new Emitter<StatusChange>()
  const checkChanges = new Emitter<CheckChange>()
  const phases = new Emitter<ShutdownPhaseEvent>()
  const shedChanges = new Emitter<ShedChange>()

  let state: HealthState = 'serving'
  let started = false
  let cachedReady: CachedBody | undefined
  const gate = verboseGate(o.verbose)
  let lastStatus: CheckStatus | undefined
  const servers = new Set<ClosableServer>()
  const resources = new Map<symbol, [string, () => unknown]>()

  const onOutcome = (_runner: CheckRunner, change: CheckChange | undefined) => {
    cachedReady = undefined
    if (change) checkChanges.emit(change)
    noteStatus()
  }
  const runners = o.checks.map((def) => new CheckRunner(def, stopChecks.signal, onOutcome))
  const runnerByName = new Map(runners.map((r) => [r.def.name, r]))
  const checkNames = Object.freeze(runners.map((r) => r.def.name))

  const shedder = o.shed
    ? new LoadShedder(o.shed, (change) => {
        cachedReady = undefined
        publish(channels.shed, change)
        shedChanges.emit(change)
        noteStatus()
      })
    : undefined
  const LOAD_PASS: LoadEntry = Object.freeze({ status: 'pass' })
  const loadEntry = (): LoadEntry | undefined => {
    if (!shedder) return undefined
    if (shedder.sampled === undefined) return LOAD_PASS
    return {
      status: shedder.status,
      output: shedder.describe(),
      details: { shed: shedder.shed, ...shedder.last },
    }
  }
  const shedBody = (() => {
    const r = jsonResponse(
      503,
      { error: 'OVERLOADED', message: 'the server is overloaded: retry later' },
      'application/json',
    )
    r.headers['retry-after'] = o.shed ? o.shed.retryAfterSeconds : 1
    return r
  })()

  const shedResponse = (): ProbeResponse | undefined => {
    const reason = shedder?.reason()
    if (reason === undefined) return undefined
    shedder!.count(reason)
    return shedBody
  }

  const statusNow = (): CheckStatus =>
    readinessStatus({
      runners,
      load: shedder?.sampled === undefined ? undefined : loadEntry(),
      shuttingDown: state !== 'serving',
      readyBeforeFirstCheck: o.readyBeforeFirstCheck,
    })

  function noteStatus(): void {
    const to = statusNow()
    if (lastStatus !== undefined && to !== lastStatus) {
      const change = { from: lastStatus, to }
      publish(channels.status, change)
      statusChanges.emit(change)
    }
    lastStatus = to
  }
  lastStatus = statusNow()

  const loop: LoopMonitor | undefined = o.eventLoop
    ? monitorEventLoop(o.eventLoop, (lagMs) =>
        publish(channels.eventLoopStall, {
          lagMs,
          maxDelayMs: (o.eventLoop as { maxDelayMs: number }).maxDelayMs,
        }),
      )
    : undefined

  for (const s of o.servers) {
    servers.add(s)
    track(s)
  }
  for (const [name, fn] of o.resources) resources.set(Symbol(name), [name, fn])

  function start(): void {
    if (started || state !== 'serving') return
    started = true
    for (const r of runners) r.start()
  }

  function touch(): void {
    if (!started) start()
    if (state !== 'serving') return
    const now = performance.now()
    for (let i = 0; i < runners.length; i++) runners[i]!.touch(now)
  }

  const report = (opts?: { verbose?: boolean }): HealthReport => {
    const verbose = opts?.verbose ?? o.verbose === true
    const r = buildReport({
      runners,
      load: loadEntry(),
      shuttingDown: state !== 'serving',
      readyBeforeFirstCheck: o.readyBeforeFirstCheck,
      service: o.service,
      verbose,
    })
    if (verbose) r.breakers = listBreakers().map((b) => b.stats())
    return r
  }

  const verboseFor = (opts: ProbeOptions | undefined): boolean =>
    opts?.verbose ?? gate(opts?.url, opts?.authorization)

  const readinessResponse = (opts?: ProbeOptions): ProbeResponse => {
    if (opts?.method !== undefined && !isProbeMethod(opts.method)) return METHOD_NOT_ALLOWED
    touch()
    if (verboseFor(opts)) {
      const r = report({ verbose: true })
      return probeResponse(r.status === 'fail' ? 503 : 200, r)
    }
    if (!cachedReady) {
      const r = buildPublicReport({
        runners,
        load: loadEntry(),
        shuttingDown: state !== 'serving',
        readyBeforeFirstCheck: o.readyBeforeFirstCheck,
      })
      cachedReady = probeResponse(r.status === 'fail' ? 503 : 200, r)
    }
    return cachedReady
  }

  const livePass = probeResponse(200, { status: 'pass' })
  const liveFail = probeResponse(503, { status: 'fail' })
  const livenessResponse = (opts?: ProbeOptions): ProbeResponse => {
    if (opts?.method !== undefined && !isProbeMethod(opts.method)) return METHOD_NOT_ALLOWED
    const s = loop?.status()
    const verbose = verboseFor(opts)
    if (!s || (s.healthy && !verbose)) return livePass
    if (!verbose) return liveFail
    const max = (o.eventLoop as { maxDelayMs: number }).maxDelayMs
    const entry = {
      componentId: 'eventLoop',
      componentType: 'system',
      status: s.healthy ? 'pass' : 'fail',
      observedValue: Math.round(s.lagMs),
      observedUnit: 'ms',
      ...(s.healthy ? {} : { output: `event loop delay of ${Math.round(s.lagMs)} ms exceeds ${max} ms` }),
    }
    return probeResponse(s.healthy ? 200 : 503, {
      status: entry.status,
      ...(s.healthy ? {} : { output: entry.output }),
      checks: { 'eventLoop:delay': [entry] },
    })
  }

  const fromRequest = (req: IncomingMessage): ProbeOptions => ({
    url: req.url,
    authorization: req.headers?.authorization,
    method: req.method ?? 'GET',
  })
  const liveness: NodeHandler = (req, res) => writeResponse(req, res, livenessResponse(fromRequest(req)))
  const readiness: NodeHandler = (req, res) => writeResponse(req, res, readinessResponse(fromRequest(req)))

  let metricsHandler: Promise<NodeHandler> | undefined
  const metrics: NodeHandler = (req, res) => {
    if (!isProbeMethod(req.method)) return writeResponse(req, res, METHOD_NOT_ALLOWED)
    metricsHandler ??= import('./metrics.js').then((m) => m.createMetricsHandler(health))
    metricsHandler.then(
      (h) => h(req, res),
      (err: unknown) => {
        metricsHandler = undefined
        res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' })
        res.end(`${errorOutput(err)}\n`)
      },
    )
  }

  let shutdownPromise: Promise<ShutdownReport> | undefined

  function shutdown(opts: ShutdownOptions = {}): Promise<ShutdownReport> {
    if (shutdownPromise) return shutdownPromise
    const reason = opts.reason ?? 'shutdown()'
    const drainDelayMs = opts.drainDelayMs ?? o.drainDelayMs
    const t0 = performance.now()
    state = 'draining'
    cachedReady = undefined
    noteStatus()
    stopChecks.abort(new ResilientError('E_SHUTTING_DOWN', 'health is shutting down', { noStack: true }))
    for (const r of runners) r.stop()
    const phase = (p: ShutdownPhase) => {
      const event = { phase: p, reason, elapsedMs: performance.now() - t0 }
      publish(channels.shutdown, event)
      phases.emit(event)
    }
    shutdownPromise = (async (): Promise<ShutdownReport> => {
      phase('draining')
      // A referenced timer: the process stays up for the drain even with nothing else to do.
      if (drainDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, drainDelayMs))
      state = 'closing'
      phase('closing-servers')
      const deadline = performance.now() + o.shutdownTimeoutMs
      const remaining = () => Math.max(1, deadline - performance.now())
      const drained = await Promise.all([...servers].map((s) => drainServer(s, remaining())))
      phase('closing-resources')
      const closed = await Promise.all(
        [...resources.values()].map(async ([name, fn]): Promise<ResourceReport> => {
          const t = performance.now()
          try {
            await withTimeout(() => Promise.resolve().then(fn), remaining(), {
              operation: `closing ${name}`,
            })
            return { name, ok: true, durationMs: performance.now() - t }
          } catch (err) {
            return { name, ok: false, error: errorOutput(err), durationMs: performance.now() - t }
          }
        }),
      )
      loop?.stop()
      shedder?.stop()
      state = 'closed'
      phase('closed')
      return {
        clean: drained.every((d) => d.clean) && closed.every((r) => r.ok),
        reason,
        durationMs: performance.now() - t0,
        servers: drained,
        resources: closed,
      }
    })()
    return shutdownPromise
  }

  const shuttingDownError = (what: string) =>
    new ResilientError('E_SHUTTING_DOWN', `cannot ${what}: health is shutting down`)

  function handleSignals(opts?: SignalOptions): Disposable {
    const { signals, exit } = resolveSignalOptions(opts ?? true, 'handleSignals')
    let received = 0
    const onSignal = (signal: NodeJS.Signals) => {
      received++
      if (received > 1) {
        if (exit) process.exit(1)
        return
      }
      void shutdown({ reason: signal }).then((r) => {
        if (exit) process.exit(r.clean ? 0 : 1)
      })
    }
    for (const s of signals) process.on(s, onSignal)
    return toDisposable(() => {
      for (const s of signals) process.removeListener(s, onSignal)
    })
  }

  const health: Health = {
    liveness,
    readiness,
    metrics,
    livenessResponse,
    readinessResponse,
    report,
    get status() {
      return statusNow()
    },
    checkNames,
    checkStatus(name) {
      const r = runnerByName.get(name)
      if (!r) return undefined
      return r.outcome?.status ?? (o.readyBeforeFirstCheck ? 'pass' : 'fail')
    },
    get livenessStatus() {
      return !loop || loop.status().healthy ? 'pass' : 'fail'
    },
    get state() {
      return state
    },
    get isShuttingDown() {
      return state !== 'serving'
    },
    async refresh(opts) {
      if (state !== 'serving') throw shuttingDownError('refresh')
      if (!started) start()
      await Promise.all(runners.map((r) => r.run()))
      return report(opts)
    },
    start,
    attachServer(server) {
      checkServer(server, 'server')
      if (state === 'closing' || state === 'closed') throw shuttingDownError('attach a server')
      servers.add(server)
      track(server)
      return toDisposable(() => {
        servers.delete(server)
        untrack(server)
      })
    },
    onShutdown(name, close) {
      checkString(name, 'onShutdown.name', { nonEmpty: true })
      checkFunction(close, 'onShutdown.close')
      if (state !== 'serving') throw shuttingDownError('register a shutdown hook')
      const key = Symbol(name)
      resources.set(key, [name, close])
      return toDisposable(() => resources.delete(key))
    },
    shutdown,
    handleSignals,
    onStatusChange: statusChanges.on,
    onCheckChange: checkChanges.on,
    onShutdownPhase: phases.on,
    checkCalls() {
      const out: Record<string, number> = {}
      for (const r of runners) out[r.def.name] = r.calls
      return out
    },
    listenAdmin: (opts) => listenAdmin(health, opts),
    shed(req, res) {
      const r = shedResponse()
      if (r === undefined) return false
      writeResponse(req, res, r)
      return true
    },
    shedResponse,
    get shedding() {
      return shedder?.reason()
    },
    shedStats() {
      if (!shedder) return undefined
      return {
        shedding: shedder.reason(),
        shed: shedder.shed,
        byReason: { ...shedder.byReason },
        last: { ...shedder.last },
      }
    },
    onShedChange: shedChanges.on,
  }

  if (o.handleSignals) handleSignals(o.handleSignals)
  if (o.autoStart) start()
  return health
}
