import { performance } from 'node:perf_hooks'
import { getHeapStatistics } from 'node:v8'
import type { CheckStatus } from './result.js'

/**
 * Load shedding, as @fastify/under-pressure does, for any server: while the process itself is
 * the bottleneck (event-loop delay, event-loop utilization, heap, RSS past a threshold),
 * application requests are answered 503 with Retry-After at once instead of joining a queue
 * whose wait grows without bound. A timer samples every `sampleIntervalMs` (never keeping the
 * process alive); each request also looks at how overdue that timer is right now, so a burst
 * that blocks the loop is shed while it is still being parsed, not one sample later.
 */
export interface ShedOptions {
  /**
   * Shed while the event loop is delayed more than this many ms: as measured at the last
   * sample, or as overdue right now (a request parsed late in a long loop turn). `false`: off.
   * @default 50
   */
  maxEventLoopDelayMs?: number | false
  /** Shed while event-loop utilization over the last sample is above this (0 to 1). `false`: off. @default false */
  maxEventLoopUtilization?: number | false
  /** Shed while V8's used heap is above this many bytes. `false`: off. @default false */
  maxHeapUsedBytes?: number | false
  /** Shed while the resident set size is above this many bytes. `false`: off. @default false */
  maxRssBytes?: number | false
  /** How often the sampler runs. @default 25 */
  sampleIntervalMs?: number
  /** The `Retry-After` header of a shed request, in seconds. @default 1 */
  retryAfterSeconds?: number
  /** What readiness reports while shedding: `warn` (200, stays in rotation) or `fail` (503). @default 'warn' */
  readiness?: 'warn' | 'fail'
}

export const DEFAULT_SHED_OPTIONS = {
  maxEventLoopDelayMs: 50,
  maxEventLoopUtilization: false,
  maxHeapUsedBytes: false,
  maxRssBytes: false,
  sampleIntervalMs: 25,
  retryAfterSeconds: 1,
  readiness: 'warn',
} as const

export type ShedReason = 'eventLoopDelay' | 'eventLoopUtilization' | 'heapUsed' | 'rss'
export const SHED_REASONS: readonly ShedReason[] = [
  'eventLoopDelay',
  'eventLoopUtilization',
  'heapUsed',
  'rss',
]

export interface ResolvedShedOptions {
  maxEventLoopDelayMs: number | false
  maxEventLoopUtilization: number | false
  maxHeapUsedBytes: number | false
  maxRssBytes: number | false
  sampleIntervalMs: number
  retryAfterSeconds: number
  readiness: 'warn' | 'fail'
}

/** A change of the sampled state (not of the per-request overdue check). */
export interface ShedChange {
  shedding: boolean
  /** Why it sheds (the first threshold crossed), or why it did, when `shedding` is false. */
  reason: ShedReason
  /** The measured value (ms, a fraction, bytes) and its limit. */
  value: number
  limit: number
}

export interface ShedStats {
  /** The reason it sheds now, or undefined. */
  shedding: ShedReason | undefined
  /** Requests shed so far, in all and by reason. */
  shed: number
  byReason: Record<ShedReason, number>
  /** The last sample: event-loop delay (ms), utilization (0-1), heap used and RSS (bytes, when watched). */
  last: { eventLoopDelayMs: number; eventLoopUtilization: number; heapUsedBytes?: number; rssBytes?: number }
}

const UNITS: Record<ShedReason, string> = {
  eventLoopDelay: 'ms',
  eventLoopUtilization: '',
  heapUsed: 'bytes',
  rss: 'bytes',
}

export class LoadShedder {
  readonly options: ResolvedShedOptions
  #sampled: ShedReason | undefined
  #value = 0
  #expected: number
  #timer: NodeJS.Timeout | undefined
  #elu = performance.eventLoopUtilization()
  readonly #onChange: (change: ShedChange) => void
  shed = 0
  readonly byReason: Record<ShedReason, number> = {
    eventLoopDelay: 0,
    eventLoopUtilization: 0,
    heapUsed: 0,
    rss: 0,
  }
  readonly last: ShedStats['last'] = { eventLoopDelayMs: 0, eventLoopUtilization: 0 }

