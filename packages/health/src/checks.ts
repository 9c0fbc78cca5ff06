import { withTimeout } from '@resilient/core'
import { channels, publish } from './channels.js'
import type { ResolvedCheck } from './options.js'
import { type CheckResult, type CheckStatus, errorOutput, normalizeReturn, worst } from './result.js'

/** The latest outcome of one check. */
export interface CheckOutcome {
  results: CheckResult[]
  /** The worst status of `results`. */
  status: CheckStatus
  /** When the run ended (ISO 8601). */
  time: string
  durationMs: number
}

export interface CheckChange {
  name: string
  critical: boolean
  from: CheckStatus | undefined
  to: CheckStatus
  output: string | undefined
}

/**
 * One check: runs at most once per interval (start to start), one run at a time, each
 * bounded by its timeout; refreshed by a timer that never keeps the process alive, and by
 * probes that find the result stale.
 */
export class CheckRunner {
  readonly def: ResolvedCheck
  outcome: CheckOutcome | undefined
  /** How many times the check function was called. */
  calls = 0
  #running: Promise<void> | undefined
  #lastStart: number | undefined
  #timer: NodeJS.Timeout | undefined
  #stopped = false
  readonly #stop: AbortSignal
  readonly #onOutcome: (runner: CheckRunner, change: CheckChange | undefined) => void

  constructor(
    def: ResolvedCheck,
    stop: AbortSignal,
    onOutcome: (runner: CheckRunner, change: CheckChange | undefined) => void,
  ) {
    this.def = def
    this.#stop = stop
    this.#onOutcome = onOutcome
  }

  /** Runs the check if it is not running and its last start is at least one interval old. */
  touch(now: number): void {
    if (this.#running || this.#stopped) return
    if (this.#lastStart !== undefined && now - this.#lastStart < this.def.intervalMs) return
    void this.run()
  }

  /** Runs now (or joins the run in progress). Never rejects. */
  run(): Promise<void> {
    if (this.#running) return this.#running
    if (this.#stopped) return Promise.resolve()
    clearTimeout(this.#timer)
    const { name, check, timeoutMs } = this.def
    const started = performance.now()
    this.#lastStart = started
    this.calls++
    const p = withTimeout(
      // A plain call: `this` is undefined, as for any function passed unbound.
      (signal) => Promise.resolve().then(() => check({ signal: signal! })),
      timeoutMs,
      { signal: this.#stop, operation: `health check ${name}` },
    )
      .then(normalizeReturn, (err: unknown): CheckResult[] => [{ status: 'fail', output: errorOutput(err) }])
      .then((results) => this.#record(results, performance.now() - started))
      .finally(() => {
        this.#running = undefined
        this.#schedule()
      })
    this.#running = p
    return p
  }

  start(): void {
    if (this.#stopped) return
    if (this.#lastStart === undefined) void this.run()
    else this.#schedule()
  }

  stop(): void {
    this.#stopped = true
    clearTimeout(this.#timer)
  }

  #schedule(): void {
    if (this.#stopped) return
    clearTimeout(this.#timer)
    const due = (this.#lastStart ?? 0) + this.def.intervalMs - performance.now()
    this.#timer = setTimeout(() => void this.run(), Math.max(0, due))
    this.#timer.unref()
  }

  #record(results: CheckResult[], durationMs: number): void {
    if (this.#stop.aborted) return // shutting down: keep the last real result
    let status: CheckStatus = 'pass'
    for (const r of results) status = worst(status, r.status)
    const from = this.outcome?.status
    this.outcome = { results, status, time: new Date().toISOString(), durationMs }
    const output = results.find((r) => r.status !== 'pass' && r.output)?.output
    publish(channels.check, {
      name: this.def.name,
      critical: this.def.critical,
      status,
      previous: from,
      durationMs,
      output,
    })
    this.#onOutcome(
      this,
      from === status
        ? undefined
        : { name: this.def.name, critical: this.def.critical, from, to: status, output },
    )
  }
}