  constructor(options: ResolvedShedOptions, onChange: (change: ShedChange) => void) {
    this.options = options
    this.#onChange = onChange
    this.#expected = performance.now() + options.sampleIntervalMs
    this.#timer = setTimeout(this.#tick, options.sampleIntervalMs)
    this.#timer.unref()
  }

  /** Why a request arriving now should be shed, or undefined. O(1), allocates nothing. */
  reason(): ShedReason | undefined {
    if (this.#sampled !== undefined) return this.#sampled
    const max = this.options.maxEventLoopDelayMs
    // The sampler is overdue: this loop turn has run longer than the limit already.
    if (max !== false && performance.now() - this.#expected > max) return 'eventLoopDelay'
    return undefined
  }

  /** Counts a shed request. */
  count(reason: ShedReason): void {
    this.shed++
    this.byReason[reason]++
  }

  /** The sampled state (what readiness reports). */
  get sampled(): ShedReason | undefined {
    return this.#sampled
  }

  get status(): CheckStatus {
    return this.#sampled === undefined ? 'pass' : this.options.readiness
  }

  /** A short text for the verbose view: the threshold crossed and by how much. */
  describe(): string | undefined {
    const r = this.#sampled
    if (r === undefined) return undefined
    const limit = this.#limit(r)
    const v = r === 'eventLoopUtilization' ? this.#value.toFixed(3) : Math.round(this.#value)
    return `shedding load: ${r} ${v}${UNITS[r] ? ` ${UNITS[r]}` : ''} exceeds ${limit}${UNITS[r] ? ` ${UNITS[r]}` : ''}`
  }

  stop(): void {
    clearTimeout(this.#timer)
  }

  #limit(r: ShedReason): number {
    const o = this.options
    const l =
      r === 'eventLoopDelay'
        ? o.maxEventLoopDelayMs
        : r === 'eventLoopUtilization'
          ? o.maxEventLoopUtilization
          : r === 'heapUsed'
            ? o.maxHeapUsedBytes
            : o.maxRssBytes
    return l === false ? Number.POSITIVE_INFINITY : l
  }

  #tick = (): void => {
    const o = this.options
    const now = performance.now()
    const delay = Math.max(0, now - this.#expected)
    const elu = performance.eventLoopUtilization(this.#elu)
    this.#elu = performance.eventLoopUtilization()
    this.last.eventLoopDelayMs = delay
    this.last.eventLoopUtilization = elu.utilization
    let reason: ShedReason | undefined
    let value = 0
    if (o.maxEventLoopDelayMs !== false && delay > o.maxEventLoopDelayMs) {
      reason = 'eventLoopDelay'
      value = delay
    } else if (o.maxEventLoopUtilization !== false && elu.utilization > o.maxEventLoopUtilization) {
      reason = 'eventLoopUtilization'
      value = elu.utilization
    }
    if (o.maxHeapUsedBytes !== false) {
      const heap = getHeapStatistics().used_heap_size
      this.last.heapUsedBytes = heap
      if (reason === undefined && heap > o.maxHeapUsedBytes) {
        reason = 'heapUsed'
        value = heap
      }
    }
    if (o.maxRssBytes !== false) {
      const rss = process.memoryUsage.rss()
      this.last.rssBytes = rss
      if (reason === undefined && rss > o.maxRssBytes) {
        reason = 'rss'
        value = rss
      }
    }
    const before = this.#sampled
    this.#sampled = reason
    if (reason !== undefined) this.#value = value
    if (before !== reason) {
      const r = (reason ?? before)!
      this.#onChange({
        shedding: reason !== undefined,
        reason: r,
        value: reason ? value : this.#value,
        limit: this.#limit(r),
      })
    }
    this.#expected = performance.now() + o.sampleIntervalMs
    this.#timer = setTimeout(this.#tick, o.sampleIntervalMs)
    this.#timer.unref()
  }
}
